// `nebula gateway --server URL`: the OpenAI gateway alone, following a server's deployments,
// replicas, keys and usage (gateway/mirror_store.h) and reporting usage back to it. Or
// `nebula gateway --store etcd://...`: the same gateway on the servers' etcd itself, following
// it by watch and writing usage, last use and activity to it (no server in the way). Start as
// many as you like; on one host they share a port (SO_REUSEPORT). With --limits
// redis://HOST:PORT, every gateway (and the server's own, given the same flag) counts each key's
// limits in one Redis.
#include <fmt/format.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>

#include <atomic>
#include <condition_variable>
#include <iostream>
#include <mutex>
#include <thread>

#include "api/api.h"
#include "cli/cli.h"
#include "common/asio.h"
#include "common/config.h"
#include "common/log.h"
#include "common/subprocess.h"
#include "gateway/gateway.h"
#include "gateway/mirror_store.h"
#include "gateway/redis_limiter.h"
#include "http/reuse_port.h"
#include "store/etcd_store.h"
#include "store/store.h"
#include "xtrace/xtrace.h"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

namespace nebula::cli {

void add_limits_flags(CLI::App& app, LimitsFlags& flags) {
  app.add_option("--limits", flags.url,
                 "Where per-key limits are counted: redis://HOST[:PORT] to share them among gateways "
                 "(default: in this process)");
  app.add_option("--limits-timeout", flags.timeout, "Longest wait on Redis for one limit check")
      ->check(duration_value(1))
      ->capture_default_str();
  app.add_option("--limits-lease", flags.lease,
                 "How long a dead gateway's concurrency slots stay taken (renewed while requests run)")
      ->check(duration_value(100))
      ->capture_default_str();
  app.add_option("--limits-fail-rate", flags.fail_rate,
                 "Redis unreachable: RPM, TPM and concurrency fail open (not enforced) or closed (503)")
      ->check(CLI::IsMember({"open", "closed"}))
      ->capture_default_str();
  app.add_option("--limits-fail-budget", flags.fail_budget,
                 "Redis unreachable: monthly budgets fail open (this gateway's count) or closed (503)")
      ->check(CLI::IsMember({"open", "closed"}))
      ->capture_default_str();
}

Result<std::shared_ptr<gateway::Limiter>> make_limiter(const LimitsFlags& flags) {
  if (flags.url.empty()) return std::shared_ptr<gateway::Limiter>();
  gateway::RedisLimiterOptions options;
  if (auto parsed = gateway::parse_redis_url(flags.url, options); !parsed) {
    return make_error(ErrorCode::InvalidArgument, "--limits: " + parsed.error().message);
  }
  auto timeout = parse_duration(flags.timeout);
  auto lease = parse_duration(flags.lease);
  auto rate = gateway::parse_fail_policy(flags.fail_rate);
  auto budget = gateway::parse_fail_policy(flags.fail_budget);
  if (!timeout || !lease || !rate || !budget) return make_error(ErrorCode::InvalidArgument, "bad --limits-* flag");
  options.timeout = *timeout;
  options.lease = *lease;
  options.rate_policy = *rate;
  options.budget_policy = *budget;
  auto limiter = std::make_shared<gateway::RedisLimiter>(options);
  if (auto started = limiter->start(); !started) return started.error();
  spdlog::info("limits: counted in redis {}:{} (unreachable: rate limits fail {}, budgets fail {})", options.host,
               options.port, flags.fail_rate, flags.fail_budget);
  return std::shared_ptr<gateway::Limiter>(std::move(limiter));
}

namespace {

struct GatewayFlags {
  ClientFlags client;
  std::string store;
  std::string listen = "127.0.0.1:8090";
  std::string auth = "keys";
  std::string log_level = "info";
  std::string access_log;
  std::string drain_timeout = "30s";
  bool exit_with_parent = false;
  LimitsFlags limits;
  ResponsesFlags responses;
};

// Whether etcd answers, asked once a second off the I/O threads (a read waits on every member
// in turn when they are away). A gateway keeps serving from what its watches brought meanwhile.
class StoreProbe {
 public:
  explicit StoreProbe(store::Store& store) : store_(store), thread_([this] { run(); }) {}
  ~StoreProbe() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  bool reachable() const { return reachable_.load(); }

