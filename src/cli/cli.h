#pragma once
// The `nebula` command line: one entry function per subcommand (main.cpp is only the table).
// Each returns the process exit code: 0 success, 1 failed operation, 2 bad usage.
#include <signal.h>

#include <CLI/CLI.hpp>

#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/json.h"
#include "common/result.h"
#include "http/http.h"

namespace nebula::xtrace {
class Client;
}
namespace nebula::gateway {
class Limiter;
class ResponseStore;
}  // namespace nebula::gateway

namespace nebula::cli {

int run_up(int argc, char** argv);
int run_server(int argc, char** argv);
int run_agent(int argc, char** argv);
int run_engine_sim_command(int argc, char** argv);
int run_deploy(int argc, char** argv);
int run_ls(int argc, char** argv);
int run_get(int argc, char** argv);
int run_rm(int argc, char** argv);
int run_scale(int argc, char** argv);
int run_nodes(int argc, char** argv);
int run_gpus(int argc, char** argv);
int run_events(int argc, char** argv);
int run_logs(int argc, char** argv);
int run_version(int argc, char** argv);
int run_models(int argc, char** argv);
int run_keys(int argc, char** argv);
int run_token(int argc, char** argv);
int run_usage(int argc, char** argv);
int run_chat(int argc, char** argv);
int run_mode(int argc, char** argv);
int run_rollout(int argc, char** argv);
int run_restart(int argc, char** argv);
int run_sleep(int argc, char** argv);
int run_wake(int argc, char** argv);
int run_mcp(int argc, char** argv);
int run_top(int argc, char** argv);
int run_service(int argc, char** argv);
int run_gateway(int argc, char** argv);

// Flags every client command shares: --server, --api-key, -o.
struct ClientFlags {
  std::string server;
  std::string api_key;  // --api-key, NEBULA_API_KEY, else <data-dir>/admin.key for a local server
  std::string output = "table";
};
void add_client_flags(CLI::App& app, ClientFlags& flags);

// `nebula nodes add|upgrade` and `nodes rm --uninstall` (src/cli/nodes_provision.cpp): adds those
// subcommands to `nebula nodes` and the flags to its `rm`.
class NodeProvisioning {
 public:
  NodeProvisioning(CLI::App& nodes, CLI::App& remove, const ClientFlags& flags);
  ~NodeProvisioning();
  // After parsing: when add, upgrade or rm --uninstall was given, runs it and returns the exit
  // code. removed_node is the node of `nodes rm`, "" for other subcommands.
  std::optional<int> run(const std::string& removed_node);

