#include <spdlog/spdlog.h>

#include <mutex>
#include <unordered_map>

#include "http/beast.h"
#include "http/http.h"

namespace nebula::http {

namespace {
struct Connection {
  explicit Connection(asio::io_context& io) : stream(io) {}
  beast::tcp_stream stream;
  beast::flat_buffer buffer;
  std::string pool_key;
  bool reused = false;
};

Error io_error(const std::string& what, const Url& url, const error_code& ec) {
  ErrorCode code = ec == beast::error::timeout ? ErrorCode::Timeout : ErrorCode::Unavailable;
  return make_error(code,
                    what + " " + url.origin() + ": " + (ec == beast::error::timeout ? "timed out" : ec.message()));
}

bhttp::request<bhttp::string_body> make_request(const std::string& method, const Url& url, std::string body,
                                                const Headers& headers) {
  bhttp::request<bhttp::string_body> message;
  message.method_string(method);
  message.target(url.target);
  message.version(11);
  message.set(bhttp::field::host, HostPort{url.host, url.port}.to_string());
  message.set(bhttp::field::user_agent, "nebula");
  bool has_content_type = false;
  for (const auto& header : headers) {
    message.insert(header.name, header.value);
    if (beast::iequals(header.name, "content-type")) has_content_type = true;
  }
  if (!body.empty() && !has_content_type) message.set(bhttp::field::content_type, "application/json");
  message.body() = std::move(body);
  message.keep_alive(true);
  message.prepare_payload();
  return message;
}

Headers to_headers(const bhttp::fields& fields) {
  Headers headers;
  for (const auto& field : fields) headers.push_back({std::string(field.name_string()), std::string(field.value())});
  return headers;
}
}  // namespace

struct Client::Impl : std::enable_shared_from_this<Client::Impl> {
  Impl(asio::io_context& io, ClientOptions options) : io(io), options(options) {}
  asio::io_context& io;
  ClientOptions options;
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<std::unique_ptr<Connection>>> idle;

  std::unique_ptr<Connection> take_idle(const std::string& key) {
    std::lock_guard lock(mutex);
    auto it = idle.find(key);
    if (it == idle.end() || it->second.empty()) return nullptr;
    auto connection = std::move(it->second.back());
    it->second.pop_back();
    connection->reused = true;
    return connection;
  }

  void give_back(std::unique_ptr<Connection> connection) {
    std::lock_guard lock(mutex);
    auto& list = idle[connection->pool_key];
    if (list.size() < options.max_idle_per_host) list.push_back(std::move(connection));
  }

  awaitable<Result<std::unique_ptr<Connection>>> connect(const Url& url) {
    auto connection = std::make_unique<Connection>(io);
    connection->pool_key = url.origin();
    error_code ec;
    tcp::resolver resolver(io);
    auto endpoints = co_await resolver.async_resolve(url.host, std::to_string(url.port),
                                                     asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return io_error("cannot resolve", url, ec);
    connection->stream.expires_after(options.connect_timeout);
    co_await connection->stream.async_connect(endpoints, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return io_error("cannot connect to", url, ec);
    connection->stream.socket().set_option(tcp::no_delay(true), ec);
    co_return std::move(connection);
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
      auto message = make_request(method, url, body, headers);
      error_code ec;
      auto& connection = *sent.connection;
      if (set_closer) {
        set_closer([&connection] {
          error_code ignored;
          connection.stream.socket().close(ignored);
        });
      }
      connection.stream.expires_after(timeout);
      co_await bhttp::async_write(connection.stream, message, asio::redirect_error(asio::use_awaitable, ec));
      if (!ec) {
        co_await bhttp::async_read_header(connection.stream, connection.buffer, *sent.parser,
                                          asio::redirect_error(asio::use_awaitable, ec));
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

  awaitable<Result<std::string>> read(std::chrono::milliseconds idle_timeout) override {
    if (!connection_) co_return make_error(ErrorCode::Unavailable, "response was cancelled");
    char chunk[16384];
    while (!parser_->is_done()) {
      auto& body = parser_->get().body();
      body.data = chunk;
      body.size = sizeof chunk;
      error_code ec;
      read_deadline_.arm(connection_->stream, idle_timeout);
      co_await bhttp::async_read_some(connection_->stream, connection_->buffer, *parser_,
                                      asio::redirect_error(asio::use_awaitable, ec));
      if (ec == bhttp::error::need_buffer) ec = {};
      if (ec) {
        connection_.reset();
        co_return io_error("reading the response from", url_, ec);
      }
      size_t produced = sizeof chunk - parser_->get().body().size;
      if (produced > 0) co_return std::string(chunk, produced);
    }
    // The body ended: hand the connection back for reuse when the peer allows it.
    if (parser_->get().keep_alive()) client_->give_back(std::move(connection_));
    connection_.reset();
    co_return std::string();
  }

  void cancel() override {
    if (!connection_) return;
    error_code ignored;
    connection_->stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    connection_->stream.socket().close(ignored);
    connection_.reset();
  }

 private:
  std::shared_ptr<Client::Impl> client_;
  std::unique_ptr<Connection> connection_;
  std::unique_ptr<bhttp::response_parser<bhttp::buffer_body>> parser_;
  Url url_;
  Deadline read_deadline_;
};

awaitable<Result<std::string>> StreamingResponse::read_all(std::chrono::milliseconds idle_timeout) {
  std::string all;
  while (true) {
    auto piece = co_await read(idle_timeout);
    if (!piece) co_return piece.error();
    if (piece->empty()) co_return all;
    all += *piece;
  }
}

Client::Client(asio::io_context& io, ClientOptions options) : impl_(std::make_shared<Impl>(io, options)) {}
Client::~Client() = default;

awaitable<Result<std::unique_ptr<StreamingResponse>>> Client::open(std::string method, std::string url_text,
                                                                   std::string body, Headers headers,
                                                                   std::chrono::milliseconds first_byte_timeout,
                                                                   Cancellation* cancellation) {
  auto url = Url::parse(url_text);
  if (!url) co_return url.error();
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

namespace {
template <typename T>
T run_blocking(asio::io_context& io, awaitable<T> task) {
  std::optional<T> result;
  std::exception_ptr failure;
  asio::co_spawn(io, std::move(task), [&](std::exception_ptr error, T value) {
    failure = error;
    if (!error) result.emplace(std::move(value));
  });
  io.restart();
  io.run();
  if (failure) std::rethrow_exception(failure);
  return std::move(*result);
}
}  // namespace

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
