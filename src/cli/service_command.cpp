// `nebula service install up|server|agent`: a systemd unit for this machine (written, or printed
// with --print). `nebula service stop-engines`: stops the engines a stopped agent left running
// (its agent.db), as `nebula nodes rm --uninstall` does on the node.
#include <fmt/format.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "agent/agent_db.h"
#include "agent/process.h"
#include "cli/cli.h"
#include "common/config.h"
#include "provision/provision.h"

namespace nebula::cli {

namespace {

namespace fs = std::filesystem;

bool has_flag(const std::vector<std::string>& args, const std::string& flag) {
  for (const auto& arg : args) {
    if (arg == flag || arg.rfind(flag + "=", 0) == 0) return true;
  }
  return false;
}

Status write_atomically(const std::string& path, const std::string& content) {
  std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::trunc);
    out << content;
    if (!out) return make_error(ErrorCode::PermissionDenied, "cannot write " + temp + ": " + std::strerror(errno));
  }
  std::error_code error;
  fs::permissions(temp, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read,
                  error);
  fs::rename(temp, path, error);
  if (error) return make_error(ErrorCode::PermissionDenied, "cannot write " + path + ": " + error.message());
  return {};
}

int stop_engines(const std::string& data_dir, std::chrono::milliseconds grace) {
  if (!fs::exists(data_dir + "/agent.db")) {
    std::cout << "no engines: " << data_dir << "/agent.db does not exist\n";
    return 0;
  }
  auto db = agent::AgentDb::open(data_dir + "/agent.db");
  if (!db) return fail(db.error().message);
  auto records = (*db)->all();
  if (!records) return fail(records.error().message);
  std::vector<agent::EngineRecord> running;
  for (const auto& record : *records) {
    if (!record.container_id.empty()) {
      std::cout << fmt::format("replica {}: container {} left to docker (docker rm -f {})\n", record.replica,
                               record.container_id, record.container_id);
      continue;
    }
    // The pid and its start time: a pid reused by another process since is not signalled.
    if (record.pid > 0 && agent::process_start_time(record.pid) == record.start_time) {
      ::kill(-record.pid, SIGTERM);
      running.push_back(record);
    } else {
      (void)(*db)->remove(record.replica);
    }
  }
  const auto deadline = std::chrono::steady_clock::now() + grace;
  for (const auto& record : running) {
    while (agent::process_start_time(record.pid) == record.start_time && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (agent::process_start_time(record.pid) == record.start_time) ::kill(-record.pid, SIGKILL);
    (void)(*db)->remove(record.replica);
    std::cout << fmt::format("stopped engine of replica {} (pid {})\n", record.replica, record.pid);
  }
  return 0;
}

}  // namespace

int run_service(int argc, char** argv) {
  CLI::App app{"Install Nebula as a systemd service on this machine", "nebula service"};
  app.require_subcommand(1);
  std::string role_text;
  std::string binary;
  std::string user;
  std::string unit_dir = "/etc/systemd/system";
  std::string data_dir = "/var/lib/nebula";
  bool print = false;
  std::vector<std::string> args;
  auto* install = app.add_subcommand("install", "Write the unit of `nebula up`, `server` or `agent`");
  install->add_option("role", role_text, "up, server or agent")->required();
  install->add_option("args", args, "Flags for the command, after --: nebula service install agent -- --server URL");
  install->add_flag("--print", print, "Print the unit instead of writing it");
  install->add_option("--binary", binary, "Path of nebula in the unit (default: this binary)");
  install->add_option("--user", user, "Run as this user (default: root)");
  install->add_option("--unit-dir", unit_dir, "Where the unit is written")->capture_default_str();
  install->add_option("--data-dir", data_dir, "The service's data dir, unless the flags after -- give one")
      ->capture_default_str();
  std::string engines_dir;
  std::string grace = "10s";
  auto* engines = app.add_subcommand("stop-engines", "Stop the engines a stopped agent left running");
  engines->add_option("--data-dir", engines_dir, "The agent's data dir (its agent.db)")->required();
  engines->add_option("--grace", grace, "SIGTERM to SIGKILL delay")->check(duration_value())->capture_default_str();
  if (auto exit = parse(app, argc, argv)) return *exit;

  if (engines->parsed()) {
    auto delay = parse_duration(grace);
    if (!delay) return usage_error(app, delay.error().message);
    return stop_engines(engines_dir, *delay);
  }

  auto role = provision::parse_role(role_text);
  if (!role) return usage_error(app, role.error().message);
  if (binary.empty()) {
    std::error_code error;
    binary = fs::read_symlink("/proc/self/exe", error).string();
    if (error) return fail("cannot tell where this binary is: give --binary");
  }
  if (binary.empty() || binary[0] != '/') return usage_error(app, "--binary: expected an absolute path");
  if (*role == provision::Role::Agent && !has_flag(args, "--config") &&
      (!has_flag(args, "--server") || !has_flag(args, "--token"))) {
    return usage_error(app,
                       "an agent needs --server URL --token TOKEN (or --config agent.yaml) after --: nebula service "
                       "install agent -- --server URL --token TOKEN");
  }
  provision::UnitSpec spec;
  spec.role = *role;
  spec.binary = binary;
  spec.user = user;
  spec.args = args;
  // A service has no home directory to default to: its data dir is said.
  if (!has_flag(args, "--data-dir") && !has_flag(args, "--config")) {
    spec.args.push_back("--data-dir");
    spec.args.push_back(data_dir);
  }
  auto unit = provision::systemd_unit(spec);
  if (!unit) return usage_error(app, unit.error().message);
  if (print) {
    std::cout << *unit;
    return 0;
  }
  std::string name = provision::unit_name(*role);
  std::string path = unit_dir + "/" + name;
  std::ifstream existing(path);
  std::stringstream current;
  current << existing.rdbuf();
  if (existing && current.str() == *unit) {
    std::cout << path << " is current\n";
  } else {
    if (auto written = write_atomically(path, *unit); !written) return fail(written.error().message);
    std::cout << "wrote " << path << "\n";
  }
  std::cout << "start it: systemctl daemon-reload && systemctl enable --now " << name << "\n";
  return 0;
}

}  // namespace nebula::cli
