#include "engines/driver.h"

namespace nebula::engines {

awaitable<Status> EngineDriver::prepare(http::Client&, std::string, LaunchContext) const {
  co_return Status{};
}
awaitable<Status> EngineDriver::sleep(http::Client&, std::string, int, LaunchContext) const {
  co_return Error{ErrorCode::InvalidArgument, name() + " cannot sleep"};
}
awaitable<Status> EngineDriver::wake(http::Client&, std::string, LaunchContext) const {
  co_return Error{ErrorCode::InvalidArgument, name() + " cannot sleep"};
}

const EngineDriver* find_driver(const std::string&) {
  return nullptr;  // placeholder until the drivers land
}
std::vector<std::string> driver_names() {
  return {};
}

}  // namespace nebula::engines
