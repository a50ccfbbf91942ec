#include <openssl/evp.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <unordered_map>

#include "common/clock.h"
#include "common/config.h"
#include "common/ids.h"
#include "common/json.h"
#include "common/json_depth.h"
#include "common/log.h"
#include "common/result.h"

namespace nebula {

const char* to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::InvalidArgument: return "invalid_argument";
    case ErrorCode::NotFound: return "not_found";
    case ErrorCode::AlreadyExists: return "already_exists";
    case ErrorCode::Conflict: return "conflict";
    case ErrorCode::Unauthenticated: return "unauthenticated";
    case ErrorCode::PermissionDenied: return "permission_denied";
    case ErrorCode::Unavailable: return "unavailable";
    case ErrorCode::ResourceExhausted: return "resource_exhausted";
    case ErrorCode::Timeout: return "timeout";
    case ErrorCode::Compacted: return "compacted";
    case ErrorCode::TooLarge: return "too_large";
    case ErrorCode::Internal: return "internal";
  }
  return "internal";
}

SystemClock& SystemClock::instance() {
  static SystemClock clock;
  return clock;
}

int64_t to_unix_ms(std::chrono::system_clock::time_point time) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch()).count();
}

std::string format_rfc3339(std::chrono::system_clock::time_point time) {
  int64_t ms = to_unix_ms(time);
  std::time_t seconds = static_cast<std::time_t>(ms / 1000);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900, utc.tm_mon + 1,
                utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, static_cast<int>(ms % 1000));
  return buffer;
}

namespace {
std::mt19937_64& thread_rng() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return rng;
}
}  // namespace

std::string random_id(size_t length) {
  static constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  // Twelve base-36 digits per 64-bit draw; draws in the partial top range are rejected, so every
  // character stays uniform.
  constexpr uint64_t kDigits = 12;
  constexpr uint64_t kSpan = 4738381338321616896ULL;  // 36^12
  constexpr uint64_t kLimit = kSpan * (UINT64_MAX / kSpan);
  std::string id;
  id.reserve(length);
  while (id.size() < length) {
    uint64_t value = thread_rng()();
    if (value >= kLimit) continue;
    for (uint64_t i = 0; i < kDigits && id.size() < length; ++i, value /= 36) id.push_back(kAlphabet[value % 36]);
  }
  return id;
}

std::string random_secret_hex(size_t bytes) {
  std::string raw(bytes, '\0');
  std::ifstream urandom("/dev/urandom", std::ios::binary);
  if (!urandom.read(raw.data(), static_cast<std::streamsize>(bytes))) {
    throw std::runtime_error("cannot read /dev/urandom");
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned char c : raw) {
    hex.push_back(kHex[c >> 4]);
    hex.push_back(kHex[c & 15]);
  }
  return hex;
}

void init_logging(const std::string& level) {
  static std::once_flag once;
  std::call_once(once, [] {
    auto logger = spdlog::stderr_color_mt("nebula");
    spdlog::set_default_logger(logger);
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%L%$ %v");
  });
  spdlog::set_level(spdlog::level::from_str(level));
}

namespace {
// Splits "12.5GB" into 12.5 and "GB".
bool split_number(std::string_view text, double& number, std::string_view& unit) {
  size_t end = 0;
  while (end < text.size() && (std::isdigit(static_cast<unsigned char>(text[end])) || text[end] == '.')) ++end;
  if (end == 0) return false;
  std::string digits(text.substr(0, end));
  char* parse_end = nullptr;
  number = std::strtod(digits.c_str(), &parse_end);
  if (parse_end != digits.c_str() + digits.size()) return false;
  unit = text.substr(end);
  return true;
}
std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}
}  // namespace

Result<std::chrono::milliseconds> parse_duration(std::string_view text) {
  double number = 0;
  std::string_view unit;
  if (!split_number(text, number, unit)) {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("invalid duration '{}': expected a number with ms, s, m, h or d", text));
  }
  std::string u = lower(unit);
  double ms = 0;
  if (u == "ms")
    ms = number;
  else if (u.empty() || u == "s")
    ms = number * 1000;
  else if (u == "m")
    ms = number * 60'000;
  else if (u == "h")
    ms = number * 3'600'000;
  else if (u == "d")
    ms = number * 86'400'000;
  else {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("invalid duration '{}': unknown unit '{}' (use ms, s, m, h or d)", text, unit));
  }
  // About 30,000 years: anything beyond is a typo, and would overflow the milliseconds.
  if (ms > 1e15) return make_error(ErrorCode::InvalidArgument, fmt::format("duration '{}' is too large", text));
  return std::chrono::milliseconds(static_cast<int64_t>(ms));
}

