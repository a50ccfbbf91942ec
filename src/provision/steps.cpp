// The steps of `nebula nodes add`, `nodes upgrade` and `nodes rm --uninstall`, as shell scripts run
// on the remote machine, each undone in reverse when a later one fails.
#include <fmt/format.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <sstream>
#include <thread>

#include "api/api.h"
#include "common/ids.h"
#include "common/json.h"
#include "provision/provision.h"

namespace nebula::provision {

namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

// Shell functions every script may use. alive PID: the process exists and is no zombie (a
// detached agent's parent may be an init that does not reap).
constexpr const char* kPrelude = R"SH(set -u
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" != Z ]; }
)SH";

// The remote paths a script uses, as shell variables.
std::string paths_prelude(const Layout& layout) {
  return fmt::format("{}B={}\nBD={}\nUD={}\nD={}\nU={}\nS={}\n", kPrelude, shell_quote(layout.binary()),
                     shell_quote(layout.bin_dir), shell_quote(layout.unit_dir), shell_quote(layout.data_dir),
                     shell_quote(layout.unit_file()), shell_quote(layout.data_dir + "/agent.sh"));
}

// The detached agent's pid when it runs (from agent.pid, checked against its command line).
constexpr const char* kDetachedPid = R"SH(agent_pid() {
  [ -f "$D/agent.pid" ] || return 1
  pid=$(cat "$D/agent.pid" 2>/dev/null)
  case "$pid" in ''|*[!0-9]*) return 1 ;; esac
  alive "$pid" || return 1
  case "$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" in *" agent --config $D/agent.yaml"*) echo "$pid" ;; *) return 1 ;; esac
}
)SH";

std::string trim(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
  size_t start = 0;
  while (start < text.size() && (text[start] == '\n' || text[start] == ' ')) ++start;
  return text.substr(start);
}

std::string combined(const CommandOutput& output) {
  std::string text = trim(output.err);
  std::string out = trim(output.out);
  if (!out.empty()) text += (text.empty() ? "" : "\n") + out;
  return text;
}

std::string short_sha(const std::string& sha) {
  return sha.substr(0, 12);
}

std::string local_arch() {
  utsname name{};
  if (::uname(&name) != 0) return "";
  return name.machine;
}

// What is on the remote machine before a run.
struct RemoteState {
  std::string os;
  std::string arch;
  std::string hostname;
  bool has_sha256sum = false;
  std::string binary_sha;  // "" when there is no binary
  // The first missing directory of each path ("" when it exists): created by a run, removed by
  // its rollback.
  std::string bin_missing;
  std::string unit_missing;
  std::string data_missing;
  std::string unit_sha;    // the systemd unit
  std::string script_sha;  // the detached mode's agent.sh
  std::string config_sha;
  std::string token;
  bool systemd = false;
  bool detached_running = false;
  bool systemd_running = false;
};

std::string inspect_script(const Layout& layout) {
  return paths_prelude(layout) + kDetachedPid + R"SH(echo "os=$(uname -s)"
echo "arch=$(uname -m)"
echo "hostname=$(uname -n)"
sum() { sha256sum < "$1" | cut -d' ' -f1; }
if command -v sha256sum >/dev/null 2>&1; then
  echo has_sha256sum=1
  [ -f "$B" ] && echo "binary_sha=$(sum "$B")"
  [ -f "$U" ] && echo "unit_sha=$(sum "$U")"
  [ -f "$S" ] && echo "script_sha=$(sum "$S")"
  [ -f "$D/agent.yaml" ] && echo "config_sha=$(sum "$D/agent.yaml")"
fi
# The first directory of a path that does not exist: what a run creates, and a rollback removes.
first_missing() { d="$1"; m=""; while [ ! -e "$d" ]; do m="$d"; d=$(dirname "$d"); done; echo "$m"; }
echo "bin_missing=$(first_missing "$BD")"
echo "unit_missing=$(first_missing "$UD")"
echo "data_missing=$(first_missing "$D")"
[ -r "$D/agent.yaml" ] && sed -n 's/^token: *//p' "$D/agent.yaml" | tr -d '"' | head -n 1 | sed 's/^/token=/'
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  echo systemd=1
  systemctl is-active --quiet nebula-agent.service 2>/dev/null && echo systemd_running=1
fi
agent_pid >/dev/null && echo detached_running=1
exit 0
)SH";
}

