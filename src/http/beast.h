#pragma once
// Private to src/http: the Beast and Asio headers the server and client need. Never include this
// from a header outside src/http.
#include "common/asio.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace nebula::http {
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = boost::asio::ip::tcp;
using error_code = boost::system::error_code;

// Re-arming a Beast stream's timer costs a timer-queue update (often a syscall) per operation;
// at one chunk per token that dominates. A Deadline re-arms only when the deadline it set has
// drifted by more than an eighth of the timeout, so an operation times out after 7/8 to 8/8 of
// the timeout instead of exactly at it.
class Deadline {
 public:
  void arm(beast::tcp_stream& stream, std::chrono::steady_clock::duration timeout) {
    auto now = std::chrono::steady_clock::now();
    if (timeout == timeout_ && now - armed_at_ < timeout / 8) return;
    stream.expires_after(timeout);
    timeout_ = timeout;
    armed_at_ = now;
  }
  // After an explicit expires_* call on the stream elsewhere.
  void reset() { timeout_ = {}; }

 private:
  std::chrono::steady_clock::duration timeout_{};
  std::chrono::steady_clock::time_point armed_at_{};
};
}  // namespace nebula::http