Result<int64_t> parse_size_mb(std::string_view text) {
  double number = 0;
  std::string_view unit;
  if (!split_number(text, number, unit)) {
    return make_error(ErrorCode::InvalidArgument, fmt::format("invalid size '{}': expected e.g. 24GB or 512MB", text));
  }
  std::string u = lower(unit);
  double mb = 0;
  if (u.empty() || u == "mb" || u == "mib" || u == "m")
    mb = number;
  else if (u == "gb" || u == "gib" || u == "g")
    mb = number * 1024;
  else if (u == "tb" || u == "tib" || u == "t")
    mb = number * 1024 * 1024;
  else {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("invalid size '{}': unknown unit '{}' (use MB, GB or TB)", text, unit));
  }
  // An exbibyte: anything beyond is a typo, and would overflow the mebibytes.
  if (mb > 1024.0 * 1024 * 1024 * 1024) {
    return make_error(ErrorCode::InvalidArgument, fmt::format("size '{}' is too large", text));
  }
  return static_cast<int64_t>(mb);
}

std::string HostPort::to_string() const {
  if (host.find(':') != std::string::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

Result<HostPort> parse_host_port(std::string_view text) {
  HostPort result;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return make_error(ErrorCode::InvalidArgument, fmt::format("invalid address '{}': expected [HOST]:PORT", text));
    }
    result.host = std::string(text.substr(1, close - 1));
    port_text = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return make_error(ErrorCode::InvalidArgument, fmt::format("invalid address '{}': expected HOST:PORT", text));
    }
    result.host = std::string(text.substr(0, colon));
    port_text = text.substr(colon + 1);
  }
  if (result.host.empty()) result.host = "0.0.0.0";
  unsigned port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port > 65535 || port_text.empty()) {
    return make_error(ErrorCode::InvalidArgument, fmt::format("invalid port in '{}'", text));
  }
  result.port = static_cast<uint16_t>(port);
  return result;
}

std::string default_data_dir() {
  const char* home = std::getenv("HOME");
  return home && *home ? std::string(home) + "/.nebula" : std::string(".nebula");
}

std::string expand_home(const std::string& path) {
  if (path.empty() || path[0] != '~') return path;
  const char* home = std::getenv("HOME");
  return (home ? std::string(home) : std::string(".")) + path.substr(1);
}

namespace {
// Bounds of every YAML document read (spec files, agent.yaml): a real one is a few kilobytes.
// Aliases are expanded into the JSON built, so a file of nine nested aliases would otherwise
// become a billion nodes.
constexpr size_t kMaxYamlBytes = 1 << 20;
constexpr size_t kMaxYamlDepth = 64;
constexpr size_t kMaxYamlNodes = 100'000;  // after alias expansion
// JSON nested deeper than this is refused before parsing.
constexpr int kMaxJsonDepth = 256;

}  // namespace

