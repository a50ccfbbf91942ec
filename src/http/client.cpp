#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <boost/asio/ssl.hpp>
#include <boost/beast/ssl.hpp>
#include <cerrno>
#include <mutex>
#include <unordered_map>
#include <variant>

#include "common/run_blocking.h"
#include "http/beast.h"
#include "http/http.h"

namespace nebula::http {

namespace {
namespace ssl = boost::asio::ssl;
using PlainStream = beast::tcp_stream;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;

// One keep-alive connection, plain or TLS. Plain connections use the tcp_stream directly: the
// only cost of TLS support on them is one branch per I/O operation.
struct Connection {
  explicit Connection(asio::io_context& io) : stream(std::in_place_type<PlainStream>, io) {}
  Connection(asio::io_context& io, std::shared_ptr<ssl::context> context)
      : tls_context(std::move(context)), stream(std::in_place_type<TlsStream>, io, *tls_context) {}
  std::shared_ptr<ssl::context> tls_context;  // declared before stream: outlives it
  std::variant<PlainStream, TlsStream> stream;
  beast::flat_buffer buffer;
  Deadline deadline;  // the stream's timer, re-armed only when it drifted
  std::string pool_key;
  bool reused = false;
  std::chrono::steady_clock::time_point idle_since{};  // when it went back to the pool

  bool is_tls() const { return std::holds_alternative<TlsStream>(stream); }
  // An idle connection is worth keeping while its peer has not closed it (nor, on plain HTTP,
  // sent anything unasked: a 408 or garbage). A peek costs one syscall and no I/O.
  bool still_open() {
    char byte;
    ssize_t got = ::recv(tcp().socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (got < 0) return errno == EAGAIN || errno == EWOULDBLOCK;
    return got > 0 && is_tls();  // TLS peers may send a session ticket after the handshake
  }
  // The TCP layer: timeouts, connect, close.
  beast::tcp_stream& tcp() {
    if (auto* plain = std::get_if<PlainStream>(&stream)) return *plain;
    return std::get<TlsStream>(stream).next_layer();
  }
};

bool is_ip_address(const std::string& host) {
  error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

// The Host header: the port is left out when it is the scheme's default.
std::string host_header(const Url& url) {
  bool default_port = (url.scheme == "https" && url.port == 443) || (url.scheme == "http" && url.port == 80);
  if (!default_port) return HostPort{url.host, url.port}.to_string();
  return url.host.find(':') != std::string::npos ? "[" + url.host + "]" : url.host;
}

Error io_error(const std::string& what, const Url& url, const error_code& ec) {
  ErrorCode code = ec == beast::error::timeout ? ErrorCode::Timeout : ErrorCode::Unavailable;
  return make_error(code,
                    what + " " + url.origin() + ": " + (ec == beast::error::timeout ? "timed out" : ec.message()));
}

// What may not be sent, checked before anything is: a CR or LF in the target or a header would
// end the line and start another header or a second request (smuggling), a NUL truncates it in
// some servers, and a space or other control byte in the target ends the request line early.
// Names are HTTP tokens.
Status check_request_head(const std::string& method, const Url& url, const Headers& headers) {
  auto is_token = [](std::string_view text) {
    if (text.empty()) return false;
    for (unsigned char c : text) {
      if (c <= 0x20 || c >= 0x7f ||
          std::string_view("\"(),/:;<=>?@[\\]{}").find(static_cast<char>(c)) != std::string_view::npos) {
        return false;
      }
    }
    return true;
  };
  auto visible = [](std::string_view text) {
    for (unsigned char c : text) {
      if (c <= 0x20 || c == 0x7f) return false;
    }
    return true;
  };
  if (!is_token(method)) return make_error(ErrorCode::InvalidArgument, "invalid HTTP method");
  if (!visible(url.target) || !visible(url.host)) {
    return make_error(ErrorCode::InvalidArgument,
                      "refusing to send a request whose URL holds a space or a control character (CR, LF, NUL...)");
  }
  for (const auto& header : headers) {
    if (!is_token(header.name)) {
      return make_error(ErrorCode::InvalidArgument, "refusing to send an invalid header name");
    }
    for (unsigned char c : header.value) {
      if (c == '\r' || c == '\n' || c == '\0') {
        return make_error(ErrorCode::InvalidArgument,
                          "refusing to send header " + header.name + ": its value holds CR, LF or NUL");
      }
    }
  }
  return {};
}

// The request head, written by hand (the body follows as a second buffer, not copied): request
// line, Host, User-Agent, the caller's headers, a JSON Content-Type when the caller gave none for
// a body, and Content-Length for a body or a method that carries one. HTTP/1.1, so keep-alive.
// Building it as a Beast message and serializing that cost more than the rest of sending.
std::string request_head(const std::string& method, const Url& url, size_t body_size, const Headers& headers) {
  std::string head;
  head.reserve(160 + 48 * headers.size());
  head.append(method).append(" ").append(url.target).append(" HTTP/1.1\r\nHost: ");
  head.append(host_header(url)).append("\r\nUser-Agent: nebula\r\n");
  bool has_content_type = false;
  for (const auto& header : headers) {
    head.append(header.name).append(": ").append(header.value).append("\r\n");
    if (beast::iequals(header.name, "content-type")) has_content_type = true;
  }
  if (body_size > 0 && !has_content_type) head.append("Content-Type: application/json\r\n");
  if (body_size > 0 || method == "POST" || method == "PUT" || method == "PATCH") {
    head.append("Content-Length: ").append(std::to_string(body_size)).append("\r\n");
  }
  head.append("\r\n");
  return head;
}

Headers to_headers(const bhttp::fields& fields) {
  Headers headers;
  headers.reserve(8);
  for (const auto& field : fields) headers.push_back({std::string(field.name_string()), std::string(field.value())});
  return headers;
}
}  // namespace

struct Client::Impl : std::enable_shared_from_this<Client::Impl> {
  Impl(asio::io_context& io, ClientOptions options) : io(io), options(options) {}
  asio::io_context& io;
  ClientOptions options;
  std::mutex mutex;
  std::shared_ptr<ssl::context> tls;  // made on the first https connection
  std::unordered_map<std::string, std::vector<std::unique_ptr<Connection>>> idle;

