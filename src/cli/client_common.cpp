#include <fmt/format.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <limits>

#include "api/api.h"
#include "common/config.h"
#include "common/run_blocking.h"
#include "http/status.h"

#include "cli/cli.h"

namespace nebula::cli {

void add_client_flags(CLI::App& app, ClientFlags& flags) {
  const char* from_env = std::getenv("NEBULA_SERVER");
  flags.server = from_env && *from_env ? from_env : "http://127.0.0.1:8080";
  app.add_option("--server", flags.server, "Nebula server URL (NEBULA_SERVER)");
  const char* key_from_env = std::getenv("NEBULA_API_KEY");
  if (key_from_env) flags.api_key = key_from_env;
  app.add_option("--api-key", flags.api_key, "API key (NEBULA_API_KEY; default: the local server's admin.key)");
  app.add_option("-o,--output", flags.output, "Output format: table, json or yaml")
      ->check(CLI::IsMember({"table", "json", "yaml"}));
}

std::optional<int> parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& help) {
    std::cout << app.help();
    return 0;
  } catch (const CLI::ParseError& error) {
    std::cerr << "error: " << error.what() << "\n";
    std::cerr << "run '" << app.get_name() << " --help' for usage\n";
    return 2;
  }
  return std::nullopt;
}

int usage_error(const CLI::App& app, const std::string& message) {
  std::cerr << "error: " << message << "\n";
  std::cerr << "run '" << app.get_name() << " --help' for usage\n";
  return 2;
}

CLI::Validator whole_number(int64_t min, int64_t max) {
  return CLI::Validator(
      [min, max](std::string& input) -> std::string {
        std::string_view text = input;
        if (!text.empty() && text.front() == '+') text.remove_prefix(1);
        int64_t value = 0;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        bool digits = !text.empty() && end == text.data() + text.size();
        bool at_most_shown = max < std::numeric_limits<int32_t>::max();
        std::string at_most = at_most_shown ? fmt::format(" (at most {})", max) : "";
        if (ec == std::errc::result_out_of_range && digits) {
          return input.front() == '-' ? fmt::format("'{}' is too small", input)
                                      : fmt::format("'{}' is too large{}", input, at_most);
        }
        if (ec != std::errc() || !digits) return fmt::format("'{}' is not a whole number", input);
        if (value > max) return fmt::format("{} is too large{}", value, at_most);
        if (value < min) {
          if (min == 0) return fmt::format("{} cannot be negative", value);
          return fmt::format("{} is too small (at least {})", value, min);
        }
        return {};
      },
      min == 0 && max >= std::numeric_limits<int32_t>::max() ? "NUMBER >= 0" : fmt::format("{}..{}", min, max));
}

namespace {
CLI::Validator number_at_least(bool zero_allowed) {
  return CLI::Validator(
      [zero_allowed](std::string& input) -> std::string {
        std::string_view text = input;
        if (!text.empty() && text.front() == '+') text.remove_prefix(1);
        double value = 0;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (ec == std::errc::result_out_of_range) return fmt::format("'{}' is too large", input);
        if (ec != std::errc() || end != text.data() + text.size() || !std::isfinite(value)) {
          return fmt::format("'{}' is not a number", input);
        }
        if (value < 0) return fmt::format("{} cannot be negative", input);
        if (value == 0 && !zero_allowed) return fmt::format("{} must be more than 0", input);
        return {};
      },
      zero_allowed ? "NUMBER >= 0" : "NUMBER > 0");
}
}  // namespace

CLI::Validator non_negative_number() {
  return number_at_least(true);
}

CLI::Validator positive_number() {
  return number_at_least(false);
}

CLI::Validator duration_value(int64_t at_least_ms) {
  return CLI::Validator(
      [at_least_ms](std::string& input) -> std::string {
        auto duration = parse_duration(input);
        if (!duration) return duration.error().message;
        if (duration->count() < at_least_ms) {
          return fmt::format("'{}' is too short (at least {} ms)", input, at_least_ms);
        }
        return {};
      },
      "DURATION");
}

CLI::Validator size_value() {
  return CLI::Validator(
      [](std::string& input) -> std::string {
        auto size = parse_size_mb(input);
        return size ? "" : size.error().message;
      },
      "SIZE");
}

CLI::Validator engine_value() {
  return CLI::Validator(
      [](std::string& input) -> std::string {
        const auto& engines = api::known_engines();
        if (std::find(engines.begin(), engines.end(), input) != engines.end()) return {};
        return fmt::format("unknown engine '{}' (one of: {})", input, fmt::join(engines, ", "));
      },
      "ENGINE");
}

CLI::Validator log_level_value() {
  return CLI::Validator(
      [](std::string& input) -> std::string {
        for (const char* level : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
          if (input == level) return {};
        }
        return fmt::format("unknown log level '{}' (trace, debug, info, warn, error or off)", input);
      },
      "LEVEL");
}

Result<std::string> read_input_file(const std::string& path) {
  constexpr size_t kMaxBytes = 1 << 20;
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(ErrorCode::InvalidArgument, "cannot read " + path);
  std::string text(kMaxBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxBytes) {
    return make_error(ErrorCode::InvalidArgument, fmt::format("{}: larger than {} bytes", path, kMaxBytes));
  }
  return text;
}

Status check_name(const std::string& name) {
  return api::validate_name(name);
}

