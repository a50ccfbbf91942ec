// llama.cpp: llama-server, launched one of two ways.
//
// Router mode (llama-server builds that have it: `--help` mentions --models-preset), which can
// sleep: `llama-server --models-preset W/models.ini --models-max 1 --no-models-autoload --host H
// --port P --metrics`, where models.ini (written into the replica's work directory) has one section
// named after the served name, holding the model file, -c, --parallel and -ngl. The router starts
// with no model loaded and answers GET /health 200 at once; prepare() asks it to load the model
// (POST /models/load) and waits until GET /models says "loaded". The router runs the model in a
// child llama-server and forwards each request to it by the body's "model" field (GET endpoints by
// ?model=, /metrics included). sleep() unloads the model (POST /models/unload: the child exits and
// its memory is freed), wake() loads it again.
//
// Single-model mode (older builds, or a launch the preset file cannot describe): `llama-server -m
// FILE --host H --port P --alias NAME --metrics ...`. /health answers 503 "Loading model" until the
// model is loaded. It cannot sleep: the agent stops it while its deployment is idle.
//
// Both: /metrics exists only with --metrics (always passed). -c is the context of all slots
// together: each of the --parallel slots gets c / parallel tokens, so a max_context per request
// with max_seqs slots needs -c max_context x max_seqs.
#include <fmt/format.h>

#include <algorithm>
#include <cctype>

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "common/json.h"
#include "engines/common.h"
#include "engines/drivers.h"
#include "http/http.h"

namespace nebula::engines {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

constexpr const char* kRouterFeature = "router";
// How long a load may take when the agent gives no limit (its own default startup timeout).
constexpr milliseconds kDefaultLoadTimeout = std::chrono::minutes(20);
// The router stops a model's child gracefully and kills it after the preset's stop-timeout
// (default 10 s); an unload that takes longer than this has gone wrong.
constexpr milliseconds kUnloadTimeout = seconds(60);
constexpr milliseconds kPollInterval = milliseconds(100);

std::string binary_of(const LaunchContext& context) {
  return context.config.binary.empty() ? "llama-server" : context.config.binary;
}

std::string served_name(const LaunchContext& context) {
  return context.served_name.empty() ? context.model : context.served_name;
}

// The preset INI grammar (llama.cpp common/preset.cpp) ends a value at ';', '#' or a line break
// and trims blanks around it; a section name ends at ']'.
bool ini_value_fits(const std::string& value) {
  if (value.empty() || std::isspace(static_cast<unsigned char>(value.front())) ||
      std::isspace(static_cast<unsigned char>(value.back()))) {
    return false;
  }
  return value.find_first_of(";#\r\n") == std::string::npos;
}
bool ini_section_fits(const std::string& name) {
  return ini_value_fits(name) && name.find(']') == std::string::npos && name != "*";
}

// Router mode when this node's llama-server has it, the replica has a work directory for the
// preset file, and the preset file can hold the model's path and name.
bool router_mode(const LaunchContext& context) {
  return context.has_feature(kRouterFeature) && !context.work_dir.empty() && ini_value_fits(context.model) &&
         ini_section_fits(served_name(context));
}

std::string preset_path(const LaunchContext& context) {
  return context.work_dir + "/models.ini";
}

// One section, named as clients name the model. Keys are llama-server's flags without dashes.
// Nothing goes outside a section: the router makes such keys (a `version = 1` line, say) an
// implicit section `default` and lists it as a model, whose load starts a nested router.
std::string preset_ini(const LaunchContext& context) {
  std::string ini = fmt::format("[{}]\nmodel = {}\n", served_name(context), context.model);
  if (context.max_context > 0) {
    ini += fmt::format("c = {}\n", static_cast<int64_t>(context.max_context) * std::max(1, context.max_seqs));
  }
  if (context.max_seqs > 0) ini += fmt::format("parallel = {}\n", context.max_seqs);
  if (!context.gpus.empty()) ini += "n-gpu-layers = 999\n";  // every layer on the GPU(s)
  return ini;
}

std::string model_body(const std::string& name) {
  return json{{"model", name}}.dump();
}

// One model as the router's GET /models lists it:
// {"data":[{"id":NAME,"status":{"value":"loaded","failed":true,"exit_code":1,...}},...]}.
// value is unloaded | loading | loaded | sleeping (llama-server's own idle sleep, which reloads on
// the next request) | downloading | downloaded.
struct RouterModel {
  std::string status;
  bool failed = false;
  int exit_code = 0;

