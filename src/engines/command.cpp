// command: any OpenAI-compatible server, launched from the node's argv template with
// {port} {host} {model} {served_name} {max_context} {max_seqs} {gpus} {num_gpus} substituted.
#include <fmt/format.h>

#include "engines/common.h"
#include "engines/drivers.h"
#include "http/http.h"

namespace nebula::engines {
namespace {

bool mentions_port(const std::vector<std::string>& argv) {
  for (const std::string& arg : argv) {
    if (arg.find("{port}") != std::string::npos) return true;
  }
  return false;
}

class CommandDriver final : public EngineDriver {
 public:
  std::string name() const override { return "command"; }

  Availability detect(const EngineConfig& config) const override {
    Availability availability;
    if (config.command_template.empty()) {
      availability.detail = "no command template configured";
      return availability;
    }
    auto path = find_executable(config.command_template.front());
    availability.available = path.has_value();
    availability.detail = path ? *path : config.command_template.front() + " not found";
    return availability;
  }

  Result<Command> command(const LaunchContext& context) const override {
    const auto& command_template = context.config.command_template;
    if (command_template.empty()) {
      return Error{ErrorCode::InvalidArgument, "the command engine needs a command template (engines.command)"};
    }
    if (!mentions_port(command_template)) {
      return Error{ErrorCode::InvalidArgument,
                   fmt::format("the command template '{}' has no {{port}}: Nebula must choose the port",
                               fmt::join(command_template, " "))};
    }
    auto values = placeholder_values(context);
    Command command;
    for (const std::string& arg : command_template) command.argv.push_back(substitute(arg, values));
    append_user_args(command.argv, context);
    command.env = base_env(context);
    return command;
  }

  awaitable<Readiness> probe(http::Client& client, std::string endpoint) const override {
    co_return co_await generic_probe(client, endpoint);
  }

  awaitable<Result<Load>> load(http::Client& client, std::string endpoint) const override {
    co_return co_await generic_load(client, endpoint);
  }
};

}  // namespace

Load any_engine_load(const Metrics& metrics) {
  if (metrics.has("vllm:num_requests_running")) return vllm_load(metrics);
  if (metrics.has("sglang:num_running_reqs")) return sglang_load(metrics);
  if (metrics.has("llamacpp:requests_processing")) return llamacpp_load(metrics);
  if (metrics.has("tgi_queue_size")) return tgi_load(metrics);
  return Load{};
}

awaitable<Readiness> generic_probe(http::Client& client, std::string endpoint) {
  auto health = co_await client.request("GET", endpoint + "/health", "", {}, std::chrono::seconds(3));
  if (!health) co_return Readiness::Down;
  if (health->status == 200) co_return Readiness::Ready;
  // A server without /health: the OpenAI model list answers once it can serve.
  if (health->status == 404) co_return co_await probe_path(client, endpoint + "/v1/models");
  co_return Readiness::Loading;
}

awaitable<Result<Load>> generic_load(http::Client& client, std::string endpoint) {
  auto response = co_await client.request("GET", endpoint + "/metrics", "", {}, std::chrono::seconds(5));
  if (!response) co_return response.error();
  if (response->status == 404) co_return Load{};  // no metrics: nothing known
  if (response->status != 200) {
    co_return Error{ErrorCode::Unavailable, fmt::format("GET {}/metrics: HTTP {}", endpoint, response->status)};
  }
  co_return any_engine_load(Metrics::parse(response->body));
}

const EngineDriver& command_driver() {
  static const CommandDriver driver;
  return driver;
}

}  // namespace nebula::engines