RemoteState parse_state(const std::string& text) {
  RemoteState state;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    auto equals = line.find('=');
    if (equals == std::string::npos) continue;
    std::string key = line.substr(0, equals), value = line.substr(equals + 1);
    if (key == "os") state.os = value;
    if (key == "arch") state.arch = value;
    if (key == "hostname") state.hostname = value;
    if (key == "has_sha256sum") state.has_sha256sum = true;
    if (key == "binary_sha") state.binary_sha = value;
    if (key == "unit_sha") state.unit_sha = value;
    if (key == "script_sha") state.script_sha = value;
    if (key == "config_sha") state.config_sha = value;
    if (key == "bin_missing") state.bin_missing = value;
    if (key == "unit_missing") state.unit_missing = value;
    if (key == "data_missing") state.data_missing = value;
    if (key == "token") state.token = value;
    if (key == "systemd") state.systemd = true;
    if (key == "systemd_running") state.systemd_running = true;
    if (key == "detached_running") state.detached_running = true;
  }
  return state;
}

// One run: the remote, its progress, and the undo actions of the steps done so far.
class Run {
 public:
  Run(Remote& remote, const Progress& progress) : remote_(remote), progress_(progress) {}

  void say(const std::string& step, const std::string& message) {
    if (progress_) progress_(step, message);
  }

  // Runs a script as `step`: a failure to reach the machine or a nonzero exit is the step's error.
  std::optional<StepError> script(const std::string& step, const std::string& text, const std::string& what,
                                  CommandOutput* output = nullptr, const std::string& stdin_path = "") {
    auto result = remote_.run(text, stdin_path);
    if (!result) return StepError{step, result.error().message, "", false};
    if (output) *output = *result;
    if (result->exit_code != 0) {
      return StepError{step,
                       fmt::format("{} failed on {} (exit status {})", what, remote_.describe(), result->exit_code),
                       combined(*result), false};
    }
    return std::nullopt;
  }

  // An action that undoes a step; run in reverse order when a later step fails.
  void on_failure(std::string what, std::function<void()> undo) {
    undo_.emplace_back(std::move(what), std::move(undo));
  }

  // Undoes what was done, newest first; the error says it was rolled back.
  StepError fail(StepError error) {
    if (!undo_.empty()) {
      say("rollback", "undoing the steps done so far");
      for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) {
        say("rollback", it->first);
        it->second();
      }
      undo_.clear();
      error.rolled_back = true;
    }
    return error;
  }

  // Runs an undo script; what it says goes to the progress (an undo that fails cannot fail more).
  void undo_script(const std::string& text) {
    auto result = remote_.run(text);
    if (!result) {
      say("rollback", "could not undo: " + result.error().message);
    } else if (result->exit_code != 0) {
      say("rollback", "could not undo: " + combined(*result));
    }
  }

  Remote& remote() { return remote_; }

 private:
  Remote& remote_;
  const Progress& progress_;
  std::vector<std::pair<std::string, std::function<void()>>> undo_;
};

std::optional<StepError> check_platform(const RemoteState& state) {
  if (state.os != "Linux") {
    return StepError{
        "check", fmt::format("the machine runs {}: a nebula agent runs on Linux", state.os.empty() ? "?" : state.os),
        "uname -s: " + state.os, false};
  }
  std::string ours = local_arch();
  if (state.arch != ours) {
    return StepError{"check",
                     fmt::format("wrong architecture: the machine is {} and this nebula is built for {}; run "
                                 "`nebula nodes add` from a {} machine",
                                 state.arch, ours, state.arch),
                     "uname -m: " + state.arch, false};
  }
  if (!state.has_sha256sum) {
    return StepError{"check", "sha256sum is not installed there (coreutils): the copied binary cannot be verified", "",
                     false};
  }
  return std::nullopt;
}

