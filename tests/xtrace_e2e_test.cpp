// Reporting to xtrace and reading its signals, end to end: a real `nebula up` with engine-sim
// replicas reports to the xtrace test server (tests/xtrace_server.h), which enforces the contract
// and records what it got; a W3C traceparent is followed from the client to the engine.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "common/clock.h"
#include "nebula_fixture.h"
#include "xtrace/xtrace.h"
#include "xtrace_server.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using testing::bearer;
using testing::eventually;
using testing::XtraceServer;

const std::string kChat = R"({"model":"chat","max_tokens":8,"messages":[{"role":"user","content":"follow me"}]})";
const std::string kClientTrace = "4bf92f3577b34da6a3ce929d0e0e4736";
const std::string kClientParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class XtraceE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    xtrace_ = new XtraceServer();
    up_ = new testing::NebulaUp({"--auth", "keys", "--xtrace", xtrace_->url(), "--xtrace-token", xtrace_->token(),
                                 "--heartbeat-interval", "500ms"});
    ASSERT_TRUE(up_->wait_node_ready()) << up_->process().output();
    auto deployed = up_->cli({"deploy", "chat", "--engine", "sim", "--model", "qwen2.5-0.5b", "--replicas", "2",
                              "--engine-arg=--log-requests", "--wait", "--timeout", "60s"});
    ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
    auto created = up_->cli({"keys", "create", "alice", "-o", "json"});
    ASSERT_EQ(created.exit_code, 0) << created.out;
    key_ = (*parse_json(created.out)).value("secret", "");
  }
  static void TearDownTestSuite() {
    delete up_;
    up_ = nullptr;
    delete xtrace_;
    xtrace_ = nullptr;
  }

  Result<http::Response> chat(http::Headers headers) {
    for (auto& header : bearer(key_)) headers.push_back(header);
    http::BlockingClient client;
    return client.request("POST", up_->server() + "/v1/chat/completions", kChat, headers);
  }

  // The engine log lines of the deployment's replicas that mention `text`.
  bool engine_logged(const std::string& text) {
    size_t replicas = up_->replicas_of("chat").size();
    for (size_t index = 0; index < replicas; ++index) {
      auto logs = up_->cli({"logs", "chat", "--replica", std::to_string(index)});
      if (logs.out.find(text) != std::string::npos) return true;
    }
    return false;
  }

  static XtraceServer* xtrace_;
  static testing::NebulaUp* up_;
  static std::string key_;
};
XtraceServer* XtraceE2E::xtrace_ = nullptr;
testing::NebulaUp* XtraceE2E::up_ = nullptr;
std::string XtraceE2E::key_;

TEST_F(XtraceE2E, TheClientsTraceReachesTheEngineTheAccessLogAndXtrace) {
  auto response = chat({{"traceparent", kClientParent}, {"x-request-id", "req-followed"}});
  ASSERT_TRUE(response) << response.error().message;
  ASSERT_EQ(response->status, 200) << response->body;
  // The client gets the trace back: its trace id, the span the gateway sent to the engine.
  auto returned = xtrace::TraceParent::parse(response->header("traceparent"));
  ASSERT_TRUE(returned) << response->header("traceparent");
  EXPECT_EQ(returned->trace_id, kClientTrace);
  EXPECT_NE(returned->span_id, "00f067aa0ba902b7");
  // The engine saw that same traceparent, beside the request id.
  EXPECT_TRUE(
      eventually([&] { return engine_logged("x-request-id=req-followed traceparent=" + returned->format()); }, 15s));
  // The access log has it beside the request id.
  EXPECT_TRUE(eventually(
      [&] {
        return read_file(up_->data_dir() + "/access.log")
                   .find("\"id\":\"req-followed\",\"traceparent\":\"" + returned->format() + "\"") != std::string::npos;
      },
      15s));
  // xtrace got one trace under that id, with its generation.
  std::string trace_id = xtrace::uuid_of(kClientTrace);
  ASSERT_TRUE(eventually([&] { return xtrace_->trace_ids().count(trace_id) == 1; }, 15s));
  EXPECT_EQ(xtrace_->trace_ids().at(trace_id), 1);
  json body;
  for (const auto& trace : xtrace_->traces()) {
    if (trace["trace"]["id"] == trace_id) body = trace;
  }
  EXPECT_EQ(body["trace"]["name"], "/v1/chat/completions");
  EXPECT_EQ(body["trace"]["userId"], "alice");
  EXPECT_EQ(body["trace"]["tags"], json::array({"gateway"}));
  const json& generation = body["observations"][0];
  EXPECT_EQ(generation["type"], "GENERATION");
  EXPECT_EQ(generation["model"], "chat");
  EXPECT_GT(generation["promptTokens"].get<int>(), 0);
  EXPECT_EQ(generation["completionTokens"], 8);
  EXPECT_EQ(generation["metadata"]["status"], 200);
  EXPECT_EQ(generation["metadata"]["deployment"], "chat");
  EXPECT_EQ(generation["metadata"]["request_id"], "req-followed");
  EXPECT_EQ(generation["metadata"]["replica"].get<std::string>().rfind("chat-", 0), 0u);
  EXPECT_FALSE(generation.contains("input"));  // no --xtrace-content
  EXPECT_FALSE(generation.contains("output"));
  EXPECT_TRUE(xtrace_->problems().empty()) << xtrace_->problems().front();
}

