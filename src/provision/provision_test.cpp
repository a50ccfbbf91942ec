#include "provision/provision.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/utsname.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "process_helpers.h"

namespace nebula::provision {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_executable(const std::string& path, const std::string& content) {
  std::ofstream(path) << content;
  ::chmod(path.c_str(), 0755);
}

// The remote machine is this one: scripts run in a local sh. The steps run unchanged; only ssh
// is left out (tests/provision_e2e_test.cpp goes through a real sshd).
class LocalRemote final : public Remote {
 public:
  Result<CommandOutput> run(const std::string& script, const std::string& stdin_path) override {
    ++runs;
    scripts.push_back(script);
    if (!canned_inspect.empty() && script.find("first_missing") != std::string::npos) {
      return CommandOutput{0, canned_inspect, "", false};
    }
    std::string text = script;
    if (!fake_systemd.empty()) {
      // The service manager is faked: systemctl and journalctl from fake_systemd/bin, and its
      // /run/systemd/system stands for the real one.
      const std::string real = "/run/systemd/system";
      for (size_t at = text.find(real); at != std::string::npos; at = text.find(real, at + 1)) {
        text.replace(at, real.size(), fake_systemd + "/run");
      }
      text = "PATH=" + fake_systemd + "/bin:$PATH; export PATH\n" + text;
    }
    return run_captured({"sh", "-c", text}, stdin_path, 60s);
  }
  std::string describe() const override { return "local"; }
  int runs = 0;
  std::vector<std::string> scripts;
  std::string canned_inspect;  // the inspect script's answer, when set
  std::string fake_systemd;    // a directory with bin/systemctl, bin/journalctl and run/, when set
};

// The server: tokens in a map; the node is Ready once `agent_alive` says the agent runs.
class FakeCluster final : public Cluster {
 public:
  std::string server_url() const override { return "http://127.0.0.1:1"; }
  Result<JoinToken> create_join_token(const std::string& description) override {
    std::string id = "t" + std::to_string(++created);
    tokens[id] = description;
    return JoinToken{id, "nbt-" + id + "-secret"};
  }
  Result<bool> join_token_valid(const std::string& id) override { return tokens.count(id) > 0; }
  Status revoke_join_token(const std::string& id) override {
    tokens.erase(id);
    return {};
  }
  Result<NodeState> node(const std::string& name) override {
    if (!agent_alive || !agent_alive()) return NodeState{joined, false, heartbeat};
    joined = true;
    return NodeState{true, true, ++heartbeat};
  }
  Status remove_node(const std::string& name) override {
    joined = false;
    removed.push_back(name);
    return {};
  }
  Status set_node_labels(const std::string& name, const std::map<std::string, std::string>& given) override {
    labels = given;
    return {};
  }
  std::function<bool()> agent_alive;
  std::map<std::string, std::string> tokens;
  std::map<std::string, std::string> labels;
  std::vector<std::string> removed;
  int created = 0;
  bool joined = false;
  int64_t heartbeat = 0;
};

std::string machine() {
  utsname name{};
  ::uname(&name);
  return name.machine;
}

TEST(ProvisionDestination, AcceptsUserAndHost) {
  auto target = parse_destination("root@gpu-1.example.com");
  ASSERT_TRUE(target);
  EXPECT_EQ(target->user, "root");
  EXPECT_EQ(target->host, "gpu-1.example.com");
  auto bare = parse_destination("10.0.0.7");
  ASSERT_TRUE(bare);
  EXPECT_EQ(bare->user, "");
  EXPECT_TRUE(parse_destination("[::1]"));
}

TEST(ProvisionDestination, RefusesWhatSshWouldReadAsAnOption) {
  for (const std::string hostile : {"-oProxyCommand=touch /tmp/x", "root@-oProxyCommand=x", "-l@host", "", "@host",
                                    "root@", "a b", "host;reboot", "host\n", "us$er@host", "$(id)@h", "h`id`"}) {
    auto target = parse_destination(hostile);
    EXPECT_FALSE(target) << hostile;
  }
  EXPECT_FALSE(parse_destination(std::string(300, 'a')));
}

TEST(ProvisionDestination, SshArgvEndsOptionsBeforeTheHost) {
  auto target = parse_destination("ops@gpu1");
  ASSERT_TRUE(target);
  target->port = 2222;
  target->identity = "/k";
  target->options = {"ProxyJump=bastion"};
  SshRemote remote(*target);
  auto argv = remote.ssh_argv("true");
  std::string joined;
  for (const auto& arg : argv) joined += arg + " ";
  EXPECT_NE(joined.find("BatchMode=yes"), std::string::npos);
  EXPECT_NE(joined.find("StrictHostKeyChecking=yes"), std::string::npos);
  EXPECT_NE(joined.find("-p 2222"), std::string::npos);
  EXPECT_NE(joined.find("-i /k -o IdentitiesOnly=yes"), std::string::npos);
  EXPECT_NE(joined.find("-o ProxyJump=bastion -- gpu1 true"), std::string::npos) << joined;
  target->accept_new_host_key = true;
  EXPECT_NE(SshRemote(*target).ssh_argv("true")[6], "StrictHostKeyChecking=yes");
  EXPECT_EQ(SshRemote(*target).ssh_argv("true")[5], "StrictHostKeyChecking=accept-new");
}

TEST(ProvisionDestination, SshOptionsAreKeyValue) {
  EXPECT_TRUE(check_ssh_option("UserKnownHostsFile=/tmp/k"));
  EXPECT_FALSE(check_ssh_option("=x"));
  EXPECT_FALSE(check_ssh_option("NoValue"));
  EXPECT_FALSE(check_ssh_option("Proxy Command=x"));
  EXPECT_FALSE(check_ssh_option("A=b\nHost *"));
}

TEST(ProvisionShell, QuotingSurvivesAnyText) {
  for (const std::string text : {"plain", "it's", "a b", "$(id)", "`id`", "\"q\"", "back\\slash", "''", "new\nline"}) {
    auto output = run_captured({"sh", "-c", "printf '%s' " + shell_quote(text)});
    ASSERT_TRUE(output);
    EXPECT_EQ(output->out, text);
  }
}

TEST(ProvisionShell, CapturesOutputApartAndTheExitStatus) {
  auto output = run_captured({"sh", "-c", "echo out; echo err >&2; exit 3"});
  ASSERT_TRUE(output);
  EXPECT_EQ(output->exit_code, 3);
  EXPECT_EQ(output->out, "out\n");
  EXPECT_EQ(output->err, "err\n");
  auto slow = run_captured({"sh", "-c", "sleep 30"}, "", 200ms);
  ASSERT_TRUE(slow);
  EXPECT_TRUE(slow->timed_out);
  EXPECT_FALSE(run_captured({"/nonexistent/binary"}));
}

TEST(ProvisionShell, ClassifiesSshFailures) {
  EXPECT_EQ(classify_ssh_failure({255, "", "Host key verification failed.\r\n", false}), SshFailure::UnknownHostKey);
  EXPECT_EQ(classify_ssh_failure({255, "", "root@127.0.0.1: Permission denied (publickey).\r\n", false}),
            SshFailure::AuthenticationRefused);
  EXPECT_EQ(classify_ssh_failure({255, "", "ssh: connect to host 127.0.0.1 port 1: Connection refused\r\n", false}),
            SshFailure::Unreachable);
  EXPECT_EQ(classify_ssh_failure({255, "", "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@", false}),
            SshFailure::ChangedHostKey);
  EXPECT_EQ(classify_ssh_failure({1, "", "Permission denied", false}), SshFailure::None) << "the script's own";
}

TEST(ProvisionUnits, AgentStopLeavesEnginesRunning) {
  UnitSpec spec;
  spec.role = Role::Agent;
  spec.binary = "/usr/local/bin/nebula";
  spec.args = {"--config", "/var/lib/nebula/agent.yaml", "--engine-arg", "a b", "--label", "50%", "--x", "$HOME"};
  auto unit = systemd_unit(spec);
  ASSERT_TRUE(unit) << unit.error().message;
  EXPECT_NE(unit->find("KillMode=process\n"), std::string::npos);
  EXPECT_NE(unit->find("Restart=always\n"), std::string::npos);
  EXPECT_NE(unit->find("RestartPreventExitStatus=2\n"), std::string::npos);
  EXPECT_NE(unit->find("ExecStart=/usr/local/bin/nebula agent --config /var/lib/nebula/agent.yaml --engine-arg "
                       "\"a b\" --label 50%% --x $$HOME\n"),
            std::string::npos)
      << *unit;
  spec.role = Role::Up;
  auto up = systemd_unit(spec);
  ASSERT_TRUE(up);
  EXPECT_NE(up->find("KillMode=mixed\n"), std::string::npos);
  EXPECT_EQ(up->find("KillMode=process"), std::string::npos);
}

TEST(ProvisionUnits, RefusesWhatAUnitCannotHold) {
  UnitSpec spec;
  spec.binary = "/usr/local/bin/nebula";
  spec.args = {"--name", "a\nExecStartPre=/bin/rm -rf /"};
  EXPECT_FALSE(systemd_unit(spec));
  spec.args = {};
  spec.binary = "nebula";
  EXPECT_FALSE(systemd_unit(spec)) << "a relative binary";
  spec.binary = "/usr/local/bin/nebula";
  spec.user = "root\nUser=x";
  EXPECT_FALSE(systemd_unit(spec));
  EXPECT_FALSE(parse_role("gateway"));
}

// systemd's own checker reads each unit: syntax, the ExecStart binary, known settings.
TEST(ProvisionUnits, SystemdAnalyzeVerifiesEveryRole) {
  std::string analyze = testing::find_on_path("systemd-analyze");
  if (analyze.empty()) GTEST_SKIP() << "systemd-analyze is not installed";
  testing::TempDir temp;
  std::string binary = temp.path() + "/nebula";
  write_executable(binary, "#!/bin/sh\n");
  for (Role role : {Role::Up, Role::Server, Role::Agent}) {
    UnitSpec spec;
    spec.role = role;
    spec.binary = binary;
    spec.args = {"--data-dir", "/var/lib/nebula", "--engine-arg", "x y"};
    auto unit = systemd_unit(spec);
    ASSERT_TRUE(unit);
    std::string path = temp.path() + "/" + unit_name(role);
    std::ofstream(path) << *unit;
    auto verified = run_captured({analyze, "verify", path}, "", 60s);
    ASSERT_TRUE(verified);
    EXPECT_EQ(verified->exit_code, 0) << role_name(role) << ": " << verified->err << verified->out;
    // Only complaints about this unit count (the host's own units may have some).
    EXPECT_EQ(verified->err.find(unit_name(role)), std::string::npos) << verified->err;
  }
  // A broken unit is caught: the checker does check.
  std::string broken = temp.path() + "/nebula-broken.service";
  std::ofstream(broken) << "[Service]\nExecStart=relative/path\nKillMode=sideways\n";
  auto verified = run_captured({analyze, "verify", broken}, "", 60s);
  ASSERT_TRUE(verified);
  EXPECT_NE(verified->exit_code, 0);
}

TEST(ProvisionLayout, PathsMustBeAbsoluteAndPlain) {
  EXPECT_TRUE(check_layout(Layout{}));
  EXPECT_TRUE(check_layout(Layout::under("/opt/nebula")));
  Layout bad;
  bad.bin_dir = "bin";
  EXPECT_FALSE(check_layout(bad));
  bad = Layout::under("/opt/../etc");
  EXPECT_FALSE(check_layout(bad));
  bad = Layout{};
  bad.data_dir = "/var/lib/nebula/";
  EXPECT_FALSE(check_layout(bad));
  bad.data_dir = "/var/lib/\nx";
  EXPECT_FALSE(check_layout(bad));
}

TEST(ProvisionLayout, AgentArgsLeaveManagedFlagsAlone) {
  EXPECT_TRUE(check_agent_args({"--sim-gpus", "1xH100-80GB", "--listen", "127.0.0.1:0"}));
  EXPECT_FALSE(check_agent_args({"--token", "x"}));
  EXPECT_FALSE(check_agent_args({"--server=http://x"}));
  EXPECT_FALSE(check_agent_args({"--data-dir", "/x"}));
  EXPECT_FALSE(check_agent_args({"positional"}));
  EXPECT_FALSE(check_agent_args({"--x", "a\nb"}));
}

class ProvisionSteps : public ::testing::Test {
 protected:
  void SetUp() override {
    layout_ = Layout::under(temp_.path() + "/remote");
    binary_ = temp_.path() + "/nebula";
    // The "agent": runs until SIGTERM, as `nebula agent` does.
    // It says it joined by writing its pid: an agent that exits at once never does.
    joined_ = temp_.path() + "/joined";
    write_executable(binary_,
                     "#!/bin/sh\ntrap 'exit 0' TERM\necho $$ > " + joined_ + "\nwhile :; do sleep 0.05; done\n");
    cluster_.agent_alive = [this] {
      std::string pid = agent_pid();
      return !pid.empty() && read_file(joined_) == pid + "\n";
    };
    options_.name = "n1";
    options_.local_binary = binary_;
    options_.layout = layout_;
    options_.manager = ServiceManager::Detached;
    options_.ready_timeout = 10s;
    options_.poll_interval = 20ms;
  }
  void TearDown() override {
    std::string pid = agent_pid();
    if (!pid.empty()) ::kill(std::stoi(pid), SIGKILL);
  }
  std::string agent_pid() {
    std::string pid = read_file(pid_path_.empty() ? layout_.pid_file() : pid_path_);
    while (!pid.empty() && pid.back() == '\n') pid.pop_back();
    if (pid.empty() || testing::process_gone(std::stoi(pid))) return "";
    return pid;
  }
  StepResult<Installed> add() {
    lines_.clear();
    return add_node(remote_, cluster_, options_, [this](const std::string& step, const std::string& message) {
      lines_ += step + ": " + message + "\n";
    });
  }

