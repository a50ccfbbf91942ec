#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <array>
#include <list>
#include <mutex>

#include "common/ids.h"
#include "http/beast.h"
#include "http/http.h"
#include "http/request_parser.h"

namespace nebula::http {

namespace {
// Headers that the server itself writes from the response it sends.
bool framing_header(std::string_view name) {
  return beast::iequals(name, "content-length") || beast::iequals(name, "transfer-encoding") ||
         beast::iequals(name, "connection");
}

bool has_header(const Headers& headers, std::string_view name) {
  for (const auto& header : headers) {
    if (beast::iequals(header.name, name)) return true;
  }
  return false;
}
}  // namespace

struct Server::Impl : std::enable_shared_from_this<Server::Impl> {
  Impl(asio::io_context& io, Router router, ServerOptions options)
      : io(io), router(std::move(router)), options(options), acceptor(io) {}

  asio::io_context& io;
  Router router;
  ServerOptions options;
  tcp::acceptor acceptor;
  mutable std::mutex mutex;
  std::list<beast::tcp_stream*> streams;  // open connections, for stop()
  bool stopped = false;

  awaitable<void> accept_loop();
  awaitable<void> session(tcp::socket socket);
};

class StreamWriter final : public ResponseWriter {
 public:
  StreamWriter(beast::tcp_stream& stream, beast::flat_buffer& buffer, Deadline& deadline, const ServerOptions& options,
               unsigned version, bool keep_alive, std::string request_id = {})
      : stream_(stream),
        buffer_(buffer),
        deadline_(deadline),
        options_(options),
        version_(version),
        keep_alive_(keep_alive),
        request_id_(std::move(request_id)) {}

  awaitable<void> send(Response response) override {
    if (answered_) throw std::logic_error("response already sent");
    answered_ = true;
    // Status 1xx, 204 and 304 have no body, and no Content-Length.
    bool bodyless = response.status < 200 || response.status == 204 || response.status == 304;
    std::string head = response_head(response.status, response.headers);
    if (!bodyless) head.append("Content-Length: ").append(std::to_string(response.body.size())).append("\r\n");
    head.append("\r\n");
    // A HEAD request's answer says how long the body would be, and sends none.
    size_t body_bytes = bodyless || omit_body_ ? 0 : response.body.size();
    std::array<asio::const_buffer, 2> message = {asio::buffer(head), asio::buffer(response.body.data(), body_bytes)};
    co_await send_all(message);
  }

  awaitable<bool> start_stream(int status, Headers headers) override {
    if (answered_) throw std::logic_error("response already sent");
    answered_ = true;
    streaming_ = true;
    std::string head = response_head(status, headers);
    head.append("Transfer-Encoding: chunked\r\n\r\n");
    std::array<asio::const_buffer, 1> message = {asio::buffer(head)};
    co_return co_await send_all(message);
  }

  awaitable<bool> write(std::string_view data) override {
    if (broken_) co_return false;
    if (data.empty() || omit_body_) co_return true;  // an empty chunk would end the body
    char size_line[20];
    auto size_end = fmt::format_to_n(size_line, sizeof size_line, "{:x}\r\n", data.size());
    std::array<asio::const_buffer, 3> chunk = {asio::buffer(size_line, size_end.size),
                                               asio::buffer(data.data(), data.size()), asio::buffer("\r\n", 2)};
    co_return co_await send_all(chunk);
  }

  awaitable<void> finish() override {
    if (!streaming_ || finished_ || broken_ || omit_body_) co_return;
    finished_ = true;
    std::array<asio::const_buffer, 1> last = {asio::buffer("0\r\n\r\n", 5)};
    co_await send_all(last);
  }

  void abort() override { broken_ = true; }

  void on_client_gone(std::function<void()> callback) override {
    gone_callback_ = std::move(callback);
    if (watching_ || broken_) return;
    watching_ = true;
    watch_done_ =
        std::make_unique<asio::steady_timer>(stream_.get_executor(), std::chrono::steady_clock::time_point::max());
    asio::co_spawn(stream_.get_executor(), watch(), asio::detached);
  }
  bool client_gone() const override { return gone_; }

  // Ends the watch for a closed connection before the session reads the next request (the
  // watcher reads into the session's buffer).
  awaitable<void> stop_watching() {
    gone_callback_ = nullptr;  // the handler is done: whatever it captured may be gone
    if (!watching_ || watch_finished_) co_return;
    error_code ignored;
    stream_.socket().cancel(ignored);
    co_await watch_done_->async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }
  bool answered() const override { return answered_; }
  // Answers a HEAD request: heads only, no body bytes (nor chunks).
  void omit_body() { omit_body_ = true; }
  // The connection can serve another request.
  bool reusable() const { return keep_alive_ && !broken_ && (!streaming_ || finished_); }