 private:
  struct State;
  std::unique_ptr<State> state_;
};
// Where the gateway counts per-key limits (--limits and its --limits-* flags), for `nebula
// gateway`, `nebula server` and `nebula up`.
struct LimitsFlags {
  std::string url;  // "" = in process memory; redis://HOST[:PORT]
  std::string timeout = "100ms";
  std::string lease = "15s";
  std::string fail_rate = "open";
  std::string fail_budget = "closed";
};
void add_limits_flags(CLI::App& app, LimitsFlags& flags);
// The limiter the flags ask for, connected (an error when Redis cannot be reached at start);
// null for limits in process memory.
Result<std::shared_ptr<gateway::Limiter>> make_limiter(const LimitsFlags& flags);

// Where stored responses (previous_response_id, GET /v1/responses/{id}) live: --responses
// memory|sqlite://PATH|redis://HOST[:PORT], with --responses-retention and --responses-per-key.
struct ResponsesFlags {
  std::string url;  // "" = the command's default
  std::string retention = "720h";
  size_t per_key = 10'000;
};
void add_responses_flags(CLI::App& app, ResponsesFlags& flags);
// The store the flags ask for, opened (an error when it cannot be opened or reached); when
// --responses is not given, fallback's ("" = this process's memory, which is said loudly:
// several servers or gateways would each see only their own).
Result<std::shared_ptr<gateway::ResponseStore>> make_response_store(const ResponsesFlags& flags,
                                                                    const std::string& fallback);

// Reporting to xtrace and reading its signals (docs/xtrace.md); off unless --xtrace is given.
struct XtraceFlags {
  std::string url;
  std::string token;
  bool content = false;
  std::string signals = "engine";
};
// Blocks SIGINT/SIGTERM in every thread (started later, they inherit the mask) so the main
// thread can wait for them with sigwait and shut down in order; ignores SIGPIPE.
sigset_t block_stop_signals();
// --xtrace and --xtrace-token; with gateway, also --xtrace-content and --signals (docs/xtrace.md).
void add_xtrace_flags(CLI::App& app, XtraceFlags& flags, bool gateway);
// The xtrace client the flags ask for; null when --xtrace is not given.
Result<std::shared_ptr<xtrace::Client>> make_xtrace_client(const XtraceFlags& flags, bool gateway);

// Parses argv for a subcommand; on error or --help prints and returns the exit code to use.
std::optional<int> parse(CLI::App& app, int argc, char** argv);
// A usage error found after parsing (a bad value in a spec file, a name): the message on stderr
// and the hint to run --help; returns 2.
int usage_error(const CLI::App& app, const std::string& message);

// Option checks with messages that say what is wrong: "'two' is not a whole number", "5000 is
// too large (at most 1000)", "-5 cannot be negative".
CLI::Validator whole_number(int64_t min, int64_t max);
// Any number (integer or decimal) that is not negative, or more than 0: "-1 cannot be negative",
// never CLI11's "not in range 0 to" and a 309-digit maximum.
CLI::Validator non_negative_number();
CLI::Validator positive_number();
// A duration (10s, 5m); at_least_ms > 0 refuses shorter ones, 0 included.
CLI::Validator duration_value(int64_t at_least_ms = 0);
// A size (24GB, 512MB).
CLI::Validator size_value();
// One of the engines Nebula runs: "unknown engine 'x' (one of: sim, vllm, ...)".
CLI::Validator engine_value();
// trace, debug, info, warn, error or off.
CLI::Validator log_level_value();

// A file of YAML input (spec, agent.yaml), read only up to 1 MiB: a larger one is refused
// without being loaded (yaml_to_json refuses more anyway).
Result<std::string> read_input_file(const std::string& path);

// A resource name (deployment, mode, node) as the server requires it: DNS-label rules, said in
// the error (api::validate_name).
Status check_name(const std::string& name);
// Management API paths: http::api_path().
using http::api_path;

// Talks to the management API; non-2xx answers become errors carrying the server's message.
class ApiClient {
 public:
  explicit ApiClient(const ClientFlags& flags);
  // The HTTP status goes to *status when given.
  Result<json> call(const std::string& method, const std::string& path, const std::string& body = "",
                    int* status = nullptr);
  // Streams the response body of GET path to stdout until it ends. An answer other than 200 is
  // an error carrying the server's message, and nothing of it reaches stdout.
  Status stream_to_stdout(const std::string& path);
  const std::string& server() const { return server_; }
  // Authorization for this server, when a key is known.
  http::Headers headers() const;

 private:
  std::string server_;
  std::string api_key_;
  http::BlockingClient client_;
};

// Prints `value` as JSON or YAML when asked; otherwise calls print_table. Returns false for an
// unknown format.
bool print_as(const std::string& output, const json& value, const std::function<void()>& print_table);
// Prints rows as aligned columns; the first row is the header.
void print_table(const std::vector<std::vector<std::string>>& rows);
// "5s", "3m", "2h", "4d" since a Unix-ms time.
std::string age(int64_t since_ms);
// Prints a POST /api/v1/simulate plan (per-GPU VRAM bars, alternatives); 0 when it fits, else 1.
int print_plan(const json& plan, const std::string& output);
// "a,b,,c" -> {"a","b","c"}.
std::vector<std::string> split_commas(const std::string& text);
// An agent's --server: one URL or several comma-separated (servers sharing one etcd), each
// http(s)://HOST[:PORT] with no path, at most 16 and none twice. The URLs as given (without a
// trailing slash), or an error naming the entry that is wrong.
Result<std::vector<std::string>> parse_server_list(const std::string& text);
// A JSON array of strings joined with commas; `empty` when there are none.
std::string join_strings(const json& values, const std::string& empty);
// One-line error on stderr, exit code 1.
int fail(const std::string& message);

}  // namespace nebula::cli