  testing::TempDir temp_;
  Layout layout_;
  std::string binary_;
  std::string joined_;
  std::string pid_path_;  // where the running agent's pid is ("" = the detached mode's agent.pid)
  LocalRemote remote_;
  FakeCluster cluster_;
  AddOptions options_;
  std::string lines_;
};

TEST_F(ProvisionSteps, AddInstallsStartsAndTheSecondRunChangesNothing) {
  options_.labels = {{"zone", "a"}};
  auto added = add();
  ASSERT_TRUE(std::holds_alternative<Installed>(added)) << std::get<StepError>(added).to_string() << "\n" << lines_;
  const auto& installed = std::get<Installed>(added);
  EXPECT_TRUE(installed.binary_copied);
  EXPECT_TRUE(installed.restarted);
  EXPECT_EQ(installed.manager, ServiceManager::Detached);
  EXPECT_EQ(read_file(layout_.binary()), read_file(binary_));
  EXPECT_EQ(fs::status(layout_.binary()).permissions() & fs::perms::owner_exec, fs::perms::owner_exec);
  std::string config = read_file(layout_.config_file());
  EXPECT_NE(config.find("token: \"nbt-t1-secret\""), std::string::npos) << config;
  EXPECT_EQ(fs::status(layout_.config_file()).permissions() & (fs::perms::group_all | fs::perms::others_all),
            fs::perms::none)
      << "it holds the join token";
  EXPECT_EQ(cluster_.labels.at("zone"), "a");
  std::string pid = agent_pid();
  ASSERT_FALSE(pid.empty());
  for (const auto& entry : fs::recursive_directory_iterator(layout_.bin_dir)) {
    EXPECT_EQ(entry.path().filename().string().find("nebula-"), std::string::npos) << "leftover " << entry.path();
  }

  auto again = add();
  ASSERT_TRUE(std::holds_alternative<Installed>(again)) << std::get<StepError>(again).to_string();
  const auto& second = std::get<Installed>(again);
  EXPECT_FALSE(second.binary_copied);
  EXPECT_FALSE(second.config_changed);
  EXPECT_FALSE(second.restarted);
  EXPECT_EQ(agent_pid(), pid) << "the agent was not restarted";
  EXPECT_EQ(cluster_.created, 1) << "the machine's token was kept";
  EXPECT_NE(lines_.find("is current"), std::string::npos) << lines_;
  EXPECT_NE(lines_.find("not restarted"), std::string::npos) << lines_;

  // A changed flag rewrites the service and restarts the agent; the token stays.
  options_.agent_args = {"--sim-gpus", "1xH100-80GB"};
  auto changed = add();
  ASSERT_TRUE(std::holds_alternative<Installed>(changed)) << std::get<StepError>(changed).to_string();
  EXPECT_TRUE(std::get<Installed>(changed).restarted);
  EXPECT_NE(agent_pid(), pid);
  EXPECT_EQ(cluster_.created, 1);

  UninstallOptions uninstall;
  uninstall.name = "n1";
  uninstall.layout = layout_;
  uninstall.token_id = "t1";
  std::string last_pid = agent_pid();
  auto removed = uninstall_node(remote_, cluster_, uninstall, {});
  ASSERT_TRUE(std::holds_alternative<bool>(removed)) << std::get<StepError>(removed).to_string();
  EXPECT_TRUE(testing::process_gone(std::stoi(last_pid)));
  EXPECT_FALSE(fs::exists(layout_.binary()));
  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(layout_.data_dir)) left.push_back(entry.path().filename());
  EXPECT_EQ(left, std::vector<std::string>{"agent.log"}) << "logs stay without --purge";
  EXPECT_TRUE(cluster_.tokens.empty());
  EXPECT_EQ(cluster_.removed, std::vector<std::string>{"n1"});
}