 private:
  // A pending read on an idle request connection returns only when the client sends more (a
  // pipelined request: kept in the buffer) or closes it.
  awaitable<void> watch() {
    error_code ec;
    size_t n =
        co_await stream_.socket().async_read_some(buffer_.prepare(4096), asio::redirect_error(asio::use_awaitable, ec));
    if (!ec) {
      buffer_.commit(n);
    } else if (ec != asio::error::operation_aborted) {
      gone_ = true;
      broken_ = true;
      if (gone_callback_) gone_callback_();
    }
    watch_finished_ = true;
    watch_done_->cancel();
  }

  // The status line and headers, written by hand (Beast's serializer, and a fields container
  // holding a copy of every header, cost more than the rest of answering a small request). Every
  // response carries an x-request-id: the handler's, else the client's, else a new one. The
  // caller adds the framing (Content-Length or chunked) and the blank line.
  std::string response_head(int status, const Headers& headers) const {
    std::string head;
    head.reserve(160 + 48 * headers.size());
    head.append(version_ == 10 ? "HTTP/1.0 " : "HTTP/1.1 ").append(std::to_string(status)).append(" ");
    auto reason = bhttp::obsolete_reason(static_cast<bhttp::status>(status));
    head.append(reason.data(), reason.size()).append("\r\nServer: nebula\r\n");
    for (const auto& header : headers) {
      if (framing_header(header.name)) continue;
      head.append(header.name).append(": ").append(header.value).append("\r\n");
    }
    if (!has_header(headers, "x-request-id")) {
      head.append("X-Request-Id: ").append(request_id_.empty() ? "req-" + random_id(20) : request_id_).append("\r\n");
    }
    if (version_ == 10 && keep_alive_) head.append("Connection: keep-alive\r\n");
    if (version_ != 10 && !keep_alive_) head.append("Connection: close\r\n");
    return head;
  }

  // send_buffers(), marking the connection broken on failure. False when the client is gone.
  template <typename Buffers>
  awaitable<bool> send_all(const Buffers& buffers) {
    if (broken_) co_return false;
    error_code ec = co_await send_buffers(stream_, buffers, &deadline_, options_.write_timeout);
    if (ec) broken_ = true;
    co_return !broken_;
  }

  beast::tcp_stream& stream_;
  beast::flat_buffer& buffer_;
  Deadline& deadline_;  // the connection's
  const ServerOptions& options_;
  unsigned version_;
  bool keep_alive_;
  bool omit_body_ = false;
  bool answered_ = false;
  bool streaming_ = false;
  bool finished_ = false;
  bool broken_ = false;
  std::string request_id_;
  bool watching_ = false;
  bool watch_finished_ = false;
  bool gone_ = false;
  std::function<void()> gone_callback_;
  std::unique_ptr<asio::steady_timer> watch_done_;
};

awaitable<void> Server::Impl::accept_loop() {
  auto self = shared_from_this();
  while (true) {
    error_code ec;
    tcp::socket socket = co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
      spdlog::warn("http: accept failed: {}", ec.message());
      continue;
    }
    asio::co_spawn(io, session(std::move(socket)), asio::detached);
  }
}