// Copies the local binary to layout.binary(): to a temporary name beside it, checked against its
// SHA-256, then renamed over the old one (kept as nebula.nebula-old until the run succeeds).
std::optional<StepError> copy_binary(Run& run, const RemoteState& state, const Layout& layout,
                                     const std::string& local_binary, const std::string& sha) {
  std::string text = paths_prelude(layout) + fmt::format(R"SH(set -e
want={}
mkdir -p "$BD"
T="$B.nebula-new.$$"
trap 'rm -f "$T"' EXIT
cat > "$T"
got=$(sha256sum < "$T" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then echo "checksum mismatch after the copy: got $got, want $want" >&2; exit 3; fi
chmod 0755 "$T"
if [ -f "$B" ]; then ln -f "$B" "$B.nebula-old" 2>/dev/null || cp -p "$B" "$B.nebula-old"; fi
mv -f "$T" "$B"
trap - EXIT
)SH",
                                                         shell_quote(sha));
  if (auto failed = run.script("copy", text, "copying the binary", nullptr, local_binary)) {
    // A full disk, a read-only directory: df says how much room there was.
    auto space = run.remote().run(paths_prelude(layout) +
                                  "d=\"$BD\"; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done; df -Pk \"$d\"");
    if (space && space->exit_code == 0) failed->remote_output += "\n" + trim(space->out);
    return failed;
  }
  bool had_binary = !state.binary_sha.empty();
  std::string created = state.bin_missing;
  run.on_failure(had_binary ? "restore the previous binary" : "remove the copied binary",
                 [&run, layout, had_binary, created] {
                   std::string undo = paths_prelude(layout);
                   if (had_binary) {
                     undo += "mv -f \"$B.nebula-old\" \"$B\"\n";
                   } else {
                     undo += "rm -f \"$B\"\n";
                     if (created.size() > 1) undo += "rm -rf " + shell_quote(created) + "\n";
                   }
                   run.undo_script(undo);
                 });
  return std::nullopt;
}

// A local temporary file (mode 0600), removed with the object.
class LocalFile {
 public:
  static Result<LocalFile> with(const std::string& content) {
    char path[] = "/tmp/nebula-provision-XXXXXX";
    int descriptor = ::mkstemp(path);
    if (descriptor < 0) return make_error(ErrorCode::Internal, std::string("mkstemp: ") + std::strerror(errno));
    LocalFile file(path);
    bool written = ::write(descriptor, content.data(), content.size()) == static_cast<ssize_t>(content.size());
    ::close(descriptor);
    if (!written) return make_error(ErrorCode::Internal, std::string("cannot write ") + path);
    return file;
  }
  LocalFile(LocalFile&& other) noexcept : path_(std::move(other.path_)) { other.path_.clear(); }
  LocalFile& operator=(LocalFile&&) = delete;
  LocalFile(const LocalFile&) = delete;
  ~LocalFile() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  explicit LocalFile(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// Writes `content` to `path` there (atomically, mode `mode`) unless it already holds exactly
// that; the old file is kept as PATH.nebula-old until the run succeeds. Returns whether it wrote.
std::variant<bool, StepError> write_file(Run& run, const std::string& step, const Layout& layout,
                                         const std::string& path, const std::string& content,
                                         const std::string& current_sha, const std::string& mode) {
  if (current_sha == sha256_hex(content)) return false;
  // The content goes through ssh's stdin, never on a command line: agent.yaml holds the join
  // token, and command lines are visible to every user of both machines.
  auto local = LocalFile::with(content);
  if (!local) return StepError{step, local.error().message, "", false};
  std::string text = paths_prelude(layout) + fmt::format(R"SH(set -e
F={}
mkdir -p "$(dirname "$F")"
T="$F.nebula-new.$$"
trap 'rm -f "$T"' EXIT
umask 077
cat > "$T"
chmod {} "$T"
if [ -f "$F" ]; then cp -p "$F" "$F.nebula-old"; fi
mv -f "$T" "$F"
trap - EXIT
)SH",
                                                         shell_quote(path), mode);
  if (auto failed = run.script(step, text, "writing " + path, nullptr, local->path())) return *failed;
  bool existed = !current_sha.empty();
  run.on_failure((existed ? "restore " : "remove ") + path, [&run, layout, path, existed] {
    std::string quoted = shell_quote(path);
    run.undo_script(existed ? fmt::format("mv -f {} {}", shell_quote(path + ".nebula-old"), quoted)
                            : "rm -f " + quoted);
  });
  return true;
}

// The service file: the systemd unit, or the detached mode's agent.sh.
std::variant<std::string, StepError> service_content(ServiceManager manager, const Layout& layout,
                                                     const std::vector<std::string>& agent_args) {
  std::vector<std::string> args = {"--config", layout.config_file()};
  args.insert(args.end(), agent_args.begin(), agent_args.end());
  if (manager == ServiceManager::Systemd) {
    UnitSpec spec;
    spec.role = Role::Agent;
    spec.binary = layout.binary();
    spec.args = args;
    auto unit = systemd_unit(spec);
    if (!unit) return StepError{"service", unit.error().message, "", false};
    return *unit;
  }
  std::string command = "exec " + shell_quote(layout.binary()) + " agent";
  for (const auto& arg : args) command += " " + shell_quote(arg);
  return "#!/bin/sh\n# Written by `nebula nodes add`: starts the agent detached (systemd does not run here).\n" +
         command + "\n";
}

std::string stop_script(ServiceManager manager, const Layout& layout) {
  if (manager == ServiceManager::Systemd) {
    return paths_prelude(layout) + "systemctl stop nebula-agent.service\n";
  }
  // SIGTERM: the agent stops and leaves its engines running for the next one to re-adopt.
  return paths_prelude(layout) + kDetachedPid + R"SH(if pid=$(agent_pid); then
  kill -TERM "$pid"
  i=0
  while alive "$pid"; do
    i=$((i + 1))
    if [ "$i" -gt 600 ]; then echo "the agent (pid $pid) did not stop within 60 s" >&2; exit 1; fi
    sleep 0.1
  done
fi
rm -f "$D/agent.pid"
)SH";
}