TEST_F(XtraceE2E, AMalformedTraceparentIsReplacedNeverForwarded) {
  const std::string bad = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
  auto response = chat({{"traceparent", bad}, {"tracestate", "vendor=evil"}, {"x-request-id", "req-malformed"}});
  ASSERT_TRUE(response) << response.error().message;
  ASSERT_EQ(response->status, 200) << response->body;
  auto returned = xtrace::TraceParent::parse(response->header("traceparent"));
  ASSERT_TRUE(returned) << response->header("traceparent");
  EXPECT_NE(returned->trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_TRUE(
      eventually([&] { return engine_logged("x-request-id=req-malformed traceparent=" + returned->format()); }, 15s));
  EXPECT_FALSE(engine_logged(bad));
  // Without a traceparent, one is made.
  auto plain = chat({});
  ASSERT_TRUE(plain);
  EXPECT_TRUE(xtrace::TraceParent::parse(plain->header("traceparent")));
  // A refused request is traced too.
  http::BlockingClient client;
  auto refused = client.request("POST", up_->server() + "/v1/chat/completions", kChat, bearer("nb-wrong"));
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 401);
  EXPECT_TRUE(xtrace::TraceParent::parse(refused->header("traceparent")));
}

TEST_F(XtraceE2E, NodesReportTheSeedsMetricsEveryHeartbeat) {
  auto has = [&](const std::string& name, const std::string& label, const std::string& value) {
    for (const auto& point : xtrace_->points()) {
      if (point.name == name && point.labels.count(label) && point.labels.at(label) == value) return true;
    }
    return false;
  };
  auto replicas = up_->replicas_of("chat");
  ASSERT_EQ(replicas.size(), 2u);
  std::string replica = replicas[0]["metadata"]["name"];
  ASSERT_TRUE(eventually([&] { return has("kv_cache_usage", "replica_id", replica); }, 20s));
  EXPECT_TRUE(eventually([&] { return has("pending_requests", "replica_id", replica); }, 20s));
  EXPECT_TRUE(eventually([&] { return has("prefix_cache_hit_rate", "model_uid", "chat"); }, 20s));
  for (const char* name : {"gpu_utilization", "gpu_temperature", "gpu_memory_used_mb", "gpu_memory_total_mb"}) {
    EXPECT_TRUE(has(name, "gpu_index", "0")) << name;
  }
  for (const auto& point : xtrace_->points()) {
    if (point.name == "gpu_memory_total_mb") {
      EXPECT_EQ(point.value, 80 * 1024) << "a simulated H100-80GB, in MiB";
    }
    if (point.name == "kv_cache_usage") {
      EXPECT_TRUE(point.value >= 0 && point.value <= 1);
    }
    EXPECT_TRUE(xtrace::parse_rfc3339(point.timestamp)) << point.timestamp;
  }
  // Every heartbeat: more points keep coming.
  size_t before = xtrace_->points().size();
  EXPECT_TRUE(eventually([&] { return xtrace_->points().size() > before; }, 10s));
  // The counters are in /metrics.
  http::BlockingClient client;
  auto metrics = client.request("GET", up_->server() + "/metrics", "", bearer(up_->admin_key()));
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("# TYPE nebula_xtrace_sent_total counter"), std::string::npos) << metrics->body;
  EXPECT_EQ(metrics->body.find("nebula_xtrace_sent_total{kind=\"metrics\"} 0\n"), std::string::npos);
}

// A dead xtrace (nothing listens) and a black hole (accepts, never answers): clients see nothing.
TEST(XtraceDownE2E, ADeadOrSilentXtraceChangesNothingForClients) {
  XtraceServer black_hole;
  black_hole.set_default_fault({0, -1, 0ms, true});
  for (std::string url : {"http://127.0.0.1:" + std::to_string(testing::free_port()), black_hole.url()}) {
    testing::NebulaUp up({"--xtrace", url, "--xtrace-token", "t"});
    ASSERT_TRUE(up.wait_node_ready()) << up.process().output();
    auto deployed =
        up.cli({"deploy", "chat", "--engine", "sim", "--model", "qwen2.5-0.5b", "--wait", "--timeout", "60s"});
    ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
    http::BlockingClient client;
    for (int i = 0; i < 20; ++i) {
      auto response = client.request("POST", up.server() + "/v1/chat/completions", kChat);
      ASSERT_TRUE(response) << response.error().message;
      ASSERT_EQ(response->status, 200) << response->body;
    }
    auto metrics = client.request("GET", up.server() + "/metrics");
    ASSERT_TRUE(metrics);
    EXPECT_NE(metrics->body.find("nebula_xtrace_queue_length{kind=\"traces\"}"), std::string::npos);
    EXPECT_NE(metrics->body.find("nebula_xtrace_sent_total{kind=\"traces\"} 0\n"), std::string::npos);
  }
}

