// nebula sleep NAME, nebula wake NAME: put a deployment to sleep now (as idleness would) or wake it.
#include <iostream>

#include "cli/cli.h"

namespace nebula::cli {

namespace {

int run_sleep_or_wake(bool sleep, int argc, char** argv) {
  CLI::App app{sleep ? "Put a deployment to sleep now (its on_idle level); the next request or nebula wake wakes it"
                     : "Wake a sleeping (or idle) deployment now",
               sleep ? "nebula sleep" : "nebula wake"};
  ClientFlags flags;
  add_client_flags(app, flags);
  std::string name;
  app.add_option("name", name, "Deployment")->required();
  if (auto exit = parse(app, argc, argv)) return *exit;
  if (auto valid = check_name(name); !valid) return usage_error(app, valid.error().message);
  ApiClient client(flags);
  auto answer = client.call("POST", api_path({"deployments", name, sleep ? "sleep" : "wake"}));
  if (!answer) return fail(answer.error().message);
  // The server's message names the deployment and says where it stands: "chat goes to sleep at
  // level 1 (sleep-l1); ...", "chat is already asleep", "chat is awake".
  std::string message = answer->is_object() ? answer->value("message", name) : name;
  print_as(flags.output, *answer, [&] { std::cout << "deployment " << message << "\n"; });
  return 0;
}

}  // namespace

int run_sleep(int argc, char** argv) {
  return run_sleep_or_wake(true, argc, argv);
}

int run_wake(int argc, char** argv) {
  return run_sleep_or_wake(false, argc, argv);
}

}  // namespace nebula::cli