  // The TLS client context: TLS 1.2+, peers verified against the system CA store plus
  // options.ca_file.
  Result<std::shared_ptr<ssl::context>> tls_context() {
    std::lock_guard lock(mutex);
    if (tls) return tls;
    auto context = std::make_shared<ssl::context>(ssl::context::tls_client);
    SSL_CTX_set_min_proto_version(context->native_handle(), TLS1_2_VERSION);
    context->set_verify_mode(ssl::verify_peer);
    error_code ec;
    context->set_default_verify_paths(ec);
    if (ec) spdlog::warn("cannot load the system CA certificates: {}", ec.message());
    if (!options.ca_file.empty()) {
      context->load_verify_file(options.ca_file, ec);
      if (ec) {
        return make_error(ErrorCode::InvalidArgument,
                          "cannot load the CA certificates in " + options.ca_file + ": " + ec.message());
      }
    }
    if (!options.cert_file.empty()) {
      context->use_certificate_chain_file(options.cert_file, ec);
      if (!ec) context->use_private_key_file(options.key_file, ssl::context::pem, ec);
      if (ec) {
        return make_error(ErrorCode::InvalidArgument, "cannot load the client certificate " + options.cert_file +
                                                          " and key " + options.key_file + ": " + ec.message());
      }
    }
    tls = context;
    return tls;
  }

  std::chrono::steady_clock::time_point last_sweep{};

  bool worth_keeping(Connection& connection, std::chrono::steady_clock::time_point now) {
    return now - connection.idle_since < options.idle_timeout && connection.still_open();
  }

