// Replicas whose circuit breakers are open. Waiting for one is pointless until its cool-down
// ends: a request that only such replicas could take is answered at once with the error the
// engine itself last gave (an SDK's retry lands here, and gets an answer it can act on, not a
// 30 s queue timeout); and when a cool-down ends, the queue is offered the replica at once.
#include <fmt/format.h>

#include "common/asio.h"

#include <boost/asio/steady_timer.hpp>

#include "gateway/call.h"

namespace nebula::gateway {

using SteadyClock = std::chrono::steady_clock;

void Gateway::note_engine_error(const std::string& deployment, EngineError error) {
  engine_errors_[deployment] = std::move(error);
}

bool Gateway::breakers_all_open(const std::string& deployment, const std::set<std::string>& exclude) const {
  size_t ready = table_.ready_count(deployment, exclude);
  if (ready == 0 || waking(deployment) || table_.starting_count(deployment) > 0) return false;
  return table_.open_count(deployment, exclude, SteadyClock::now()) == ready;
}

http::Response Gateway::breaker_refusal(const Call& call) const {
  auto last = engine_errors_.find(call.model);
  if (last == engine_errors_.end() || last->second.status == 0) {
    // The replicas failed without an answer (refused connections, timeouts).
    return call_error(call.headers, 503,
                      fmt::format("every replica of `{}` is failing; its circuit breakers are open", call.model),
                      "server_error", "service_unavailable");
  }
  http::Response response;
  response.status = last->second.status;
  response.headers = call.headers;
  response.headers.push_back({"Content-Type", "application/json"});
  if (!last->second.retry_after.empty()) response.headers.push_back({"Retry-After", last->second.retry_after});
  response.body = last->second.body;
  return response;
}

void Gateway::breaker_failed(const std::shared_ptr<router::Endpoint>& endpoint) {
  auto now = SteadyClock::now();
  if (endpoint->breaker.state(now) != router::Breaker::State::Open) return;
  // Waiters that only this replica's peers could serve, and those could not: fail them now.
  dispatch_queue(endpoint->deployment);
  auto timer = std::make_shared<asio::steady_timer>(io_, endpoint->breaker.open_until());
  timer->async_wait([this, timer, deployment = endpoint->deployment](const boost::system::error_code&) {
    if (!stopping_) dispatch_queue(deployment);
  });
}

}  // namespace nebula::gateway
