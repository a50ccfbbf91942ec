// The command line against bad input, run as the real binary: each case is a row of data (the
// arguments, an optional spec file, the exit code and a fragment the output must hold, and one
// it must not). Usage errors exit 2, failed operations 1. Then the attacks that need more than a
// row: a spec file smuggling a second request, and `deploy --wait` on an engine that cannot start.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <filesystem>

#include <atomic>
#include <fstream>
#include <mutex>
#include <thread>

#include "nebula_fixture.h"
#include "process_helpers.h"

namespace nebula::testing {
namespace {

using namespace std::chrono_literals;

struct CliCase {
  const char* title;
  std::vector<std::string> args;  // {server} is the test server's URL, {dir} a scratch directory
  const char* spec;               // written to {dir}/spec.yaml when not null
  int exit_code;
  const char* expected;    // must appear in stdout+stderr
  const char* unexpected;  // must not appear; "" for none
};

// A nine-level "billion laughs" as engine_args.
std::string alias_bomb() {
  std::string text = "name: bomb\nmodel: tiny\nx0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n";
  for (int level = 1; level <= 9; ++level) {
    text += "x" + std::to_string(level) + ": &a" + std::to_string(level) + " [";
    for (int i = 0; i < 10; ++i) text += std::string(i ? ", " : "") + "*a" + std::to_string(level - 1);
    text += "]\n";
  }
  return text + "engine_args: *a9\n";
}
const std::string kAliasBomb = alias_bomb();

// Run in order against one `nebula up` (a row may depend on an earlier one, as `keys ls` does).
const std::vector<CliCase> kCases = {
    // Names are checked as the server checks them, before anything is sent.
    {"space in a name",
     {"deploy", "my model", "--model", "tiny"},
     nullptr,
     2,
     "invalid name 'my model'",
     "bad version"},
    {"slash in a name", {"deploy", "a/b", "--model", "tiny"}, nullptr, 2, "invalid name 'a/b'", "no route"},
    {"uppercase in get", {"get", "Chat"}, nullptr, 2, "invalid name 'Chat'", ""},
    {"slash in restart", {"restart", "a/b"}, nullptr, 2, "invalid name 'a/b'", "no route"},
    {"slash in sleep", {"sleep", "a/b"}, nullptr, 2, "invalid name 'a/b'", "no route"},
    {"CR/LF in wake", {"wake", "a\r\nb"}, nullptr, 2, "invalid name", "no route"},
    {"10 KB name to sleep", {"sleep", std::string(10'000, 'z')}, nullptr, 2, "invalid name", ""},
    {"sleep without a name", {"sleep"}, nullptr, 2, "name is required", ""},
    {"wake with two names", {"wake", "a", "b"}, nullptr, 2, "argument was not expected: b", ""},
    {"CR/LF in rollout undo", {"rollout", "undo", "a\r\nb"}, nullptr, 2, "invalid name", "no route"},
    {"slash in nodes rm", {"nodes", "rm", "a/b", "--force"}, nullptr, 2, "invalid name 'a/b'", "no route"},
    {"word for a surge", {"deploy", "x", "--model", "tiny", "--max-surge", "abc"}, nullptr, 2, "max_surge", ""},
    {"word for a drain timeout", {"up", "--drain-timeout", "soon"}, nullptr, 2, "invalid duration 'soon'", ""},
    {"no probe failures", {"up", "--probe-failures", "0"}, nullptr, 2, "0 is too small (at least 1)", ""},
    {"word for a scrape interval",
     {"up", "--load-scrape-interval", "often"},
     nullptr,
     2,
     "invalid duration 'often'",
     ""},
    {"negative scrape interval", {"server", "--load-scrape-interval", "-1s"}, nullptr, 2, "--load-scrape-interval", ""},
    {"CR/LF in a routing spec",
     {"deploy", "x", "--model", "tiny", "--routing", "session\r\nX: y"},
     nullptr,
     2,
     "routing",
     "no route"},
    {"huge routing spec",
     {"deploy", "x", "--model", "tiny", "--routing", std::string(300, 'a')},
     nullptr,
     2,
     "routing",
     ""},
    {"mcp with a stray argument", {"mcp", "extra"}, nullptr, 2, "extra", ""},
    {"top without a terminal", {"top"}, nullptr, 1, "needs a full-screen terminal", ""},
    {"name in a spec file",
     {"deploy", "-f", "{dir}/spec.yaml"},
     "metadata: {name: \"x\\r\\nX: y\"}\nspec: {model: tiny}\n",
     2,
     "invalid name",
     ""},
    // Numbers.
    {"word for a number", {"deploy", "x", "--replicas", "two"}, nullptr, 2, "'two' is not a whole number", "range"},
    {"above the range", {"deploy", "x", "--replicas", "5000"}, nullptr, 2, "5000 is too large (at most 1000)", ""},
    {"overflow", {"deploy", "x", "--max-context", "99999999999999999999"}, nullptr, 2, "is too large", "negative"},
    {"negative", {"deploy", "x", "--max-seqs", "-5"}, nullptr, 2, "-5 cannot be negative", "179769"},
    {"scale by a word", {"scale", "x", "two"}, nullptr, 2, "'two' is not a whole number", "range"},
    {"unknown engine", {"deploy", "x", "--model", "tiny", "--engine", "nope"}, nullptr, 2, "unknown engine 'nope'", ""},
    // Sizes and durations are usage errors, like every other bad flag value.
    {"unknown size unit", {"deploy", "x", "--vram", "24XB"}, nullptr, 2, "unknown unit 'XB'", ""},
    {"unknown duration unit", {"deploy", "x", "--idle-timeout", "5parsecs"}, nullptr, 2, "unknown unit 'parsecs'", ""},
    {"log level", {"up", "--log-level", "loud"}, nullptr, 2, "unknown log level 'loud'", ""},
    {"node timeout zero", {"server", "--node-timeout", "0"}, nullptr, 2, "'0' is too short", ""},
    {"reserved VRAM above the GPU",
     {"up", "--sim-gpus", "1xH100-80GB", "--reserved-vram", "100GB", "--listen", "127.0.0.1:0", "--data-dir",
      "{dir}/up"},
     nullptr,
     2,
     "is not less than the memory of GPU 0",
     ""},
    // Spec files.
    {"misspelled field",
     {"deploy", "-f", "{dir}/spec.yaml"},
     "name: x\nmodel: tiny\nreplcias: 2\n",
     2,
     "unknown field 'spec.replcias' (did you mean 'spec.replicas'?)",
     ""},
    {"fractional replicas",
     {"deploy", "-f", "{dir}/spec.yaml"},
     "name: x\nmodel: tiny\nreplicas: 1.7\n",
     2,
     "'replicas' must be a whole number, got 1.7",
     ""},
    {"duplicate key",
     {"deploy", "-f", "{dir}/spec.yaml"},
     "name: x\nmodel: tiny\nreplicas: 1\nreplicas: 2\n",
     2,
     "duplicate key 'replicas'",
     ""},
    {"alias bomb", {"deploy", "-f", "{dir}/spec.yaml"}, kAliasBomb.c_str(), 2, "more than 100000 values", ""},
    {"no model", {"deploy", "nomodel"}, nullptr, 2, "spec.model is required", ""},
    // Routing specs are read by the router's own parser before anything is sent.
    {"unknown routing policy",
     {"deploy", "x", "--model", "tiny", "--routing", "fastest"},
     nullptr,
     2,
     "spec.routing: unknown routing policy 'fastest' (one of: least-outstanding,",
     ""},
    {"misspelled routing policy",
     {"deploy", "x", "--model", "tiny", "--routing", "sesion"},
     nullptr,
     2,
     "did you mean 'session'?",
     ""},
    {"negative routing weight",
     {"deploy", "x", "--model", "tiny", "--routing", "prefix+load,kv=-1"},
     nullptr,
     2,
     "routing parameter 'kv' must be between 0 and 1000, got -1",
     ""},
    {"all routing weights zero",
     {"deploy", "x", "--model", "tiny", "--routing", "kv-load,queue=0,kv=0"},
     nullptr,
     2,
     "needs a weight above 0 for one of: queue, kv",
     ""},
    {"routing garbage",
     {"deploy", "x", "--model", "tiny", "--routing", "session,,;rm -rf"},
     nullptr,
     2,
     "has an empty parameter",
     ""},
    {"bad routing in a spec file",
     {"deploy", "-f", "{dir}/spec.yaml"},
     "name: x\nmodel: tiny\nrouting: \"session,vnodes=0\"\n",
     2,
     "routing parameter 'vnodes' must be between 1 and 1000, got 0",
     ""},
    {"routing as a number in a spec file",
     {"deploy", "-f", "{dir}/spec.yaml"},
     "name: x\nmodel: tiny\nrouting: [1, 2]\n",
     2,
     "'routing'",
     ""},
    {"replicas out of range in a file",
     {"deploy", "-f", "{dir}/spec.yaml"},
     "name: x\nmodel: tiny\nreplicas: 5000\n",
     2,
     "spec.replicas must be between 0 and 1000",
     ""},
    // Models.
    {"misspelled catalog id",
     {"deploy", "typo", "--model", "llama-3.1-8b-instrcut", "--dry-run"},
     nullptr,
     0,
     "did you mean llama-3.1-8b-instruct",
     ""},
    {"context above the model's",
     {"deploy", "long", "--model", "llama-3.1-8b-instruct", "--max-context", "1000000"},
     nullptr,
     2,
     "more than llama-3.1-8b-instruct's own context length (131072)",
     ""},
    {"inspect a text file",
     {"models", "inspect", "{dir}/notes.txt"},
     nullptr,
     1,
     "is neither a GGUF nor a safetensors file",
     ""},
    // Global flags before the command.
    {"--server before the command", {"--server", "{server}", "ls"}, nullptr, 0, "NAME", ""},
    {"-o before the command", {"-o", "json", "events"}, nullptr, 0, "[", "unknown"},
    // Operations that fail exit 1 with the reason on stderr.
    {"logs of an unknown deployment", {"logs", "nosuch"}, nullptr, 1, "deployment 'nosuch' not found", "{\"error\""},
    {"negative tail", {"logs", "nosuch", "--tail", "-5"}, nullptr, 2, "-5 cannot be negative", ""},
    {"remove an unknown deployment", {"rm", "nosuch"}, nullptr, 1, "not found", ""},
    {"sleep an unknown deployment", {"sleep", "nosuch"}, nullptr, 1, "not found", "{\"error\""},
    {"wake an unknown deployment", {"wake", "nosuch"}, nullptr, 1, "not found", "{\"error\""},
    {"revoke an unknown join token",
     {"token", "revoke", "nosuch"},
     nullptr,
     1,
     "join token 'nosuch' not found",
     "/nebula/"},
    // Keys under --auth none.
    {"key under --auth none",
     {"keys", "create", "ci"},
     nullptr,
     0,
     "not checked until it is started with --auth keys",
     ""},
    {"key that expires", {"keys", "create", "brief", "--expires", "1ms"}, nullptr, 0, "created", ""},
    {"expired key listed", {"keys", "ls"}, nullptr, 0, "expired", ""},
};

std::string substitute(std::string text, const std::string& server, const std::string& dir) {
  for (auto [name, value] : {std::pair<std::string, std::string>{"{server}", server}, {"{dir}", dir}}) {
    for (size_t at = text.find(name); at != std::string::npos; at = text.find(name, at + value.size())) {
      text.replace(at, name.size(), value);
    }
  }
  return text;
}

TEST(CliE2e, BadInputGetsAClearErrorAndTheRightExitCode) {
  NebulaUp up;
  ASSERT_TRUE(up.wait_node_ready());
  TempDir scratch;
  std::ofstream(scratch.path() + "/notes.txt") << "these are notes, not a model\n";
  for (const auto& row : kCases) {
    SCOPED_TRACE(row.title);
    if (row.spec) std::ofstream(scratch.path() + "/spec.yaml", std::ios::trunc) << row.spec;
    std::vector<std::string> args;
    for (const auto& arg : row.args) args.push_back(substitute(arg, up.server(), scratch.path()));
    auto result = up.cli(args);
    EXPECT_EQ(result.exit_code, row.exit_code) << result.out;
    EXPECT_NE(result.out.find(row.expected), std::string::npos) << result.out;
    if (*row.unexpected) {
      EXPECT_EQ(result.out.find(row.unexpected), std::string::npos) << result.out;
    }
  }
}

// `--routing` reaches the deployment and `nebula get`, canonical; changing it restarts no engine;
// the server refuses a bad spec with a 400 naming it, whoever sends it.
// An agent's list of servers is checked before anything is written: a bad entry is named, the
// exit code is 2, and no data dir is made.
TEST(CliE2e, AnAgentsServerListIsCheckedEntryByEntry) {
  testing::TempDir scratch;
  for (std::string servers : {"http://a,,http://b", ",", "http://a,ftp://b", "http://a/api/v1", "http://a,http://a",
                              "http://a:0", "-oProxyCommand=x"}) {
    std::string dir = scratch.path() + "/agent";
    // Under `timeout`: a list wrongly accepted would leave an agent running, not a hung test.
    auto result = run_command(
        {"timeout", "20", NEBULA_BINARY, "agent", "--server", servers, "--token", "nbj-x", "--data-dir", dir});
    EXPECT_EQ(result.exit_code, 2) << servers << ": " << result.out;
    EXPECT_NE(result.out.find("--server: "), std::string::npos) << servers << ": " << result.out;
    EXPECT_FALSE(std::filesystem::exists(dir)) << servers;
  }
}

TEST(CliE2e, RoutingIsSetShownAndChangedWithoutARollout) {
  NebulaUp up;
  ASSERT_TRUE(up.wait_node_ready());
  auto deployed = up.cli({"deploy", "chat", "--model", "tiny", "--routing", "session", "--wait", "--timeout", "2m"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  auto shown = up.cli({"get", "chat"});
  EXPECT_NE(shown.out.find("Routing:   session\n"), std::string::npos) << shown.out;
  auto pids = up.engine_pids("chat");
  ASSERT_EQ(pids.size(), 1u);

  auto changed = up.cli({"deploy", "chat", "--routing", "prefix+load"});
  ASSERT_EQ(changed.exit_code, 0) << changed.out;
  json deployment = up.get_json("/api/v1/deployments/chat");
  EXPECT_EQ(deployment["spec"].value("routing", ""), "prefix+load,prefix=2,queue=1,kv=1");
  EXPECT_EQ(deployment["spec"].value("model", ""), "tiny") << "flags change an existing deployment";
  auto as_yaml = up.cli({"get", "chat", "-o", "yaml"});
  EXPECT_NE(as_yaml.out.find("routing: prefix+load,prefix=2,queue=1,kv=1"), std::string::npos) << as_yaml.out;
  // Scaling after the change: once the second replica is Ready the controller has acted on the
  // routing change too, and made no plan for it.
  ASSERT_EQ(up.cli({"scale", "chat", "2"}).exit_code, 0);
  ASSERT_TRUE(eventually(
      [&] { return up.get_json("/api/v1/deployments/chat")["status"].value("ready_replicas", 0) == 2; }, 60s));
  json after = up.get_json("/api/v1/deployments/chat");
  EXPECT_EQ(after["status"].value("plan_version", int64_t{0}), 1) << after.dump();
  auto now_pids = up.engine_pids("chat");
  EXPECT_TRUE(now_pids.count(*pids.begin())) << "the first engine was not restarted";

  // Back to the default: "" is allowed and shown as such.
  auto reset = up.cli({"deploy", "chat", "--routing", ""});
  ASSERT_EQ(reset.exit_code, 0) << reset.out;
  EXPECT_NE(up.cli({"get", "chat"}).out.find("Routing:   prefix+load (default)"), std::string::npos);

  // The API itself refuses a bad spec, not only the CLI.
  http::BlockingClient client;
  auto refused = client.request("PUT", up.server() + "/api/v1/deployments/chat",
                                json{{"spec", {{"model", "tiny"}, {"routing", "prefix+load,kv=abc"}}}}.dump(),
                                {{"Content-Type", "application/json"}});
  ASSERT_TRUE(refused.ok()) << refused.error().message;
  EXPECT_EQ(refused->status, 400) << refused->body;
  EXPECT_NE(refused->body.find("spec.routing: routing parameter 'kv' must be a number, got 'abc'"), std::string::npos)
      << refused->body;
  EXPECT_FALSE(up.get_json("/api/v1/deployments/chat")["spec"].contains("routing")) << "left as it was (the default)";
}

// A listener that records every byte it receives and answers each request head with a 404.
class RecordingListener {
 public:
  RecordingListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address);
    ::listen(fd_, 16);
    socklen_t length = sizeof address;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~RecordingListener() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string received() {
    std::lock_guard lock(mu_);
    return received_;
  }

 private:
  void serve() {
    while (!stop_) {
      pollfd ready{fd_, POLLIN, 0};
      if (::poll(&ready, 1, 50) <= 0) continue;
      int connection = ::accept(fd_, nullptr, nullptr);
      if (connection < 0) continue;
      std::string head;
      while (!stop_) {
        pollfd readable{connection, POLLIN, 0};
        if (::poll(&readable, 1, 50) <= 0) continue;
        char buffer[4096];
        ssize_t n = ::read(connection, buffer, sizeof buffer);
        if (n <= 0) break;
        head.append(buffer, static_cast<size_t>(n));
        {
          std::lock_guard lock(mu_);
          received_.append(buffer, static_cast<size_t>(n));
        }
        if (head.find("\r\n\r\n") != std::string::npos) {
          static const std::string kAnswer =
              "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 37\r\n"
              "Connection: close\r\n\r\n{\"error\":{\"message\":\"no such thing\"}}";
          (void)::write(connection, kAnswer.data(), kAnswer.size());
          break;
        }
      }
      ::close(connection);
    }
  }

  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::string received_;
};

// A spec whose name holds CR/LF and a second request once sent `DELETE` of another deployment
// with the user's key. Now nothing at all is sent, and the user is told why.
TEST(CliE2e, ASpecFileCannotSmuggleASecondRequest) {
  RecordingListener listener;
  TempDir scratch;
  std::ofstream(scratch.path() + "/spec.yaml")
      << "metadata:\n  name: \"x HTTP/1.1\\r\\nHost: h\\r\\nContent-Length: 0\\r\\n\\r\\n"
         "DELETE /api/v1/deployments/victim\"\nspec:\n  model: tiny\n";
  auto result = run_command({NEBULA_BINARY, "deploy", "-f", scratch.path() + "/spec.yaml", "--server", listener.url(),
                             "--api-key", "nb-secret"});
  EXPECT_EQ(result.exit_code, 2) << result.out;
  EXPECT_NE(result.out.find("invalid name"), std::string::npos) << result.out;
  EXPECT_EQ(listener.received(), "");

  // An id that is not a name (a key id) still reaches the server as one request: its line break
  // travels percent-encoded inside the one path.
  auto revoke = run_command(
      {NEBULA_BINARY, "keys", "revoke", "k\r\nDELETE /api/v1/deployments/victim", "--server", listener.url()});
  EXPECT_EQ(revoke.exit_code, 1) << revoke.out;
  std::string received = listener.received();
  EXPECT_EQ(received.find("DELETE /api/v1/deployments/victim"), std::string::npos) << received;
  EXPECT_NE(received.find("DELETE /api/v1/keys/k%0D%0ADELETE%20%2Fapi%2Fv1%2Fdeployments%2Fvictim HTTP/1.1\r\n"),
            std::string::npos)
      << received;
}

// An engine that cannot start: `deploy --wait` shows the replica's phase and message and gives up
// once every replica is crash-looping, rather than waiting out its timeout printing "0/1 ready".
TEST(CliE2e, DeployWaitFailsFastWhenEveryReplicaCrashLoops) {
  NebulaUp up({"--restart-backoff", "200ms", "--max-restart-backoff", "400ms"});
  ASSERT_TRUE(up.wait_node_ready());
  auto started = std::chrono::steady_clock::now();
  auto result = up.cli({"deploy", "broken", "--model", "tiny", "--engine", "sim", "--engine-arg", "--no-such-flag",
                        "--wait", "--timeout", "10m"});
  EXPECT_EQ(result.exit_code, 1) << result.out;
  EXPECT_NE(result.out.find("every replica is failing; last error:"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("Failed"), std::string::npos) << "the replica's phase is shown: " << result.out;
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5min) << "gave up long before its 10 minute timeout";
}

// `nebula gpus` with no node reported says so, instead of printing an empty table as if the
// cluster had no GPUs.
TEST(CliE2e, GpusWithoutAReportSaysNoneHasArrived) {
  TempDir data;
  NebulaServer server(data.path() + "/data", data.path() + "/server.log");
  ASSERT_TRUE(server.start());
  auto result = server.cli({"gpus"});
  EXPECT_EQ(result.exit_code, 0) << result.out;
  EXPECT_NE(result.out.find("no GPUs: no node has joined yet"), std::string::npos) << result.out;
}

}  // namespace
}  // namespace nebula::testing