 private:
  void run() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      lock.unlock();
      reachable_ = store_.get(std::string(api::kKeyRoot) + "leader").ok();
      lock.lock();
      wake_.wait_for(lock, std::chrono::seconds(1), [this] { return stopping_; });
    }
  }
  store::Store& store_;
  std::atomic<bool> reachable_{true};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

// What the gateway runs on: a server's state mirrored (--server) or etcd itself (--store).
struct Source {
  std::unique_ptr<gateway::MirrorStore> mirror;
  std::unique_ptr<store::Store> etcd;
  std::unique_ptr<StoreProbe> probe;
  std::string description;

  store::Store& store() { return mirror ? static_cast<store::Store&>(*mirror) : *etcd; }
  http::Response readiness() const {
    if (mirror) {
      if (mirror->following()) return http::Response::text(200, "ok\n");
      return http::Response::text(503, "not following the server\n");
    }
    if (probe->reachable()) return http::Response::text(200, "ok\n");
    return http::Response::text(503, "no etcd member answers\n");
  }
};

// --store: etcd only. A SQLite file belongs to the one server that has it open; its changes
// reach no other process.
Status check_store_url(const std::string& url) {
  if (url.rfind("etcd://", 0) == 0) {
    if (auto parsed = store::parse_etcd_url(url); !parsed) return parsed.error();
    return {};
  }
  if (url.rfind("sqlite://", 0) == 0) {
    return make_error(ErrorCode::InvalidArgument,
                      "a gateway cannot share a server's SQLite file; follow that server with --server URL instead, "
                      "or give the servers' etcd://HOST:PORT[,HOST:PORT...]");
  }
  return make_error(ErrorCode::InvalidArgument,
                    "expected etcd://HOST:PORT[,HOST:PORT...][?options], got '" + url + "'");
}

}  // namespace

