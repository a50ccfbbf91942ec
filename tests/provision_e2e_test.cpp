// `nebula nodes add|upgrade` and `nodes rm --uninstall` through a real sshd (Debian's
// openssh-server) on a free loopback port, with its own host key and authorized_keys, against a
// real `nebula server`. systemd does not run here: the agent is installed detached.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <pwd.h>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/json.h"
#include "nebula_fixture.h"
#include "process_helpers.h"

namespace nebula {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::eventually;

constexpr const char* kSshd = "/usr/sbin/sshd";

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string current_user() {
  passwd* entry = ::getpwuid(::geteuid());
  return entry ? entry->pw_name : "root";
}

// An sshd of the test's own: host key, authorized_keys and config in `dir`, on a free port.
class Sshd {
 public:
  explicit Sshd(const std::string& dir) : dir_(dir) {}
  ~Sshd() {
    if (process_) process_->stop(SIGTERM, 10s);
  }

  // Empty when it runs; else why not.
  std::string start() {
    for (const auto& key : {"host_key", "id", "other_id"}) {
      auto made =
          testing::run_command({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key, "-f", dir_ + "/" + key});
      if (made.exit_code != 0) return "ssh-keygen: " + made.out;
    }
    fs::copy_file(dir_ + "/id.pub", dir_ + "/authorized_keys");
    // sshd running as root needs its privilege separation directory (the package's service makes it).
    if (::geteuid() == 0 && !fs::exists("/run/sshd")) {
      std::error_code error;
      fs::create_directories("/run/sshd", error);
      ::chmod("/run/sshd", 0755);
    }
    port_ = testing::free_port();
    std::ofstream(dir_ + "/sshd_config")
        << "ListenAddress 127.0.0.1:" << port_ << "\n"
        << "HostKey " << dir_ << "/host_key\n"
        << "AuthorizedKeysFile " << dir_ << "/authorized_keys\n"
        << "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        << "UsePAM no\nPidFile none\n"
        // The temp dir lives under /tmp, which is world-writable: StrictModes would refuse the keys.
        << "StrictModes no\n";
    // The client's side: its own known_hosts, no agent, no system-wide known hosts.
    std::ofstream(dir_ + "/ssh_config") << "UserKnownHostsFile " << dir_ << "/known_hosts\n"
                                        << "GlobalKnownHostsFile /dev/null\nIdentityAgent none\n";
    process_ = std::make_unique<testing::Child>(
        std::vector<std::string>{kSshd, "-D", "-e", "-f", dir_ + "/sshd_config"}, dir_ + "/sshd.log");
    if (!eventually([&] { return process_->output().find("Server listening") != std::string::npos; }, 10s)) {
      return "sshd did not start: " + process_->output();
    }
    return "";
  }

  int port() const { return port_; }
  std::string destination() const { return current_user() + "@127.0.0.1"; }
  std::string log() const { return process_ ? process_->output() : ""; }
  // "SHA256:..." of the host key.
  std::string host_fingerprint() const {
    auto listed = testing::run_command({"ssh-keygen", "-lf", dir_ + "/host_key.pub"});
    std::istringstream words(listed.out);
    std::string bits, fingerprint;
    words >> bits >> fingerprint;
    return fingerprint;
  }