awaitable<void> Server::Impl::session(tcp::socket socket) {
  auto self = shared_from_this();
  std::string remote;
  {
    error_code ec;
    auto endpoint = socket.remote_endpoint(ec);
    if (!ec) remote = endpoint.address().to_string();
  }
  socket.set_option(tcp::no_delay(true));
  beast::tcp_stream stream(std::move(socket));
  std::list<beast::tcp_stream*>::iterator registration;
  {
    std::lock_guard lock(mutex);
    if (stopped) co_return;
    registration = streams.insert(streams.end(), &stream);
  }
  beast::flat_buffer buffer;
  Deadline deadline;
  try {
    while (true) {
      // The request is parsed from what the buffer holds, reading only when it holds too little:
      // a whole small request usually came with the previous read.
      Request request;
      RequestParser parser(request);
      parser.body_limit(options.body_limit);
      parser.header_limit(static_cast<std::uint32_t>(options.header_limit));
      error_code ec;
      bool continued = false;
      bool read_deadline_set = false;
      while (parse_buffered(parser, buffer, ec)) {
        if (parser.is_header_done() && !continued) {
          // A client that asked to hear before sending its body (curl does, for large ones)
          // would otherwise wait a second for this.
          continued = true;
          if (beast::iequals(request.header("expect"), "100-continue")) {
            deadline.arm(stream, options.write_timeout);
            read_deadline_set = false;  // the body gets read_timeout from here
            co_await asio::async_write(stream, asio::buffer("HTTP/1.1 100 Continue\r\n\r\n", 25),
                                       asio::redirect_error(asio::use_awaitable, ec));
            if (ec) break;
          }
        }
        // Idle between requests until the first byte; then the rest must come within read_timeout
        // of it, armed once (re-arming per read would let a trickling client hold on forever).
        if (!parser.got_some()) {
          deadline.arm(stream, options.idle_timeout);
        } else if (!read_deadline_set) {
          deadline.arm(stream, options.read_timeout);
          read_deadline_set = true;
        }
        size_t n = co_await stream.async_read_some(buffer.prepare(std::max<size_t>(4096, buffer.size())),
                                                   asio::redirect_error(asio::use_awaitable, ec));
        buffer.commit(n);
        if (ec == asio::error::eof && parser.got_some()) ec = bhttp::error::partial_message;
        if (ec) break;
      }
      if (ec) {
        Response refusal;
        if (ec == bhttp::error::body_limit) {
          refusal = error_json(413, "request body exceeds " + std::to_string(options.body_limit) + " bytes",
                               "request_too_large");
        } else if (ec == bhttp::error::header_limit) {
          refusal = error_json(431, "request headers too large", "headers_too_large");
        } else if (ec == beast::error::timeout || ec == asio::error::eof || ec == asio::error::connection_reset ||
                   ec == asio::error::operation_aborted || ec == bhttp::error::partial_message) {
          break;
        } else {
          refusal = error_json(400, "malformed HTTP request: " + ec.message(), "bad_request");
        }
        StreamWriter writer(stream, buffer, deadline, options, 11, false);
        co_await writer.send(std::move(refusal));
        break;
      }
      unsigned version = parser.version();
      bool keep_alive = parser.keep_alive();
      split_target(request);
      request.remote_address = remote;
      StreamWriter writer(stream, buffer, deadline, options, version, keep_alive, request.header("x-request-id"));
      if (request.method == "HEAD") writer.omit_body();
      std::string failure;
      try {
        co_await router.dispatch(request, writer);
      } catch (const std::exception& error) {
        failure = error.what();
      }
      co_await writer.stop_watching();
      if (!failure.empty()) {
        spdlog::error("http: {} {} failed: {}", request.method, request.path, failure);
        if (writer.answered()) break;
        co_await writer.send(error_json(500, "internal error: " + failure, "internal_error"));
      } else if (!writer.answered()) {
        co_await writer.send(error_json(500, "handler sent no response", "internal_error"));
      }
      co_await writer.finish();
      if (!writer.reusable()) break;
    }
  } catch (const std::exception& error) {
    spdlog::warn("http: connection from {} failed: {}", remote, error.what());
  }
  {
    std::lock_guard lock(mutex);
    streams.erase(registration);
  }
  error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  stream.socket().close(ignored);
}

Server::Server(asio::io_context& io, Router router, ServerOptions options)
    : impl_(std::make_shared<Impl>(io, std::move(router), options)) {}

Server::~Server() {
  stop();
}

Result<uint16_t> Server::listen(const HostPort& address) {
  error_code ec;
  auto ip = asio::ip::make_address(address.host == "localhost" ? "127.0.0.1" : address.host, ec);
  if (ec) return make_error(ErrorCode::InvalidArgument, "invalid listen address '" + address.host + "'");
  tcp::endpoint endpoint(ip, address.port);
  auto& acceptor = impl_->acceptor;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return make_error(ErrorCode::Unavailable, "cannot listen on " + address.to_string() + ": " + ec.message());
  }
  asio::co_spawn(impl_->io, impl_->accept_loop(), asio::detached);
  return acceptor.local_endpoint().port();
}

void Server::stop() {
  auto impl = impl_;
  // Closing sockets must happen on the io_context's threads; post and let the loop do it.
  asio::post(impl->io, [impl] {
    std::lock_guard lock(impl->mutex);
    impl->stopped = true;
    error_code ignored;
    impl->acceptor.close(ignored);
    for (auto* stream : impl->streams) stream->socket().close(ignored);
  });
}

size_t Server::open_connections() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->streams.size();
}

}  // namespace nebula::http
