#include "agent/model_cache.h"

#include <openssl/evp.h>

#include <fcntl.h>
#include <fnmatch.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/ids.h"
#include "common/json.h"
#include "common/run_blocking.h"
#include "http/http.h"

namespace nebula::agent {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// SHA-256.

Sha256::Sha256() : context_(EVP_MD_CTX_new()) {
  EVP_DigestInit_ex(context_, EVP_sha256(), nullptr);
}

Sha256::~Sha256() {
  EVP_MD_CTX_free(context_);
}

void Sha256::reset() {
  EVP_DigestInit_ex(context_, EVP_sha256(), nullptr);
  length_ = 0;
}

void Sha256::update(std::string_view data) {
  length_ += data.size();
  EVP_DigestUpdate(context_, data.data(), data.size());
}

std::string Sha256::hex_digest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_DigestFinal_ex(context_, digest, &size);
  std::string hex;
  for (unsigned int i = 0; i < size; ++i) hex += fmt::format("{:02x}", digest[i]);
  return hex;
}

std::string Sha256::hex(std::string_view data) {
  return sha256_hex(data);
}

// ---------------------------------------------------------------------------------------------
// References.

namespace {
bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > 96 || name.front() == '.' || name.find("..") != std::string_view::npos)
    return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == '.';
  });
}

// A relative path that stays inside the directory it is joined to.
bool safe_relative_path(std::string_view path) {
  if (path.empty() || path.front() == '/' || path.find('\\') != std::string_view::npos ||
      path.find('\0') != std::string_view::npos) {
    return false;
  }
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    std::string_view segment =
        path.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (segment.empty() || segment == "." || segment == "..") return false;
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return true;
}

bool starts_with(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

std::string absolute_path(const fs::path& path) {
  std::error_code ec;
  fs::path absolute = fs::absolute(path, ec);
  return (ec ? path : absolute).lexically_normal().string();
}
}  // namespace

Result<ModelRef> ModelRef::parse(const std::string& reference) {
  if (reference.empty()) return make_error(ErrorCode::InvalidArgument, "the model reference is empty");
  std::string_view text = reference;
  bool hub = false;
  for (std::string_view prefix :
       {"hf://", "https://huggingface.co/", "http://huggingface.co/", "huggingface.co/", "https://hf.co/", "hf.co/"}) {
    if (starts_with(text, prefix)) {
      text.remove_prefix(prefix.size());
      hub = true;
      break;
    }
  }
  ModelRef ref;
  if (!hub) {
    std::string path = reference;
    if (starts_with(path, "~/")) {
      const char* home = std::getenv("HOME");
      if (home) path = std::string(home) + path.substr(1);
    }
    bool explicit_local =
        starts_with(path, "/") || starts_with(path, "./") || starts_with(path, "../") || path == "." || path == "..";
    std::error_code ec;
    bool exists = fs::exists(path, ec);
    if (exists) {
      ref.local_path = absolute_path(path);
      return ref;
    }
    if (explicit_local) return make_error(ErrorCode::NotFound, fmt::format("model path {} does not exist", path));
  }
  auto bad = [&] {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("model '{}' is neither an existing local path nor a Hugging Face reference "
                                  "ORG/NAME[@REVISION][/FILE]",
                                  reference));
  };
  size_t first_slash = text.find('/');
  if (first_slash == std::string_view::npos) return bad();
  std::string_view org = text.substr(0, first_slash);
  std::string_view rest = text.substr(first_slash + 1);
  size_t second_slash = rest.find('/');
  std::string_view name_revision = rest.substr(0, second_slash);
  std::string_view file = second_slash == std::string_view::npos ? "" : rest.substr(second_slash + 1);
  size_t at = name_revision.find('@');
  std::string_view name = name_revision.substr(0, at);
  std::string_view revision = at == std::string_view::npos ? "main" : name_revision.substr(at + 1);
  if (!valid_name(org) || !valid_name(name) || !valid_name(revision)) return bad();
  if (second_slash != std::string_view::npos && !safe_relative_path(file)) return bad();
  ref.repo_id = fmt::format("{}/{}", org, name);
  ref.revision = std::string(revision);
  ref.file = std::string(file);
  return ref;
}

std::string ModelRef::to_string() const {
  if (is_local()) return local_path;
  return fmt::format("{}@{}{}{}", repo_id, revision, file.empty() ? "" : "/", file);
}

// ---------------------------------------------------------------------------------------------
// HTTP: GETs on a private io_context, with the response headers before the body and redirects.