 private:
  std::string dir_;
  int port_ = 0;
  std::unique_ptr<testing::Child> process_;
};

class Provision : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kSshd)) GTEST_SKIP() << "openssh-server is not installed (" << kSshd << "): skipped";
    if (testing::find_on_path("ssh").empty()) GTEST_SKIP() << "the ssh client is not installed: skipped";
    sshd_ = std::make_unique<Sshd>(temp_.path());
    std::string why = sshd_->start();
    ASSERT_EQ(why, "");
    server_ = std::make_unique<testing::NebulaServer>(temp_.path() + "/server", temp_.path() + "/server.log");
    ASSERT_TRUE(server_->start()) << server_->process().output();
    remote_ = temp_.path() + "/remote";
  }

  void TearDown() override {
    if (!server_) return;
    if (HasFailure()) {
      std::cerr << "---- sshd ----\n"
                << sshd_->log() << "\n---- agent.log ----\n"
                << read_file(remote_ + "/data/agent.log") << "\n---- server ----\n"
                << server_->process().output() << "\n";
    }
    // Whatever the test left there: the agent (not a child of ours: sshd started it) and its engines.
    std::string pid = read_file(remote_ + "/data/agent.pid");
    if (!pid.empty()) ::kill(std::stoi(pid), SIGKILL);
    if (fs::exists(remote_ + "/data/agent.db")) {
      testing::run_command(
          {NEBULA_BINARY, "service", "stop-engines", "--data-dir", remote_ + "/data", "--grace", "2s"});
    }
  }

  // nebula nodes ... against the server, with the test's ssh settings.
  testing::CommandResult nodes(std::vector<std::string> args) {
    std::vector<std::string> argv = {NEBULA_BINARY, "nodes"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"--server", server_->url()});
    return testing::run_command(argv, {"NEBULA_DATA_DIR=" + temp_.path() + "/client"});
  }

  std::vector<std::string> add_args(std::vector<std::string> extra) {
    std::vector<std::string> args = {"add",          sshd_->destination(),
                                     "--port",       std::to_string(sshd_->port()),
                                     "--ssh-config", temp_.path() + "/ssh_config",
                                     "--identity",   temp_.path() + "/id",
                                     "--remote-dir", remote_,
                                     "--name",       "gpu1",
                                     "--timeout",    "60s"};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }

  static std::string agent_args(const std::string& listen = "127.0.0.1:0") {
    return "--sim-gpus 1xH100-80GB --listen " + listen + " --heartbeat-interval 500ms";
  }

  std::string agent_pid() {
    std::string pid = read_file(remote_ + "/data/agent.pid");
    while (!pid.empty() && pid.back() == '\n') pid.pop_back();
    return pid;
  }

  testing::TempDir temp_;
  std::unique_ptr<Sshd> sshd_;
  std::unique_ptr<testing::NebulaServer> server_;
  std::string remote_;
};

TEST_F(Provision, UnknownHostKeyIsRefusedWithItsFingerprint) {
  auto added = nodes(add_args({"--agent-args", agent_args()}));
  EXPECT_EQ(added.exit_code, 1) << added.out;
  EXPECT_NE(added.out.find("step connect failed"), std::string::npos) << added.out;
  EXPECT_NE(added.out.find("not in known_hosts"), std::string::npos) << added.out;
  EXPECT_NE(added.out.find(sshd_->host_fingerprint()), std::string::npos)
      << "the fingerprint " << sshd_->host_fingerprint() << " is shown: " << added.out;
  EXPECT_NE(added.out.find("--accept-new-host-key"), std::string::npos);
  EXPECT_FALSE(fs::exists(remote_)) << "nothing ran there";
  EXPECT_TRUE(read_file(temp_.path() + "/known_hosts").empty()) << "nothing was trusted";
  EXPECT_TRUE(server_->get_json("/api/v1/tokens")["items"].empty()) << "no token was made";
}

TEST_F(Provision, AKeyTheMachineDoesNotKnowIsRefused) {
  auto args = add_args({"--accept-new-host-key", "--agent-args", agent_args()});
  // The identity: a key not in authorized_keys.
  for (size_t index = 0; index + 1 < args.size(); ++index) {
    if (args[index] == "--identity") args[index + 1] = temp_.path() + "/other_id";
  }
  auto added = nodes(args);
  EXPECT_EQ(added.exit_code, 1) << added.out;
  EXPECT_NE(added.out.find("step connect failed"), std::string::npos) << added.out;
  EXPECT_NE(added.out.find("refused the login"), std::string::npos) << added.out;
  EXPECT_NE(added.out.find("Permission denied"), std::string::npos) << added.out;
  EXPECT_FALSE(fs::exists(remote_));
}

TEST_F(Provision, HostileArgumentsAreRefusedAsUsageErrors) {
  auto hostile = nodes({"add", "-oProxyCommand=touch " + temp_.path() + "/pwned", "--accept-new-host-key"});
  EXPECT_EQ(hostile.exit_code, 2) << hostile.out;
  EXPECT_FALSE(fs::exists(temp_.path() + "/pwned"));
  auto managed = nodes(add_args({"--agent-args", "--token stolen"}));
  EXPECT_EQ(managed.exit_code, 2) << managed.out;
  EXPECT_NE(managed.out.find("--token is set by `nebula nodes add` itself"), std::string::npos) << managed.out;
  auto relative = nodes({"add", sshd_->destination(), "--remote-dir", "relative/dir"});
  EXPECT_EQ(relative.exit_code, 2) << relative.out;
  auto option = nodes({"add", sshd_->destination(), "--ssh-option", "NoEquals"});
  EXPECT_EQ(option.exit_code, 2) << option.out;
  auto unknown = nodes({"upgrade", "never-added"});
  EXPECT_EQ(unknown.exit_code, 1) << unknown.out;
  EXPECT_NE(unknown.out.find("was not added with `nebula nodes add`"), std::string::npos) << unknown.out;
  auto neither = nodes({"upgrade"});
  EXPECT_EQ(neither.exit_code, 2) << neither.out;
  auto purge = nodes({"rm", "gpu1", "--purge"});
  EXPECT_EQ(purge.exit_code, 2) << purge.out;
  auto never = nodes({"rm", "gpu1", "--uninstall"});
  EXPECT_EQ(never.exit_code, 1) << never.out;
  EXPECT_NE(never.out.find("was not added with `nebula nodes add`"), std::string::npos) << never.out;
  auto labels = nodes(add_args({"--labels", "novalue"}));
  EXPECT_EQ(labels.exit_code, 2) << labels.out;
  // The labels route refuses what is not a map of strings.
  for (const std::string body : {R"({"labels":{"a":1}})", R"({"labels":"x"})", "[]", R"({"labels":{"":"x"}})"}) {
    auto answer = server_->client().request("PUT", server_->url() + "/api/v1/nodes/gpu1/labels", body,
                                            {{"Content-Type", "application/json"}});
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->status, 400) << body << " " << answer->body;
  }
}