  bool loaded() const { return status == "loaded" || status == "sleeping"; }
  bool running() const { return loaded() || status == "loading"; }
};

// Fields of another type than expected read as absent: the listing comes from another process.
std::string string_field(const json& object, const char* key) {
  auto found = object.find(key);
  return found != object.end() && found->is_string() ? found->get<std::string>() : std::string();
}

Result<RouterModel> find_router_model(const std::string& body, const std::string& name) {
  auto parsed = parse_json(body);
  if (!parsed) return parsed.error();
  if (!parsed->is_object() || !parsed->contains("data") || !(*parsed)["data"].is_array()) {
    return Error{ErrorCode::Unavailable, "GET /models: no data list in " + body.substr(0, 200)};
  }
  for (const json& entry : (*parsed)["data"]) {
    if (!entry.is_object() || string_field(entry, "id") != name) continue;
    RouterModel model;
    auto status = entry.find("status");
    if (status != entry.end() && status->is_string()) {
      model.status = status->get<std::string>();
    } else if (status != entry.end() && status->is_object()) {
      model.status = string_field(*status, "value");
      auto failed = status->find("failed");
      model.failed = failed != status->end() && failed->is_boolean() && failed->get<bool>();
      auto exit_code = status->find("exit_code");
      if (exit_code != status->end() && exit_code->is_number_integer()) model.exit_code = exit_code->get<int>();
    }
    return model;
  }
  return Error{ErrorCode::NotFound, fmt::format("llama-server's router lists no model named {}", name)};
}

awaitable<Result<RouterModel>> router_model(http::Client& client, std::string endpoint, std::string name) {
  auto response = co_await client.request("GET", endpoint + "/models", "", {}, seconds(10));
  if (!response) co_return response.error();
  if (response->status != 200) {
    co_return Error{ErrorCode::Unavailable, fmt::format("GET {}/models: HTTP {} {}", endpoint, response->status,
                                                        response->body.substr(0, 200))};
  }
  co_return find_router_model(response->body, name);
}

awaitable<void> pause(milliseconds duration) {
  asio::steady_timer timer(co_await asio::this_coro::executor, duration);
  boost::system::error_code ignored;
  co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
}

Error load_failed(const std::string& name, const RouterModel& model) {
  if (model.failed) {
    return Error{ErrorCode::Unavailable, fmt::format("llama-server could not load {} (its model process exited with "
                                                     "{}); the engine's log has why",
                                                     name, model.exit_code)};
  }
  return Error{ErrorCode::Unavailable, fmt::format("llama-server stopped loading {} (status {})", name, model.status)};
}

// Loads the model unless the router has it loaded, then waits until the router says it is loaded,
// that loading failed, or timeout passes. The router answers POST /models/load at once and loads in
// the background (a child llama-server per model).
awaitable<Status> load_and_wait(http::Client& client, std::string endpoint, std::string name, milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  bool asked = false;
  while (true) {
    auto model = co_await router_model(client, endpoint, name);
    if (!model) co_return model.error();
    if (model->loaded()) co_return Status{};
    if (!model->running()) {
      if (asked) co_return load_failed(name, *model);
      asked = true;
      Status posted = co_await post_expect_ok(client, endpoint + "/models/load", model_body(name), seconds(30));
      // A load that raced ours ("model is already running") shows in the next listing.
      if (!posted.ok()) {
        auto again = co_await router_model(client, endpoint, name);
        if (!again || !again->running()) co_return posted;
      }
    }
    if (Clock::now() >= deadline) {
      co_return Error{ErrorCode::Timeout, fmt::format("llama-server did not load {} within {} s", name,
                                                      std::chrono::duration_cast<seconds>(timeout).count())};
    }
    milliseconds left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    co_await pause(std::min(kPollInterval, left));
  }
}

// Unloads the model and waits until its child process is gone (its memory freed).
awaitable<Status> unload_and_wait(http::Client& client, std::string endpoint, std::string name) {
  auto deadline = Clock::now() + kUnloadTimeout;
  bool asked = false;
  while (true) {
    auto model = co_await router_model(client, endpoint, name);
    if (!model) co_return model.error();
    if (!model->running()) co_return Status{};
    if (!asked) {
      asked = true;
      Status posted = co_await post_expect_ok(client, endpoint + "/models/unload", model_body(name), seconds(30));
      if (!posted.ok()) {
        auto again = co_await router_model(client, endpoint, name);
        if (!again || again->running()) co_return posted;
        co_return Status{};
      }
    }
    if (Clock::now() >= deadline) {
      co_return Error{ErrorCode::Timeout, fmt::format("llama-server did not unload {} within {} s", name,
                                                      std::chrono::duration_cast<seconds>(kUnloadTimeout).count())};
    }
    milliseconds left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    co_await pause(std::min(kPollInterval, left));
  }
}

milliseconds load_timeout(const LaunchContext& context) {
  return context.ready_timeout.count() > 0 ? context.ready_timeout : kDefaultLoadTimeout;
}

class LlamacppDriver final : public HealthMetricsDriver {
 public:
  using HealthMetricsDriver::load;

  std::string name() const override { return "llamacpp"; }

