#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <list>
#include <mutex>
#include <thread>

#include "common/ids.h"
#include "common/subprocess.h"
#include "http/beast.h"
#include "http/http.h"
#include "http/request_parser.h"
#include "http/reuse_port.h"

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

std::atomic<uint64_t> accepted_total{0};
std::atomic<uint64_t> refused_total{0};
std::atomic<uint64_t> accept_errors_total{0};
std::atomic<int64_t> open_total{0};

// What a client over the connection limit (or arriving while no descriptor is left) reads before
// the connection closes: an OpenAI-shaped error, so SDKs report it and retry.
constexpr std::string_view kRefusal =
    "HTTP/1.1 503 Service Unavailable\r\nServer: nebula\r\nContent-Type: application/json\r\n"
    "Retry-After: 1\r\nConnection: close\r\nContent-Length: 115\r\n\r\n"
    "{\"error\":{\"message\":\"server busy: too many open connections\",\"type\":\"server_error\","
    "\"code\":\"too_many_connections\"}}\n";

constexpr auto kLogInterval = std::chrono::seconds(10);

// Counts events and logs them at most once per kLogInterval, with how many there were.
class ThrottledLog {
 public:
  // True when this event should be logged; count() then says how many it stands for.
  bool note() {
    ++pending_;
    auto now = std::chrono::steady_clock::now();
    if (logged_ != std::chrono::steady_clock::time_point{} && now - logged_ < kLogInterval) return false;
    logged_ = now;
    return true;
  }
  uint64_t take() { return std::exchange(pending_, 0); }

 private:
  uint64_t pending_ = 0;
  std::chrono::steady_clock::time_point logged_{};
};
}  // namespace

ServerStats server_stats() {
  ServerStats stats;
  stats.accepted = accepted_total.load();
  stats.refused = refused_total.load();
  stats.accept_errors = accept_errors_total.load();
  stats.open = static_cast<uint64_t>(std::max<int64_t>(0, open_total.load()));
  return stats;
}

std::string render_server_metrics() {
  ServerStats stats = server_stats();
  return fmt::format(
      "# HELP nebula_http_connections_accepted_total Connections accepted\n"
      "# TYPE nebula_http_connections_accepted_total counter\n"
      "nebula_http_connections_accepted_total {}\n"
      "# HELP nebula_http_connections_refused_total Connections refused with a 503 (over the connection limit or "
      "out of descriptors)\n"
      "# TYPE nebula_http_connections_refused_total counter\n"
      "nebula_http_connections_refused_total {}\n"
      "# HELP nebula_http_accept_errors_total accept() failures (out of descriptors or memory)\n"
      "# TYPE nebula_http_accept_errors_total counter\n"
      "nebula_http_accept_errors_total {}\n"
      "# HELP nebula_http_open_connections Connections open now\n"
      "# TYPE nebula_http_open_connections gauge\n"
      "nebula_http_open_connections {}\n",
      stats.accepted, stats.refused, stats.accept_errors, stats.open);
}

// One open connection. The flags are touched on the io_context's thread only.
class StreamWriter;
struct ConnectionState {
  beast::tcp_stream* stream = nullptr;
  bool busy = false;               // a request is being read or answered
  bool endless = false;            // its answer is a stream that never ends by itself
  StreamWriter* writer = nullptr;  // while a handler runs
};

struct Server::Impl : std::enable_shared_from_this<Server::Impl> {
  Impl(asio::io_context& io, Router router, ServerOptions options)
      : io(io), router(std::move(router)), options(options), acceptor(io) {}

  ~Impl() {
    if (spare >= 0) ::close(spare);
  }

  asio::io_context& io;
  Router router;
  ServerOptions options;
  tcp::acceptor acceptor;
  mutable std::mutex mutex;
  std::list<ConnectionState> connections;  // open connections, for stop() and drain()
  bool stopped = false;
  bool draining = false;  // io thread only
  size_t limit = 0;       // connections at once
  size_t sessions = 0;    // connections accepted and not yet closed (io thread only; the list
                          // lags: a session registers when its coroutine first runs)
  // A descriptor held in reserve: when accept() fails for want of descriptors, closing it lets
  // one waiting client be accepted and told 503 instead of waiting in the backlog forever.
  int spare = -1;
  // Refused connections being read (their request dropped) before their close, and how many may
  // be: beyond that, clients wait in the backlog for their 503 rather than take descriptors the
  // connections being served need.
  size_t lingering = 0;
  size_t max_lingering = 4;
  ThrottledLog accept_failures;
  ThrottledLog refusals;

  awaitable<void> accept_loop();
  awaitable<void> session(tcp::socket socket);
  // Answers a client over the limit with a 503 and closes the connection.
  awaitable<void> refuse(tcp::socket socket);
  // Out of descriptors: refuses one waiting client using the spare descriptor. False when it
  // could not (no spare, or still out of descriptors).
  bool refuse_with_spare();
  void log_accept_failure(int error);
  void log_refusal();
};