// The agent cannot listen (its port is taken): the run fails at the step that saw it, shows the
// agent's own words, and leaves the machine and the server as they were.
TEST_F(Provision, AFailureMidwayLeavesTheMachineClean) {
  int taken = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(taken, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  ASSERT_EQ(::listen(taken, 1), 0);
  socklen_t length = sizeof address;
  ::getsockname(taken, reinterpret_cast<sockaddr*>(&address), &length);
  std::string port = std::to_string(ntohs(address.sin_port));

  auto added = nodes(add_args({"--accept-new-host-key", "--agent-args", agent_args("127.0.0.1:" + port)}));
  ::close(taken);
  EXPECT_EQ(added.exit_code, 1) << added.out;
  EXPECT_NE(added.out.find("step ready failed: the agent exited"), std::string::npos) << added.out;
  EXPECT_NE(added.out.find("Address already in use"), std::string::npos) << "the remote output: " << added.out;
  EXPECT_NE(added.out.find("left as it was"), std::string::npos) << added.out;
  EXPECT_NE(added.out.find("copied to"), std::string::npos) << "it failed mid-way, after the copy: " << added.out;
  EXPECT_FALSE(fs::exists(remote_)) << "every file and directory the run made is gone";
  EXPECT_TRUE(server_->get_json("/api/v1/tokens")["items"].empty()) << "its join token was revoked";
  EXPECT_TRUE(server_->get_json("/api/v1/nodes")["items"].empty());
  EXPECT_FALSE(fs::exists(temp_.path() + "/client/nodes/gpu1.json"));
}

std::string chat_body(const std::string& model, int max_tokens, bool stream) {
  return json{{"model", model},
              {"max_tokens", max_tokens},
              {"stream", stream},
              {"messages", json::array({json{{"role", "user"}, {"content", "hello there"}}})}}
      .dump();
}

TEST_F(Provision, AddTwiceDeployUpgradeUnderLoadThenUninstall) {
  // 1. Add: the agent joins as gpu1, labelled.
  auto added =
      nodes(add_args({"--accept-new-host-key", "--labels", "zone=lab,tier=sim", "--agent-args", agent_args()}));
  ASSERT_EQ(added.exit_code, 0) << added.out;
  for (const std::string step : {"connect", "check", "copy", "token", "config", "service", "start", "ready"}) {
    EXPECT_NE(added.out.find("  " + step + " "), std::string::npos) << step << " is shown: " << added.out;
  }
  EXPECT_NE(added.out.find("detached process"), std::string::npos) << "said so: " << added.out;
  EXPECT_NE(added.out.find("node gpu1 is Ready"), std::string::npos) << added.out;
  EXPECT_TRUE(server_->node_ready("gpu1"));
  json node = server_->get_json("/api/v1/nodes/gpu1");
  EXPECT_EQ(node["metadata"]["labels"]["zone"], "lab") << node.dump();
  EXPECT_EQ(read_file(remote_ + "/bin/nebula"), read_file(NEBULA_BINARY)) << "the binary is this one";
  std::string first_agent = agent_pid();
  ASSERT_FALSE(first_agent.empty());

  // 2. A deployment lands on it and chat works.
  auto deployed = server_->cli({"deploy", "slow", "--engine", "sim", "--model", "m", "--vram", "10GB",
                                "--engine-arg=--itl-ms=20", "--wait", "--timeout", "90s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  auto ready = server_->ready_replicas("slow");
  ASSERT_EQ(ready.size(), 1u);
  EXPECT_EQ(ready[0]["spec"]["node"], "gpu1");
  int engine_pid = ready[0]["status"]["pid"];
  auto chat = server_->cli({"chat", "slow", "hello"});
  EXPECT_EQ(chat.exit_code, 0) << chat.out;

  // 3. Added again: nothing changes, the agent keeps running.
  auto again =
      nodes(add_args({"--accept-new-host-key", "--labels", "zone=lab,tier=sim", "--agent-args", agent_args()}));
  ASSERT_EQ(again.exit_code, 0) << again.out;
  EXPECT_NE(again.out.find("is current (sha256"), std::string::npos) << again.out;
  EXPECT_NE(again.out.find("still valid"), std::string::npos) << again.out;
  EXPECT_NE(again.out.find("nothing changed: not restarted"), std::string::npos) << again.out;
  EXPECT_NE(again.out.find("node gpu1 is Ready (nothing changed)"), std::string::npos) << again.out;
  EXPECT_EQ(agent_pid(), first_agent);
  EXPECT_EQ(server_->get_json("/api/v1/tokens")["items"].size(), 1u) << "no second token";

  // 4. Upgrade to a new binary under a streaming load: no request fails, the engine stays.
  std::string new_binary = temp_.path() + "/nebula-next";
  fs::copy_file(NEBULA_BINARY, new_binary);
  std::ofstream(new_binary, std::ios::app) << "next build\n";  // another checksum, the same program
  ::chmod(new_binary.c_str(), 0755);
  std::atomic<bool> upgrading{true};
  std::atomic<int> completed{0};
  std::atomic<int> failed{0};
  std::string failures;
  std::mutex failures_mutex;
  std::vector<std::thread> load;
  for (int worker = 0; worker < 3; ++worker) {
    load.emplace_back([&] {
      http::BlockingClient client;
      while (upgrading) {
        std::string streamed;
        auto status = client.stream(
            "POST", server_->url() + "/v1/chat/completions", chat_body("slow", 40, true),
            {{"Content-Type", "application/json"}},
            [&](std::string_view piece) {
              streamed.append(piece);
              return true;
            },
            30s);
        if (status && *status == 200 && streamed.find("data: [DONE]") != std::string::npos) {
          ++completed;
        } else {
          ++failed;
          std::lock_guard lock(failures_mutex);
          failures +=
              (status ? std::to_string(*status) : status.error().message) + " " + streamed.substr(0, 200) + "\n";
        }
      }
    });
  }
  ASSERT_TRUE(eventually([&] { return completed >= 3; }, 30s));
  auto upgraded = nodes({"upgrade", "gpu1", "--binary", new_binary, "--timeout", "60s"});
  // A few more streams on the new agent before the load stops.
  int after_upgrade = completed;
  EXPECT_TRUE(eventually([&] { return completed >= after_upgrade + 3; }, 30s));
  upgrading = false;
  for (auto& thread : load) thread.join();
  ASSERT_EQ(upgraded.exit_code, 0) << upgraded.out;
  EXPECT_NE(upgraded.out.find("agent restarted on the new binary"), std::string::npos) << upgraded.out;
  EXPECT_EQ(failed.load(), 0) << failures;
  EXPECT_GE(completed.load(), 6);
  EXPECT_EQ(read_file(remote_ + "/bin/nebula"), read_file(new_binary));
  EXPECT_NE(agent_pid(), first_agent) << "a new agent runs";
  EXPECT_TRUE(testing::process_gone(std::stoi(first_agent)));
  EXPECT_TRUE(
      eventually([&] { return read_file(remote_ + "/data/agent.log").find("re-adopted") != std::string::npos; }, 10s));
  ready = server_->ready_replicas("slow");
  ASSERT_EQ(ready.size(), 1u);
  EXPECT_EQ(ready[0]["status"]["pid"], engine_pid) << "the same engine serves";
  EXPECT_EQ(ready[0]["status"]["restarts"], 0);
  EXPECT_FALSE(fs::exists(remote_ + "/bin/nebula.nebula-old")) << "no backup is left";
  // Upgraded again to the same binary: nothing to do.
  auto current = nodes({"upgrade", "--all", "--binary", new_binary});
  EXPECT_EQ(current.exit_code, 0) << current.out;
  EXPECT_NE(current.out.find("nothing to upgrade"), std::string::npos) << current.out;

  // 5. Uninstall: agent and engine stopped, files gone, node removed, token revoked.
  std::string last_agent = agent_pid();
  auto removed = nodes({"rm", "gpu1", "--uninstall"});
  ASSERT_EQ(removed.exit_code, 0) << removed.out;
  EXPECT_NE(removed.out.find("stopped engine of replica"), std::string::npos) << removed.out;
  EXPECT_TRUE(testing::process_gone(std::stoi(last_agent)));
  EXPECT_TRUE(eventually([&] { return testing::process_gone(engine_pid); }, 10s));
  EXPECT_FALSE(fs::exists(remote_ + "/bin/nebula"));
  EXPECT_FALSE(fs::exists(remote_ + "/data/agent.yaml"));
  EXPECT_FALSE(fs::exists(remote_ + "/data/node.key"));
  EXPECT_TRUE(server_->get_json("/api/v1/tokens")["items"].empty());
  EXPECT_TRUE(server_->get_json("/api/v1/nodes/gpu1").is_null());
  EXPECT_FALSE(fs::exists(temp_.path() + "/client/nodes/gpu1.json"));
  server_->remove_deployments();
}

// `nebula service install`: the unit it prints and writes passes systemd's own checker; a second
// install changes nothing; what a unit cannot hold is a usage error.
TEST(ServiceInstall, WritesAVerifiedUnitOnceAndRefusesBadInput) {
  testing::TempDir temp;
  auto printed = testing::run_command({NEBULA_BINARY, "service", "install", "agent", "--print", "--", "--server",
                                       "http://10.0.0.2:8080", "--token", "nbt-x-y", "--sim-gpus", "1xH100-80GB"});
  ASSERT_EQ(printed.exit_code, 0) << printed.out;
  EXPECT_NE(printed.out.find("ExecStart=" + fs::canonical(NEBULA_BINARY).string() +
                             " agent --server http://10.0.0.2:8080 --token nbt-x-y --sim-gpus 1xH100-80GB --data-dir "
                             "/var/lib/nebula\n"),
            std::string::npos)
      << printed.out;
  EXPECT_NE(printed.out.find("KillMode=process\n"), std::string::npos);

  auto written = testing::run_command(
      {NEBULA_BINARY, "service", "install", "server", "--unit-dir", temp.path(), "--", "--listen", "127.0.0.1:8080"});
  ASSERT_EQ(written.exit_code, 0) << written.out;
  EXPECT_NE(written.out.find("wrote " + temp.path() + "/nebula-server.service"), std::string::npos) << written.out;
  EXPECT_NE(written.out.find("systemctl daemon-reload && systemctl enable --now nebula-server.service"),
            std::string::npos);
  std::string unit = read_file(temp.path() + "/nebula-server.service");
  EXPECT_NE(unit.find("KillMode=mixed\n"), std::string::npos) << unit;
  auto again = testing::run_command(
      {NEBULA_BINARY, "service", "install", "server", "--unit-dir", temp.path(), "--", "--listen", "127.0.0.1:8080"});
  EXPECT_NE(again.out.find("is current"), std::string::npos) << again.out;
  std::string analyze = testing::find_on_path("systemd-analyze");
  if (!analyze.empty()) {
    auto verified = testing::run_command({analyze, "verify", temp.path() + "/nebula-server.service"});
    EXPECT_EQ(verified.exit_code, 0) << verified.out;
    EXPECT_EQ(verified.out.find("nebula-server.service"), std::string::npos) << verified.out;
  }

  EXPECT_EQ(testing::run_command({NEBULA_BINARY, "service", "install", "gateway", "--print"}).exit_code, 2);
  auto no_server = testing::run_command({NEBULA_BINARY, "service", "install", "agent", "--print"});
  EXPECT_EQ(no_server.exit_code, 2) << no_server.out;
  EXPECT_NE(no_server.out.find("--server URL --token TOKEN"), std::string::npos) << no_server.out;
  auto injected = testing::run_command(
      {NEBULA_BINARY, "service", "install", "up", "--print", "--", "--name", "a\nExecStartPre=/bin/sh -c reboot"});
  EXPECT_EQ(injected.exit_code, 2) << injected.out;
  EXPECT_EQ(injected.out.find("ExecStartPre"), injected.out.rfind("ExecStartPre")) << "no unit was printed";
  auto relative = testing::run_command({NEBULA_BINARY, "service", "install", "up", "--print", "--binary", "nebula"});
  EXPECT_EQ(relative.exit_code, 2) << relative.out;
  auto unwritable =
      testing::run_command({NEBULA_BINARY, "service", "install", "up", "--unit-dir", temp.path() + "/missing/dir"});
  EXPECT_EQ(unwritable.exit_code, 1) << unwritable.out;
  EXPECT_NE(unwritable.out.find("cannot write"), std::string::npos) << unwritable.out;
}

}  // namespace
}  // namespace nebula