// The agent exits at once (its port is taken): the step says so with the agent's log, and the
// rollback removes every file and directory the run created and revokes its token.
TEST_F(ProvisionSteps, AnAgentThatExitsRollsEverythingBack) {
  write_executable(binary_, "#!/bin/sh\necho 'cannot listen on 127.0.0.1:9091: Address already in use' >&2\nexit 1\n");
  auto added = add();
  ASSERT_TRUE(std::holds_alternative<StepError>(added)) << lines_;
  const auto& error = std::get<StepError>(added);
  EXPECT_EQ(error.step, "ready");
  EXPECT_NE(error.remote_output.find("Address already in use"), std::string::npos) << error.to_string();
  EXPECT_TRUE(error.rolled_back);
  EXPECT_NE(error.to_string().find("left as it was"), std::string::npos);
  EXPECT_FALSE(fs::exists(temp_.path() + "/remote")) << "the run created it, the rollback removed it";
  EXPECT_TRUE(cluster_.tokens.empty()) << "the token was revoked";
}

// A run over an installed node that fails restores the old binary and config and starts the old
// agent again.
TEST_F(ProvisionSteps, AFailedReinstallRestoresTheOldOne) {
  auto added = add();
  ASSERT_TRUE(std::holds_alternative<Installed>(added)) << std::get<StepError>(added).to_string();
  std::string old_binary = read_file(layout_.binary());
  std::string old_script = read_file(layout_.data_dir + "/agent.sh");
  std::string broken = temp_.path() + "/broken";
  write_executable(broken, "#!/bin/sh\necho 'wrong ELF class' >&2\nexit 126\n");
  options_.local_binary = broken;
  options_.agent_args = {"--sim-gpus", "1xH100-80GB"};
  auto failed = add();
  ASSERT_TRUE(std::holds_alternative<StepError>(failed));
  EXPECT_TRUE(std::get<StepError>(failed).rolled_back);
  EXPECT_EQ(read_file(layout_.binary()), old_binary);
  EXPECT_EQ(read_file(layout_.data_dir + "/agent.sh"), old_script);
  EXPECT_FALSE(fs::exists(layout_.binary() + ".nebula-old"));
  EXPECT_TRUE(testing::eventually([&] { return !agent_pid().empty(); }, 5s)) << "the old agent runs again";
  EXPECT_EQ(cluster_.created, 1);
}