  // Closes idle connections that timed out or whose peer closed them (an engine that exited
  // leaves them in CLOSE-WAIT), at most once a second; called with the mutex held, on every use
  // of the pool.
  void sweep(std::chrono::steady_clock::time_point now) {
    if (now - last_sweep < std::chrono::seconds(1)) return;
    last_sweep = now;
    for (auto it = idle.begin(); it != idle.end();) {
      std::erase_if(it->second,
                    [&](std::unique_ptr<Connection>& connection) { return !worth_keeping(*connection, now); });
      it = it->second.empty() ? idle.erase(it) : std::next(it);
    }
  }

  std::unique_ptr<Connection> take_idle(const std::string& key) {
    std::lock_guard lock(mutex);
    auto now = std::chrono::steady_clock::now();
    sweep(now);
    auto it = idle.find(key);
    while (it != idle.end() && !it->second.empty()) {
      auto connection = std::move(it->second.back());
      it->second.pop_back();
      if (it->second.empty()) idle.erase(it);
      if (worth_keeping(*connection, now)) {
        connection->reused = true;
        return connection;
      }
      it = idle.find(key);
    }
    return nullptr;
  }

  void give_back(std::unique_ptr<Connection> connection) {
    std::lock_guard lock(mutex);
    auto now = std::chrono::steady_clock::now();
    connection->idle_since = now;
    sweep(now);
    auto& list = idle[connection->pool_key];
    if (list.size() < options.max_idle_per_host) list.push_back(std::move(connection));
  }

  awaitable<Result<std::unique_ptr<Connection>>> connect(const Url& url) {
    std::unique_ptr<Connection> connection;
    if (url.scheme == "https") {
      auto context = tls_context();
      if (!context) co_return context.error();
      connection = std::make_unique<Connection>(io, std::move(context.value()));
    } else {
      connection = std::make_unique<Connection>(io);
    }
    connection->pool_key = url.origin();
    error_code ec;
    tcp::resolver resolver(io);
    auto endpoints = co_await resolver.async_resolve(url.host, std::to_string(url.port),
                                                     asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return io_error("cannot resolve", url, ec);
    connection->deadline.arm(connection->tcp(), options.connect_timeout);
    // Each address in turn, on a socket opened close-on-exec (Asio opens them inheritable).
    ec = asio::error::host_not_found;
    for (const auto& entry : endpoints) {
      auto& socket = connection->tcp().socket();
      error_code ignored;
      socket.close(ignored);
      int fd = ::socket(entry.endpoint().protocol().family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        ec.assign(errno, boost::system::system_category());
        continue;
      }
      socket.assign(entry.endpoint().protocol(), fd, ec);
      if (ec) {
        ::close(fd);
        continue;
      }
      co_await connection->tcp().async_connect(entry.endpoint(), asio::redirect_error(asio::use_awaitable, ec));
      if (!ec || ec == beast::error::timeout) break;
    }
    if (ec) co_return io_error("cannot connect to", url, ec);
    connection->tcp().socket().set_option(tcp::no_delay(true), ec);
    if (connection->is_tls()) {
      auto handshake = co_await tls_handshake(std::get<TlsStream>(connection->stream), url);
      connection->deadline.reset();  // the handshake set the stream's timer itself
      if (!handshake) co_return handshake.error();
    }
    co_return std::move(connection);
  }

  // SNI, then the handshake, verifying the certificate chain and that it names url.host.
  awaitable<Status> tls_handshake(TlsStream& stream, const Url& url) {
    SSL* handle = stream.native_handle();
    if (is_ip_address(url.host)) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(handle), url.host.c_str());  // no SNI for an address
    } else {
      SSL_set_tlsext_host_name(handle, url.host.c_str());
      SSL_set1_host(handle, url.host.c_str());
    }
    error_code ec;
    stream.next_layer().expires_after(options.connect_timeout);
    co_await stream.async_handshake(ssl::stream_base::client, asio::redirect_error(asio::use_awaitable, ec));
    if (!ec) co_return Status();
    std::string reason = ec == beast::error::timeout ? "timed out" : ec.message();
    long verified = SSL_get_verify_result(handle);
    if (verified != X509_V_OK) reason += std::string(" (") + X509_verify_cert_error_string(verified) + ")";
    co_return make_error(ec == beast::error::timeout ? ErrorCode::Timeout : ErrorCode::Unavailable,
                         "TLS handshake with " + HostPort{url.host, url.port}.to_string() + " failed: " + reason);
  }