int run_gateway(int argc, char** argv) {
  CLI::App app{"Run a stateless OpenAI gateway that follows a server or its etcd (start as many as you like)",
               "nebula gateway"};
  GatewayFlags flags;
  add_client_flags(app, flags.client);
  app.get_option("--server")
      ->description(
          "The server to follow, or several of one cluster, comma-separated: the gateway moves to the "
          "next when one stops answering (NEBULA_SERVER)");
  app.add_option("--store", flags.store,
                 "Run on the servers' etcd (etcd://HOST:PORT[,HOST:PORT...][?options]) instead of following a "
                 "--server");
  app.add_option("--listen", flags.listen,
                 "Address for the OpenAI gateway; gateways on one host may share it (SO_REUSEPORT)")
      ->capture_default_str();
  app.add_option("--auth", flags.auth, "keys: every request needs an API key; none: only on loopback")
      ->check(CLI::IsMember({"keys", "none"}))
      ->capture_default_str();
  app.add_option("--log-level", flags.log_level, "trace, debug, info, warn or error")
      ->check(log_level_value())
      ->capture_default_str();
  app.add_option("--access-log", flags.access_log, "Write one JSON line per request to this file");
  app.add_option("--drain-timeout", flags.drain_timeout,
                 "On SIGTERM/Ctrl-C: how long requests in flight may take to finish before they are cut")
      ->check(duration_value())
      ->capture_default_str();
  app.add_flag("--exit-with-parent", flags.exit_with_parent,
               "Shut down when the process that started this one dies; for tests");
  add_limits_flags(app, flags.limits);
  add_responses_flags(app, flags.responses);
  XtraceFlags xtrace_flags;
  add_xtrace_flags(app, xtrace_flags, true);
  if (auto exit = parse(app, argc, argv)) return *exit;
  auto xtrace_client = make_xtrace_client(xtrace_flags, true);
  if (!xtrace_client) return usage_error(app, xtrace_client.error().message);
  auto address = parse_host_port(flags.listen);
  if (!address) return usage_error(app, "--listen: " + address.error().message);
  bool loopback = address->host == "localhost" || address->host.rfind("127.", 0) == 0 || address->host == "::1";
  if (!loopback && flags.auth != "keys") {
    return usage_error(app, "refusing to listen on " + flags.listen + " without --auth keys");
  }
  bool on_store = app.count("--store") > 0;
  if (on_store && app.count("--server") > 0) {
    return usage_error(app, "give --server URL (follow a server) or --store etcd://... (run on its etcd), not both");
  }
  if (on_store && app.count("--api-key") > 0) {
    return usage_error(app, "--api-key is for --server; on --store the gateway reads etcd itself");
  }
  if (on_store) {
    if (auto valid = check_store_url(flags.store); !valid) return usage_error(app, "--store: " + valid.error().message);
  }
  std::vector<std::string> servers;
  if (!on_store) {
    auto listed = parse_server_list(flags.client.server);
    if (!listed) return usage_error(app, listed.error().message);
    servers = std::move(*listed);
  }
  auto drain_timeout = parse_duration(flags.drain_timeout);
  if (!drain_timeout) return usage_error(app, "--drain-timeout: " + drain_timeout.error().message);
  init_logging(flags.log_level);
  raise_descriptor_limit();
  auto signals = block_stop_signals();
  if (flags.exit_with_parent && (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || ::getppid() == 1)) {
    return fail("--exit-with-parent: the parent is already gone");
  }

  asio::io_context io;
  auto work = asio::make_work_guard(io);
  Source source;
  if (on_store) {
    auto opened = store::open(flags.store);
    if (!opened) return fail("--store: " + opened.error().message);
    source.etcd = std::move(*opened);
    source.probe = std::make_unique<StoreProbe>(*source.etcd);
    source.description = "etcd " + flags.store.substr(0, flags.store.find('?'));
  } else {
    source.mirror = std::make_unique<gateway::MirrorStore>(io, servers, flags.client.api_key);
    if (auto started = source.mirror->start(); !started) return fail(started.error().message);
    source.description = source.mirror->server();
  }
  auto limiter = make_limiter(flags.limits);
  if (!limiter) return fail(limiter.error().message);
  if (!*limiter) {
    spdlog::warn(
        "limits are per gateway: without --limits redis://HOST:PORT each gateway enforces every key's RPM, TPM, "
        "concurrency and budget on its own, so N gateways let a key through up to N times its limits");
  }
  auto responses = make_response_store(flags.responses, flags.limits.url);
  if (!responses) return fail(responses.error().message);
  gateway::Options options;
  options.require_keys = flags.auth == "keys";
  options.responses = *responses;
  options.access_log_path = flags.access_log;
  options.limiter = *limiter;
  options.xtrace = *xtrace_client;
  options.xtrace_content = *xtrace_client && xtrace_flags.content;
  options.xtrace_signals = *xtrace_client && xtrace_flags.signals == "xtrace";
  auto gateway = std::make_unique<gateway::Gateway>(source.store(), io, options);
  if (auto started = gateway->start(); !started) return fail(started.error().message);

  http::Router router;
  gateway->add_routes(router);
  router.add("GET", "/healthz", [](http::Request&, http::ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(http::Response::text(200, "ok\n"));
  });
  router.add("GET", "/readyz", [&source](http::Request&, http::ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(source.readiness());
  });
  router.set_guard([&gateway](const http::Request& request) { return gateway->auth().management_refusal(request); });
  http::ServerOptions server_options;
  http::set_reuse_port(true);
  uint64_t descriptors = descriptor_limit().soft;
  server_options.max_connections =
      static_cast<size_t>(descriptors > 192 ? (descriptors - 96) / 2 : descriptors / 4 + 1);
  http::Server server(io, std::move(router), server_options);
  auto port = server.listen(*address);
  if (!port) return fail(port.error().message);
  std::thread runner([&io] { io.run(); });
  std::string url = "http://" + HostPort{address->host == "0.0.0.0" ? "127.0.0.1" : address->host, *port}.to_string();
  spdlog::info("nebula gateway listening on {} (following {}, pid {})", url, source.description, ::getpid());
  std::cout << "Nebula gateway: " << url << "\n" << std::flush;

  int received = 0;
  sigwait(&signals, &received);
  spdlog::info("received {}, shutting down", strsignal(received));
  size_t cut = server.drain(*drain_timeout);
  if (cut > 0) spdlog::warn("drain timeout: cut {} connection{} still busy", cut, cut == 1 ? "" : "s");
  gateway->stop();  // flushes pending usage to the server or etcd
  if (source.mirror) source.mirror->stop();
  server.stop();
  asio::post(io, [&io] { io.stop(); });
  work.reset();
  runner.join();
  gateway.reset();
  source.probe.reset();
  if (auto* redis = dynamic_cast<gateway::RedisLimiter*>(limiter->get())) redis->stop();
  return 0;
}

}  // namespace nebula::cli