namespace {
// The message of an error answer: OpenAI's {"error": {"message"}}, else the body itself.
std::string error_message(const std::string& body) {
  auto document = parse_json(body);
  if (document && document->is_object() && document->contains("error") && (*document)["error"].is_object()) {
    return (*document)["error"].value("message", body);
  }
  return body;
}

// A server on this machine started with --auth keys left its admin key in its data dir.
std::string local_admin_key(const std::string& server) {
  bool local = server.find("://127.") != std::string::npos || server.find("://localhost") != std::string::npos ||
               server.find("://[::1]") != std::string::npos;
  if (!local) return {};
  const char* data_dir = std::getenv("NEBULA_DATA_DIR");
  std::ifstream in((data_dir && *data_dir ? std::string(data_dir) : default_data_dir()) + "/admin.key");
  std::string key;
  std::getline(in, key);
  return key;
}
}  // namespace

ApiClient::ApiClient(const ClientFlags& flags) : server_(flags.server), api_key_(flags.api_key) {
  while (!server_.empty() && server_.back() == '/') server_.pop_back();
  if (api_key_.empty()) api_key_ = local_admin_key(server_);
}

http::Headers ApiClient::headers() const {
  http::Headers headers;
  if (!api_key_.empty()) headers.push_back({"Authorization", "Bearer " + api_key_});
  return headers;
}

Result<json> ApiClient::call(const std::string& method, const std::string& path, const std::string& body, int* status) {
  auto response = client_.request(method, server_ + path, body, headers(), std::chrono::seconds(30));
  if (!response) {
    return make_error(response.error().code,
                      fmt::format("cannot reach the Nebula server at {}: {}", server_, response.error().message));
  }
  if (status) *status = response->status;
  json document;
  if (!response->body.empty()) {
    auto parsed = parse_json(response->body);
    if (parsed) document = std::move(*parsed);
  }
  if (response->status >= 300) return make_error(http::error_code_of(response->status), error_message(response->body));
  return document;
}

Status ApiClient::stream_to_stdout(const std::string& path) {
  // The status decides where the body goes, so the stream is opened here rather than through
  // BlockingClient::stream, which hands over the body before saying the status.
  asio::io_context io;
  http::Client client(io);
  auto task = [&]() -> awaitable<Status> {
    auto response = co_await client.open("GET", server_ + path, "", headers(), std::chrono::seconds(30));
    if (!response) {
      co_return make_error(response.error().code,
                           fmt::format("cannot reach the Nebula server at {}: {}", server_, response.error().message));
    }
    auto& stream = **response;
    if (stream.status != 200) {
      auto body = co_await stream.read_all(std::chrono::seconds(30));
      co_return make_error(http::error_code_of(stream.status),
                           body ? error_message(*body) : fmt::format("HTTP {}", stream.status));
    }
    while (true) {
      auto piece = co_await stream.read(std::chrono::hours(24));
      if (!piece) co_return piece.error();
      if (piece->empty()) break;
      std::cout << *piece << std::flush;
    }
    co_return Status{};
  };
  return run_blocking(io, task());
}

bool print_as(const std::string& output, const json& value, const std::function<void()>& print_table_fn) {
  if (output == "json") {
    std::cout << value.dump(2) << "\n";
  } else if (output == "yaml") {
    std::cout << json_to_yaml(value);
  } else if (output == "table") {
    print_table_fn();
  } else {
    return false;
  }
  return true;
}

void print_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 3, ' ');
    }
    std::cout << line << "\n";
  }
}

std::string age(int64_t since_ms) {
  if (since_ms <= 0) return "-";
  int64_t now_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  int64_t seconds = std::max<int64_t>(0, (now_ms - since_ms) / 1000);
  if (seconds < 120) return fmt::format("{}s", seconds);
  if (seconds < 7200) return fmt::format("{}m", seconds / 60);
  if (seconds < 172800) return fmt::format("{}h", seconds / 3600);
  return fmt::format("{}d", seconds / 86400);
}

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> items;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) items.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return items;
}

Result<std::vector<std::string>> parse_server_list(const std::string& text) {
  constexpr size_t kMostServers = 16;
  std::vector<std::string> servers;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    std::string entry = text.substr(start, end - start);
    start = end + 1;
    if (entry.empty()) {
      return make_error(ErrorCode::InvalidArgument,
                        "--server: an empty entry in '" + text + "' (URLs separated by single commas)");
    }
    while (entry.size() > 1 && entry.back() == '/') entry.pop_back();
    auto url = http::Url::parse(entry);
    if (!url || url->port == 0 || url->target != "/" || entry.find_first_of(" \t\r\n?#@") != std::string::npos) {
      return make_error(ErrorCode::InvalidArgument,
                        "--server: '" + entry + "' is not an http(s)://HOST[:PORT] URL without a path");
    }
    if (std::find(servers.begin(), servers.end(), entry) != servers.end()) {
      return make_error(ErrorCode::InvalidArgument, "--server: '" + entry + "' is given twice");
    }
    servers.push_back(entry);
    if (servers.size() > kMostServers) {
      return make_error(ErrorCode::InvalidArgument, "--server: more than 16 servers");
    }
  }
  return servers;
}

std::string join_strings(const json& values, const std::string& empty) {
  std::string text;
  for (const auto& value : values) {
    if (value.is_string()) text += (text.empty() ? "" : ",") + value.get<std::string>();
  }
  return text.empty() ? empty : text;
}

int fail(const std::string& message) {
  std::cerr << "error: " << message << "\n";
  return 1;
}

}  // namespace nebula::cli
