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

// Sends `buffers` on a plain stream with one non-blocking send when the socket takes them all
// (almost always: the kernel's send buffer is far larger than a request, a response or a chunk):
// one syscall and no trip through the scheduler. Only what the socket did not take is written
// asynchronously, after arming `deadline` (when given) for `timeout`.
template <typename Buffers>
awaitable<error_code> send_buffers(beast::tcp_stream& stream, const Buffers& buffers, Deadline* deadline = nullptr,
                                   std::chrono::steady_clock::duration timeout = {}) {
  error_code ec;
  auto& socket = stream.socket();
  if (!socket.non_blocking()) socket.non_blocking(true, ec);
  size_t sent = ec ? 0 : socket.send(buffers, 0, ec);
  if (ec == asio::error::would_block || ec == asio::error::try_again) ec = {};
  if (ec) co_return ec;
  beast::buffers_suffix<Buffers> rest(buffers);
  rest.consume(sent);
  if (beast::buffer_bytes(rest) == 0) co_return ec;
  if (deadline) deadline->arm(stream, timeout);
  co_await asio::async_write(stream, rest, asio::redirect_error(asio::use_awaitable, ec));
  co_return ec;
}

// Parses what `buffer` holds, consuming what the parser used, up to the end of the message (or of
// its head, with head_only). True when it needs more bytes than the buffer has; false when it got
// there or ec says why it cannot.
template <bool isRequest>
bool parse_buffered(bhttp::basic_parser<isRequest>& parser, beast::flat_buffer& buffer, error_code& ec,
                    bool head_only = false) {
  auto done = [&] { return head_only ? parser.is_header_done() : parser.is_done(); };
  while (!done() && buffer.size() > 0) {
    size_t used = parser.put(buffer.data(), ec);
    buffer.consume(used);
    if (ec == bhttp::error::need_more) {
      ec = {};
      return true;
    }
    if (ec) return false;
    if (used == 0) break;
  }
  return !done();
}
}  // namespace nebula::http
