#include "common/subprocess.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

extern char** environ;

namespace nebula {

namespace {

// posix_spawn's attributes and file actions, destroyed with the scope.
struct SpawnAttributes {
  SpawnAttributes() {
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attributes);
  }
  ~SpawnAttributes() {
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
  }
  SpawnAttributes(const SpawnAttributes&) = delete;
  SpawnAttributes& operator=(const SpawnAttributes&) = delete;
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attributes;
};

// Adds the file action that gives the child `stdio` as descriptor `target` (0, 1 or 2).
int add_stdio(posix_spawn_file_actions_t& actions, const Stdio& stdio, int target) {
  switch (stdio.kind) {
    case Stdio::Kind::Inherit: return 0;
    case Stdio::Kind::Null:
      return posix_spawn_file_actions_addopen(&actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0);
    case Stdio::Kind::File: {
      int flags = target == 0 ? O_RDONLY : O_WRONLY | O_CREAT | (stdio.append ? O_APPEND : O_TRUNC);
      return posix_spawn_file_actions_addopen(&actions, target, stdio.path.c_str(), flags, stdio.mode);
    }
    case Stdio::Kind::Descriptor: return posix_spawn_file_actions_adddup2(&actions, stdio.descriptor, target);
    case Stdio::Kind::SameAsStdout: return posix_spawn_file_actions_adddup2(&actions, 1, target);
  }
  return EINVAL;
}

}  // namespace

Result<pid_t> spawn(const SpawnOptions& options) {
  if (options.argv.empty() || options.argv[0].empty()) {
    return make_error(ErrorCode::InvalidArgument, "no command to run");
  }
  // Everything the child needs is built before spawning.
  std::vector<char*> argv;
  argv.reserve(options.argv.size() + 1);
  for (const auto& arg : options.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_storage;
  if (!options.clear_env) {
    for (char** entry = environ; *entry; ++entry) {
      std::string_view item = *entry;
      if (!options.env.count(std::string(item.substr(0, item.find('='))))) env_storage.emplace_back(item);
    }
  }
  for (const auto& [key, value] : options.env) env_storage.push_back(key + "=" + value);
  std::vector<char*> envp;
  envp.reserve(env_storage.size() + 1);
  for (auto& item : env_storage) envp.push_back(item.data());
  envp.push_back(nullptr);

  SpawnAttributes spawn;
  int error = add_stdio(spawn.actions, options.in, 0);
  if (!error) error = add_stdio(spawn.actions, options.out, 1);
  if (!error) error = add_stdio(spawn.actions, options.err, 2);
  // Whatever we hold beyond stdio (listening and client sockets, the data dir's lock, SQLite,
  // pipes of other children) is not the child's, close-on-exec or not.
  if (!error) error = posix_spawn_file_actions_addclosefrom_np(&spawn.actions, 3);
  if (error) {
    return make_error(ErrorCode::Internal,
                      fmt::format("cannot start {}: preparing its descriptors: {}", options.argv[0], strerror(error)));
  }
  short flags = 0;
  if (options.new_process_group) {
    posix_spawnattr_setpgroup(&spawn.attributes, 0);
    flags |= POSIX_SPAWN_SETPGROUP;
  }
  if (options.reset_signals) {
    sigset_t no_signals;
    sigemptyset(&no_signals);
    posix_spawnattr_setsigmask(&spawn.attributes, &no_signals);
    sigset_t default_signals;
    sigemptyset(&default_signals);
    for (int signal : {SIGINT, SIGTERM, SIGPIPE, SIGHUP, SIGCHLD}) sigaddset(&default_signals, signal);
    posix_spawnattr_setsigdefault(&spawn.attributes, &default_signals);
    flags |= POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
  }
  posix_spawnattr_setflags(&spawn.attributes, flags);
  pid_t pid = 0;
  error = posix_spawnp(&pid, argv[0], &spawn.actions, &spawn.attributes, argv.data(), envp.data());
  if (error != 0) {
    return make_error(ErrorCode::Unavailable, fmt::format("cannot start {}: {}", options.argv[0], strerror(error)));
  }
  return pid;
}

void set_close_on_exec(int descriptor) {
  if (descriptor < 0) return;
  int flags = ::fcntl(descriptor, F_GETFD);
  if (flags >= 0 && !(flags & FD_CLOEXEC)) ::fcntl(descriptor, F_SETFD, flags | FD_CLOEXEC);
}

DescriptorLimit descriptor_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return {};
  return {static_cast<uint64_t>(limit.rlim_cur), static_cast<uint64_t>(limit.rlim_max)};
}

DescriptorLimit raise_descriptor_limit(uint64_t wanted) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) != 0) {
      spdlog::warn("cannot raise the open-file limit from {} to {}: {}", limit.rlim_cur, limit.rlim_max,
                   strerror(errno));
    }
  }
  DescriptorLimit now = descriptor_limit();
  if (now.soft < wanted) {
    spdlog::warn(
        "the open-file limit is {} (hard limit {}): each proxied stream holds two descriptors, so Nebula refuses "
        "connections beyond about {}; raise it (ulimit -Hn, LimitNOFILE= in systemd) for more",
        now.soft, now.hard, now.soft / 2);
  }
  return now;
}

int open_descriptor_count() {
  DIR* directory = ::opendir("/proc/self/fd");
  if (!directory) return -1;
  int count = 0;
  while (dirent* entry = ::readdir(directory)) {
    if (entry->d_name[0] != '.') ++count;
  }
  ::closedir(directory);
  return count - 1;  // the directory's own descriptor
}

}  // namespace nebula