class StreamWriter final : public ResponseWriter {
 public:
  StreamWriter(beast::tcp_stream& stream, beast::flat_buffer& buffer, Deadline& deadline, const ServerOptions& options,
               unsigned version, bool keep_alive, std::string request_id = {}, ConnectionState* state = nullptr,
               const bool* draining = nullptr)
      : state_(state),
        draining_(draining),
        stream_(stream),
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

  void mark_endless() override {
    if (state_) state_->endless = true;
    if (draining_ && *draining_) drop();  // it would hold the stop up to its timeout
  }

  // A draining server ends an endless stream: to its handler the client is gone (its on_client_gone
  // callback runs, so a handler waiting on something else wakes up), and the connection closes.
  void drop() {
    broken_ = true;
    error_code ignored;
    stream_.socket().close(ignored);
    if (gone_) return;
    gone_ = true;
    if (auto callback = std::move(gone_callback_)) callback();
  }

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
  std::string response_head(int status, const Headers& headers) {
    // A server that began draining while this request ran closes the connection after it.
    if (draining_ && *draining_) keep_alive_ = false;
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

  ConnectionState* state_;
  const bool* draining_;
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

// Accepts with accept4(SOCK_CLOEXEC) (Asio's accept leaves descriptors inheritable). When out of
// descriptors it neither spins nor logs per attempt: it refuses one client with the spare
// descriptor when it can, else pauses (5 ms, doubling to 1 s, as Go's net/http does).
awaitable<void> Server::Impl::accept_loop() {
  auto self = shared_from_this();
  error_code ec;
  auto protocol = acceptor.local_endpoint(ec).protocol();
  asio::steady_timer pause_timer(io);
  std::chrono::milliseconds pause{0};
  while (true) {
    co_await acceptor.async_wait(tcp::acceptor::wait_read, asio::redirect_error(asio::use_awaitable, ec));
    if (!acceptor.is_open() || ec == asio::error::operation_aborted) co_return;
    // Take the clients waiting, a bounded number before letting the connections run.
    for (int taken = 0; taken < 64; ++taken) {
      if (sessions >= limit && lingering >= max_lingering) {
        pause_timer.expires_after(std::chrono::milliseconds(5));
        co_await pause_timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        if (!acceptor.is_open()) co_return;
        break;
      }
      int fd = ::accept4(acceptor.native_handle(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) {
        int error = errno;
        if (error == EAGAIN || error == EWOULDBLOCK) break;
        if (error == EINTR || error == ECONNABORTED || error == EPROTO) continue;
        accept_errors_total++;
        log_accept_failure(error);
        if ((error == EMFILE || error == ENFILE) && refuse_with_spare()) continue;
        pause = std::min<std::chrono::milliseconds>(pause.count() == 0 ? std::chrono::milliseconds(5) : pause * 2,
                                                    std::chrono::seconds(1));
        pause_timer.expires_after(pause);
        co_await pause_timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        if (!acceptor.is_open()) co_return;
        break;
      }
      pause = std::chrono::milliseconds(0);
      accepted_total++;
      tcp::socket socket(io);
      socket.assign(protocol, fd, ec);
      if (ec) {
        ::close(fd);
        continue;
      }
      if (sessions >= limit) {
        asio::co_spawn(io, refuse(std::move(socket)), asio::detached);
        continue;
      }
      ++sessions;
      asio::co_spawn(io, session(std::move(socket)), asio::detached);
    }
    if (spare < 0) spare = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  }
}

void Server::Impl::log_accept_failure(int error) {
  if (!accept_failures.note()) return;
  uint64_t count = accept_failures.take();
  spdlog::warn(
      "http: accept failed: {} ({} time{} in the last {} s; open-file limit {}, {} connections open); refusing "
      "clients until descriptors free up",
      std::strerror(error), count, count == 1 ? "" : "s", kLogInterval.count(), descriptor_limit().soft,
      open_total.load());
}

void Server::Impl::log_refusal() {
  refused_total++;
  if (!refusals.note()) return;
  uint64_t count = refusals.take();
  spdlog::warn("http: refused {} connection{} with 503 in the last {} s: {} open, the limit is {} (--max-connections)",
               count, count == 1 ? "" : "s", kLogInterval.count(), sessions, limit);
}

bool Server::Impl::refuse_with_spare() {
  if (spare < 0) spare = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (spare < 0) return false;
  ::close(spare);
  spare = -1;
  int fd = ::accept4(acceptor.native_handle(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  int error = errno;
  if (fd >= 0) {
    log_refusal();
    (void)!::send(fd, kRefusal.data(), kRefusal.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    ::shutdown(fd, SHUT_WR);
    char discard[4096];
    while (::recv(fd, discard, sizeof discard, MSG_DONTWAIT) > 0) {
    }
    ::close(fd);
  }
  spare = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  return fd >= 0 || error == EAGAIN || error == EWOULDBLOCK;
}

awaitable<void> Server::Impl::refuse(tcp::socket socket) {
  auto self = shared_from_this();
  log_refusal();
  error_code ec;
  socket.send(asio::buffer(kRefusal.data(), kRefusal.size()), 0, ec);
  socket.shutdown(tcp::socket::shutdown_send, ec);
  // Closing with the request unread would make the kernel answer with a reset, which can destroy
  // the 503 before the client reads it: read (and drop) what it sends, briefly.
  ++lingering;
  beast::tcp_stream stream(std::move(socket));
  stream.expires_after(std::chrono::seconds(2));
  char discard[4096];
  while (!ec) co_await stream.async_read_some(asio::buffer(discard), asio::redirect_error(asio::use_awaitable, ec));
  --lingering;
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
  std::list<ConnectionState>::iterator registration;
  {
    std::lock_guard lock(mutex);
    if (stopped) {
      --sessions;
      co_return;
    }
    registration = connections.insert(connections.end(), ConnectionState{&stream});
  }
  open_total++;
  ConnectionState& state = *registration;
  beast::flat_buffer buffer;
  Deadline deadline;
  try {
    while (true) {
      // The request is parsed from what the buffer holds, reading only when it holds too little:
      // a whole small request usually came with the previous read.
      // Between requests the connection is idle (a drain closes it) until a byte of the next one.
      state.busy = buffer.size() > 0;
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
        if (n > 0) state.busy = true;
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
      bool keep_alive = parser.keep_alive() && !draining;  // a draining server closes after this answer
      split_target(request);
      request.remote_address = remote;
      StreamWriter writer(stream, buffer, deadline, options, version, keep_alive, request.header("x-request-id"),
                          &state, &draining);
      if (request.method == "HEAD") writer.omit_body();
      std::string failure;
      state.writer = &writer;
      try {
        co_await router.dispatch(request, writer);
      } catch (const std::exception& error) {
        failure = error.what();
      }
      state.writer = nullptr;
      co_await writer.stop_watching();
      if (!failure.empty()) {
        spdlog::error("http: {} {} failed: {}", request.method, request.path, failure);
        if (writer.answered()) break;
        co_await writer.send(error_json(500, "internal error: " + failure, "internal_error"));
      } else if (!writer.answered()) {
        co_await writer.send(error_json(500, "handler sent no response", "internal_error"));
      }
      co_await writer.finish();
      if (!writer.reusable() || draining) break;
    }
  } catch (const std::exception& error) {
    spdlog::warn("http: connection from {} failed: {}", remote, error.what());
  }
  {
    std::lock_guard lock(mutex);
    connections.erase(registration);
  }
  open_total--;
  --sessions;
  error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  stream.socket().close(ignored);
}

Server::Server(asio::io_context& io, Router router, ServerOptions options)
    : impl_(std::make_shared<Impl>(io, std::move(router), options)) {}

Server::~Server() {
  stop();
}

namespace {
std::atomic<bool> reuse_port_enabled{false};
}  // namespace

void set_reuse_port(bool enabled) {
  reuse_port_enabled = enabled;
}

bool reuse_port() {
  return reuse_port_enabled;
}

Result<uint16_t> Server::listen(const HostPort& address) {
  error_code ec;
  auto ip = asio::ip::make_address(address.host == "localhost" ? "127.0.0.1" : address.host, ec);
  if (ec) return make_error(ErrorCode::InvalidArgument, "invalid listen address '" + address.host + "'");
  tcp::endpoint endpoint(ip, address.port);
  auto& acceptor = impl_->acceptor;
  // Opened close-on-exec: a child that inherited it would hold the port after we are gone.
  int fd = ::socket(endpoint.protocol().family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) ec.assign(errno, boost::system::system_category());
  if (!ec) acceptor.assign(endpoint.protocol(), fd, ec);
  if (ec && fd >= 0) ::close(fd);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec && reuse_port()) {
    int one = 1;
    if (::setsockopt(acceptor.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
      ec.assign(errno, boost::system::system_category());
    }
  }
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (!ec) acceptor.non_blocking(true, ec);
  if (ec) {
    return make_error(ErrorCode::Unavailable, "cannot listen on " + address.to_string() + ": " + ec.message());
  }
  impl_->limit = impl_->options.max_connections;
  if (impl_->limit == 0) {
    uint64_t soft = descriptor_limit().soft;
    impl_->limit = static_cast<size_t>(soft > 128 ? soft - 64 : std::max<uint64_t>(soft / 2, 1));
  }
  impl_->max_lingering = std::max<size_t>(4, impl_->limit / 8);
  if (impl_->spare < 0) impl_->spare = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
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
    for (auto& connection : impl->connections) connection.stream->socket().close(ignored);
  });
}

size_t Server::drain(std::chrono::milliseconds timeout) {
  auto impl = impl_;
  asio::post(impl->io, [impl] {
    impl->draining = true;
    error_code ignored;
    impl->acceptor.close(ignored);
    std::lock_guard lock(impl->mutex);
    for (auto& connection : impl->connections) {
      if (connection.endless && connection.writer) {
        connection.writer->drop();
      } else if (!connection.busy || connection.endless) {
        connection.stream->socket().close(ignored);
      }
    }
  });
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (open_connections() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  size_t cut = open_connections();
  stop();
  return cut;
}

size_t Server::open_connections() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->connections.size();
}

size_t Server::max_connections() const {
  return impl_->limit;
}

}  // namespace nebula::http