  struct Sent {
    std::unique_ptr<Connection> connection;
    std::unique_ptr<bhttp::response_parser<bhttp::buffer_body>> parser;
  };

  // Sends the request and reads the response header, on a pooled connection when one is idle. A
  // pooled connection that the peer closed meanwhile fails before any response byte: retry once
  // on a fresh one.
  awaitable<Result<Sent>> send(const std::string& method, const Url& url, const std::string& body,
                               const Headers& headers, std::chrono::milliseconds timeout,
                               std::function<void(std::function<void()>)> set_closer) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      Sent sent;
      sent.connection = attempt == 0 ? take_idle(url.origin()) : nullptr;
      if (!sent.connection) {
        auto fresh = co_await connect(url);
        if (!fresh) co_return fresh.error();
        sent.connection = std::move(fresh.value());
      }
      sent.parser = std::make_unique<bhttp::response_parser<bhttp::buffer_body>>();
      sent.parser->body_limit(options.body_limit);
      const std::string head = request_head(method, url, body.size(), headers);
      const std::array<asio::const_buffer, 2> message = {asio::buffer(head), asio::buffer(body)};
      error_code ec;
      auto& connection = *sent.connection;
      if (set_closer) {
        set_closer([&connection] {
          error_code ignored;
          connection.tcp().socket().close(ignored);
        });
      }
      connection.deadline.arm(connection.tcp(), timeout);
      if (auto* plain = std::get_if<PlainStream>(&connection.stream)) {
        // Sent at once when the socket takes it all, read as soon as the head is in the buffer:
        // no composed operations and, for a small answer, one read.
        // (The timeout armed above covers the send and the head.)
        ec = co_await send_buffers(*plain, message);
        while (!ec && parse_buffered(*sent.parser, connection.buffer, ec, /*head_only=*/true)) {
          size_t n = co_await plain->async_read_some(connection.buffer.prepare(16384),
                                                     asio::redirect_error(asio::use_awaitable, ec));
          connection.buffer.commit(n);
          if (ec == asio::error::eof && sent.parser->got_some()) ec = bhttp::error::partial_message;
        }
        if (ec == asio::error::eof) ec = bhttp::error::end_of_stream;
      } else {
        auto& tls = std::get<TlsStream>(connection.stream);
        co_await asio::async_write(tls, message, asio::redirect_error(asio::use_awaitable, ec));
        if (!ec) {
          co_await bhttp::async_read_header(tls, connection.buffer, *sent.parser,
                                            asio::redirect_error(asio::use_awaitable, ec));
        }
      }
      if (set_closer) set_closer(nullptr);
      if (!ec) co_return std::move(sent);
      if (connection.reused && ec != beast::error::timeout && ec != asio::error::operation_aborted &&
          !(set_closer && ec == asio::error::bad_descriptor)) {
        continue;
      }
      co_return io_error(ec == beast::error::timeout ? "no response from" : "request failed to", url, ec);
    }
    co_return make_error(ErrorCode::Unavailable, "request to " + url.origin() + " failed");
  }
};

class PooledStreamingResponse final : public StreamingResponse {
 public:
  PooledStreamingResponse(std::shared_ptr<Client::Impl> client, std::unique_ptr<Connection> connection,
                          std::unique_ptr<bhttp::response_parser<bhttp::buffer_body>> parser, Url url)
      : client_(std::move(client)),
        connection_(std::move(connection)),
        parser_(std::move(parser)),
        url_(std::move(url)) {
    status = static_cast<int>(parser_->get().result_int());
    headers = to_headers(parser_->get().base());
  }

  ~PooledStreamingResponse() override { cancel(); }

