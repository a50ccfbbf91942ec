// `nebula top` in a real pseudo-terminal: tmux (on a private socket) runs it against a real
// `nebula up --sim-gpus`; the tests press keys with `tmux send-keys` and read the screen with
// `tmux capture-pane`, asserting on what a user would see, and on the server for what the keys
// asked of it.
#include <gtest/gtest.h>

#include <algorithm>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "../nebula_fixture.h"
#include "../process_helpers.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using testing::eventually;
using testing::run_command;

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

std::string trim_right(std::string text, const std::string& characters = " ") {
  while (!text.empty() && characters.find(text.back()) != std::string::npos) text.pop_back();
  return text;
}

// One tmux server of its own (a socket in a temp dir), one session running one command.
class Tmux {
 public:
  Tmux() : socket_(dir_.path() + "/tmux.sock") {}
  ~Tmux() { run({"kill-server"}); }

  // Starts `command` (a shell command line) in a width x height window. When it exits, the pane
  // shows "[exited STATUS]" and stays (an idle `cat` holds it open for exit_status()).
  bool start(const std::string& command, int width = 120, int height = 40) {
    auto started = run({"new-session", "-d", "-s", "top", "-x", std::to_string(width), "-y", std::to_string(height),
                        "sh -c '" + command + "; echo \"[exited $?]\"; exec cat'"});
    return started.exit_code == 0;
  }
  std::string screen() { return run({"capture-pane", "-p", "-t", "top"}).out; }
  void keys(const std::vector<std::string>& names) {
    std::vector<std::string> args = {"send-keys", "-t", "top"};
    args.insert(args.end(), names.begin(), names.end());
    run(args);
  }
  void resize(int width, int height) {
    run({"resize-window", "-t", "top", "-x", std::to_string(width), "-y", std::to_string(height)});
  }
  // Waits until the screen shows every one of `texts`; the last screen in *last.
  bool wait_for(const std::vector<std::string>& texts, std::string* last = nullptr,
                std::chrono::milliseconds timeout = 20s) {
    std::string seen;
    bool found = eventually(
        [&] {
          seen = screen();
          for (const auto& text : texts) {
            if (seen.find(text) == std::string::npos) return false;
          }
          return true;
        },
        timeout);
    if (last) *last = seen;
    if (!found) std::cerr << "---- screen ----\n" << seen << "----\n";
    return found;
  }
  bool wait_gone(const std::string& text, std::chrono::milliseconds timeout = 10s) {
    return eventually([&] { return screen().find(text) == std::string::npos; }, timeout);
  }
  // The command's exit status once it has exited; -1 while it runs.
  int exit_status() {
    std::string text = screen();
    size_t at = text.find("[exited ");
    return at == std::string::npos ? -1 : std::atoi(text.c_str() + at + 8);
  }

 private:
  testing::CommandResult run(std::vector<std::string> args) {
    args.insert(args.begin(), {"tmux", "-S", socket_, "-f", "/dev/null"});
    return run_command(args);
  }
  testing::TempDir dir_;
  std::string socket_;
};

std::string top_command(const std::string& server, const std::string& data_dir, const std::string& extra_env = "") {
  return "env NEBULA_SERVER=" + server + " NEBULA_DATA_DIR=" + data_dir + " " + extra_env + " " + NEBULA_BINARY +
         " top";
}

// The capture in README.md's `nebula top` section.
std::vector<std::string> readme_capture() {
  // __FILE__ is as the compiler was given it: absolute, or relative to the build directory, where
  // the nebula binary is.
  std::filesystem::path source = std::filesystem::path(NEBULA_BINARY).parent_path() / __FILE__;
  std::ifstream in(source.parent_path().parent_path().parent_path() / "README.md");
  std::stringstream text;
  text << in.rdbuf();
  std::string readme = text.str();
  size_t section = readme.find("## nebula top");
  if (section == std::string::npos) return {};
  size_t begin = readme.find("```\n", section);
  size_t end = readme.find("```", begin + 4);
  if (begin == std::string::npos || end == std::string::npos) return {};
  return lines_of(readme.substr(begin + 4, end - begin - 4));
}

class TopE2e : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::find_on_path("tmux").empty()) GTEST_SKIP() << "tmux is not installed (scripts/install-deps adds it)";
  }
};