// Where systemd runs, the agent is a unit: written to the unit dir, enabled and restarted through
// systemctl, left alone when nothing changed, disabled and removed by the uninstall. systemctl is
// a stand-in that runs the unit's ExecStart (systemd itself cannot run here).
TEST_F(ProvisionSteps, WhereSystemdRunsTheAgentIsAUnit) {
  std::string fake = temp_.path() + "/systemd";
  fs::create_directories(fake + "/bin");
  fs::create_directories(fake + "/run");
  write_executable(fake + "/bin/systemctl", "#!/bin/sh\nS=" + fake +
                                                "\necho \"$*\" >> $S/calls\n"
                                                "running() { [ -f $S/pid ] && kill -0 $(cat $S/pid) 2>/dev/null; }\n"
                                                "case \"$1\" in\n"
                                                "  is-active) running ;;\n"
                                                "  start|restart)\n"
                                                "    if [ \"$1\" = start ] && running; then exit 0; fi\n"
                                                "    if running; then kill $(cat $S/pid); fi\n"
                                                "    cmd=$(sed -n 's/^ExecStart=//p' " +
                                                layout_.unit_file() +
                                                ")\n"
                                                "    setsid sh -c \"exec $cmd\" > $S/journal 2>&1 < /dev/null &\n"
                                                "    echo $! > $S/pid ;;\n"
                                                "  stop) if running; then kill $(cat $S/pid); fi; rm -f $S/pid ;;\n"
                                                "esac\n");
  write_executable(fake + "/bin/journalctl", "#!/bin/sh\ncat " + fake + "/journal\n");
  remote_.fake_systemd = fake;
  pid_path_ = fake + "/pid";
  options_.manager = ServiceManager::Auto;

  auto added = add();
  ASSERT_TRUE(std::holds_alternative<Installed>(added)) << std::get<StepError>(added).to_string() << "\n" << lines_;
  EXPECT_EQ(std::get<Installed>(added).manager, ServiceManager::Systemd);
  std::string unit = read_file(layout_.unit_file());
  EXPECT_NE(unit.find("KillMode=process\n"), std::string::npos) << unit;
  EXPECT_NE(unit.find("ExecStart=" + layout_.binary() + " agent --config " + layout_.config_file() + "\n"),
            std::string::npos)
      << unit;
  EXPECT_FALSE(fs::exists(layout_.data_dir + "/agent.sh")) << "no detached script under systemd";
  // Inspected, then reloaded, enabled, restarted; then checked while waiting for Ready.
  EXPECT_EQ(read_file(fake + "/calls")
                .rfind("is-active --quiet nebula-agent.service\ndaemon-reload\nenable --quiet "
                       "nebula-agent.service\nrestart nebula-agent.service\n",
                       0),
            0u)
      << read_file(fake + "/calls");
  std::string pid = agent_pid();
  ASSERT_FALSE(pid.empty());

  auto again = add();
  ASSERT_TRUE(std::holds_alternative<Installed>(again)) << std::get<StepError>(again).to_string();
  EXPECT_FALSE(std::get<Installed>(again).restarted);
  EXPECT_EQ(agent_pid(), pid);
  EXPECT_EQ(read_file(fake + "/calls").find("restart", read_file(fake + "/calls").find("restart") + 1),
            std::string::npos)
      << "restarted once only: " << read_file(fake + "/calls");

  UpgradeOptions upgrade;
  upgrade.name = "n1";
  upgrade.local_binary = temp_.path() + "/nebula-next";
  fs::copy_file(binary_, upgrade.local_binary);
  std::ofstream(upgrade.local_binary, std::ios::app) << "# next\n";
  upgrade.layout = layout_;
  upgrade.manager = ServiceManager::Systemd;
  upgrade.ready_timeout = 10s;
  upgrade.poll_interval = 20ms;
  auto upgraded = upgrade_node(remote_, cluster_, upgrade, {});
  ASSERT_TRUE(std::holds_alternative<Installed>(upgraded)) << std::get<StepError>(upgraded).to_string();
  EXPECT_NE(agent_pid(), pid);
  EXPECT_EQ(read_file(layout_.binary()), read_file(upgrade.local_binary));
  EXPECT_NE(read_file(fake + "/calls").find("stop nebula-agent.service\n"), std::string::npos);

  UninstallOptions uninstall;
  uninstall.name = "n1";
  uninstall.layout = layout_;
  uninstall.manager = ServiceManager::Systemd;
  std::string last = agent_pid();
  auto removed = uninstall_node(remote_, cluster_, uninstall, {});
  ASSERT_TRUE(std::holds_alternative<bool>(removed)) << std::get<StepError>(removed).to_string();
  EXPECT_TRUE(testing::eventually([&] { return testing::process_gone(std::stoi(last)); }, 5s));
  EXPECT_FALSE(fs::exists(layout_.unit_file()));
  EXPECT_NE(read_file(fake + "/calls").find("disable --quiet nebula-agent.service\n"), std::string::npos);
}