std::string start_script(ServiceManager manager, const Layout& layout) {
  if (manager == ServiceManager::Systemd) {
    return paths_prelude(layout) +
           "systemctl daemon-reload\nsystemctl enable --quiet nebula-agent.service\nsystemctl restart "
           "nebula-agent.service\n";
  }
  // setsid: the agent leads a session of its own, outlives this ssh session, and holds none of
  // its descriptors (or sshd would wait for them to close).
  return paths_prelude(layout) + R"SH(set -e
chmod 0755 "$S"
cd "$D"
setsid "$S" >> "$D/agent.log" 2>&1 < /dev/null &
echo $! > "$D/agent.pid"
)SH";
}

// Starts the agent unless it runs.
std::string ensure_running_script(ServiceManager manager, const Layout& layout) {
  if (manager == ServiceManager::Systemd) {
    return paths_prelude(layout) + "systemctl daemon-reload\nsystemctl start nebula-agent.service\n";
  }
  return paths_prelude(layout) + kDetachedPid + "if agent_pid >/dev/null; then exit 0; fi\n" +
         start_script(manager, layout).substr(paths_prelude(layout).size());
}

// Prints the last lines of the agent's log (journal or agent.log); exit 1 when the agent is gone.
std::string check_script(ServiceManager manager, const Layout& layout) {
  if (manager == ServiceManager::Systemd) {
    return paths_prelude(layout) +
           "if systemctl is-active --quiet nebula-agent.service; then exit 0; fi\njournalctl -u nebula-agent.service "
           "-n 30 --no-pager 2>&1\nexit 1\n";
  }
  // The pid alone: just after the start it may not have become the agent yet (setsid and
  // agent.sh exec into it), and its command line is still the starting shell's.
  return paths_prelude(layout) + R"SH(pid=$(cat "$D/agent.pid" 2>/dev/null || true)
case "$pid" in ''|*[!0-9]*) ;; *) if alive "$pid"; then exit 0; fi ;; esac
tail -n 30 "$D/agent.log" 2>/dev/null
exit 1
)SH";
}

std::string log_tail_script(ServiceManager manager, const Layout& layout) {
  if (manager == ServiceManager::Systemd) {
    return "journalctl -u nebula-agent.service -n 30 --no-pager 2>&1";
  }
  return paths_prelude(layout) + "tail -n 30 \"$D/agent.log\" 2>/dev/null; exit 0";
}

// Stops the agent if it runs, then starts it; the undo stops the new one.
std::optional<StepError> restart_agent(Run& run, Cluster& cluster, ServiceManager manager, const Layout& layout,
                                       bool was_running, const std::string& name, int64_t& baseline_ms) {
  if (was_running) {
    if (auto failed = run.script("stop", stop_script(manager, layout), "stopping the running agent")) return failed;
    run.say("stop", "the old agent stopped; its engines keep running");
  }
  // Heartbeats after this one come from the new agent.
  auto node = cluster.node(name);
  baseline_ms = node ? node->heartbeat_ms : 0;
  if (auto failed = run.script("start", start_script(manager, layout), "starting the agent")) return failed;
  run.on_failure("stop the agent this run started",
                 [&run, manager, layout] { run.undo_script(stop_script(manager, layout)); });
  return std::nullopt;
}

