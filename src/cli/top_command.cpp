// nebula top: the terminal UI (src/tui), with the client flags every command takes.
#include "cli/cli.h"
#include "tui/tui.h"

namespace nebula::cli {

int run_top(int argc, char** argv) {
  CLI::App app{"Full-screen terminal UI: nodes, GPUs, deployments, events; scale, restart, sleep/wake, logs, modes",
               "nebula top"};
  ClientFlags flags;
  add_client_flags(app, flags);
  if (auto exit = parse(app, argc, argv)) return *exit;
  ApiClient client(flags);
  return tui::run({client.server(), client.headers()});
}

}  // namespace nebula::cli
