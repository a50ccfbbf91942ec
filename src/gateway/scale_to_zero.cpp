// Scale-to-zero, the gateway's half: it remembers when each deployment was last asked for
// (written to the deployment's status once a second, for the controller's idle rule) and asks the
// controller to wake an idle deployment, once per idle period.
#include "common/asio.h"

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "api/api.h"
#include "common/clock.h"
#include "gateway/call.h"

namespace nebula::gateway {

void Gateway::note_request(const std::string& deployment) {
  int64_t now = to_unix_ms(std::chrono::system_clock::now());
  last_request_ms_[deployment] = now;
  int64_t idle_since = table_.idle_since_ms(deployment);
  if (idle_since == 0 || wake_sent_for_[deployment] == idle_since) return;
  // The first request of an idle period asks for a wake; the rest wait in the queue for it, so a
  // burst causes one wake (one start), not many.
  wake_sent_for_[deployment] = idle_since;
  write_deployment_status(deployment, [now](json& status) {
    status["wake_requested_ms"] = now;
    return true;
  });
}

bool Gateway::waking(const std::string& deployment) const {
  if (table_.idle_since_ms(deployment) > 0) return true;
  int64_t woken = table_.wake_requested_ms(deployment);
  int64_t now = to_unix_ms(std::chrono::system_clock::now());
  return woken > 0 && now - woken < options_.queue_timeout.count();
}

void Gateway::write_deployment_status(const std::string& deployment, const std::function<bool(json& status)>& change) {
  (void)store::update(store_, api::store_key("deployments", deployment),
                      [&](const std::optional<std::string>& current) -> Result<std::optional<std::string>> {
                        if (!current) return std::optional<std::string>();
                        auto document = parse_json(*current);
                        if (!document || !document->is_object()) return std::optional<std::string>();
                        if (!(*document)["status"].is_object()) (*document)["status"] = json::object();
                        if (!change((*document)["status"])) return std::optional<std::string>();
                        return std::optional<std::string>(dump(*document));
                      });
}

// Once a second: the deployments asked for since the last round get their last_request_ms.
awaitable<void> Gateway::report_activity() {
  while (!stopping_) {
    activity_timer_->expires_after(std::chrono::seconds(1));
    boost::system::error_code ec;
    co_await activity_timer_->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (stopping_) co_return;
    flush_access_log();
    for (const auto& [deployment, when] : last_request_ms_) {
      if (reported_ms_[deployment] == when) continue;
      reported_ms_[deployment] = when;
      int64_t at = when;
      write_deployment_status(deployment, [at](json& status) {
        status["last_request_ms"] = at;
        return true;
      });
    }
  }
}

}  // namespace nebula::gateway
