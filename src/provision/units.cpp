// systemd units for `nebula service install` and the agents `nebula nodes add` installs.
#include <fmt/format.h>

#include "provision/provision.h"

namespace nebula::provision {

Result<Role> parse_role(const std::string& name) {
  if (name == "up") return Role::Up;
  if (name == "server") return Role::Server;
  if (name == "agent") return Role::Agent;
  return make_error(ErrorCode::InvalidArgument, "unknown role '" + name + "' (one of: up, server, agent)");
}

const char* role_name(Role role) {
  switch (role) {
    case Role::Up: return "up";
    case Role::Server: return "server";
    case Role::Agent: return "agent";
  }
  return "agent";
}

std::string unit_name(Role role) {
  return fmt::format("nebula-{}.service", role_name(role));
}

Result<std::string> systemd_quote(const std::string& arg) {
  if (arg.empty()) return std::string("\"\"");
  bool needs_quotes = false;
  std::string escaped;
  for (char c : arg) {
    auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) {
      return make_error(
          ErrorCode::InvalidArgument,
          fmt::format("'{}': a unit's command line cannot hold control characters or newlines", arg.substr(0, 40)));
    }
    switch (c) {
      // Specifiers and environment expansion: literal in the command.
      case '%': escaped += "%%"; break;
      case '$': escaped += "$$"; break;
      case '\\':
      case '"':
        escaped += '\\';
        escaped += c;
        needs_quotes = true;
        break;
      case ' ':
      case '\'':
      case ';':
        escaped += c;
        needs_quotes = true;
        break;
      default: escaped += c;
    }
  }
  return needs_quotes ? "\"" + escaped + "\"" : escaped;
}

Result<std::string> systemd_unit(const UnitSpec& spec) {
  if (spec.binary.empty() || spec.binary[0] != '/') {
    return make_error(ErrorCode::InvalidArgument,
                      "the unit needs the absolute path of nebula, not '" + spec.binary + "'");
  }
  auto binary = systemd_quote(spec.binary);
  if (!binary) return binary.error();
  std::string exec = *binary + " " + role_name(spec.role);
  for (const auto& arg : spec.args) {
    auto word = systemd_quote(arg);
    if (!word) return word.error();
    exec += " " + *word;
  }
  for (char c : spec.user) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
      return make_error(ErrorCode::InvalidArgument, "'" + spec.user + "' is not a user name");
    }
  }
  std::string description = spec.description;
  std::string stop;
  switch (spec.role) {
    case Role::Agent:
      if (description.empty()) description = "Nebula node agent (engines on this machine's GPUs)";
      // systemd signals the agent alone: the agent leaves its engines running when it stops, and
      // the next agent (a restart, an upgrade) re-adopts them, so no request is dropped. Exit
      // status 2 is a join token the server refused: restarting would not help.
      stop =
          "KillMode=process\n"
          "KillSignal=SIGTERM\n"
          "TimeoutStopSec=30\n"
          "Restart=always\n"
          "RestartSec=5\n"
          "RestartPreventExitStatus=2\n";
      break;
    case Role::Server:
      if (description.empty()) description = "Nebula server (control plane and gateway)";
      // SIGTERM drains the gateway (streams in flight finish) before it exits.
      stop =
          "KillMode=mixed\n"
          "KillSignal=SIGTERM\n"
          "TimeoutStopSec=90\n"
          "Restart=on-failure\n"
          "RestartSec=5\n";
      break;
    case Role::Up:
      if (description.empty()) description = "Nebula (control plane, gateway and local agent)";
      // SIGTERM drains, then stops every engine of the local agent (each gets its grace period);
      // whatever is left when the timeout ends is killed with the whole group.
      stop =
          "KillMode=mixed\n"
          "KillSignal=SIGTERM\n"
          "TimeoutStopSec=120\n"
          "Restart=on-failure\n"
          "RestartSec=5\n";
      break;
  }
  std::string unit = fmt::format(
      "# Written by `nebula service install {}` or `nebula nodes add`.\n"
      "[Unit]\n"
      "Description={}\n"
      "After=network-online.target\n"
      "Wants=network-online.target\n"
      "StartLimitIntervalSec=300\n"
      "StartLimitBurst=10\n"
      "\n"
      "[Service]\n"
      "Type=simple\n"
      "ExecStart={}\n"
      "{}"
      "{}"
      "LimitNOFILE=1048576\n"
      "\n"
      "[Install]\n"
      "WantedBy=multi-user.target\n",
      role_name(spec.role), description, exec, spec.user.empty() ? "" : "User=" + spec.user + "\n", stop);
  return unit;
}

}  // namespace nebula::provision