namespace {
std::string url_encode(std::string_view text, bool keep_slash) {
  std::string out;
  for (unsigned char c : text) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
        c == '.' || c == '~' || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

std::string origin_of(const std::string& url) {
  auto parsed = http::Url::parse(url);
  return parsed ? parsed->origin() : "";
}

bool is_redirect(int status) {
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

std::string resolve_location(const std::string& current, const std::string& location) {
  if (starts_with(location, "http://") || starts_with(location, "https://")) return location;
  if (starts_with(location, "//")) return (starts_with(current, "https://") ? "https:" : "http:") + location;
  auto parsed = http::Url::parse(current);
  if (!parsed) return location;
  if (starts_with(location, "/")) return parsed->origin() + location;
  std::string base = parsed->target.substr(0, parsed->target.find('?'));
  return parsed->origin() + base.substr(0, base.rfind('/') + 1) + location;
}

http::Headers bearer(const std::string& token) {
  http::Headers headers;
  if (!token.empty()) headers.push_back({"Authorization", "Bearer " + token});
  return headers;
}

class Fetcher {
 public:
  using OnResponse = std::function<bool(int status, const http::Headers& headers)>;
  using OnData = std::function<bool(std::string_view piece)>;

  Fetcher(std::string auth_origin, std::string token, std::chrono::milliseconds idle_timeout, std::string ca_file)
      : auth_origin_(std::move(auth_origin)), token_(std::move(token)), idle_timeout_(idle_timeout) {
    http::ClientOptions options;
    options.ca_file = std::move(ca_file);
    options.body_limit = std::numeric_limits<size_t>::max();  // model files are many GB
    options.max_idle_per_host = 2;
    io_ = std::make_unique<asio::io_context>();
    client_ = std::make_unique<http::Client>(*io_, options);
  }
  ~Fetcher() {
    client_.reset();
    io_.reset();
  }

  // GETs url, following redirects (the token goes only to the hub's own origin). on_response
  // sees the final status and headers and says whether to read the body; on_data gets its pieces
  // and may stop. Returns the final status, or the transport error.
  Result<int> get(const std::string& url, const http::Headers& extra, const OnResponse& on_response,
                  const OnData& on_data) {
    std::string current = url;
    for (int hop = 0; hop <= 5; ++hop) {
      http::Headers headers = origin_of(current) == auth_origin_ ? bearer(token_) : http::Headers{};
      headers.insert(headers.end(), extra.begin(), extra.end());
      std::string location;
      auto status = run_blocking(*io_, hop_once(current, headers, location, on_response, on_data));
      if (!status) return status.error();
      if (location.empty()) return status;
      current = resolve_location(current, location);
    }
    return make_error(ErrorCode::Unavailable, fmt::format("too many redirects from {}", url));
  }

  // GETs a small document whole.
  Result<http::Response> get_all(const std::string& url, size_t limit) {
    http::Response response;
    bool too_large = false;
    auto status = get(
        url, {},
        [&](int code, const http::Headers& headers) {
          response.status = code;
          response.headers = headers;
          return true;
        },
        [&](std::string_view piece) {
          response.body.append(piece);
          too_large = response.body.size() > limit;
          return !too_large;
        });
    if (!status) return status.error();
    if (too_large) return make_error(ErrorCode::TooLarge, fmt::format("{} answered more than {} bytes", url, limit));
    return response;
  }

 private:
  awaitable<Result<int>> hop_once(const std::string& url, const http::Headers& headers, std::string& location,
                                  const OnResponse& on_response, const OnData& on_data) {
    auto opened = co_await client_->open(std::string("GET"), url, std::string(), headers, idle_timeout_);
    if (!opened) co_return opened.error();
    auto& stream = *opened.value();
    int status = stream.status;
    if (is_redirect(status) && !stream.header("location").empty()) {
      location = stream.header("location");
      stream.cancel();
      co_return status;
    }
    if (!on_response(status, stream.headers)) {
      stream.cancel();
      co_return status;
    }
    while (true) {
      auto piece = co_await stream.read(idle_timeout_);
      if (!piece) co_return piece.error();
      if (piece->empty()) break;
      if (!on_data(*piece)) {
        stream.cancel();
        break;
      }
    }
    co_return status;
  }

  std::string auth_origin_;
  std::string token_;
  std::chrono::milliseconds idle_timeout_;
  std::unique_ptr<asio::io_context> io_;
  std::unique_ptr<http::Client> client_;
};

// The hub's message from an error response: HF answers {"error": "..."}.
std::string hub_message(const http::Response& response) {
  auto body = parse_json(response.body);
  if (body && body->is_object() && body->contains("error") && (*body)["error"].is_string()) {
    return (*body)["error"].get<std::string>();
  }
  return response.body.substr(0, 200);
}

Error status_error(int status, const std::string& what, const std::string& message) {
  std::string detail = message.empty() ? "" : ": " + message;
  switch (status) {
    case 401:
      return make_error(
          ErrorCode::NotFound,
          fmt::format("{}: 401, the repository does not exist or is private (set a token){}", what, detail));
    case 403:
      return make_error(ErrorCode::PermissionDenied,
                        fmt::format("{}: 403, access denied (a gated model needs its terms accepted on the hub and "
                                    "a token with access){}",
                                    what, detail));
    case 404: return make_error(ErrorCode::NotFound, fmt::format("{}: 404, not found{}", what, detail));
    default: return make_error(ErrorCode::Unavailable, fmt::format("{}: HTTP {}{}", what, status, detail));
  }
}

bool retryable_status(int status) {
  return status == 408 || status == 429 || status >= 500;
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool cancelled(const FetchOptions& options) {
  return options.cancel && options.cancel->load();
}

Error cancelled_error(const ModelRef& ref) {
  return make_error(ErrorCode::Unavailable, fmt::format("download of {} was cancelled", ref.to_string()));
}

// Sleeps, waking early when the fetch is cancelled.
void backoff(std::chrono::milliseconds delay, const FetchOptions& options) {
  auto until = std::chrono::steady_clock::now() + delay;
  while (!cancelled(options) && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::min<std::chrono::milliseconds>(
        std::chrono::milliseconds(50), std::chrono::duration_cast<std::chrono::milliseconds>(
                                           until - std::chrono::steady_clock::now() + std::chrono::milliseconds(1))));
  }
}

struct RemoteFile {
  std::string name;
  int64_t size = -1;    // -1 when the listing does not say
  std::string sha256;   // lowercase hex; "" when the listing does not say (files outside LFS)
  std::string version;  // the blob id (or sha256): changes when the file does
};

Result<std::vector<RemoteFile>> parse_listing(const std::string& body, const std::string& what) {
  auto document = parse_json(body);
  if (!document) return make_error(ErrorCode::Unavailable, what + ": the listing is not JSON");
  if (!document->is_object() || !document->contains("siblings") || !(*document)["siblings"].is_array()) {
    return make_error(ErrorCode::Unavailable, what + ": the listing has no siblings array");
  }
  std::vector<RemoteFile> files;
  const json& siblings = (*document)["siblings"];
  for (const auto& sibling : siblings) {
    if (!sibling.is_object() || !sibling.contains("rfilename") || !sibling["rfilename"].is_string()) continue;
    RemoteFile file;
    file.name = sibling["rfilename"].get<std::string>();
    if (sibling.contains("size") && sibling["size"].is_number_integer()) file.size = sibling["size"].get<int64_t>();
    if (sibling.contains("blobId") && sibling["blobId"].is_string())
      file.version = sibling["blobId"].get<std::string>();
    if (sibling.contains("lfs") && sibling["lfs"].is_object()) {
      const json& lfs = sibling["lfs"];
      if (lfs.contains("size") && lfs["size"].is_number_integer()) file.size = lfs["size"].get<int64_t>();
      if (lfs.contains("sha256") && lfs["sha256"].is_string()) {
        file.sha256 = lfs["sha256"].get<std::string>();
        std::transform(file.sha256.begin(), file.sha256.end(), file.sha256.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        if (file.version.empty()) file.version = file.sha256;
      }
    }
    files.push_back(std::move(file));
  }
  return files;
}

bool matches(const std::string& name, const std::string& pattern) {
  return fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
}

Result<std::vector<RemoteFile>> select_files(const std::vector<RemoteFile>& listing, const ModelRef& ref,
                                             const std::vector<std::string>& include) {
  std::vector<RemoteFile> selected;
  if (!ref.file.empty()) {
    for (const auto& file : listing) {
      if (file.name == ref.file) selected.push_back(file);
    }
    if (selected.empty()) {
      return make_error(ErrorCode::NotFound, fmt::format("{}@{} has no file {}", ref.repo_id, ref.revision, ref.file));
    }
    return selected;
  }
  std::vector<std::string> patterns = include;
  if (patterns.empty()) {
    patterns = {"*.json", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.py", "*.jinja"};
    auto any = [&](const char* pattern) {
      return std::any_of(listing.begin(), listing.end(),
                         [&](const RemoteFile& file) { return matches(file.name, pattern); });
    };
    if (any("*.safetensors")) {
      patterns.push_back("*.safetensors");
    } else if (any("*.bin")) {
      patterns.push_back("*.bin");
    } else {
      std::vector<std::string> ggufs;
      for (const auto& file : listing) {
        if (matches(file.name, "*.gguf")) ggufs.push_back(file.name);
      }
      if (ggufs.size() > 1) {
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("{} holds {} GGUF files; name one, e.g. {}/{}", ref.repo_id, ggufs.size(),
                                      ref.repo_id, ggufs.front()));
      }
      if (ggufs.size() == 1) patterns.push_back(ggufs.front());
    }
  }
  for (const auto& file : listing) {
    if (std::any_of(patterns.begin(), patterns.end(), [&](const std::string& p) { return matches(file.name, p); })) {
      selected.push_back(file);
    }
  }
  if (selected.empty()) {
    return make_error(ErrorCode::NotFound, fmt::format("{}@{} has no files to download (of {} listed)", ref.repo_id,
                                                       ref.revision, listing.size()));
  }
  return selected;
}

// Reports progress at most every 200 ms, plus on demand.
class Progress {
 public:
  explicit Progress(const FetchOptions& options) : callback_(options.on_progress) {}
  void start_file(const std::string& name, int64_t done_before) {
    state_.file = name;
    done_before_ = done_before;
  }
  void set_file_bytes(int64_t bytes) { state_.done_bytes = done_before_ + bytes; }
  void add_total(int64_t bytes) { state_.total_bytes += bytes; }
  int64_t done() const { return state_.done_bytes; }
  void report(bool force) {
    if (!callback_) return;
    auto now = std::chrono::steady_clock::now();
    if (!force && now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    callback_(state_);
  }

 private:
  const std::function<void(const DownloadProgress&)>& callback_;
  DownloadProgress state_;
  int64_t done_before_ = 0;
  std::chrono::steady_clock::time_point last_{};
};

int64_t file_size_or(const fs::path& path, int64_t fallback) {
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  return ec ? fallback : static_cast<int64_t>(size);
}

// Hashes the first `length` bytes of a file into a fresh hasher.
Status hash_file(const fs::path& path, int64_t length, Sha256& hasher) {
  hasher.reset();
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(ErrorCode::Internal, fmt::format("cannot read {}", path.string()));
  std::string buffer(1 << 20, '\0');
  while (length > 0) {
    auto want = static_cast<std::streamsize>(std::min<int64_t>(length, static_cast<int64_t>(buffer.size())));
    in.read(buffer.data(), want);
    if (in.gcount() != want) return make_error(ErrorCode::Internal, fmt::format("cannot read {}", path.string()));
    hasher.update(std::string_view(buffer.data(), static_cast<size_t>(want)));
    length -= want;
  }
  return {};
}

Status sync_file(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error(ErrorCode::Internal, fmt::format("cannot open {}: {}", path.string(), strerror(errno)));
  int result = ::fsync(fd);
  ::close(fd);
  if (result != 0)
    return make_error(ErrorCode::Internal, fmt::format("cannot sync {}: {}", path.string(), strerror(errno)));
  return {};
}

// Parses "bytes START-END/TOTAL"; TOTAL may be "*".
bool parse_content_range(const std::string& value, int64_t& start, int64_t& total) {
  long long first = 0, last = 0, whole = -1;
  if (std::sscanf(value.c_str(), "bytes %lld-%lld/%lld", &first, &last, &whole) >= 2) {
    start = first;
    total = whole;
    return true;
  }
  return false;
}

int64_t parse_length(const std::string& value) {
  if (value.empty()) return -1;
  char* end = nullptr;
  long long length = std::strtoll(value.c_str(), &end, 10);
  return (end && *end == '\0' && length >= 0) ? length : -1;
}

enum class Outcome { Done, Retry, Fail };
struct Attempt {
  Outcome outcome = Outcome::Done;
  Error error;
};

// Downloads one file into `final_path` through `final_path.part`, resuming what is there.
class FileDownload {
 public:
  FileDownload(Fetcher& fetcher, const ModelRef& ref, const RemoteFile& file, fs::path final_path, std::string url,
               const ModelCacheOptions& cache_options, const FetchOptions& options, Progress& progress)
      : fetcher_(fetcher),
        ref_(ref),
        file_(file),
        final_path_(std::move(final_path)),
        part_path_(final_path_.string() + ".part"),
        url_(std::move(url)),
        cache_options_(cache_options),
        options_(options),
        progress_(progress),
        expected_size_(file.size),
        hashing_(!file.sha256.empty()) {}

  Status run() {
    std::error_code ec;
    fs::create_directories(final_path_.parent_path(), ec);
    if (ec)
      return make_error(ErrorCode::Internal,
                        fmt::format("cannot create {}: {}", final_path_.parent_path().string(), ec.message()));
    // A partial file left by an earlier fetch may hold an older version of the file. With a
    // sha256 to check, resuming it is safe; without one (small files kept in git), start over.
    if (!hashing_) discard_part();
    auto delay = cache_options_.retry_delay;
    for (int attempt = 1;; ++attempt) {
      if (cancelled(options_)) return cancelled_error(ref_);
      Attempt result = attempt_once();
      if (result.outcome == Outcome::Done) break;
      if (result.outcome == Outcome::Fail || attempt >= cache_options_.attempts) return result.error;
      spdlog::warn("downloading {}: {} (attempt {} of {}, retrying in {} ms)", describe(), result.error.message,
                   attempt, cache_options_.attempts, delay.count());
      backoff(delay, options_);
      delay *= 2;
    }
    return finish();
  }

 private:
  std::string describe() const { return fmt::format("{}@{}/{}", ref_.repo_id, ref_.revision, file_.name); }

  Attempt retry(std::string message) {
    return {Outcome::Retry, make_error(ErrorCode::Unavailable, describe() + ": " + message)};
  }
  Attempt fail(Error error) { return {Outcome::Fail, std::move(error)}; }
  Attempt fail(ErrorCode code, std::string message) {
    return {Outcome::Fail, make_error(code, describe() + ": " + message)};
  }

  void discard_part() {
    std::error_code ec;
    fs::remove(part_path_, ec);
    hasher_.reset();
  }

  Attempt attempt_once() {
    int64_t offset = file_size_or(part_path_, 0);
    if (expected_size_ >= 0 && offset > expected_size_) {
      discard_part();
      offset = 0;
    }
    if (expected_size_ >= 0 && offset == expected_size_) {
      if (offset == 0) std::ofstream create(part_path_, std::ios::binary | std::ios::app);
      return {};
    }
    if (hashing_ && offset > 0 && hasher_.bytes() != static_cast<uint64_t>(offset)) {
      auto hashed = hash_file(part_path_, offset, hasher_);
      if (!hashed.ok()) return fail(hashed.error());
    }
    http::Headers range;
    if (offset > 0) range.push_back({"Range", fmt::format("bytes={}-", offset)});

    std::FILE* out = nullptr;
    std::string write_error;
    bool wrong_range = false;
    bool too_long = false;
    bool stopped = false;
    int64_t received = 0;
    auto on_response = [&](int status, const http::Headers& headers) {
      if (status == 200) {
        offset = 0;
        hasher_.reset();
        out = std::fopen(part_path_.c_str(), "wb");
        int64_t length = parse_length(http::find_header(headers, "content-length"));
        if (expected_size_ < 0 && length >= 0) learn_size(length);
      } else if (status == 206) {
        int64_t start = -1, total = -1;
        if (!parse_content_range(http::find_header(headers, "content-range"), start, total) || start != offset) {
          wrong_range = true;
          return false;
        }
        out = std::fopen(part_path_.c_str(), "ab");
        if (expected_size_ < 0 && total >= 0) learn_size(total);
      } else {
        return false;
      }
      if (!out) {
        write_error = fmt::format("cannot write {}: {}", part_path_.string(), strerror(errno));
        return false;
      }
      std::setvbuf(out, nullptr, _IOFBF, 1 << 20);
      progress_.set_file_bytes(offset);
      return true;
    };
    auto on_data = [&](std::string_view piece) {
      if (cancelled(options_)) {
        stopped = true;
        return false;
      }
      if (expected_size_ >= 0 && offset + received + static_cast<int64_t>(piece.size()) > expected_size_) {
        too_long = true;
        return false;
      }
      if (std::fwrite(piece.data(), 1, piece.size(), out) != piece.size()) {
        write_error = fmt::format("cannot write {}: {}", part_path_.string(), strerror(errno));
        return false;
      }
      if (hashing_) hasher_.update(piece);
      received += static_cast<int64_t>(piece.size());
      progress_.set_file_bytes(offset + received);
      progress_.report(false);
      return true;
    };
    auto status = fetcher_.get(url_, range, on_response, on_data);
    if (out && std::fclose(out) != 0 && write_error.empty()) {
      write_error = fmt::format("cannot write {}: {}", part_path_.string(), strerror(errno));
    }
    if (!write_error.empty()) return fail(ErrorCode::Internal, write_error);
    if (stopped) return fail(cancelled_error(ref_));
    if (too_long) {
      discard_part();
      return fail(ErrorCode::Internal, fmt::format("the hub sent more than the {} bytes it listed", expected_size_));
    }
    if (!status) {
      if (status.error().code == ErrorCode::InvalidArgument) return fail(status.error());
      return retry(status.error().message);
    }
    if (wrong_range) {
      discard_part();
      return retry("the hub answered a different range than asked; starting over");
    }
    if (*status == 200 || *status == 206) {
      int64_t have = offset + received;
      if (expected_size_ >= 0 && have < expected_size_) {
        return retry(fmt::format("the download ended at {} of {} bytes", have, expected_size_));
      }
      return {};
    }
    if (*status == 416) {
      discard_part();
      return retry("the hub refused to resume (416); starting over");
    }
    Error error = status_error(*status, describe(), "");
    if (retryable_status(*status)) return retry(error.message);
    return fail(error);
  }

  void learn_size(int64_t size) {
    expected_size_ = size;
    progress_.add_total(size);
  }

  Status finish() {
    int64_t size = file_size_or(part_path_, -1);
    if (expected_size_ >= 0 && size != expected_size_) {
      discard_part();
      return make_error(ErrorCode::Internal, fmt::format("{}: size mismatch, expected {} bytes, got {}; the download "
                                                         "was deleted",
                                                         describe(), expected_size_, size));
    }
    if (hashing_) {
      if (hasher_.bytes() != static_cast<uint64_t>(size)) {
        auto hashed = hash_file(part_path_, size, hasher_);
        if (!hashed.ok()) return hashed;
      }
      std::string digest = hasher_.hex_digest();
      if (digest != file_.sha256) {
        discard_part();
        return make_error(ErrorCode::Internal,
                          fmt::format("{}: sha256 mismatch, expected {}, got {}; the download was deleted", describe(),
                                      file_.sha256, digest));
      }
    }
    auto synced = sync_file(part_path_);
    if (!synced.ok()) return synced;
    std::error_code ec;
    fs::rename(part_path_, final_path_, ec);
    if (ec) {
      return make_error(ErrorCode::Internal, fmt::format("cannot rename {} to {}: {}", part_path_.string(),
                                                         final_path_.string(), ec.message()));
    }
    return {};
  }

  Fetcher& fetcher_;
  const ModelRef& ref_;
  const RemoteFile& file_;
  fs::path final_path_;
  fs::path part_path_;
  std::string url_;
  const ModelCacheOptions& cache_options_;
  const FetchOptions& options_;
  Progress& progress_;
  int64_t expected_size_;
  bool hashing_;
  Sha256 hasher_;
};

// "1.5 GiB", for logs.
std::string human_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  size_t unit = 0;
  while (value >= 1024 && unit + 1 < std::size(units)) {
    value /= 1024;
    ++unit;
  }
  return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", value, units[unit]);
}

int64_t directory_bytes(const fs::path& directory) {
  int64_t total = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(directory, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code size_ec;
    if (it->is_regular_file(size_ec)) {
      auto size = it->file_size(size_ec);
      if (!size_ec) total += static_cast<int64_t>(size);
    }
  }
  return total;
}

constexpr const char* kIndexFile = ".nebula-cache.json";
constexpr const char* kHubFolder = "hf";
}  // namespace

// ---------------------------------------------------------------------------------------------

struct ModelCache::Impl {
  struct Record {
    int64_t last_used = 0;
    std::string reference;
    bool complete = false;
    std::map<std::string, std::string> versions;  // repository file -> version it was downloaded at
  };
  struct Scanned {
    std::string key;  // "hf/ORG/NAME/REVISION"
    fs::path path;
    int64_t bytes = 0;
    int64_t last_used = 0;
  };

  fs::path root;
  mutable std::mutex mutex;  // guards everything below
  std::map<std::string, Record> records;
  std::map<std::string, int> active;  // keys being fetched: never evicted
  std::map<std::string, std::shared_ptr<std::mutex>> entry_locks;
  int64_t last_stamp = 0;

  // Strictly increasing, so two uses within a millisecond still order.
  int64_t stamp() {
    last_stamp = std::max(now_ms(), last_stamp + 1);
    return last_stamp;
  }

  void load() {
    std::ifstream in(root / kIndexFile);
    if (!in) return;
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto document = parse_json(text);
    if (!document || !document->is_object() || !document->contains("models") || !(*document)["models"].is_object()) {
      spdlog::warn("model cache: ignoring unreadable {}", (root / kIndexFile).string());
      return;
    }
    const json& models = (*document)["models"];
    for (const auto& [key, value] : models.items()) {
      if (!value.is_object()) continue;
      Record record;
      record.last_used = value.value("last_used", int64_t{0});
      record.reference = value.value("reference", std::string());
      record.complete = value.value("complete", false);
      if (value.contains("files") && value["files"].is_object()) {
        for (const auto& [name, version] : value["files"].items()) {
          if (version.is_string()) record.versions[name] = version.get<std::string>();
        }
      }
      last_stamp = std::max(last_stamp, record.last_used);
      records[key] = std::move(record);
    }
  }

  // Writes the index atomically (a temporary file renamed over it). Caller holds mutex.
  void save() const {
    json models = json::object();
    for (const auto& [key, record] : records) {
      json files = json::object();
      for (const auto& [name, version] : record.versions) files[name] = version;
      models[key] = {{"last_used", record.last_used},
                     {"reference", record.reference},
                     {"complete", record.complete},
                     {"files", files}};
    }
    json document = {{"models", models}};
    fs::path temporary = root / (std::string(kIndexFile) + ".tmp");
    {
      std::ofstream out(temporary, std::ios::trunc);
      out << document.dump(1);
      if (!out) {
        spdlog::warn("model cache: cannot write {}", temporary.string());
        return;
      }
    }
    std::error_code ec;
    fs::rename(temporary, root / kIndexFile, ec);
    if (ec) spdlog::warn("model cache: cannot write {}: {}", (root / kIndexFile).string(), ec.message());
  }

  // Every model directory on disk, DIR/hf/ORG/NAME/REVISION. Caller holds mutex.
  std::vector<Scanned> scan() const {
    std::vector<Scanned> found;
    std::error_code ec;
    auto subdirectories = [](const fs::path& directory) {
      std::vector<fs::path> out;
      std::error_code error;
      for (auto it = fs::directory_iterator(directory, error); !error && it != fs::directory_iterator();
           it.increment(error)) {
        std::error_code type_error;
        if (it->is_directory(type_error) && !it->is_symlink(type_error)) out.push_back(it->path());
      }
      return out;
    };
    for (const auto& org : subdirectories(root / kHubFolder)) {
      for (const auto& name : subdirectories(org)) {
        for (const auto& revision : subdirectories(name)) {
          Scanned entry;
          entry.path = revision;
          entry.key = fs::path(revision).lexically_relative(root).generic_string();
          entry.bytes = directory_bytes(revision);
          auto record = records.find(entry.key);
          if (record != records.end()) {
            entry.last_used = record->second.last_used;
          } else {
            auto modified = fs::last_write_time(revision, ec);
            entry.last_used = ec ? 0
                                 : std::chrono::duration_cast<std::chrono::milliseconds>(
                                       std::chrono::file_clock::to_sys(modified).time_since_epoch())
                                       .count();
          }
          found.push_back(std::move(entry));
        }
      }
    }
    return found;
  }

  // The key of the model directory holding `path` ("hf/ORG/NAME/REVISION"), or "".
  std::string key_of(const std::string& path) const {
    fs::path relative = fs::path(absolute_path(path)).lexically_relative(root);
    std::vector<std::string> segments;
    for (const auto& segment : relative) {
      if (segments.size() == 4) break;
      segments.push_back(segment.string());
    }
    if (segments.size() < 4 || segments[0] != kHubFolder) return "";
    return fmt::format("{}/{}/{}/{}", segments[0], segments[1], segments[2], segments[3]);
  }

  int64_t evict_locked(int64_t max_bytes, const std::set<std::string>& pinned, int64_t room_bytes) {
    if (max_bytes <= 0) return 0;
    auto entries = scan();
    int64_t total = 0;
    for (const auto& entry : entries) total += entry.bytes;
    int64_t target = std::max<int64_t>(0, max_bytes - room_bytes);
    if (total <= target) return 0;
    std::set<std::string> pinned_keys;
    for (const auto& path : pinned) {
      std::string key = key_of(path);
      if (!key.empty()) pinned_keys.insert(key);
    }
    std::sort(entries.begin(), entries.end(),
              [](const Scanned& a, const Scanned& b) { return a.last_used < b.last_used; });
    int64_t freed = 0;
    for (const auto& entry : entries) {
      if (total <= target) break;
      if (pinned_keys.count(entry.key) || active.count(entry.key)) continue;
      std::error_code ec;
      fs::remove_all(entry.path, ec);
      if (ec) {
        spdlog::warn("model cache: cannot delete {}: {}", entry.path.string(), ec.message());
        continue;
      }
      spdlog::info("model cache: deleted {} ({}), least recently used, to stay under {}", entry.path.string(),
                   human_bytes(entry.bytes), human_bytes(max_bytes));
      total -= entry.bytes;
      freed += entry.bytes;
      records.erase(entry.key);
      // Drop the NAME and ORG folders when they become empty.
      fs::remove(entry.path.parent_path(), ec);
      fs::remove(entry.path.parent_path().parent_path(), ec);
    }
    if (total > target) {
      spdlog::warn("model cache: {} in use or being fetched, over the {} wanted", human_bytes(total),
                   human_bytes(target));
    }
    save();
    return freed;
  }
};

ModelCache::ModelCache(ModelCacheOptions options) : options_(std::move(options)), impl_(std::make_unique<Impl>()) {
  if (options_.directory.empty()) options_.directory = ".";
  options_.directory = absolute_path(options_.directory);
  while (options_.directory.size() > 1 && options_.directory.back() == '/') options_.directory.pop_back();
  while (!options_.endpoint.empty() && options_.endpoint.back() == '/') options_.endpoint.pop_back();
  if (options_.attempts < 1) options_.attempts = 1;
  impl_->root = options_.directory;
  std::error_code ec;
  fs::create_directories(impl_->root, ec);
  if (ec) spdlog::warn("model cache: cannot create {}: {}", options_.directory, ec.message());
  impl_->load();
}

ModelCache::~ModelCache() = default;

Result<std::string> ModelCache::fetch(const std::string& reference, const FetchOptions& options) {
  auto parsed = ModelRef::parse(reference);
  if (!parsed) return parsed.error();
  const ModelRef& ref = *parsed;
  if (ref.is_local()) return ref.local_path;

  std::string key = fmt::format("{}/{}/{}", kHubFolder, ref.repo_id, ref.revision);
  fs::path directory = impl_->root / key;
  std::string result_path = ref.file.empty() ? directory.string() : (directory / ref.file).string();

  // One fetch per repository revision at a time; an active one is never evicted.
  std::shared_ptr<std::mutex> entry_lock;
  {
    std::lock_guard lock(impl_->mutex);
    auto& slot = impl_->entry_locks[key];
    if (!slot) slot = std::make_shared<std::mutex>();
    entry_lock = slot;
    ++impl_->active[key];
  }
  struct Release {
    Impl& impl;
    const std::string& key;
    ~Release() {
      std::lock_guard lock(impl.mutex);
      if (--impl.active[key] == 0) impl.active.erase(key);
    }
  } release{*impl_, key};
  std::lock_guard entry_guard(*entry_lock);

  auto mark_used = [&](bool complete, const std::map<std::string, std::string>& versions) {
    std::lock_guard lock(impl_->mutex);
    auto& record = impl_->records[key];
    record.last_used = impl_->stamp();
    record.reference = fmt::format("{}@{}", ref.repo_id, ref.revision);
    if (complete) record.complete = true;
    for (const auto& [name, version] : versions) record.versions[name] = version;
    impl_->save();
  };

  Fetcher fetcher(origin_of(options_.endpoint), options_.token, options_.idle_timeout, options_.ca_file);
  std::string what = fmt::format("{}@{}", ref.repo_id, ref.revision);
  std::string listing_url = fmt::format("{}/api/models/{}/revision/{}?blobs=true", options_.endpoint, ref.repo_id,
                                        url_encode(ref.revision, false));
  Result<std::vector<RemoteFile>> listing = make_error(ErrorCode::Internal, "not listed");
  auto delay = options_.retry_delay;
  for (int attempt = 1;; ++attempt) {
    if (cancelled(options)) return cancelled_error(ref);
    auto response = fetcher.get_all(listing_url, 64 << 20);
    bool retry = false;
    if (!response) {
      listing = response.error();
      retry = response.error().code != ErrorCode::InvalidArgument;
    } else if (response->status != 200) {
      listing = status_error(response->status, "listing " + what, hub_message(*response));
      retry = retryable_status(response->status);
    } else {
      listing = parse_listing(response->body, "listing " + what);
    }
    if (listing || !retry || attempt >= options_.attempts) break;
    spdlog::warn("{} (attempt {} of {}, retrying in {} ms)", listing.error().message, attempt, options_.attempts,
                 delay.count());
    backoff(delay, options);
    delay *= 2;
  }
  if (!listing) {
    // Offline: a model fetched completely before serves as it is, as huggingface_hub does.
    ErrorCode code = listing.error().code;
    if (code != ErrorCode::NotFound && code != ErrorCode::PermissionDenied) {
      bool usable = false;
      {
        std::lock_guard lock(impl_->mutex);
        auto record = impl_->records.find(key);
        std::error_code ec;
        usable = ref.file.empty()
                     ? record != impl_->records.end() && record->second.complete && fs::is_directory(directory, ec)
                     : fs::is_regular_file(result_path, ec);
      }
      if (usable) {
        spdlog::warn("model cache: using the cached {} as it is: {}", ref.to_string(), listing.error().message);
        mark_used(false, {});
        return result_path;
      }
    }
    return listing.error();
  }

  auto files = select_files(*listing, ref, options.include);
  if (!files) return files.error();
  for (const auto& file : *files) {
    if (!safe_relative_path(file.name)) {
      return make_error(ErrorCode::Unavailable, fmt::format("{} lists an unsafe file name '{}'", what, file.name));
    }
  }

  // What is already here: a file counts when it exists with the listed size and version.
  std::map<std::string, std::string> recorded;
  {
    std::lock_guard lock(impl_->mutex);
    auto record = impl_->records.find(key);
    if (record != impl_->records.end()) recorded = record->second.versions;
  }
  Progress progress(options);
  std::vector<const RemoteFile*> missing;
  int64_t needed = 0;
  int64_t present = 0;
  for (const auto& file : *files) {
    fs::path path = directory / file.name;
    if (file.size >= 0) progress.add_total(file.size);
    int64_t size = file_size_or(path, -1);
    auto version = recorded.find(file.name);
    bool same_version = file.version.empty() || version == recorded.end() || version->second == file.version;
    if (size >= 0 && (file.size < 0 || size == file.size) && same_version) {
      present += size;
      continue;
    }
    if (size >= 0) {
      std::error_code ec;
      fs::remove(path, ec);  // changed upstream since it was downloaded
    }
    missing.push_back(&file);
    if (file.size >= 0) needed += file.size - file_size_or(path.string() + ".part", 0);
  }
  if (!missing.empty()) {
    std::set<std::string> pinned = options.pinned;
    pinned.insert(directory.string());
    {
      std::lock_guard lock(impl_->mutex);
      impl_->evict_locked(options_.max_bytes, pinned, std::max<int64_t>(0, needed));
    }
    spdlog::info("model cache: downloading {} file(s) of {} ({}) from {}", missing.size(), ref.to_string(),
                 human_bytes(needed), options_.endpoint);
  }
  progress.start_file(missing.empty() ? "" : missing.front()->name, present);
  progress.set_file_bytes(0);
  progress.report(true);

  std::map<std::string, std::string> versions;
  for (const auto& file : *files) {
    if (!file.version.empty()) versions[file.name] = file.version;
  }
  for (const RemoteFile* file : missing) {
    progress.start_file(file->name, progress.done());
    std::string url = fmt::format("{}/{}/resolve/{}/{}", options_.endpoint, ref.repo_id,
                                  url_encode(ref.revision, false), url_encode(file->name, true));
    FileDownload download(fetcher, ref, *file, directory / file->name, url, options_, options, progress);
    auto status = download.run();
    if (!status.ok()) return status.error();
    progress.set_file_bytes(file_size_or(directory / file->name, 0));
  }
  progress.report(true);
  mark_used(ref.file.empty(), versions);
  if (!missing.empty()) {
    std::set<std::string> pinned = options.pinned;
    pinned.insert(directory.string());
    std::lock_guard lock(impl_->mutex);
    impl_->evict_locked(options_.max_bytes, pinned, 0);
  }
  return result_path;
}

void ModelCache::touch(const std::string& path) {
  std::lock_guard lock(impl_->mutex);
  std::string key = impl_->key_of(path);
  if (key.empty()) return;
  std::error_code ec;
  if (!fs::is_directory(impl_->root / key, ec)) return;
  impl_->records[key].last_used = impl_->stamp();
  impl_->save();
}

std::vector<CachedModel> ModelCache::list() const {
  std::lock_guard lock(impl_->mutex);
  std::vector<CachedModel> models;
  for (const auto& entry : impl_->scan()) {
    CachedModel model;
    model.path = entry.path.string();
    model.bytes = entry.bytes;
    model.last_used = entry.last_used;
    auto record = impl_->records.find(entry.key);
    if (record != impl_->records.end()) {
      model.reference = record->second.reference;
      model.complete = record->second.complete;
    } else {
      // hf/ORG/NAME/REVISION
      auto relative = fs::path(entry.key);
      auto it = relative.begin();
      std::string org = (++it)->string();
      std::string name = (++it)->string();
      std::string revision = (++it)->string();
      model.reference = fmt::format("{}/{}@{}", org, name, revision);
    }
    models.push_back(std::move(model));
  }
  std::sort(models.begin(), models.end(),
            [](const CachedModel& a, const CachedModel& b) { return a.last_used > b.last_used; });
  return models;
}

int64_t ModelCache::total_bytes() const {
  std::lock_guard lock(impl_->mutex);
  int64_t total = 0;
  for (const auto& entry : impl_->scan()) total += entry.bytes;
  return total;
}

int64_t ModelCache::evict(const std::set<std::string>& pinned, int64_t room_bytes) {
  std::lock_guard lock(impl_->mutex);
  return impl_->evict_locked(options_.max_bytes, pinned, room_bytes);
}

}  // namespace nebula::agent
