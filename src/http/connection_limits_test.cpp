// The server's connection limit, graceful drain and close-on-exec sockets, and the client pool's
// eviction of connections their peer closed.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <functional>
#include <future>
#include <thread>

#include "http/http.h"
#include "http/test_server.h"

namespace nebula::http {
namespace {

using namespace std::chrono_literals;

bool eventually(const std::function<bool()>& predicate) {
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!predicate()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

// A client socket driven by hand.
struct Raw {
  int fd = -1;
  explicit Raw(uint16_t port) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    timeval five_seconds{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &five_seconds, sizeof five_seconds);
  }
  ~Raw() { ::close(fd); }
  void send(const std::string& bytes) { ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL); }
  // Everything until the server closes (or 5 s of silence).
  std::string read_to_close() {
    std::string out;
    char buffer[4096];
    ssize_t n;
    while ((n = ::recv(fd, buffer, sizeof buffer, 0)) > 0) out.append(buffer, static_cast<size_t>(n));
    return out;
  }
};

Router slow_router(asio::io_context& io, std::chrono::milliseconds delay) {
  Router router;
  router.add("GET", "/slow", [&io, delay](Request&, ResponseWriter& writer) -> awaitable<void> {
    asio::steady_timer timer(io, delay);
    co_await timer.async_wait(asio::use_awaitable);
    co_await writer.send(Response::text(200, "done"));
  });
  router.add("GET", "/fast", [](Request&, ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(Response::text(200, "fast"));
  });
  return router;
}

TEST(ConnectionLimit, AClientOverTheLimitGetsAFast503) {
  testing::ServerThread server;
  ServerOptions options;
  options.max_connections = 1;
  auto port = server.start(slow_router(server.io(), 0ms), options);
  ASSERT_TRUE(port);
  EXPECT_EQ(server.server().max_connections(), 1u);
  auto before = server_stats().refused;
  Raw first(*port);
  first.send("GET /fast HTTP/1.1\r\nHost: x\r\n\r\n");  // kept alive: holds the one slot
  char buffer[256];
  ASSERT_GT(::recv(first.fd, buffer, sizeof buffer, 0), 0);
  Raw second(*port);
  second.send("GET /fast HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string answer = second.read_to_close();
  EXPECT_EQ(answer.rfind("HTTP/1.1 503", 0), 0u) << answer;
  EXPECT_NE(answer.find("too_many_connections"), std::string::npos) << answer;
  EXPECT_EQ(server_stats().refused, before + 1);
  EXPECT_NE(render_server_metrics().find("nebula_http_connections_refused_total"), std::string::npos);
}

TEST(ConnectionLimit, TheDefaultFollowsTheOpenFileLimit) {
  testing::ServerThread server;
  ASSERT_TRUE(server.start(Router{}));
  EXPECT_GT(server.server().max_connections(), 1u);
}

TEST(Drain, ARequestInFlightFinishesAndIdleConnectionsClose) {
  testing::ServerThread server;
  auto port = server.start(slow_router(server.io(), 500ms));
  ASSERT_TRUE(port);
  Raw idle(*port);
  idle.send("GET /fast HTTP/1.1\r\nHost: x\r\n\r\n");
  char buffer[256];
  ASSERT_GT(::recv(idle.fd, buffer, sizeof buffer, 0), 0);
  Raw busy(*port);
  busy.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(eventually([&] { return server.server().open_connections() == 2; }));
  auto cut = std::async(std::launch::async, [&] { return server.server().drain(10s); });
  std::string answer = busy.read_to_close();
  EXPECT_NE(answer.find("200 OK"), std::string::npos) << answer;
  EXPECT_NE(answer.find("Connection: close"), std::string::npos) << answer;
  EXPECT_NE(answer.find("done"), std::string::npos) << answer;
  EXPECT_EQ(idle.read_to_close(), "");  // closed without an answer: it asked nothing
  EXPECT_EQ(cut.get(), 0u);
}

TEST(Drain, AnEndlessStreamDoesNotHoldTheStopUp) {
  testing::ServerThread server;
  Router router;
  router.add("GET", "/watch", [&server](Request&, ResponseWriter& writer) -> awaitable<void> {
    writer.mark_endless();
    if (!co_await writer.start_stream(200, {})) co_return;
    asio::steady_timer timer(server.io());
    while (co_await writer.write("tick\n")) {
      timer.expires_after(50ms);
      co_await timer.async_wait(asio::use_awaitable);
    }
  });
  auto port = server.start(std::move(router));
  ASSERT_TRUE(port);
  Raw watcher(*port);
  watcher.send("GET /watch HTTP/1.1\r\nHost: x\r\n\r\n");
  char buffer[256];
  ASSERT_GT(::recv(watcher.fd, buffer, sizeof buffer, 0), 0);
  auto started = std::chrono::steady_clock::now();
  EXPECT_EQ(server.server().drain(30s), 0u);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 10s);
}

TEST(CloseOnExec, ListeningAndAcceptedSocketsAreNotInherited) {
  testing::ServerThread server;
  auto port = server.start(slow_router(server.io(), 0ms));
  ASSERT_TRUE(port);
  Raw client(*port);
  client.send("GET /fast HTTP/1.1\r\nHost: x\r\n\r\n");
  char buffer[256];
  ASSERT_GT(::recv(client.fd, buffer, sizeof buffer, 0), 0);
  // The server's sockets are those bound to its port: the listener and the accepted connection.
  int sockets = 0;
  for (int fd = 3; fd < 4096; ++fd) {
    sockaddr_in address{};
    socklen_t length = sizeof address;
    if (fd == client.fd || ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) continue;
    if (address.sin_family != AF_INET || ntohs(address.sin_port) != *port) continue;
    ++sockets;
    EXPECT_TRUE(::fcntl(fd, F_GETFD) & FD_CLOEXEC) << "socket " << fd << " is inheritable";
  }
  EXPECT_GE(sockets, 2);  // the listener and the accepted connection
}

TEST(ClientPool, AConnectionItsPeerClosedLeavesThePool) {
  asio::io_context io;
  Client client(io);
  // The first peer answers one request on a keep-alive connection, then closes it (as an engine
  // that exits does): the pooled connection is left in CLOSE-WAIT.
  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  ASSERT_EQ(::listen(listener, 1), 0);
  ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length), 0);
  std::promise<void> answered;
  std::promise<void> close_now;
  std::thread first([&] {
    int connection = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    std::string request;
    char buffer[1024];
    while (request.find("\r\n\r\n") == std::string::npos) {
      ssize_t got = ::recv(connection, buffer, sizeof buffer, 0);
      if (got <= 0) break;
      request.append(buffer, static_cast<size_t>(got));
    }
    const std::string answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    (void)::send(connection, answer.data(), answer.size(), MSG_NOSIGNAL);
    answered.set_value();
    close_now.get_future().wait();
    ::close(connection);
  });
  testing::ServerThread second;
  ASSERT_TRUE(second.start(slow_router(second.io(), 0ms)));
  auto get = [&](const std::string& url) {
    auto task = [&]() -> awaitable<Result<Response>> { co_return co_await client.request("GET", url + "/fast"); };
    std::optional<Result<Response>> result;
    asio::co_spawn(io, task(), [&](std::exception_ptr, Result<Response> value) { result.emplace(std::move(value)); });
    io.restart();
    io.run();
    return std::move(*result);
  };
  auto answer = get("http://127.0.0.1:" + std::to_string(ntohs(address.sin_port)));
  ASSERT_TRUE(answer) << answer.error().message;
  answered.get_future().wait();
  EXPECT_EQ(client.idle_connections(), 1u);
  close_now.set_value();
  first.join();
  ::close(listener);
  // The pool sweeps at most once a second, on a use: it drops the connection within a few uses.
  bool dropped = false;
  for (auto deadline = std::chrono::steady_clock::now() + 5s;
       !dropped && std::chrono::steady_clock::now() < deadline;) {
    ASSERT_TRUE(get(second.url()));
    dropped = client.idle_connections() == 1u;
    if (!dropped) std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(client.idle_connections(), 1u) << "the connection to the closed peer is still pooled";
  client.close_idle(second.url());
  EXPECT_EQ(client.idle_connections(), 0u);
}

}  // namespace
}  // namespace nebula::http
