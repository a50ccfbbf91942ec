// nebula: one binary, a table of subcommands. Each command's flags, wiring and exit code live in
// its own file under src/cli/.
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "cli/cli.h"

namespace {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);
};

constexpr Command kCommands[] = {
    {"up", "run everything on this machine (control plane, gateway, local agent)", nebula::cli::run_up},
    {"server", "run the control plane and gateway for a cluster", nebula::cli::run_server},
    {"agent", "run a node agent that joins a server", nebula::cli::run_agent},
    {"gateway", "run a stateless gateway that follows a server (scale-out)", nebula::cli::run_gateway},
    {"engine-sim", "run the engine simulator", nebula::cli::run_engine_sim_command},
    {"deploy", "create or update a deployment", nebula::cli::run_deploy},
    {"ls", "list deployments", nebula::cli::run_ls},
    {"get", "show a deployment and its replicas", nebula::cli::run_get},
    {"rm", "remove a deployment", nebula::cli::run_rm},
    {"scale", "set a deployment's replica count", nebula::cli::run_scale},
    {"restart", "restart a deployment's replicas as a rolling update", nebula::cli::run_restart},
    {"sleep", "put a deployment to sleep now; a request or wake wakes it", nebula::cli::run_sleep},
    {"wake", "wake a sleeping deployment now", nebula::cli::run_wake},
    {"rollout", "a deployment's rollout: status, plan history, undo", nebula::cli::run_rollout},
    {"logs", "print a replica's engine logs", nebula::cli::run_logs},
    {"nodes", "list nodes; add one over SSH, upgrade, drain, remove", nebula::cli::run_nodes},
    {"gpus", "list GPUs and what is placed on them", nebula::cli::run_gpus},
    {"events", "list recent events", nebula::cli::run_events},
    {"keys", "create, list and revoke API keys", nebula::cli::run_keys},
    {"token", "create, list and revoke join tokens for agents", nebula::cli::run_token},
    {"usage", "token usage per key, model and day", nebula::cli::run_usage},
    {"chat", "stream a completion through the gateway", nebula::cli::run_chat},
    {"models", "inspect a model: its shape and VRAM estimate", nebula::cli::run_models},
    {"mode", "create, list and switch modes (named sets of deployments)", nebula::cli::run_mode},
    {"mcp", "serve MCP on stdio for AI assistants (tools and resources of this cluster)", nebula::cli::run_mcp},
    {"top", "full-screen terminal UI: nodes, GPUs, deployments, events", nebula::cli::run_top},
    {"service", "install a systemd unit for up, server or agent", nebula::cli::run_service},
    {"version", "print the version", nebula::cli::run_version},
};

int usage(std::ostream& out, int code) {
  out << "nebula: serve LLMs on your own GPUs\n\nUsage: nebula COMMAND [flags]\n\nCommands:\n";
  for (const auto& command : kCommands) {
    out << "  " << command.name << std::string(12 - std::strlen(command.name), ' ') << command.summary << "\n";
  }
  out << "\nRun 'nebula COMMAND --help' for a command's flags.\n";
  return code;
}

// The client flags every command shares may come before the command (`nebula --server URL ls`):
// they are moved to just after it, where the command's own parser reads them.
std::vector<char*> global_flags_after_command(int argc, char** argv) {
  std::vector<char*> globals;
  int index = 1;
  while (index < argc) {
    std::string flag = argv[index];
    bool takes_value = flag == "--server" || flag == "--api-key" || flag == "-o" || flag == "--output";
    bool with_value = flag.rfind("--server=", 0) == 0 || flag.rfind("--api-key=", 0) == 0 ||
                      flag.rfind("--output=", 0) == 0 || (flag.rfind("-o", 0) == 0 && flag.size() > 2);
    if (takes_value && index + 1 < argc) {
      globals.push_back(argv[index]);
      globals.push_back(argv[index + 1]);
      index += 2;
    } else if (with_value) {
      globals.push_back(argv[index]);
      index += 1;
    } else {
      break;
    }
  }
  std::vector<char*> arguments = {argv[0]};
  if (index < argc) arguments.push_back(argv[index++]);
  arguments.insert(arguments.end(), globals.begin(), globals.end());
  for (; index < argc; ++index) arguments.push_back(argv[index]);
  return arguments;
}

}  // namespace

int main(int raw_argc, char** raw_argv) {
  std::vector<char*> arguments = global_flags_after_command(raw_argc, raw_argv);
  int argc = static_cast<int>(arguments.size());
  arguments.push_back(nullptr);
  char** argv = arguments.data();
  if (argc < 2) return usage(std::cerr, 2);
  std::string name = argv[1];
  if (name == "-h" || name == "--help" || name == "help") return usage(std::cout, 0);
  if (name == "--version") name = "version";
  for (const auto& command : kCommands) {
    if (name == command.name) {
      try {
        return command.run(argc - 1, argv + 1);
      } catch (const std::exception& error) {
        std::cerr << "error: " << error.what() << "\n";
        return 1;
      }
    }
  }
  std::cerr << "nebula: unknown command '" << name << "'\n\n";
  return usage(std::cerr, 2);
}
