// `nebula agent` joining a server that refuses it or cannot be reached: real processes, loopback.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/asio.h"  // must precede Asio headers

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "common/json.h"
#include "nebula_fixture.h"
#include "process_helpers.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using testing::eventually;

size_t lines_containing(const std::string& text, const std::string& needle) {
  std::istringstream lines(text);
  size_t count = 0;
  for (std::string line; std::getline(lines, line);) count += line.find(needle) != std::string::npos;
  return count;
}

// A token the server refuses ends the agent at once: exit status 2 and one line saying why,
// instead of retrying forever.
TEST(AgentJoin, RefusedTokenExitsWithStatusTwoAndOneLine) {
  testing::TempDir temp;
  testing::NebulaServer server(temp.path() + "/server", temp.path() + "/server.log");
  ASSERT_TRUE(server.start()) << server.process().output();
  // `timeout` ends an agent that would retry forever (exit 124): the test then fails.
  auto result = testing::run_command({"/usr/bin/timeout", "60", NEBULA_BINARY, "agent", "--server", server.url(),
                                      "--token", "nbj-not-the-token", "--name", "n1", "--listen", "127.0.0.1:0",
                                      "--sim-gpus", "1xH100-80GB", "--data-dir", temp.path() + "/agent"});
  EXPECT_EQ(result.exit_code, 2) << result.out;
  EXPECT_EQ(lines_containing(result.out, "join token"), 1u) << result.out;
  EXPECT_EQ(lines_containing(result.out, "error: the server at " + server.url() + " refused the join token"), 1u)
      << result.out;
  EXPECT_EQ(lines_containing(result.out, "cannot join"), 0u) << "no retry: " << result.out;
}

// A server that cannot be reached is retried with growing pauses, logged once while the failure
// stays the same; the agent joins when the server comes.
TEST(AgentJoin, UnreachableServerIsRetriedAndLoggedOnce) {
  testing::TempDir temp;
  const std::string token = "nbj-0123456789abcdef0123456789abcdef";
  std::filesystem::create_directories(temp.path() + "/server");
  std::ofstream(temp.path() + "/server/join-token") << token << "\n";

  // Something on the port that accepts and hangs up at once: every attempt fails the same way.
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  // Not inherited by the agent started below, or it would hold the port the server binds next.
  ::fcntl(acceptor.native_handle(), F_SETFD, FD_CLOEXEC);
  const int port = acceptor.local_endpoint().port();
  const std::string url = "http://127.0.0.1:" + std::to_string(port);
  std::atomic<int> attempts{0};
  std::atomic<bool> closing{false};
  std::thread hang_up([&] {
    while (!closing) {
      boost::system::error_code error;
      asio::ip::tcp::socket socket(io);
      acceptor.accept(socket, error);
      if (error) break;
      // An abortive close (RST): no TIME_WAIT is left on the port the server binds next.
      socket.set_option(asio::socket_base::linger(true, 0), error);
      if (closing) break;
      ++attempts;
      socket.close(error);
    }
  });

  testing::Child agent(testing::agent_argv(url, token, "n1", "1xH100-80GB", temp.path() + "/agent"),
                       temp.path() + "/agent.log");
  EXPECT_TRUE(eventually([&] { return attempts >= 4; }, 30s)) << agent.output();
  EXPECT_EQ(lines_containing(agent.output(), "cannot join"), 1u) << agent.output();
  EXPECT_TRUE(agent.running()) << "network errors are retried";

  // One more connection lets the accepting thread see `closing` and end; then the port is free.
  closing = true;
  boost::system::error_code ignored;
  asio::ip::tcp::socket poke(io);
  poke.connect(acceptor.local_endpoint(), ignored);
  hang_up.join();
  poke.close(ignored);
  acceptor.close(ignored);
  testing::Child server({NEBULA_BINARY, "server", "--listen", "127.0.0.1:" + std::to_string(port), "--data-dir",
                         temp.path() + "/server", "--log-level", "warn"},
                        temp.path() + "/server.log");
  http::BlockingClient client;
  EXPECT_TRUE(eventually(
      [&] {
        auto node = client.request("GET", url + "/api/v1/nodes/n1");
        auto parsed = node && node->status == 200 ? parse_json(node->body)
                                                  : Result<json>(Error{ErrorCode::Unavailable, "no answer"});
        return parsed && (*parsed)["status"].value("ready", false);
      },
      60s))
      << agent.output();
  EXPECT_EQ(lines_containing(agent.output(), "reached " + url + " again"), 1u) << agent.output();
  EXPECT_EQ(lines_containing(agent.output(), "cannot join"), 1u) << agent.output();
  if (HasFailure()) std::cerr << "---- server ----\n" << server.output() << "\n";
  agent.stop(SIGTERM, 20s);
  server.stop(SIGTERM, 20s);
}

}  // namespace
}  // namespace nebula