int json_depth(std::string_view text, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

Result<json> parse_json(std::string_view text) {
  if (json_depth(text, kMaxJsonDepth) > kMaxJsonDepth) {
    return make_error(ErrorCode::InvalidArgument, fmt::format("invalid JSON: nested deeper than {}", kMaxJsonDepth));
  }
  try {
    return json::parse(text);
  } catch (const json::exception& error) {
    // parse_error, and out_of_range for a number too large for a double (1e999): found by the
    // gateway's fuzzer; both are a bad input, never a crash.
    return make_error(ErrorCode::InvalidArgument, fmt::format("invalid JSON: {}", error.what()));
  }
}

namespace {
void emit_yaml(YAML::Emitter& out, const json& value) {
  switch (value.type()) {
    case json::value_t::object:
      out << YAML::BeginMap;
      for (const auto& [key, item] : value.items()) {
        out << YAML::Key << key << YAML::Value;
        emit_yaml(out, item);
      }
      out << YAML::EndMap;
      break;
    case json::value_t::array:
      out << YAML::BeginSeq;
      for (const auto& item : value) emit_yaml(out, item);
      out << YAML::EndSeq;
      break;
    case json::value_t::string: out << value.get<std::string>(); break;
    case json::value_t::boolean: out << value.get<bool>(); break;
    case json::value_t::number_integer: out << value.get<int64_t>(); break;
    case json::value_t::number_unsigned: out << value.get<uint64_t>(); break;
    case json::value_t::number_float: out << value.get<double>(); break;
    default: out << YAML::Null; break;
  }
}

// Deepest nesting of YAML flow collections ([...] and {...}) outside quotes and comments,
// counted before parsing: the parser's scanner reads a whole flow collection ahead before the
// first event, and an unclosed "[[[[..." of a megabyte took it to a quarter of a gigabyte.
// Brackets inside plain scalars count too, which only ever overestimates.
size_t yaml_flow_depth(std::string_view text) {
  size_t depth = 0, deepest = 0;
  char quote = 0;
  bool comment = false;
  char previous = '\n';
  for (char c : text) {
    if (comment) {
      if (c == '\n') comment = false;
    } else if (quote) {
      if (c == quote) quote = 0;  // '' and \" escapes reopen at once: harmless for a count
    } else if ((c == '"' || c == '\'') && std::string_view(" \t\n[{,:-").find(previous) != std::string_view::npos) {
      quote = c;  // a quoted scalar starts a token; an apostrophe inside a plain one does not
    } else if (c == '#' && (previous == ' ' || previous == '\t' || previous == '\n')) {
      comment = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > kMaxYamlDepth) return deepest;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
    previous = c;
  }
  return deepest;
}

struct YamlRefused : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A plain (unquoted, untagged) scalar becomes a bool or number when it reads as one.
json yaml_scalar(const std::string& tag, const std::string& text) {
  if (tag != "?" && !tag.empty()) return text;  // quoted or explicitly tagged: keep it a string
  if (text == "true" || text == "false") return text == "true";
  int64_t integer = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), integer);
  if (ec == std::errc() && end == text.data() + text.size()) return integer;
  double real = 0;
  auto [fend, fec] = std::from_chars(text.data(), text.data() + text.size(), real);
  if (fec == std::errc() && fend == text.data() + text.size() && std::isfinite(real)) return real;
  return text;
}