TEST_F(TopE2e, ShowsTheClusterAndActsOnKeys) {
  testing::NebulaUp up({}, "2xH100-80GB");
  ASSERT_TRUE(up.wait_node_ready()) << up.process().output();
  Tmux tmux;
  ASSERT_TRUE(tmux.start(top_command(up.server(), up.data_dir())));

  // The node and both of its GPUs, before anything is deployed.
  std::string screen;
  ASSERT_TRUE(tmux.wait_for(
      {"connected", "NODES & GPUS", "e2e-node", "Ready", "DEPLOYMENTS", "no deployments", "EVENTS"}, &screen));
  int gpu_rows = 0;
  for (const auto& line : lines_of(screen)) {
    if (line.find("H100-80GB") != std::string::npos && line.find("/80.0") != std::string::npos) ++gpu_rows;
  }
  EXPECT_EQ(gpu_rows, 2) << screen;

  // A deployment made through the CLI shows up with its ready/total, through the watch.
  auto deployed =
      up.cli({"deploy", "chat", "--engine", "sim", "--model", "llama-3.1-8b-instruct", "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  ASSERT_TRUE(tmux.wait_for({"chat ", "1/1", "llama-3.1-8b-instruct", "ReplicaCreated"}, &screen));

  // What the README shows is made here: build/top-capture.txt is this screen.
  std::ofstream(std::filesystem::path(NEBULA_BINARY).parent_path() / "top-capture.txt") << screen;

  // The labels of the README's capture are on the real screen, as shown there.
  auto capture = readme_capture();
  ASSERT_FALSE(capture.empty()) << "README.md has no capture in its `nebula top` section";
  int labels = 0;
  for (const auto& line : capture) {
    bool label_line = line.rfind("NODE ", 0) == 0 || line.rfind("NAME", 0) == 0 || line.rfind("AGE ", 0) == 0 ||
                      line.rfind(" NODES & GPUS", 0) == 0 || line.rfind(" DEPLOYMENTS", 0) == 0 ||
                      line.rfind(" EVENTS", 0) == 0 || line.rfind(" Tab pane", 0) == 0;
    if (!label_line) continue;
    ++labels;
    EXPECT_NE(screen.find(trim_right(line, " -")), std::string::npos) << "README line not on screen: " << line;
  }
  EXPECT_EQ(labels, 7) << "the README capture lacks some of the labels";

  // Scale through keys: s, a count, Enter; the server's spec follows and the row shows 2/2.
  tmux.keys({"s"});
  ASSERT_TRUE(tmux.wait_for({"Scale chat", "Replicas: _"}));
  tmux.keys({"2", "Enter"});
  ASSERT_TRUE(eventually([&] { return up.get_json("/api/v1/deployments/chat")["spec"]["replicas"] == 2; }, 10s));
  ASSERT_TRUE(tmux.wait_for({"chat scaled to 2", "2/2"}, nullptr, 60s));

  // A restart asks first: refused, nothing happens; accepted, the server gets it.
  tmux.keys({"r"});
  ASSERT_TRUE(tmux.wait_for({"Restart chat?", "[y/N]"}));
  tmux.keys({"n"});
  ASSERT_TRUE(tmux.wait_for({"Restart chat: cancelled"}));
  EXPECT_EQ(up.get_json("/api/v1/deployments/chat")["status"].value("restart_requested_ms", int64_t{0}), 0);
  tmux.keys({"r"});
  ASSERT_TRUE(tmux.wait_for({"Restart chat?"}));
  tmux.keys({"y"});
  ASSERT_TRUE(tmux.wait_for({"chat: rolling restart started"}));
  EXPECT_GT(up.get_json("/api/v1/deployments/chat")["status"].value("restart_requested_ms", int64_t{0}), 0);

  // The help overlay, closed by any key.
  tmux.keys({"?"});
  ASSERT_TRUE(tmux.wait_for({"Help: nebula top", "scale the selected deployment", "quit"}));
  tmux.keys({"x"});
  ASSERT_TRUE(tmux.wait_gone("Help: nebula top"));

  // The logs of the selected deployment in place of the events, and back: a line of what
  // `nebula logs chat` prints is on the screen. Both follow replica 0, so the restart above must
  // be over first (else `top` may follow the replica being replaced and `nebula logs` the new).
  ASSERT_TRUE(eventually(
      [&] {
        auto status = up.get_json("/api/v1/deployments/chat")["status"];
        auto replicas = up.replicas_of("chat");
        return status["rollout"].value("state", "") == "Complete" && replicas.size() == 2 &&
               std::all_of(replicas.begin(), replicas.end(), [](const json& replica) {
                 return replica["status"].value("phase", "") == "Ready" &&
                        replica["spec"].value("draining_since_ms", int64_t{0}) == 0;
               });
      },
      60s, 100ms))
      << up.get_json("/api/v1/deployments/chat").dump(2);
  tmux.keys({"l"});
  ASSERT_TRUE(tmux.wait_for({"LOGS chat (replica 0)", "following"}));
  ASSERT_TRUE(eventually(
      [&] {
        screen = tmux.screen();
        for (const auto& line : lines_of(up.cli({"logs", "chat", "--tail", "2000"}).out)) {
          std::string start = line.substr(0, 60);
          if (start.size() > 20 && screen.find(start) != std::string::npos) return true;
        }
        return false;
      },
      20s))
      << screen;
  tmux.keys({"Escape"});
  ASSERT_TRUE(tmux.wait_for({"EVENTS", "AGE"}));

  // Sleep asks first; then the deployment's row says Idle and its engines sleep. z again wakes it.
  auto deployment_row = [&tmux] {
    for (const auto& line : lines_of(tmux.screen())) {
      if (line.rfind("chat ", 0) == 0 && line.find("llama-3.1-8b-instruct") != std::string::npos) return line;
    }
    return std::string();
  };
  auto replica_phases = [&up] {
    std::string phases;
    for (const auto& replica : up.replicas_of("chat")) phases += replica["status"].value("phase", "?") + ",";
    return phases;
  };
  tmux.keys({"z"});
  ASSERT_TRUE(tmux.wait_for({"Sleep chat?", "sleep (sleep-l1)", "[y/N]"}));
  tmux.keys({"n"});
  ASSERT_TRUE(tmux.wait_for({"Sleep chat: cancelled"}));
  EXPECT_EQ(up.get_json("/api/v1/deployments/chat")["status"].value("sleep_requested_ms", int64_t{0}), 0);
  tmux.keys({"z"});
  ASSERT_TRUE(tmux.wait_for({"Sleep chat?"}));
  tmux.keys({"y"});
  ASSERT_TRUE(tmux.wait_for({"chat: going to sleep"}));
  ASSERT_TRUE(eventually([&] { return deployment_row().find(" Idle ") != std::string::npos; }, 20s)) << tmux.screen();
  ASSERT_TRUE(eventually([&] { return replica_phases() == "Sleeping,Sleeping,"; }, 30s)) << replica_phases();
  tmux.keys({"z"});
  ASSERT_TRUE(tmux.wait_for({"chat: waking"}));
  ASSERT_TRUE(eventually([&] { return replica_phases() == "Ready,Ready,"; }, 30s)) << replica_phases();
  ASSERT_TRUE(eventually(
      [&] {
        std::string row = deployment_row();
        return row.find(" Ready ") != std::string::npos && row.find("2/2") != std::string::npos;
      },
      20s))
      << tmux.screen();

  // A smaller terminal: every pane is still there and nothing is wider than the window.
  tmux.resize(80, 24);
  ASSERT_TRUE(eventually(
      [&] {
        screen = tmux.screen();
        auto lines = lines_of(screen);
        if (lines.size() != 24) return false;
        for (const auto& line : lines) {
          if (line.size() > 80) return false;
        }
        return screen.find("NODES & GPUS") != std::string::npos && screen.find("DEPLOYMENTS") != std::string::npos &&
               screen.find("EVENTS") != std::string::npos && screen.find("chat ") != std::string::npos &&
               screen.find("e2e-node") != std::string::npos;
      },
      10s))
      << screen;

  // q quits with status 0.
  tmux.keys({"q"});
  ASSERT_TRUE(eventually([&] { return tmux.exit_status() != -1; }, 10s)) << tmux.screen();
  EXPECT_EQ(tmux.exit_status(), 0);
}

TEST_F(TopE2e, ModeSwitchShowsItsDryRunThenSwitches) {
  testing::NebulaUp up({}, "1xH100-80GB");
  ASSERT_TRUE(up.wait_node_ready()) << up.process().output();
  // a and b do not fit together: the switch must stop a before b starts.
  auto a = up.cli(
      {"deploy", "a", "--engine", "sim", "--model", "qwen2.5-0.5b", "--vram", "50GB", "--wait", "--timeout", "30s"});
  ASSERT_EQ(a.exit_code, 0) << a.out;
  auto b = up.cli({"deploy", "b", "--engine", "sim", "--model", "qwen2.5-0.5b", "--vram", "50GB", "--replicas", "0"});
  ASSERT_EQ(b.exit_code, 0) << b.out;
  for (auto [mode, deployment] : {std::pair{"ma", "a"}, std::pair{"mb", "b"}}) {
    auto created = up.cli({"mode", "create", mode, "--deployments", deployment});
    ASSERT_EQ(created.exit_code, 0) << created.out;
  }
  Tmux tmux;
  ASSERT_TRUE(tmux.start(top_command(up.server(), up.data_dir())));
  ASSERT_TRUE(tmux.wait_for({"connected", "a ", "1/1"}));

  tmux.keys({"m"});
  ASSERT_TRUE(tmux.wait_for({"Switch mode", "> ma", "mb"}));
  tmux.keys({"Down", "Enter"});
  // The dry run's answer first, and nothing changed yet.
  ASSERT_TRUE(tmux.wait_for({"Switch to mode mb?", "stop:  a", "start: b", "[y/N]"}));
  EXPECT_EQ(up.get_json("/api/v1/deployments/a")["spec"]["replicas"], 1);
  tmux.keys({"y"});
  ASSERT_TRUE(tmux.wait_for({"switched to mb", "started b; stopped a"}, nullptr, 90s));
  json modes = up.get_json("/api/v1/modes/mb");
  EXPECT_EQ(modes["active"], true);
  ASSERT_TRUE(tmux.wait_for({"1/1"}));  // b's row
}

TEST_F(TopE2e, SaysDisconnectedAndKeepsRunning) {
  // Nothing listens on this port.
  std::string server = "http://127.0.0.1:" + std::to_string(testing::free_port());
  Tmux tmux;
  testing::TempDir data;
  ASSERT_TRUE(tmux.start(top_command(server, data.path())));
  ASSERT_TRUE(tmux.wait_for({"disconnected, retrying: cannot reach " + server, "no node has joined yet"}));
  EXPECT_EQ(tmux.exit_status(), -1);
  tmux.keys({"q"});
  ASSERT_TRUE(eventually([&] { return tmux.exit_status() != -1; }, 10s)) << tmux.screen();
  EXPECT_EQ(tmux.exit_status(), 0);
}

TEST_F(TopE2e, WorksOnAPlainTerminalWithoutColours) {
  // vt100: cursor addressing, reverse video and bold, no colours.
  std::string server = "http://127.0.0.1:" + std::to_string(testing::free_port());
  Tmux tmux;
  testing::TempDir data;
  ASSERT_TRUE(tmux.start(top_command(server, data.path(), "TERM=vt100"), 80, 24));
  ASSERT_TRUE(tmux.wait_for({"disconnected, retrying", "NODES & GPUS", "DEPLOYMENTS", "EVENTS", "? help"}));
  tmux.keys({"?"});
  ASSERT_TRUE(tmux.wait_for({"Help: nebula top"}));
  tmux.keys({"q"});
  ASSERT_TRUE(eventually([&] { return tmux.exit_status() != -1; }, 10s)) << tmux.screen();
  EXPECT_EQ(tmux.exit_status(), 0);
}

TEST_F(TopE2e, AWrongKeyIsRefusedAndTheAdminKeyWorks) {
  testing::NebulaUp up({"--auth", "keys"}, "1xH100-80GB");
  ASSERT_TRUE(up.wait_node_ready()) << up.process().output();
  Tmux wrong;
  ASSERT_TRUE(wrong.start(top_command(up.server(), up.data_dir(), "NEBULA_API_KEY=nb-abcdefgh_0123")));
  ASSERT_TRUE(wrong.wait_for({"refused, retrying: Incorrect API key provided.", "no node has joined yet"}));
  // The local server's admin key, from its data dir.
  Tmux admin;
  ASSERT_TRUE(admin.start(top_command(up.server(), up.data_dir())));
  ASSERT_TRUE(admin.wait_for({"connected", "e2e-node"}));
}

TEST_F(TopE2e, RefusesWhatIsNotAFullScreenTerminal) {
  // stdout to a file.
  auto piped = run_command({NEBULA_BINARY, "top", "--server", "http://127.0.0.1:1"});
  EXPECT_EQ(piped.exit_code, 1);
  EXPECT_NE(piped.out.find("nebula top needs a full-screen terminal: stdout is not a terminal"), std::string::npos)
      << piped.out;
  // A terminal that cannot move its cursor.
  Tmux tmux;
  testing::TempDir data;
  ASSERT_TRUE(tmux.start(top_command("http://127.0.0.1:1", data.path(), "TERM=dumb") + " 2>&1"));
  ASSERT_TRUE(tmux.wait_for({"terminal 'dumb' cannot move the cursor"}));
  ASSERT_TRUE(eventually([&] { return tmux.exit_status() != -1; }, 10s)) << tmux.screen();
  EXPECT_EQ(tmux.exit_status(), 1);
  // Bad flags are a usage error.
  auto bad = run_command({NEBULA_BINARY, "top", "--no-such-flag"});
  EXPECT_EQ(bad.exit_code, 2) << bad.out;
}

}  // namespace
}  // namespace nebula