  // Returns every body byte that has arrived, however many chunks that is: what is already
  // buffered is parsed without waiting, and the socket is read in large slices, so a relay that
  // fell behind catches up with one read and one write instead of one per chunk.
  awaitable<Result<std::string>> read(std::chrono::milliseconds idle_timeout) override {
    if (ended_) co_return std::string();
    if (!connection_) co_return make_error(ErrorCode::Unavailable, "response was cancelled");
    auto& connection = *connection_;
    std::string out;
    while (true) {
      error_code ec;
      drain(connection, out, ec);
      if (ec) {
        connection_.reset();
        co_return io_error("reading the response from", url_, ec);
      }
      if (parser_->is_done()) {
        // The body ended: hand the connection back for reuse when the peer allows it.
        ended_ = true;
        if (parser_->get().keep_alive()) client_->give_back(std::move(connection_));
        connection_.reset();
        co_return out;
      }
      if (!out.empty()) co_return out;
      size_t n = 0;
      connection.deadline.arm(connection.tcp(), idle_timeout);
      auto space = connection.buffer.prepare(kReadSlice);
      reading_ = true;
      if (auto* plain = std::get_if<PlainStream>(&connection.stream)) {
        n = co_await plain->async_read_some(space, asio::redirect_error(asio::use_awaitable, ec));
      } else {
        n = co_await std::get<TlsStream>(connection.stream)
                .async_read_some(space, asio::redirect_error(asio::use_awaitable, ec));
      }
      reading_ = false;
      if (cancelled_) {
        // cancel() ran while this read waited: it closed the socket and left the connection for
        // this read to free, now that nothing uses it.
        connection_.reset();
        co_return make_error(ErrorCode::Unavailable, "response was cancelled");
      }
      connection.buffer.commit(n);
      if (ec == asio::error::eof || ec == ssl::error::stream_truncated) {
        // A body delimited by the end of the connection (a TLS peer may end it without a
        // close_notify, which HTTP clients accept).
        if (parser_->need_eof()) {
          error_code eof;
          parser_->put_eof(eof);
          ec = eof;
        } else if (n > 0) {
          ec = {};  // parse what came with the end first; the next read reports it
        }
      }
      if (ec) {
        connection_.reset();
        co_return io_error("reading the response from", url_, ec);
      }
    }
  }

  void cancel() override {
    if (!connection_) return;
    error_code ignored;
    // A TLS connection is closed without a TLS shutdown: it would wait for the peer.
    connection_->tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
    connection_->tcp().socket().close(ignored);
    // A read waiting on the socket still uses the connection: it frees it when it resumes.
    if (reading_) {
      cancelled_ = true;
      return;
    }
    connection_.reset();
  }

 private:
  std::shared_ptr<Client::Impl> client_;
  std::unique_ptr<Connection> connection_;
  std::unique_ptr<bhttp::response_parser<bhttp::buffer_body>> parser_;
  Url url_;
  bool ended_ = false;
  bool reading_ = false;    // read() waits on the socket
  bool cancelled_ = false;  // cancel() ran meanwhile

  static constexpr size_t kReadSlice = 16384;

  // Parses what is in the connection's buffer into out, until the buffer runs dry or the body ends.
  void drain(Connection& connection, std::string& out, error_code& ec) {
    while (!parser_->is_done() && connection.buffer.size() > 0) {
      size_t before = out.size();
      out.resize(before + std::max<size_t>(connection.buffer.size(), 512));
      auto& body = parser_->get().body();
      body.data = out.data() + before;
      body.size = out.size() - before;
      size_t used = parser_->put(connection.buffer.data(), ec);
      connection.buffer.consume(used);
      out.resize(out.size() - body.size);
      if (ec == bhttp::error::need_more) {
        ec = {};
        return;
      }
      if (ec == bhttp::error::need_buffer) {
        ec = {};
        continue;
      }
      if (ec) return;
      if (used == 0 && out.size() == before) return;
    }
  }
};