TEST_F(ProvisionSteps, WrongArchitectureOrSystemIsRefusedBeforeAnyChange) {
  std::string other = machine() == "aarch64" ? "x86_64" : "aarch64";
  remote_.canned_inspect = "os=Linux\narch=" + other + "\nhostname=gpu1\nhas_sha256sum=1\n";
  auto added = add();
  ASSERT_TRUE(std::holds_alternative<StepError>(added));
  EXPECT_EQ(std::get<StepError>(added).step, "check");
  EXPECT_NE(std::get<StepError>(added).message.find("wrong architecture: the machine is " + other), std::string::npos);
  EXPECT_EQ(remote_.runs, 1) << "nothing ran after the inspection";
  remote_.canned_inspect = "os=Darwin\narch=" + machine() + "\nhostname=mac\nhas_sha256sum=1\n";
  added = add();
  ASSERT_TRUE(std::holds_alternative<StepError>(added));
  EXPECT_NE(std::get<StepError>(added).message.find("runs Darwin"), std::string::npos);
  // A host name that cannot be a node name needs --name.
  remote_.canned_inspect = "os=Linux\narch=" + machine() + "\nhostname=GPU_Box\nhas_sha256sum=1\n";
  options_.name = "";
  added = add();
  ASSERT_TRUE(std::holds_alternative<StepError>(added));
  EXPECT_NE(std::get<StepError>(added).message.find("--name"), std::string::npos);
  EXPECT_FALSE(fs::exists(temp_.path() + "/remote"));
}

}  // namespace
}  // namespace nebula::provision