// Waits until the node is Ready with a heartbeat newer than baseline_ms, checking that the agent
// still runs there (one that exits, e.g. its port is in use, fails the step with its log).
std::optional<StepError> wait_ready(Run& run, Cluster& cluster, ServiceManager manager, const Layout& layout,
                                    const std::string& name, int64_t baseline_ms, milliseconds timeout,
                                    milliseconds poll_interval) {
  const auto deadline = steady_clock::now() + timeout;
  const auto started = steady_clock::now();
  bool said_waiting = false;
  while (true) {
    auto node = cluster.node(name);
    if (node && node->exists && node->ready && node->heartbeat_ms > baseline_ms) {
      auto took = std::chrono::duration_cast<milliseconds>(steady_clock::now() - started);
      run.say("ready", fmt::format("node {} is Ready ({:.1f} s)", name, took.count() / 1000.0));
      return std::nullopt;
    }
    auto check = run.remote().run(check_script(manager, layout));
    if (check && check->exit_code != 0) {
      return StepError{"ready",
                       fmt::format("the agent exited on {} before node {} was Ready", run.remote().describe(), name),
                       trim(check->out), false};
    }
    if (steady_clock::now() > deadline) {
      auto tail = run.remote().run(log_tail_script(manager, layout));
      return StepError{
          "ready",
          fmt::format("node {} was not Ready within {} s (is {} reachable from that machine?)", name,
                      std::chrono::duration_cast<std::chrono::seconds>(timeout).count(), cluster.server_url()),
          tail ? trim(tail->out) : "", false};
    }
    if (!said_waiting) {
      run.say("ready", fmt::format("waiting for node {} to join {}", name, cluster.server_url()));
      said_waiting = true;
    }
    std::this_thread::sleep_for(poll_interval);
  }
}

// Backups of a successful run are removed: PATH.nebula-old.
void commit(Run& run, const Layout& layout) {
  auto removed = run.remote().run(paths_prelude(layout) +
                                  "rm -f \"$B.nebula-old\" \"$U.nebula-old\" \"$S.nebula-old\" "
                                  "\"$D/agent.yaml.nebula-old\"\n");
  if (!removed || removed->exit_code != 0) run.say("done", "could not remove the backups (*.nebula-old) there");
}

std::string token_id_of(const std::string& token) {
  // nbt-<id>-<secret>
  if (token.rfind("nbt-", 0) != 0) return "";
  auto dash = token.find('-', 4);
  if (dash == std::string::npos) return "";
  return token.substr(4, dash - 4);
}

std::string config_content(const std::string& server, const std::string& token, const std::string& name,
                           const Layout& layout) {
  return fmt::format(
      "# Written by `nebula nodes add`. It holds the node's join token: keep it readable by root only.\n"
      "server: {}\ntoken: {}\nname: {}\ndata_dir: {}\n",
      json(server).dump(), json(token).dump(), json(name).dump(), json(layout.data_dir).dump());
}

ServiceManager resolve_manager(ServiceManager wanted, const RemoteState& state) {
  if (wanted != ServiceManager::Auto) return wanted;
  return state.systemd ? ServiceManager::Systemd : ServiceManager::Detached;
}

std::variant<RemoteState, StepError> connect(Run& run, const Layout& layout) {
  CommandOutput output;
  if (auto failed = run.script("connect", inspect_script(layout), "inspecting the machine", &output)) return *failed;
  RemoteState state = parse_state(output.out);
  run.say("connect",
          fmt::format("{}: {} {}, host name {}", run.remote().describe(), state.os, state.arch, state.hostname));
  return state;
}

}  // namespace

Layout Layout::under(const std::string& root) {
  Layout layout;
  layout.bin_dir = root + "/bin";
  layout.unit_dir = root + "/systemd";
  layout.data_dir = root + "/data";
  return layout;
}

Status check_layout(const Layout& layout) {
  for (const auto& [flag, path] : {std::pair<const char*, const std::string&>{"--bin-dir", layout.bin_dir},
                                   {"--unit-dir", layout.unit_dir},
                                   {"--data-dir", layout.data_dir}}) {
    if (path.empty() || path[0] != '/')
      return make_error(ErrorCode::InvalidArgument, fmt::format("{} '{}': expected an absolute path", flag, path));
    if (path.size() > 1 && path.back() == '/')
      return make_error(ErrorCode::InvalidArgument, fmt::format("{} '{}': no trailing '/'", flag, path));
    if (path.find("/../") != std::string::npos || (path.size() >= 3 && path.substr(path.size() - 3) == "/.."))
      return make_error(ErrorCode::InvalidArgument, fmt::format("{} '{}': '..' is not allowed", flag, path));
    for (char c : path) {
      if (std::iscntrl(static_cast<unsigned char>(c)))
        return make_error(ErrorCode::InvalidArgument, fmt::format("{}: control characters are not allowed", flag));
    }
  }
  return {};
}