// Builds JSON from the parser's events, so a document is never held twice, and refuses as soon
// as the document nests too deeply or its aliases expand too far (the parser stops there: it
// never recurses past kMaxYamlDepth). A mapping key must be a scalar and appear once.
class JsonFromYaml : public YAML::EventHandler {
 public:
  json take() { return std::move(root_); }

  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    if (expecting_key()) refuse(mark, "a mapping key cannot be empty");
    put(mark, nullptr, anchor, 1);
  }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    auto found = anchors_.find(anchor);
    if (found == anchors_.end()) refuse(mark, "unknown alias");
    if (expecting_key()) {
      if (!found->second.value.is_string()) refuse(mark, "a mapping key must be a plain value");
      key(mark, found->second.value.get<std::string>());
      return;
    }
    put(mark, found->second.value, 0, found->second.nodes);
  }
  void OnScalar(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                const std::string& value) override {
    if (expecting_key()) {
      if (anchor) anchors_[anchor] = {value, 1};
      key(mark, value);
      return;
    }
    put(mark, yaml_scalar(tag, value), anchor, 1);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value) override {
    open(mark, json::array(), anchor);
  }
  void OnSequenceEnd() override { close(); }
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value) override {
    open(mark, json::object(), anchor);
  }
  void OnMapEnd() override { close(); }

 private:
  struct Frame {
    json value;
    std::string key;
    bool has_key = false;
    YAML::anchor_t anchor = 0;
    size_t nodes_before = 0;
    YAML::Mark mark;
  };
  struct Anchored {
    json value;
    size_t nodes = 0;
  };

  [[noreturn]] static void refuse(const YAML::Mark& mark, const std::string& what) {
    throw YamlRefused(fmt::format("line {}, column {}: {}", mark.line + 1, mark.column + 1, what));
  }
  bool expecting_key() const { return !stack_.empty() && stack_.back().value.is_object() && !stack_.back().has_key; }
  void key(const YAML::Mark& mark, const std::string& name) {
    Frame& frame = stack_.back();
    if (frame.value.contains(name)) refuse(mark, fmt::format("duplicate key '{}'", name));
    frame.key = name;
    frame.has_key = true;
  }
  void count(const YAML::Mark& mark, size_t nodes) {
    nodes_ += nodes;
    if (nodes_ > kMaxYamlNodes) {
      refuse(mark, fmt::format("the document (aliases expanded) has more than {} values", kMaxYamlNodes));
    }
  }
  void open(const YAML::Mark& mark, json container, YAML::anchor_t anchor) {
    if (expecting_key()) refuse(mark, "a mapping key must be a plain value, not a list or mapping");
    if (stack_.size() >= kMaxYamlDepth) refuse(mark, fmt::format("nested deeper than {} levels", kMaxYamlDepth));
    count(mark, 1);
    stack_.push_back(Frame{std::move(container), {}, false, anchor, nodes_ - 1, mark});
  }
  void close() {
    Frame frame = std::move(stack_.back());
    stack_.pop_back();
    put(frame.mark, std::move(frame.value), frame.anchor, 0);
    if (frame.anchor) anchors_[frame.anchor].nodes = nodes_ - frame.nodes_before;
  }
  // Adds a finished value where the parser is: the root, the next item of a list or the value of
  // the current key. `nodes` is how many values it adds to the document.
  void put(const YAML::Mark& mark, json value, YAML::anchor_t anchor, size_t nodes) {
    count(mark, nodes);
    if (anchor) anchors_[anchor] = {value, nodes};
    if (stack_.empty()) {
      root_ = std::move(value);
      return;
    }
    Frame& frame = stack_.back();
    if (frame.value.is_array()) {
      frame.value.push_back(std::move(value));
    } else {
      frame.value[frame.key] = std::move(value);
      frame.has_key = false;
    }
  }

  std::vector<Frame> stack_;
  std::unordered_map<YAML::anchor_t, Anchored> anchors_;
  size_t nodes_ = 0;
  json root_;
};
}  // namespace

std::string json_to_yaml(const json& value) {
  YAML::Emitter out;
  emit_yaml(out, value);
  return std::string(out.c_str()) + "\n";
}

Result<json> yaml_to_json(std::string_view text) {
  if (text.size() > kMaxYamlBytes) {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("YAML document of {} bytes refused (at most {})", text.size(), kMaxYamlBytes));
  }
  if (yaml_flow_depth(text) > kMaxYamlDepth) {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("YAML refused: nested deeper than {} levels", kMaxYamlDepth));
  }
  try {
    std::istringstream in{std::string(text)};
    YAML::Parser parser(in);
    JsonFromYaml builder;
    parser.HandleNextDocument(builder);  // the first document; an empty text is null
    return builder.take();
  } catch (const YamlRefused& error) {
    return make_error(ErrorCode::InvalidArgument, fmt::format("YAML refused: {}", error.what()));
  } catch (const YAML::Exception& error) {
    return make_error(ErrorCode::InvalidArgument, fmt::format("invalid YAML: {}", error.what()));
  }
}

std::string sha256_hex(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  // Fetched once: EVP_sha256() makes OpenSSL 3 look the algorithm up again on every digest,
  // which cost more than hashing an API key (the gateway hashes one per request).
  static EVP_MD* const kSha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  // One context per thread, reused: EVP_Digest() allocates and frees one per call.
  thread_local std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> context(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  const EVP_MD* md = kSha256 ? kSha256 : EVP_sha256();
  if (!context || !EVP_DigestInit_ex(context.get(), md, nullptr) ||
      !EVP_DigestUpdate(context.get(), data.data(), data.size()) ||
      !EVP_DigestFinal_ex(context.get(), digest, &length)) {
    EVP_Digest(data.data(), data.size(), digest, &length, md, nullptr);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(length * 2);
  for (unsigned int i = 0; i < length; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 15]);
  }
  return hex;
}

}  // namespace nebula
