// nebula mcp: an MCP server on stdio for AI assistants, a client of the Nebula server like every
// other client command (--server, NEBULA_SERVER, NEBULA_API_KEY). Logs go to stderr only: stdout
// carries the protocol.
#include "cli/cli.h"
#include "common/log.h"
#include "mcp/mcp.h"

namespace nebula::cli {

int run_mcp(int argc, char** argv) {
  CLI::App app{"Serve MCP (Model Context Protocol) on stdin/stdout for AI assistants", "nebula mcp"};
  ClientFlags flags;
  add_client_flags(app, flags);
  bool read_only = false;
  app.add_flag("--read-only", read_only, "Expose only the tools that change nothing");
  if (auto exit = parse(app, argc, argv)) return *exit;
  auto url = http::Url::parse(flags.server);
  if (!url) return usage_error(app, "--server: " + url.error().message);

  init_logging("warn");
  ApiClient client(flags);
  mcp::StdioOptions options;
  options.server_url = client.server();
  options.headers = client.headers();
  options.server.read_only = read_only;
  return mcp::run_stdio(options);
}

}  // namespace nebula::cli