awaitable<Result<std::string>> StreamingResponse::read_all(std::chrono::milliseconds idle_timeout) {
  std::string all;
  while (true) {
    auto piece = co_await read(idle_timeout);
    if (!piece) co_return piece.error();
    if (piece->empty()) co_return all;
    if (all.empty()) {
      all = std::move(*piece);
    } else {
      all += *piece;
    }
  }
}

Client::Client(asio::io_context& io, ClientOptions options) : impl_(std::make_shared<Impl>(io, options)) {}
Client::~Client() = default;

void Client::close_idle(const std::string& origin) {
  std::vector<std::unique_ptr<Connection>> connections;
  std::lock_guard lock(impl_->mutex);
  if (auto it = impl_->idle.find(origin); it != impl_->idle.end()) {
    connections = std::move(it->second);
    impl_->idle.erase(it);
  }
}

size_t Client::idle_connections() const {
  std::lock_guard lock(impl_->mutex);
  size_t count = 0;
  for (const auto& [origin, connections] : impl_->idle) count += connections.size();
  return count;
}

awaitable<Result<std::unique_ptr<StreamingResponse>>> Client::open(std::string method, std::string url_text,
                                                                   std::string body, Headers headers,
                                                                   std::chrono::milliseconds first_byte_timeout,
                                                                   Cancellation* cancellation) {
  auto url = Url::parse(url_text);
  if (!url) co_return url.error();
  if (auto checked = check_request_head(method, *url, headers); !checked) co_return checked.error();
  if (cancellation && cancellation->cancelled()) co_return make_error(ErrorCode::Unavailable, "cancelled");
  std::function<void(std::function<void()>)> set_closer;
  if (cancellation)
    set_closer = [cancellation](std::function<void()> close) { cancellation->close_ = std::move(close); };
  auto sent = co_await impl_->send(method, *url, body, headers, first_byte_timeout, set_closer);
  if (cancellation && cancellation->cancelled()) co_return make_error(ErrorCode::Unavailable, "cancelled");
  if (!sent) co_return sent.error();
  co_return std::unique_ptr<StreamingResponse>(std::make_unique<PooledStreamingResponse>(
      impl_, std::move(sent->connection), std::move(sent->parser), std::move(url.value())));
}

awaitable<Result<Response>> Client::request(std::string method, std::string url, std::string body, Headers headers,
                                            std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  auto stream = co_await open(std::move(method), std::move(url), std::move(body), std::move(headers), timeout);
  if (!stream) co_return stream.error();
  Response response;
  response.status = (*stream)->status;
  response.headers = (*stream)->headers;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) co_return make_error(ErrorCode::Timeout, "response body timed out");
    auto piece = co_await (*stream)->read(left);
    if (!piece) co_return piece.error();
    if (piece->empty()) break;
    response.body += *piece;
  }
  co_return response;
}

BlockingClient::BlockingClient(ClientOptions options)
    : io_(std::make_unique<asio::io_context>()), client_(std::make_unique<Client>(*io_, options)) {}
BlockingClient::~BlockingClient() {
  client_.reset();
  io_.reset();
}

Result<Response> BlockingClient::request(const std::string& method, const std::string& url, const std::string& body,
                                         Headers headers, std::chrono::milliseconds timeout) {
  return run_blocking(*io_, client_->request(method, url, body, std::move(headers), timeout));
}

Result<int> BlockingClient::stream(const std::string& method, const std::string& url, const std::string& body,
                                   Headers headers, const std::function<bool(std::string_view)>& on_data,
                                   std::chrono::milliseconds idle_timeout) {
  auto task = [&]() -> awaitable<Result<int>> {
    auto response = co_await client_->open(method, url, body, std::move(headers), idle_timeout);
    if (!response) co_return response.error();
    auto& stream = *response.value();
    while (true) {
      auto piece = co_await stream.read(idle_timeout);
      if (!piece) co_return piece.error();
      if (piece->empty() || !on_data(*piece)) break;
    }
    stream.cancel();
    co_return stream.status;
  };
  return run_blocking(*io_, task());
}

}  // namespace nebula::http