  // Router mode is there when `--help` lists --models-preset.
  Availability detect(const EngineConfig& config) const override {
    std::string binary = config.binary.empty() ? "llama-server" : config.binary;
    Availability availability = detect_binary(binary, {"--version"});
    if (!availability.available) return availability;
    auto help = run_captured({availability.detail, "--help"}, seconds(10));
    if (help && help->output.find("--models-preset") != std::string::npos) {
      availability.features.push_back(kRouterFeature);
    }
    return availability;
  }

  Result<Command> command(const LaunchContext& context) const override {
    if (context.model.empty()) return Error{ErrorCode::InvalidArgument, "llamacpp needs a model file (-m)"};
    Command command;
    auto& argv = command.argv;
    if (router_mode(context)) {
      // One model at most, loaded only when asked (prepare() and wake() ask).
      std::string preset = preset_path(context);
      argv = {binary_of(context),
              "--models-preset",
              preset,
              "--models-max",
              "1",
              "--no-models-autoload",
              "--host",
              context.host,
              "--port",
              std::to_string(context.port),
              "--metrics"};
      command.files[preset] = preset_ini(context);
    } else {
      argv = {binary_of(context),           "-m",      context.model,        "--host",   context.host, "--port",
              std::to_string(context.port), "--alias", served_name(context), "--metrics"};
      if (context.max_context > 0) {
        argv.push_back("-c");
        argv.push_back(std::to_string(static_cast<int64_t>(context.max_context) * std::max(1, context.max_seqs)));
      }
      if (context.max_seqs > 0) {
        argv.push_back("--parallel");
        argv.push_back(std::to_string(context.max_seqs));
      }
      if (!context.gpus.empty()) {
        argv.push_back("-ngl");
        argv.push_back("999");  // every layer on the GPU(s)
      }
    }
    // The router passes its own arguments on to the model's process, over the preset's values.
    append_user_args(argv, context);
    command.env = base_env(context);
    return command;
  }

  awaitable<Status> prepare(http::Client& client, std::string endpoint, LaunchContext context) const override {
    if (!router_mode(context)) co_return Status{};
    co_return co_await load_and_wait(client, endpoint, served_name(context), load_timeout(context));
  }

  // The router answers /metrics only for a model it has loaded: /metrics?model=NAME (autoload=false
  // so reading the load never loads a sleeping model).
  awaitable<Result<Load>> load(http::Client& client, std::string endpoint, LaunchContext context) const override {
    if (!router_mode(context)) co_return co_await load(client, endpoint);
    std::string url = endpoint + "/metrics?model=" + http::url_encode(served_name(context)) + "&autoload=false";
    auto response = co_await client.request("GET", url, "", {}, seconds(5));
    if (!response) co_return response.error();
    if (response->status != 200) {
      co_return Error{ErrorCode::Unavailable,
                      fmt::format("GET {}: HTTP {} {}", url, response->status, response->body.substr(0, 200))};
    }
    co_return load_from(Metrics::parse(response->body));
  }

  // In router mode; a single-model launch cannot.
  bool can_sleep() const override { return true; }
  bool can_sleep(const LaunchContext& context) const override { return router_mode(context); }

  // Both levels unload the model: the router keeps nothing of it (no weights in CPU memory), so
  // level 1 costs a full load on wake, as level 2 does.
  awaitable<Status> sleep(http::Client& client, std::string endpoint, int level, LaunchContext context) const override {
    if (level != 1 && level != 2) {
      co_return Error{ErrorCode::InvalidArgument, fmt::format("sleep level must be 1 or 2, got {}", level)};
    }
    if (!router_mode(context)) co_return unsupported("llamacpp sleeps only in router mode");
    co_return co_await unload_and_wait(client, endpoint, served_name(context));
  }

  awaitable<Status> wake(http::Client& client, std::string endpoint, LaunchContext context) const override {
    if (!router_mode(context)) co_return unsupported("llamacpp sleeps only in router mode");
    co_return co_await load_and_wait(client, endpoint, served_name(context), load_timeout(context));
  }

  // Asleep = the router has the model but no process for it (unloaded, or not yet loaded).
  awaitable<Result<bool>> is_sleeping(http::Client& client, std::string endpoint,
                                      LaunchContext context) const override {
    if (!router_mode(context)) co_return unsupported("llamacpp sleeps only in router mode");
    auto model = co_await router_model(client, endpoint, served_name(context));
    if (!model) co_return model.error();
    co_return !model->running();
  }

 protected:
  Load load_from(const Metrics& metrics) const override { return llamacpp_load(metrics); }
};

}  // namespace

Load llamacpp_load(const Metrics& metrics) {
  Load load;
  load.running = metrics.sum("llamacpp:requests_processing");
  load.waiting = metrics.sum("llamacpp:requests_deferred");
  load.kv_cache_usage = metrics.mean("llamacpp:kv_cache_usage_ratio");  // older builds only
  return load;
}

const EngineDriver& llamacpp_driver() {
  static const LlamacppDriver driver;
  return driver;
}

}  // namespace nebula::engines
