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
// at one chunk per token, or a few operations per small request, that dominates. A Deadline
// re-arms only when the expiry it set is later than asked for, or earlier by more than an eighth
// of the timeout: an operation times out after 7/8 to 8/8 of its timeout instead of exactly at
// it. One Deadline per stream: every expires_* call on the stream must go through it (or be
// followed by reset()).
class Deadline {
 public:
  void arm(beast::tcp_stream& stream, std::chrono::steady_clock::duration timeout) {
    auto wanted = std::chrono::steady_clock::now() + timeout;
    if (expiry_ <= wanted && wanted - expiry_ < timeout / 8) return;
    stream.expires_after(timeout);
    expiry_ = wanted;
  }
  // After an explicit expires_* call on the stream elsewhere.
  void reset() { expiry_ = {}; }

 private:
  std::chrono::steady_clock::time_point expiry_{};
};
}  // namespace nebula::http
