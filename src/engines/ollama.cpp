// Ollama: `ollama serve`, configured through its environment (OLLAMA_HOST=host:port, ...). It
// has no /metrics. prepare() pulls the model (unless present), names it after the deployment
// (/api/copy) so clients' model names match, and loads it; sleep unloads it (keep_alive 0) and
// wake loads it again (keep_alive -1: until told otherwise).
#include <fmt/format.h>

#include "common/json.h"
#include "engines/common.h"
#include "engines/drivers.h"
#include "http/http.h"

namespace nebula::engines {
namespace {

using std::chrono::hours;
using std::chrono::minutes;
using std::chrono::seconds;

// Ollama lists "name" as "name:latest" when the tag was left out.
std::string normalized(const std::string& name) {
  return name.find(':') == std::string::npos ? name + ":latest" : name;
}

std::string ollama_name(const LaunchContext& context) {
  return context.served_name.empty() ? context.model : context.served_name;
}

// Whether the "models" list of an /api/tags or /api/ps answer has the model.
Result<bool> lists_model(const std::string& body, const std::string& model) {
  auto parsed = parse_json(body);
  if (!parsed) return parsed.error();
  if (!parsed->is_object() || !parsed->contains("models") || !(*parsed)["models"].is_array()) {
    return Error{ErrorCode::Unavailable, "no models list in " + body.substr(0, 200)};
  }
  std::string wanted = normalized(model);
  for (const json& entry : (*parsed)["models"]) {
    for (const char* field : {"name", "model"}) {
      if (entry.contains(field) && entry[field].is_string() && normalized(entry[field].get<std::string>()) == wanted) {
        return true;
      }
    }
  }
  return false;
}

std::string pull_body(const std::string& model) {
  return json{{"model", model}, {"stream", false}}.dump();
}
std::string copy_body(const std::string& source, const std::string& destination) {
  return json{{"source", source}, {"destination", destination}}.dump();
}
std::string keep_alive_body(const std::string& model, int keep_alive) {
  return json{{"model", model}, {"keep_alive", keep_alive}}.dump();
}

// A non-streamed pull answers {"status":"success"}, or an error status / {"error": ...}.
Status pull_result(const std::string& model, const http::Response& response) {
  auto body = parse_json(response.body);
  bool has_error = body && body->is_object() && body->contains("error");
  if (response.status != 200 || has_error) {
    return Error{ErrorCode::Unavailable, fmt::format("ollama could not pull {}: HTTP {} {}", model, response.status,
                                                     response.body.substr(0, 300))};
  }
  return Status{};
}

awaitable<Result<bool>> has_model(http::Client& client, std::string url, std::string model) {
  auto response = co_await client.request("GET", url, "", {}, seconds(10));
  if (!response) co_return response.error();
  if (response->status != 200)
    co_return Error{ErrorCode::Unavailable, fmt::format("GET {}: HTTP {}", url, response->status)};
  co_return lists_model(response->body, model);
}

class OllamaDriver final : public EngineDriver {
 public:
  std::string name() const override { return "ollama"; }

  Availability detect(const EngineConfig& config) const override {
    return detect_binary(config.binary.empty() ? "ollama" : config.binary, {"--version"});
  }

  Result<Command> command(const LaunchContext& context) const override {
    if (context.model.empty()) return Error{ErrorCode::InvalidArgument, "ollama needs a model tag"};
    Command command;
    command.argv = {context.config.binary.empty() ? "ollama" : context.config.binary, "serve"};
    append_user_args(command.argv, context);
    command.env = base_env(context);
    command.env["OLLAMA_HOST"] = fmt::format("{}:{}", context.host, context.port);
    if (context.max_seqs > 0) command.env["OLLAMA_NUM_PARALLEL"] = std::to_string(context.max_seqs);
    if (context.max_context > 0) command.env["OLLAMA_CONTEXT_LENGTH"] = std::to_string(context.max_context);
    // Ollama unloads an idle model after 5 minutes by default; Nebula decides when to sleep.
    command.env.emplace("OLLAMA_KEEP_ALIVE", "-1");
    return command;
  }

  awaitable<Readiness> probe(http::Client& client, std::string endpoint) const override {
    co_return co_await probe_path(client, endpoint + "/api/tags");
  }

  awaitable<Status> prepare(http::Client& client, std::string endpoint, LaunchContext context) const override {
    auto present = co_await has_model(client, endpoint + "/api/tags", context.model);
    if (!present) co_return present.error();
    if (!*present) {
      auto pulled = co_await client.request("POST", endpoint + "/api/pull", pull_body(context.model), {}, hours(2));
      if (!pulled) co_return Error{pulled.error().code, "ollama pull " + context.model + ": " + pulled.error().message};
      Status result = pull_result(context.model, *pulled);
      if (!result.ok()) co_return result;
    }
    std::string served = ollama_name(context);
    if (normalized(served) != normalized(context.model)) {
      Status copied =
          co_await post_expect_ok(client, endpoint + "/api/copy", copy_body(context.model, served), seconds(60));
      if (!copied.ok()) co_return copied;
    }
    co_return co_await post_expect_ok(client, endpoint + "/api/generate", keep_alive_body(served, -1), minutes(10));
  }

  awaitable<Result<Load>> load(http::Client& client, std::string endpoint) const override {
    co_return Load{};  // Ollama exposes no queue or cache figures
  }

  bool can_sleep() const override { return true; }

  // Both levels unload the model; Ollama keeps nothing of it in memory either way.
  awaitable<Status> sleep(http::Client& client, std::string endpoint, int level, LaunchContext context) const override {
    co_return co_await post_expect_ok(client, endpoint + "/api/generate", keep_alive_body(ollama_name(context), 0),
                                      minutes(2));
  }

  awaitable<Status> wake(http::Client& client, std::string endpoint, LaunchContext context) const override {
    co_return co_await post_expect_ok(client, endpoint + "/api/generate", keep_alive_body(ollama_name(context), -1),
                                      minutes(10));
  }

  awaitable<Result<bool>> is_sleeping(http::Client& client, std::string endpoint,
                                      LaunchContext context) const override {
    auto loaded = co_await has_model(client, endpoint + "/api/ps", ollama_name(context));
    if (!loaded) co_return loaded.error();
    co_return !*loaded;
  }
};

}  // namespace

const EngineDriver& ollama_driver() {
  static const OllamaDriver driver;
  return driver;
}

}  // namespace nebula::engines