Result<ServiceManager> parse_service_manager(const std::string& name) {
  if (name == "auto") return ServiceManager::Auto;
  if (name == "systemd") return ServiceManager::Systemd;
  if (name == "detached") return ServiceManager::Detached;
  return make_error(ErrorCode::InvalidArgument, "unknown service manager '" + name + "' (auto, systemd or detached)");
}

Status check_agent_args(const std::vector<std::string>& args) {
  static const std::vector<std::string> managed = {"--server", "--token", "--config", "--name", "--data-dir"};
  if (!args.empty() && args.front().rfind("-", 0) != 0) {
    return make_error(
        ErrorCode::InvalidArgument,
        "--agent-args '" + args.front() + "': expected `nebula agent` flags such as --sim-gpus 1xH100-80GB");
  }
  for (const auto& arg : args) {
    for (char c : arg) {
      if (std::iscntrl(static_cast<unsigned char>(c)))
        return make_error(ErrorCode::InvalidArgument, "--agent-args: control characters are not allowed");
    }
    for (const auto& flag : managed) {
      if (arg == flag || arg.rfind(flag + "=", 0) == 0) {
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("--agent-args: {} is set by `nebula nodes add` itself", flag));
      }
    }
  }
  return {};
}

std::string StepError::to_string() const {
  std::string text = fmt::format("step {} failed: {}", step, message);
  if (!remote_output.empty()) {
    text += "\n  remote output:";
    std::istringstream lines(remote_output);
    for (std::string line; std::getline(lines, line);) text += "\n    " + line;
  }
  if (rolled_back) text += "\n  the machine was left as it was before this run";
  return text;
}

