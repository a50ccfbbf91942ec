#pragma once
// The `nebula` command line: one entry function per subcommand (main.cpp is only the table).
// Each returns the process exit code: 0 success, 1 failed operation, 2 bad usage.
#include <CLI/CLI.hpp>

#include <string>

#include "common/json.h"
#include "common/result.h"
#include "http/http.h"

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

// Flags every client command shares: --server, --api-key, -o.
struct ClientFlags {
  std::string server;
  std::string api_key;  // --api-key, NEBULA_API_KEY, else <data-dir>/admin.key for a local server
  std::string output = "table";
};
void add_client_flags(CLI::App& app, ClientFlags& flags);

// Parses argv for a subcommand; on error or --help prints and returns the exit code to use.
std::optional<int> parse(CLI::App& app, int argc, char** argv);

// Talks to the management API; non-2xx answers become errors carrying the server's message.
class ApiClient {
 public:
  explicit ApiClient(const ClientFlags& flags);
  Result<json> call(const std::string& method, const std::string& path, const std::string& body = "");
  // Streams the response body of GET path to stdout until it ends. Returns the HTTP status.
  Result<int> stream_to_stdout(const std::string& path);
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
// A JSON array of strings joined with commas; `empty` when there are none.
std::string join_strings(const json& values, const std::string& empty);
// One-line error on stderr, exit code 1.
int fail(const std::string& message);

}  // namespace nebula::cli
