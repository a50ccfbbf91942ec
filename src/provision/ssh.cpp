// Local commands with captured output, and the remote shell through the system's ssh.
#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>

#include "common/subprocess.h"
#include "provision/provision.h"

namespace nebula::provision {

namespace {

constexpr size_t kMaxCaptured = 1 << 20;

// A pipe whose ends close with the scope unless released.
struct Pipe {
  int read_end = -1;
  int write_end = -1;
  Pipe() {
    int ends[2];
    if (::pipe2(ends, O_CLOEXEC) == 0) {
      read_end = ends[0];
      write_end = ends[1];
    }
  }
  ~Pipe() {
    if (read_end >= 0) ::close(read_end);
    if (write_end >= 0) ::close(write_end);
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  bool ok() const { return read_end >= 0; }
  void close_write() {
    if (write_end >= 0) ::close(write_end);
    write_end = -1;
  }
};

bool plain_host_character(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' || c == ':' || c == '[' ||
         c == ']' || c == '%';
}

// Output for a message: without trailing newlines.
std::string trim_output(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
  return text;
}

std::string indent(const std::string& text) {
  std::string indented = "  ";
  for (char c : trim_output(text)) {
    indented += c;
    if (c == '\n') indented += "  ";
  }
  return indented;
}

bool plain_user_character(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
}

}  // namespace

std::string shell_quote(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      quoted += c;
    }
  }
  return quoted + "'";
}

Result<CommandOutput> run_captured(const std::vector<std::string>& argv, const std::string& stdin_path,
                                   std::chrono::milliseconds timeout) {
  Pipe out, err;
  if (!out.ok() || !err.ok()) return make_error(ErrorCode::Internal, std::string("pipe: ") + strerror(errno));
  SpawnOptions options;
  options.argv = argv;
  options.in = stdin_path.empty() ? Stdio::null() : Stdio::file(stdin_path);
  options.out = Stdio::from_descriptor(out.write_end);
  options.err = Stdio::from_descriptor(err.write_end);
  // Its own process group: a timeout ends the command and whatever it started.
  options.new_process_group = true;
  auto pid = spawn(options);
  if (!pid) return pid.error();
  out.close_write();
  err.close_write();
  CommandOutput result;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::array<pollfd, 2> fds = {pollfd{out.read_end, POLLIN, 0}, pollfd{err.read_end, POLLIN, 0}};
  std::array<std::string*, 2> sinks = {&result.out, &result.err};
  int open = 2;
  while (open > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      ::kill(-*pid, SIGKILL);
      break;
    }
    int ready = ::poll(fds.data(), fds.size(), static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (ready < 0 && errno != EINTR) break;
    for (size_t index = 0; index < fds.size(); ++index) {
      if (fds[index].fd < 0 || !(fds[index].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buffer[16384];
      ssize_t got = ::read(fds[index].fd, buffer, sizeof buffer);
      if (got > 0) {
        if (sinks[index]->size() < kMaxCaptured) sinks[index]->append(buffer, static_cast<size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        fds[index].fd = -1;
        --open;
      }
    }
  }
  int status = 0;
  while (::waitpid(*pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

Result<SshTarget> parse_destination(const std::string& destination) {
  if (destination.empty()) return make_error(ErrorCode::InvalidArgument, "no host given: expected [USER@]HOST");
  if (destination.size() > 255) return make_error(ErrorCode::InvalidArgument, "the destination is too long");
  SshTarget target;
  auto at = destination.rfind('@');
  std::string host = at == std::string::npos ? destination : destination.substr(at + 1);
  if (at != std::string::npos) {
    target.user = destination.substr(0, at);
    if (target.user.empty()) return make_error(ErrorCode::InvalidArgument, "'" + destination + "': the user is empty");
    if (target.user[0] == '-')
      return make_error(ErrorCode::InvalidArgument, "'" + destination + "': a user cannot start with '-'");
    for (char c : target.user) {
      if (!plain_user_character(c))
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("'{}': the user may hold letters, digits, '.', '-' and '_' only", destination));
    }
  }
  if (host.empty()) return make_error(ErrorCode::InvalidArgument, "'" + destination + "': the host is empty");
  if (host[0] == '-')
    return make_error(ErrorCode::InvalidArgument, "'" + destination + "': a host cannot start with '-'");
  for (char c : host) {
    if (!plain_host_character(c))
      return make_error(
          ErrorCode::InvalidArgument,
          fmt::format("'{}': not a host name or address (letters, digits, '.', '-', ':' only)", destination));
  }
  target.host = host;
  return target;
}

Status check_ssh_option(const std::string& option) {
  auto equals = option.find('=');
  if (equals == std::string::npos || equals == 0)
    return make_error(ErrorCode::InvalidArgument, "--ssh-option '" + option + "': expected KEY=VALUE");
  for (size_t index = 0; index < equals; ++index) {
    if (!std::isalnum(static_cast<unsigned char>(option[index])))
      return make_error(ErrorCode::InvalidArgument, "--ssh-option '" + option + "': the key is a word like ProxyJump");
  }
  for (char c : option) {
    if (std::iscntrl(static_cast<unsigned char>(c)))
      return make_error(ErrorCode::InvalidArgument, "--ssh-option: control characters are not allowed");
  }
  return {};
}

std::vector<std::string> SshRemote::ssh_argv(const std::string& remote_command) const {
  std::vector<std::string> argv = {
      "ssh", "-T",
      "-o",  "BatchMode=yes",
      "-o",  target_.accept_new_host_key ? "StrictHostKeyChecking=accept-new" : "StrictHostKeyChecking=yes",
      "-o",  "ConnectTimeout=15",
      "-o",  "ServerAliveInterval=15"};
  if (!target_.config.empty()) argv.insert(argv.end(), {"-F", target_.config});
  if (!target_.identity.empty()) argv.insert(argv.end(), {"-i", target_.identity, "-o", "IdentitiesOnly=yes"});
  if (target_.port > 0) argv.insert(argv.end(), {"-p", std::to_string(target_.port)});
  if (!target_.user.empty()) argv.insert(argv.end(), {"-l", target_.user});
  for (const auto& option : target_.options) argv.insert(argv.end(), {"-o", option});
  argv.push_back("--");
  argv.push_back(target_.host);
  argv.push_back(remote_command);
  return argv;
}

Result<CommandOutput> SshRemote::run(const std::string& script, const std::string& stdin_path) {
  // The login shell of the remote user reads the command line: sh runs the script whatever it is.
  auto output = run_captured(ssh_argv("sh -c " + shell_quote(script)), stdin_path, target_.command_timeout);
  if (!output) return output.error();
  if (output->timed_out) {
    return make_error(ErrorCode::Timeout,
                      fmt::format("ssh {} did not finish within {} s", describe(),
                                  std::chrono::duration_cast<std::chrono::seconds>(target_.command_timeout).count()));
  }
  // 255 is ssh's own failure (the script's exit status otherwise), recognised by what it says.
  std::string said = trim_output(output->err);
  switch (classify_ssh_failure(*output)) {
    case SshFailure::None:
    case SshFailure::Other: return output;
    case SshFailure::UnknownHostKey: {
      auto fingerprints = host_key_fingerprints(target_);
      return make_error(
          ErrorCode::PermissionDenied,
          fmt::format(
              "the host key of {} is not in known_hosts, so the connection was refused. The host presents:\n"
              "{}\nCompare with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` run on that machine; if it "
              "matches, run again with --accept-new-host-key (or connect once with ssh and accept it)",
              describe(),
              fingerprints ? indent(*fingerprints) : "  (cannot read it: " + fingerprints.error().message + ")"));
    }
    case SshFailure::ChangedHostKey:
      return make_error(
          ErrorCode::PermissionDenied,
          fmt::format("the host key of {} has CHANGED since known_hosts recorded it: refused (a reinstalled "
                      "machine, or someone in between). If the change is expected, remove the old key "
                      "with `ssh-keygen -R {}` and check the new one.\nssh said: {}",
                      describe(), target_.host, said));
    case SshFailure::AuthenticationRefused:
      return make_error(ErrorCode::Unauthenticated,
                        fmt::format("{} refused the login: {} (check --identity, the ssh agent, and authorized_keys on "
                                    "that machine)",
                                    describe(), said));
    case SshFailure::Unreachable:
      return make_error(ErrorCode::Unavailable, fmt::format("cannot reach {}: {}", describe(), said));
  }
  return output;
}

std::string SshRemote::describe() const {
  std::string text = target_.user.empty() ? target_.host : target_.user + "@" + target_.host;
  if (target_.port > 0) text += ":" + std::to_string(target_.port);
  return text;
}

SshFailure classify_ssh_failure(const CommandOutput& output) {
  if (output.exit_code != 255) return SshFailure::None;
  const std::string& err = output.err;
  if (err.find("REMOTE HOST IDENTIFICATION HAS CHANGED") != std::string::npos) return SshFailure::ChangedHostKey;
  if (err.find("Host key verification failed") != std::string::npos ||
      err.find("No ED25519 host key is known") != std::string::npos ||
      err.find("host key is known for") != std::string::npos)
    return SshFailure::UnknownHostKey;
  if (err.find("Permission denied") != std::string::npos ||
      err.find("Too many authentication failures") != std::string::npos)
    return SshFailure::AuthenticationRefused;
  if (err.find("Connection refused") != std::string::npos || err.find("Connection timed out") != std::string::npos ||
      err.find("Could not resolve hostname") != std::string::npos ||
      err.find("No route to host") != std::string::npos || err.find("Connection closed") != std::string::npos ||
      err.find("Network is unreachable") != std::string::npos)
    return SshFailure::Unreachable;
  return SshFailure::Other;
}

Result<std::string> host_key_fingerprints(const SshTarget& target) {
  std::vector<std::string> scan = {"ssh-keyscan", "-T", "10"};
  if (target.port > 0) scan.insert(scan.end(), {"-p", std::to_string(target.port)});
  scan.push_back("--");
  scan.push_back(target.host);
  auto keys = run_captured(scan, "", std::chrono::seconds(30));
  if (!keys) return keys.error();
  if (keys->out.empty()) {
    return make_error(ErrorCode::Unavailable, "ssh-keyscan read no host key: " + keys->err);
  }
  char path[] = "/tmp/nebula-hostkeys-XXXXXX";
  int descriptor = ::mkstemp(path);
  if (descriptor < 0) return make_error(ErrorCode::Internal, std::string("mkstemp: ") + strerror(errno));
  bool written = ::write(descriptor, keys->out.data(), keys->out.size()) == static_cast<ssize_t>(keys->out.size());
  ::close(descriptor);
  auto listed = written ? run_captured({"ssh-keygen", "-lf", path}, "", std::chrono::seconds(30))
                        : Result<CommandOutput>(make_error(ErrorCode::Internal, "cannot write the host keys"));
  ::unlink(path);
  if (!listed) return listed.error();
  if (listed->exit_code != 0) return make_error(ErrorCode::Internal, "ssh-keygen -lf: " + listed->err);
  return listed->out;
}

Result<std::string> file_sha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(ErrorCode::NotFound, "cannot read " + path + ": " + strerror(errno));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> context(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!context || !EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr))
    return make_error(ErrorCode::Internal, "sha256: cannot start a digest");
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(context.get(), buffer.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) return make_error(ErrorCode::Internal, "cannot read " + path);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (!EVP_DigestFinal_ex(context.get(), digest, &length)) return make_error(ErrorCode::Internal, "sha256 failed");
  std::string hex;
  for (unsigned int index = 0; index < length; ++index) hex += fmt::format("{:02x}", digest[index]);
  return hex;
}

}  // namespace nebula::provision