StepResult<Installed> add_node(Remote& remote, Cluster& cluster, const AddOptions& options, const Progress& progress) {
  Run run(remote, progress);
  auto connected = connect(run, options.layout);
  if (auto* failed = std::get_if<StepError>(&connected)) return *failed;
  const RemoteState state = std::get<RemoteState>(connected);
  if (auto failed = check_platform(state)) return *failed;
  Installed installed;
  installed.name = options.name.empty() ? state.hostname : options.name;
  if (auto valid = api::validate_name(installed.name); !valid) {
    return StepError{"check",
                     fmt::format("'{}' cannot be a node name: {}{}", installed.name, valid.error().message,
                                 options.name.empty() ? " (give one with --name)" : ""),
                     "", false};
  }
  // A Ready node of that name and no agent of ours there: another machine holds the name.
  if (auto existing = cluster.node(installed.name);
      existing && existing->exists && existing->ready && state.config_sha.empty()) {
    return StepError{"check",
                     fmt::format("node {} already exists and is Ready, and this machine has no agent installed by "
                                 "`nebula nodes add`: give another --name, or remove that node first",
                                 installed.name),
                     "", false};
  }
  if (options.manager == ServiceManager::Systemd && !state.systemd) {
    return StepError{"check", "systemd does not run on that machine (no /run/systemd/system)", "", false};
  }
  installed.manager = resolve_manager(options.manager, state);
  run.say("check", installed.manager == ServiceManager::Systemd
                       ? "systemd runs there: the agent is installed as nebula-agent.service"
                       : "systemd does not run there: the agent runs as a detached process (not restarted after a "
                         "crash or a reboot)");

  bool running = installed.manager == ServiceManager::Systemd ? state.systemd_running : state.detached_running;
  if (running) {
    // Undone last, on the restored files: the agent that ran before this run runs again.
    Layout layout = options.layout;
    ServiceManager manager = installed.manager;
    run.on_failure("start the agent that ran before, if stopped",
                   [&run, manager, layout] { run.undo_script(ensure_running_script(manager, layout)); });
  }
  auto sha = file_sha256(options.local_binary);
  if (!sha) return StepError{"copy", sha.error().message, "", false};
  if (state.binary_sha == *sha) {
    run.say("copy", fmt::format("{} is current (sha256 {})", options.layout.binary(), short_sha(*sha)));
  } else {
    if (auto failed = copy_binary(run, state, options.layout, options.local_binary, *sha)) return run.fail(*failed);
    installed.binary_copied = true;
    run.say("copy", fmt::format("copied to {} (sha256 {}, verified)", options.layout.binary(), short_sha(*sha)));
  }

  // The join token: the one the machine holds when this server still accepts it, else a new one.
  std::string token = state.token;
  std::string token_id = token_id_of(token);
  bool token_kept = false;
  if (!token_id.empty()) {
    auto valid = cluster.join_token_valid(token_id);
    token_kept = valid && *valid;
  }
  if (token_kept) {
    run.say("token", fmt::format("the machine's join token {} is still valid", token_id));
  } else {
    auto created = cluster.create_join_token("nebula nodes add " + installed.name);
    if (!created)
      return run.fail(StepError{"token", "cannot create a join token: " + created.error().message, "", false});
    token = created->secret;
    token_id = created->id;
    run.on_failure("revoke join token " + token_id, [&cluster, &run, token_id] {
      if (auto revoked = cluster.revoke_join_token(token_id); !revoked)
        run.say("rollback", "could not revoke join token " + token_id + ": " + revoked.error().message);
    });
    run.say("token",
            fmt::format("join token {} created (it never expires; revoked by `nodes rm --uninstall`)", token_id));
  }
  installed.token_id = token_id;

  if (!state.data_missing.empty()) {
    if (auto failed = run.script("config", paths_prelude(options.layout) + "mkdir -p \"$D\" && chmod 0700 \"$D\"",
                                 "creating " + options.layout.data_dir)) {
      return run.fail(*failed);
    }
    std::string created = state.data_missing;
    run.on_failure("remove " + created, [&run, created] {
      if (created.size() > 1) run.undo_script("rm -rf " + shell_quote(created));
    });
  }
  auto config =
      write_file(run, "config", options.layout, options.layout.config_file(),
                 config_content(cluster.server_url(), token, installed.name, options.layout), state.config_sha, "0600");
  if (auto* failed = std::get_if<StepError>(&config)) return run.fail(*failed);
  installed.config_changed = std::get<bool>(config);
  run.say("config", installed.config_changed ? "wrote " + options.layout.config_file()
                                             : options.layout.config_file() + " is current");

  auto content = service_content(installed.manager, options.layout, options.agent_args);
  if (auto* failed = std::get_if<StepError>(&content)) return run.fail(*failed);
  bool systemd = installed.manager == ServiceManager::Systemd;
  std::string service_path = systemd ? options.layout.unit_file() : options.layout.data_dir + "/agent.sh";
  if (systemd && !state.unit_missing.empty()) {
    std::string created = state.unit_missing;
    run.on_failure("remove " + created, [&run, created] {
      if (created.size() > 1) run.undo_script("rm -rf " + shell_quote(created));
    });
  }
  auto service = write_file(run, "service", options.layout, service_path, std::get<std::string>(content),
                            systemd ? state.unit_sha : state.script_sha, systemd ? "0644" : "0700");
  if (auto* failed = std::get_if<StepError>(&service)) return run.fail(*failed);
  bool service_changed = std::get<bool>(service);
  run.say("service", service_changed ? "wrote " + service_path : service_path + " is current");

  int64_t baseline_ms = 0;
  if (running && !installed.binary_copied && !installed.config_changed && !service_changed) {
    run.say("start", "the agent runs and nothing changed: not restarted");
  } else {
    auto before = cluster.node(installed.name);
    if (before && !before->exists) {
      // A node this run joined goes again with the agent.
      std::string name = installed.name;
      run.on_failure("remove node " + name + " if it joined", [&cluster, &run, name] {
        if (auto removed = cluster.remove_node(name); !removed)
          run.say("rollback", "could not remove node " + name + ": " + removed.error().message);
      });
    }
    if (auto failed =
            restart_agent(run, cluster, installed.manager, options.layout, running, installed.name, baseline_ms)) {
      return run.fail(*failed);
    }
    installed.restarted = true;
    run.say("start", running ? "agent restarted" : "agent started");
  }
  if (auto failed = wait_ready(run, cluster, installed.manager, options.layout, installed.name, baseline_ms,
                               options.ready_timeout, options.poll_interval)) {
    return run.fail(*failed);
  }
  if (!options.labels.empty()) {
    if (auto set = cluster.set_node_labels(installed.name, options.labels); !set) {
      return run.fail(StepError{"labels", "cannot set the node's labels: " + set.error().message, "", false});
    }
    run.say("labels", fmt::format("{} label(s) set", options.labels.size()));
  }
  commit(run, options.layout);
  return installed;
}

