#include <algorithm>

#include "engines/common.h"
#include "engines/drivers.h"

namespace nebula::engines {

bool LaunchContext::has_feature(const std::string& feature) const {
  return std::find(features.begin(), features.end(), feature) != features.end();
}

Result<ContainerSpec> EngineDriver::container(const LaunchContext&) const {
  return Error{ErrorCode::InvalidArgument, name() + " runs as a process: use command()"};
}
awaitable<Status> EngineDriver::prepare(http::Client&, std::string, LaunchContext) const {
  co_return Status{};
}
awaitable<Result<Load>> EngineDriver::load(http::Client& client, std::string endpoint, LaunchContext) const {
  co_return co_await load(client, std::move(endpoint));
}
awaitable<Status> EngineDriver::sleep(http::Client&, std::string, int, LaunchContext) const {
  co_return unsupported(name() + " cannot sleep");
}
awaitable<Status> EngineDriver::wake(http::Client&, std::string, LaunchContext) const {
  co_return unsupported(name() + " cannot sleep");
}
awaitable<Result<bool>> EngineDriver::is_sleeping(http::Client&, std::string, LaunchContext) const {
  co_return unsupported(name() + " cannot sleep");
}

namespace {

const std::vector<const EngineDriver*>& all_drivers() {
  static const std::vector<const EngineDriver*> drivers{&vllm_driver(),    &sglang_driver(), &llamacpp_driver(),
                                                        &tgi_driver(),     &ollama_driver(), &docker_driver(),
                                                        &command_driver(), &sim_driver()};
  return drivers;
}

}  // namespace

const EngineDriver* find_driver(const std::string& engine) {
  for (const EngineDriver* driver : all_drivers()) {
    if (driver->name() == engine) return driver;
  }
  return nullptr;
}

std::vector<std::string> driver_names() {
  std::vector<std::string> names;
  for (const EngineDriver* driver : all_drivers()) names.push_back(driver->name());
  return names;
}

}  // namespace nebula::engines
