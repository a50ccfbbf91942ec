#include "http/http.h"
#include "http/stream_check.h"
#include "http/test_server.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <thread>
#include <vector>

#include "http/sse.h"
#include "http/status.h"

namespace nebula::http {

namespace testing {
Handler five_events_route(asio::io_context& io) {
  return [&io](Request&, ResponseWriter& writer) -> awaitable<void> {
    co_await writer.start_stream(200, event_stream_headers());
    asio::steady_timer timer(io);
    for (int i = 0; i < 5; ++i) {
      if (!co_await writer.write(format_sse(std::to_string(i)))) co_return;
      timer.expires_after(std::chrono::milliseconds(5));
      co_await timer.async_wait(asio::use_awaitable);
    }
    co_await writer.finish();
  };
}

void expect_five_events(BlockingClient& client, const std::string& url) {
  std::vector<std::string> pieces;
  SseParser parser;
  std::vector<SseEvent> events;
  auto status = client.stream("GET", url, "", {}, [&](std::string_view data) {
    pieces.emplace_back(data);
    parser.feed(data, events);
    return true;
  });
  ASSERT_TRUE(status) << status.error().message;
  EXPECT_EQ(*status, 200);
  ASSERT_EQ(events.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(events[i].data, std::to_string(i));
  EXPECT_GE(pieces.size(), 2u) << "chunks were buffered into one read";
}
}  // namespace testing
namespace {

TEST(UrlEncode, RoundTripsThroughTheServersDecoder) {
  EXPECT_EQ(url_encode("chat-1.b_c~"), "chat-1.b_c~");
  EXPECT_EQ(url_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
  for (const std::string& text : std::vector<std::string>{"2026-11-01", "a+b", "100%", "x&model=y", {"\0z", 2}}) {
    EXPECT_EQ(url_decode(url_encode(text)), text);
  }
}

// A scripted upstream on a raw socket: answers each connection's requests with the given raw
// responses in turn (then closes it when `close_after` is set), so the client's body reader meets
// framings a well-behaved server never sends.
class RawUpstream {
 public:
  RawUpstream(std::vector<std::string> answers, bool close_after) : answers_(std::move(answers)) {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof address);
    ::listen(listener_, 4);
    socklen_t length = sizeof address;
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this, close_after] {
      int connection = ::accept(listener_, nullptr, nullptr);
      if (connection < 0) return;
      for (const auto& answer : answers_) {
        char request[4096];
        if (::recv(connection, request, sizeof request, 0) <= 0) break;  // one small request
        ::send(connection, answer.data(), answer.size(), MSG_NOSIGNAL);
      }
      if (close_after) ::shutdown(connection, SHUT_WR);
      char rest[256];
      while (::recv(connection, rest, sizeof rest, 0) > 0) {
      }
      ::close(connection);
    });
  }
  ~RawUpstream() {
    ::shutdown(listener_, SHUT_RDWR);
    ::close(listener_);
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/"; }

 private:
  std::vector<std::string> answers_;
  int listener_ = -1;
  int port_ = 0;
  std::thread thread_;
};

TEST(ClientBody, ManyChunksInOneSegmentAreReadWholeAndTheConnectionIsReused) {
  std::string chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
  std::string expected;
  for (int i = 0; i < 200; ++i) {
    std::string piece = "data: event " + std::to_string(i) + "\n\n";
    chunked += fmt::format("{:x}\r\n{}\r\n", piece.size(), piece);
    expected += piece;
  }
  chunked += "0\r\n\r\n";
  // Both answers come on one connection: the first body's end was found exactly.
  RawUpstream upstream({chunked, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"}, false);
  BlockingClient client;
  auto first = client.request("GET", upstream.url());
  ASSERT_TRUE(first) << first.error().message;
  EXPECT_EQ(first->body, expected);
  auto second = client.request("GET", upstream.url());
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_EQ(second->body, "hello");
}

TEST(ClientBody, ABodyEndedByTheConnectionIsReadWhole) {
  RawUpstream upstream({"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"}, true);
  BlockingClient client;
  auto response = client.request("GET", upstream.url());
  ASSERT_TRUE(response) << response.error().message;
  EXPECT_EQ(response->body, "until the end");
}

TEST(ClientBody, BrokenChunkFramingIsAnErrorNotAHang) {
  for (std::string body : {std::string("zz\r\nabc\r\n0\r\n\r\n"), std::string("5\r\nabc")}) {
    RawUpstream upstream({"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body}, true);
    BlockingClient client;
    auto response = client.request("GET", upstream.url(), "", {}, std::chrono::seconds(5));
    EXPECT_FALSE(response) << "accepted " << body;
  }
}

TEST(ErrorCodeOf, MapsTheStatusesTheServerAnswers) {
  EXPECT_EQ(error_code_of(400), ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of(401), ErrorCode::Unauthenticated);
  EXPECT_EQ(error_code_of(403), ErrorCode::PermissionDenied);
  EXPECT_EQ(error_code_of(404), ErrorCode::NotFound);
  EXPECT_EQ(error_code_of(409), ErrorCode::AlreadyExists);
  EXPECT_EQ(error_code_of(413), ErrorCode::TooLarge);
  EXPECT_EQ(error_code_of(429), ErrorCode::ResourceExhausted);
  EXPECT_EQ(error_code_of(504), ErrorCode::Timeout);
  for (int other : {500, 502, 503, 418, 0, -1, 99999}) EXPECT_EQ(error_code_of(other), ErrorCode::Unavailable) << other;
}

TEST(Sse, FormatsMultiLineData) {
  EXPECT_EQ(format_sse("{\"a\":1}"), "data: {\"a\":1}\n\n");
  EXPECT_EQ(format_sse("one\ntwo", "update"), "event: update\ndata: one\ndata: two\n\n");
}

TEST(Sse, ParsesAcrossArbitrarySplits) {
  std::string wire = "data: {\"x\":1}\n\n: comment\r\nevent: e\r\ndata:a\r\ndata: b\r\n\r\ndata: [DONE]\n\n";
  for (size_t split = 0; split <= wire.size(); ++split) {
    SseParser parser;
    std::vector<SseEvent> events;
    parser.feed(std::string_view(wire).substr(0, split), events);
    parser.feed(std::string_view(wire).substr(split), events);
    ASSERT_EQ(events.size(), 3u) << "split at " << split;
    EXPECT_EQ(events[0].data, "{\"x\":1}");
    EXPECT_EQ(events[1].event, "e");
    EXPECT_EQ(events[1].data, "a\nb");
    EXPECT_EQ(events[2].data, "[DONE]");
    EXPECT_EQ(parser.pending(), 0u);
  }
}

TEST(Sse, ByteByByteWithBareCarriageReturns) {
  std::string wire = "data: one\rdata: two\r\rdata: three\n\n";
  SseParser parser;
  std::vector<SseEvent> events;
  for (char c : wire) parser.feed(std::string_view(&c, 1), events);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].data, "one\ntwo");
  EXPECT_EQ(events[1].data, "three");
}

TEST(Url, Parses) {
  auto url = Url::parse("http://127.0.0.1:8080/v1/models?x=1");
  ASSERT_TRUE(url);
  EXPECT_EQ(url->host, "127.0.0.1");
  EXPECT_EQ(url->port, 8080);
  EXPECT_EQ(url->target, "/v1/models?x=1");
  EXPECT_EQ(Url::parse("http://localhost")->port, 80);
  EXPECT_FALSE(Url::parse("ftp://x"));
  EXPECT_FALSE(Url::parse("localhost:80"));
}

// A server on a loopback port with a few routes, run on its own thread.
class ServerTest : public ::testing::Test {
 protected:
  void start(ServerOptions options) {
    Router router;
    router.add("GET", "/hello/{name}", [](Request& request, ResponseWriter& writer) -> awaitable<void> {
      co_await writer.send(Response::text(200, "hello " + request.params["name"] + " " + request.query_or("q")));
    });
    router.add("POST", "/echo", [](Request& request, ResponseWriter& writer) -> awaitable<void> {
      co_await writer.send(Response::text(200, request.body));
    });
    router.add("GET", "/stream", testing::five_events_route(server_.io()));
    router.add("GET", "/slow", [this](Request&, ResponseWriter& writer) -> awaitable<void> {
      // Answers after 5 s unless the client leaves first.
      asio::steady_timer timer(server_.io(), std::chrono::seconds(5));
      writer.on_client_gone([&timer] { timer.cancel(); });
      slow_started_ = true;
      boost::system::error_code ignored;
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
      if (writer.client_gone()) {
        gone_seen_ = true;
        co_return;
      }
      co_await writer.send(Response::text(200, "late"));
    });
    router.add("GET", "/throws", [](Request&, ResponseWriter&) -> awaitable<void> {
      throw std::runtime_error("boom");
      co_return;
    });
    auto port = server_.start(std::move(router), options);
    ASSERT_TRUE(port) << port.error().message;
    port_ = *port;
  }
  void TearDown() override { server_.stop(); }
  std::string base() const { return server_.url(); }

  // Sends raw bytes on a fresh socket and returns everything read until the server closes it.
  std::string raw_exchange(const std::string& bytes, bool half_close = false) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port_);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    size_t sent = 0;
    while (sent < bytes.size()) {
      ssize_t n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
    if (half_close) ::shutdown(fd, SHUT_WR);
    std::string reply;
    char buffer[4096];
    ssize_t n;
    while ((n = ::recv(fd, buffer, sizeof buffer, 0)) > 0) reply.append(buffer, static_cast<size_t>(n));
    ::close(fd);
    return reply;
  }

  // A connection driven by hand: what it sends, and what it has read so far.
  struct RawConnection {
    int fd = -1;
    std::string received;
    explicit RawConnection(uint16_t port) {
      fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in address{};
      address.sin_family = AF_INET;
      address.sin_port = htons(port);
      address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
      timeval five_seconds{5, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &five_seconds, sizeof five_seconds);
    }
    ~RawConnection() { ::close(fd); }
    void send(const std::string& bytes) {
      EXPECT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
    }
    // Reads until `text` has arrived (true), or the connection closed or went quiet for 5 s.
    bool read_until(std::string_view text) {
      char buffer[4096];
      while (received.find(text) == std::string::npos) {
        ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
        if (n <= 0) return false;
        received.append(buffer, static_cast<size_t>(n));
      }
      return true;
    }
    // Reads until the server closes the connection: false when it stays open for 5 s.
    bool read_to_close() {
      char buffer[4096];
      while (true) {
        ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
        if (n == 0) return true;
        if (n < 0) return false;
        received.append(buffer, static_cast<size_t>(n));
      }
    }
  };

  testing::ServerThread server_;
  uint16_t port_ = 0;
  std::atomic<bool> gone_seen_{false};
  std::atomic<bool> slow_started_{false};
};

TEST_F(ServerTest, RequestsInPiecesAndPipelinedRequestsAreAnsweredInOrder) {
  start({});
  RawConnection connection(port_);
  // A head split mid-field and a body in two pieces...
  connection.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-");
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  connection.send("Length: 5\r\n\r\nab");
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  // ...then the rest of the body with two more requests behind it in the same segment.
  connection.send(
      "cdeGET /hello/p HTTP/1.1\r\nHost: x\r\n\r\nGET /hello/q?q=last HTTP/1.1\r\nHost: x\r\n"
      "Connection: close\r\n\r\n");
  ASSERT_TRUE(connection.read_to_close()) << connection.received;
  const std::string& reply = connection.received;
  size_t first = reply.find("\r\n\r\nabcde");
  size_t second = reply.find("hello p ");
  size_t third = reply.find("hello q last");
  ASSERT_NE(first, std::string::npos) << reply;
  ASSERT_NE(second, std::string::npos) << reply;
  ASSERT_NE(third, std::string::npos) << reply;
  EXPECT_LT(first, second);
  EXPECT_LT(second, third);
  EXPECT_EQ(reply.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << reply;
  // Every answer names its framing and carries an id; only the last one closes.
  size_t heads = 0;
  for (size_t at = reply.find("Content-Length: "); at != std::string::npos;
       at = reply.find("Content-Length: ", at + 1)) {
    ++heads;
  }
  EXPECT_EQ(heads, 3u) << reply;
  size_t close_at = reply.find("Connection: close");
  EXPECT_GT(close_at, second) << reply;
  EXPECT_NE(reply.find("X-Request-Id: req-"), std::string::npos) << reply;
}

TEST_F(ServerTest, AClientWaitingFor100ContinueHearsItAndAChunkedBodyIsJoined) {
  start({});
  RawConnection connection(port_);
  connection.send("POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n");
  ASSERT_TRUE(connection.read_until("HTTP/1.1 100 Continue\r\n\r\n")) << connection.received;
  connection.send("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
  ASSERT_TRUE(connection.read_until("abcde")) << connection.received;
  EXPECT_NE(connection.received.find("HTTP/1.1 200 OK"), std::string::npos);
}

TEST_F(ServerTest, AnHttp10ClientGetsAnHttp10AnswerAndAClosedConnection) {
  start({});
  RawConnection connection(port_);
  connection.send("GET /hello/old HTTP/1.0\r\n\r\n");
  ASSERT_TRUE(connection.read_to_close()) << connection.received;
  EXPECT_EQ(connection.received.rfind("HTTP/1.0 200 OK\r\n", 0), 0u) << connection.received;
  EXPECT_NE(connection.received.find("hello old"), std::string::npos);
  // One that asks to keep the connection is told so, and may send another request.
  RawConnection kept(port_);
  kept.send("GET /hello/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  ASSERT_TRUE(kept.read_until("hello a")) << kept.received;
  EXPECT_NE(kept.received.find("Connection: keep-alive"), std::string::npos) << kept.received;
  kept.send("GET /hello/b HTTP/1.0\r\n\r\n");
  ASSERT_TRUE(kept.read_to_close());
  EXPECT_NE(kept.received.find("hello b"), std::string::npos) << kept.received;
}

TEST_F(ServerTest, AHeadRequestGetsAHeadWithoutABody) {
  start({});
  RawConnection connection(port_);
  // HEAD has no route here (405); the answer still says how long its body is, and sends none, so
  // the next response on the connection is read from its first byte.
  connection.send("HEAD /hello/x HTTP/1.1\r\nHost: x\r\n\r\nGET /hello/after HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(connection.read_until("hello after")) << connection.received;
  const std::string& reply = connection.received;
  EXPECT_EQ(reply.rfind("HTTP/1.1 405", 0), 0u) << reply;
  size_t first_end = reply.find("\r\n\r\n");
  ASSERT_NE(first_end, std::string::npos);
  EXPECT_NE(reply.substr(0, first_end).find("Content-Length: "), std::string::npos);
  EXPECT_EQ(reply.compare(first_end + 4, 15, "HTTP/1.1 200 OK"), 0) << reply;
}

TEST_F(ServerTest, OversizedHeadersAre431) {
  ServerOptions options;
  options.header_limit = 1024;
  start(options);
  std::string reply = raw_exchange("GET /hello/x HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(4096, 'a') + "\r\n\r\n");
  EXPECT_EQ(reply.rfind("HTTP/1.1 431", 0), 0u) << reply.substr(0, 200);
  EXPECT_NE(reply.find("\"headers_too_large\""), std::string::npos);
}

TEST_F(ServerTest, RoutesParamsQueryAndKeepAlive) {
  start({});
  BlockingClient client;
  for (int i = 0; i < 3; ++i) {  // the same pooled connection serves all three
    auto response = client.request("GET", base() + "/hello/world?q=a%20b");
    ASSERT_TRUE(response) << response.error().message;
    EXPECT_EQ(response->status, 200);
    EXPECT_EQ(response->body, "hello world a b");
  }
  EXPECT_EQ(server_.server().open_connections(), 1u);
  auto echo = client.request("POST", base() + "/echo", "payload");
  ASSERT_TRUE(echo);
  EXPECT_EQ(echo->body, "payload");
  EXPECT_EQ(client.request("GET", base() + "/nope")->status, 404);
  EXPECT_EQ(client.request("DELETE", base() + "/echo")->status, 405);
  auto thrown = client.request("GET", base() + "/throws");
  ASSERT_TRUE(thrown);
  EXPECT_EQ(thrown->status, 500);
  EXPECT_NE(thrown->body.find("boom"), std::string::npos);
}

TEST_F(ServerTest, StreamsChunksAsTheyAreWritten) {
  start({});
  BlockingClient client;
  testing::expect_five_events(client, base() + "/stream");
}

TEST_F(ServerTest, OversizedBodyIs413) {
  ServerOptions options;
  options.body_limit = 1024;
  start(options);
  BlockingClient client;
  auto response = client.request("POST", base() + "/echo", std::string(4096, 'x'));
  ASSERT_TRUE(response) << response.error().message;
  EXPECT_EQ(response->status, 413);
  EXPECT_EQ(client.request("POST", base() + "/echo", std::string(512, 'x'))->status, 200);
}

TEST_F(ServerTest, MalformedRequestIs400) {
  start({});
  std::string reply = raw_exchange("THIS IS NOT HTTP\r\n\r\n");
  EXPECT_EQ(reply.rfind("HTTP/1.1 400", 0), 0u) << reply;
  reply = raw_exchange("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n");
  EXPECT_EQ(reply.rfind("HTTP/1.1 400", 0), 0u) << reply;
}

TEST_F(ServerTest, SlowClientTimesOut) {
  ServerOptions options;
  options.read_timeout = std::chrono::milliseconds(200);
  start(options);
  auto started = std::chrono::steady_clock::now();
  // Half a request line, then silence: the server must close the connection on its own.
  std::string reply = raw_exchange("GET /hello/x HTTP/1.1\r\nHo");
  auto waited = std::chrono::steady_clock::now() - started;
  EXPECT_EQ(reply, "");
  EXPECT_LT(waited, std::chrono::seconds(5));
  // The server closes the socket, then its session ends and the count drops: wait for that.
  for (int i = 0; i < 500 && server_.server().open_connections() != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(server_.server().open_connections(), 0u);
}

TEST_F(ServerTest, ATricklingClientIsCutOffAtTheReadTimeout) {
  ServerOptions options;
  options.read_timeout = std::chrono::milliseconds(300);
  start(options);
  RawConnection connection(port_);
  connection.send("GET /hello/x HTTP/1.1\r\n");
  // A header line every 50 ms, never the blank line that ends the head: each read is well within
  // the timeout, the request as a whole is not.
  auto started = std::chrono::steady_clock::now();
  bool closed = false;
  while (!closed && std::chrono::steady_clock::now() - started < std::chrono::seconds(3)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::string line = "X-Slow: a\r\n";
    closed = ::send(connection.fd, line.data(), line.size(), MSG_NOSIGNAL) < 0;
    if (!closed) {
      char byte;
      closed = ::recv(connection.fd, &byte, 1, MSG_DONTWAIT) == 0;
    }
  }
  EXPECT_TRUE(closed) << "the server kept a trickling request open for 3 s";
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(2));
}

TEST_F(ServerTest, AHandlerLearnsThatItsClientLeft) {
  start({});
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port_);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  std::string request = "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(fd, request.data(), request.size(), MSG_NOSIGNAL), static_cast<ssize_t>(request.size()));
  for (int i = 0; i < 500 && !slow_started_; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_TRUE(slow_started_) << "the handler never ran";
  ::close(fd);
  for (int i = 0; i < 100 && !gone_seen_; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(gone_seen_) << "the handler was not told before its 5 s timer";
  // A client that stays gets its answer, and the connection serves the next request.
  BlockingClient client;
  auto hello = client.request("GET", base() + "/hello/a");
  ASSERT_TRUE(hello);
  EXPECT_EQ(hello->status, 200);
}

TEST_F(ServerTest, ManyIdleKeepAliveConnectionsNeedNoThreads) {
  start({});
  std::vector<int> sockets;
  for (int i = 0; i < 500; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port_);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    sockets.push_back(fd);
  }
  for (int i = 0; i < 100 && server_.server().open_connections() < sockets.size(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(server_.server().open_connections(), sockets.size());
  // The single server thread still answers promptly.
  BlockingClient client;
  EXPECT_EQ(client.request("GET", base() + "/hello/y")->status, 200);
  for (int fd : sockets) ::close(fd);
}

}  // namespace
}  // namespace nebula::http