StepResult<Installed> upgrade_node(Remote& remote, Cluster& cluster, const UpgradeOptions& options,
                                   const Progress& progress) {
  Run run(remote, progress);
  auto connected = connect(run, options.layout);
  if (auto* failed = std::get_if<StepError>(&connected)) return *failed;
  const RemoteState state = std::get<RemoteState>(connected);
  if (auto failed = check_platform(state)) return *failed;
  Installed installed;
  installed.name = options.name;
  installed.manager = options.manager;
  bool systemd = options.manager == ServiceManager::Systemd;
  if ((systemd ? state.unit_sha : state.script_sha).empty() || state.config_sha.empty()) {
    return StepError{"check",
                     fmt::format("no agent installed by `nebula nodes add` under {} there", options.layout.data_dir),
                     "", false};
  }
  auto sha = file_sha256(options.local_binary);
  if (!sha) return StepError{"copy", sha.error().message, "", false};
  bool running = systemd ? state.systemd_running : state.detached_running;
  if (state.binary_sha == *sha && running) {
    run.say("copy",
            fmt::format("{} is current (sha256 {}): nothing to upgrade", options.layout.binary(), short_sha(*sha)));
    return installed;
  }
  if (running) {
    // Undone last, on the restored binary: the agent that ran before runs again.
    Layout layout = options.layout;
    ServiceManager manager = options.manager;
    run.on_failure("start the previous agent again, if stopped",
                   [&run, manager, layout] { run.undo_script(ensure_running_script(manager, layout)); });
  }
  if (state.binary_sha != *sha) {
    if (auto failed = copy_binary(run, state, options.layout, options.local_binary, *sha)) return run.fail(*failed);
    installed.binary_copied = true;
    run.say("copy", fmt::format("copied to {} (sha256 {}, verified)", options.layout.binary(), short_sha(*sha)));
  }
  int64_t baseline_ms = 0;
  if (auto failed = restart_agent(run, cluster, options.manager, options.layout, running, options.name, baseline_ms)) {
    return run.fail(*failed);
  }
  installed.restarted = true;
  run.say("start", "agent restarted on the new binary; its engines are re-adopted");
  if (auto failed = wait_ready(run, cluster, options.manager, options.layout, options.name, baseline_ms,
                               options.ready_timeout, options.poll_interval)) {
    return run.fail(*failed);
  }
  commit(run, options.layout);
  return installed;
}

StepResult<bool> uninstall_node(Remote& remote, Cluster& cluster, const UninstallOptions& options,
                                const Progress& progress) {
  Run run(remote, progress);
  auto connected = connect(run, options.layout);
  if (auto* failed = std::get_if<StepError>(&connected)) return *failed;
  const RemoteState state = std::get<RemoteState>(connected);
  bool systemd = options.manager == ServiceManager::Systemd;
  if (!systemd || state.systemd_running) {
    if (auto failed = run.script("stop", stop_script(options.manager, options.layout), "stopping the agent")) {
      return *failed;
    }
  }
  run.say("stop", "agent stopped");
  // The agent leaves its engines running when it stops; the node is going away, so they stop too.
  CommandOutput engines;
  if (auto failed = run.script("engines",
                               paths_prelude(options.layout) +
                                   "if [ -x \"$B\" ] && [ -f \"$D/agent.db\" ]; then \"$B\" service stop-engines "
                                   "--data-dir \"$D\"; fi\n",
                               "stopping the node's engines", &engines)) {
    return *failed;
  }
  run.say("engines", trim(engines.out).empty() ? "no engines ran there" : trim(engines.out));
  std::string remove = paths_prelude(options.layout);
  if (systemd) {
    remove +=
        "systemctl disable --quiet nebula-agent.service 2>/dev/null || true\nrm -f \"$U\"\nsystemctl "
        "daemon-reload\n";
  }
  remove +=
      "rm -f \"$B\" \"$S\" \"$D/agent.yaml\" \"$D/agent.pid\" \"$D/node.key\" \"$D/agent.lock\" "
      "\"$D/agent.db\" \"$D/agent.db-wal\" \"$D/agent.db-shm\"\n";
  remove += options.purge ? "rm -rf \"$D\"\n" : "rmdir \"$D\" 2>/dev/null || true\n";
  if (auto failed = run.script("remove", remove, "removing the agent's files")) return *failed;
  run.say("remove", options.purge ? "service, binary and " + options.layout.data_dir + " removed"
                                  : "service, binary and agent files removed (logs and models stay in " +
                                        options.layout.data_dir + "; --purge removes them)");
  if (auto removed = cluster.remove_node(options.name); !removed) {
    return StepError{"node", "cannot remove node " + options.name + ": " + removed.error().message, "", false};
  }
  if (!options.token_id.empty()) {
    if (auto revoked = cluster.revoke_join_token(options.token_id); !revoked) {
      run.say("token", "could not revoke join token " + options.token_id + ": " + revoked.error().message);
    } else {
      run.say("token", "join token " + options.token_id + " revoked");
    }
  }
  return true;
}

}  // namespace nebula::provision