// Bad xtrace flags are refused before anything starts, with exit 2 and a one-line reason.
TEST(XtraceFlagsE2E, BadFlagsAreRefused) {
  testing::TempDir scratch;
  std::string listen = "127.0.0.1:" + std::to_string(testing::free_port());
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--signals", "xtrace"}, "--signals xtrace needs --xtrace URL"},
      {{"--xtrace-content"}, "--xtrace-content needs --xtrace URL"},
      {{"--xtrace", "ftp://127.0.0.1:1"}, "--xtrace: expected http://HOST:PORT"},
      {{"--xtrace", "http://127.0.0.1:8742/some/path"}, "--xtrace: expected http://HOST:PORT"},
      {{"--xtrace", "http://127.0.0.1:8742", "--signals", "prometheus"}, "--signals"},
  };
  for (const auto& [flags, reason] : cases) {
    for (std::string command : {"up", "server"}) {
      std::vector<std::string> argv = {NEBULA_BINARY, command, "--listen", listen, "--data-dir", scratch.path() + "/d"};
      argv.insert(argv.end(), flags.begin(), flags.end());
      auto result = testing::run_command(argv);
      EXPECT_EQ(result.exit_code, 2) << command << " " << flags.front() << ": " << result.out;
      EXPECT_NE(result.out.find(reason), std::string::npos) << result.out;
    }
  }
  auto agent = testing::run_command({NEBULA_BINARY, "agent", "--server", "http://127.0.0.1:1", "--token", "nbj-x",
                                     "--data-dir", scratch.path() + "/a", "--xtrace", "not a url"});
  EXPECT_EQ(agent.exit_code, 2) << agent.out;
  EXPECT_NE(agent.out.find("--xtrace: expected"), std::string::npos) << agent.out;
}

json pending_answer(const std::string& replica, double value, std::chrono::system_clock::time_point at) {
  std::string time = format_rfc3339(at);
  return json{{"data", json::array({{{"labels", {{"replica_id", replica}}},
                                     {"values", json::array({{{"timestamp", time}, {"value", value}}})}}})},
              {"meta", {{"latest_ts", time}, {"series_count", 1}, {"truncated", false}}}};
}

double router_waiting(http::BlockingClient& client, const std::string& server, const std::string& replica) {
  auto metrics = client.request("GET", server + "/metrics");
  if (!metrics) return -2;
  std::string prefix = "nebula_router_engine_requests_waiting{deployment=\"chat\",replica=\"" + replica + "\"} ";
  auto at = metrics->body.find(prefix);
  if (at == std::string::npos) return -1;
  return std::stod(metrics->body.substr(at + prefix.size()));
}

// --signals xtrace: the router takes xtrace's pending requests while they are fresh, the engine's
// own figure once they are stale.
TEST(XtraceSignalsE2E, TheRouterUsesFreshSignalsAndIgnoresStaleOnes) {
  XtraceServer xtrace;
  testing::NebulaUp up({"--xtrace", xtrace.url(), "--xtrace-token", xtrace.token(), "--signals", "xtrace"});
  ASSERT_TRUE(up.wait_node_ready()) << up.process().output();
  auto deployed = up.cli({"deploy", "chat", "--engine", "sim", "--model", "qwen2.5-0.5b", "--routing", "kv-load",
                          "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  std::string replica = up.replicas_of("chat").at(0)["metadata"]["name"];
  http::BlockingClient client;
  xtrace.set_answer("pending_requests", pending_answer(replica, 42, std::chrono::system_clock::now()));
  EXPECT_TRUE(eventually([&] { return router_waiting(client, up.server(), replica) == 42; }, 20s))
      << router_waiting(client, up.server(), replica);
  bool asked = false;
  for (const auto& target : xtrace.queries()) {
    if (target.find("name=pending_requests") != std::string::npos &&
        target.find("%22model_uid%22%3A%22chat%22") != std::string::npos) {
      asked = true;
    }
  }
  EXPECT_TRUE(asked);
  // 40 s old: stale for the router (15 s), which goes back to the engine's own figure (idle: 0).
  xtrace.set_answer("pending_requests",
                    pending_answer(replica, 42, std::chrono::system_clock::now() - std::chrono::seconds(40)));
  EXPECT_TRUE(eventually([&] { return router_waiting(client, up.server(), replica) == 0; }, 20s))
      << router_waiting(client, up.server(), replica);
}

}  // namespace
}  // namespace nebula
