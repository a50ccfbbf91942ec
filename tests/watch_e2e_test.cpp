// The watch API under an agent's filter and a stalled reader, on a real `nebula server`: an agent's
// watch (?node=) carries only its own replicas and their departure; a watcher that stops reading
// is cut off once it falls behind, the server's memory stays bounded, and a fresh list + watch
// works.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>

#include "common/json.h"
#include "http/http.h"
#include "nebula_fixture.h"
#include "process_helpers.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using testing::eventually;

class WatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<testing::NebulaServer>(temp_.path() + "/server", temp_.path() + "/server.log");
    ASSERT_TRUE(server_->start()) << server_->process().output();
  }

  http::BlockingClient& client() { return server_->client(); }
  std::string api(const std::string& path) const { return server_->url() + "/api/v1" + path; }

  // A node joined by hand: one 80 GB GPU, the sim engine.
  void join(const std::string& name, const json& extra_status = json::object()) {
    auto joined = client().request("POST", api("/nodes/join"), json{{"token", server_->token()}, {"name", name}}.dump(),
                                   json_headers());
    ASSERT_TRUE(joined && joined->status == 200) << (joined ? joined->body : joined.error().message);
    ASSERT_EQ(report(name, extra_status), 200);
  }
  int report(const std::string& name, const json& extra_status = json::object()) {
    json status = {{"engines", json::array({"sim"})},
                   {"gpu_probe", "sim"},
                   {"gpus", json::array({json{{"index", 0},
                                              {"uuid", "GPU-" + name},
                                              {"name", "H100-80GB"},
                                              {"memory_total_mb", 81920},
                                              {"memory_used_mb", 0}}})}};
    status.update(extra_status);
    auto response = client().request("PUT", api("/nodes/" + name + "/status"), status.dump(), json_headers());
    return response ? response->status : 0;
  }
  static http::Headers json_headers() { return {{"Content-Type", "application/json"}}; }

  testing::TempDir temp_;
  std::unique_ptr<testing::NebulaServer> server_;
};

// The NDJSON lines of a watch from `revision`, read until `enough` says so or 10 s of quiet.
std::vector<json> watch_lines(http::BlockingClient& client, const std::string& url,
                              const std::function<bool(const std::vector<json>&)>& enough) {
  std::vector<json> lines;
  std::string pending;
  auto status = client.stream(
      "GET", url, "", {},
      [&](std::string_view data) {
        pending.append(data);
        size_t newline;
        while ((newline = pending.find('\n')) != std::string::npos) {
          std::string line = pending.substr(0, newline);
          pending.erase(0, newline + 1);
          if (line.empty()) continue;
          auto parsed = parse_json(line);
          if (parsed) lines.push_back(*parsed);
        }
        return !enough(lines);
      },
      10s);
  EXPECT_TRUE(status && *status == 200);
  return lines;
}

TEST_F(WatchTest, AnAgentsWatchCarriesOnlyItsNodesReplicasAndTheirDeparture) {
  join("n1");
  join("n2");
  // Two replicas of 50 GB: one on each node.
  json body = {{"name", "a"}, {"spec", {{"model", "m"}, {"engine", "sim"}, {"replicas", 2}, {"vram_mb", 51200}}}};
  auto deployed = client().request("POST", api("/deployments"), body.dump(), json_headers());
  ASSERT_TRUE(deployed && deployed->status < 300);
  std::string on_n1, on_n2;
  ASSERT_TRUE(eventually(
      [&] {
        for (const auto& replica : server_->replicas_of("a")) {
          std::string node = replica["spec"].value("node", "");
          if (node == "n1") on_n1 = replica["metadata"]["name"];
          if (node == "n2") on_n2 = replica["metadata"]["name"];
        }
        return !on_n1.empty() && !on_n2.empty();
      },
      20s));
  // The list: only n1's replica.
  json listing = server_->get_json("/api/v1/replicas?node=n1");
  ASSERT_EQ(listing["items"].size(), 1u) << listing.dump();
  EXPECT_EQ(listing["items"][0]["metadata"]["name"], on_n1);
  // The deployment goes, then both replicas (as their agents would remove them).
  auto gone = client().request("DELETE", api("/deployments/a"));
  ASSERT_TRUE(gone && gone->status == 200);
  for (const auto& name : {on_n1, on_n2}) {
    auto removed = client().request("DELETE", api("/replicas/" + name));
    ASSERT_TRUE(removed && removed->status == 200);
  }
  // From the start of history: n1's replica from creation (unplaced, it does not name n1 yet) to
  // its deletion, nothing of n2's.
  auto lines = watch_lines(client(), api("/replicas?watch=1&node=n1&revision=1"), [](const std::vector<json>& seen) {
    return !seen.empty() && seen.back().value("type", "") == "DELETE";
  });
  ASSERT_FALSE(lines.empty());
  for (const auto& line : lines) {
    EXPECT_EQ(line["object"]["metadata"]["name"], on_n1) << line.dump();
    EXPECT_EQ(line["object"]["spec"]["node"], "n1") << line.dump();
  }
  EXPECT_EQ(lines.back()["type"], "DELETE");
  // A hostile or unknown node name filters everything out; it is no error.
  for (const std::string node : {"nobody", "%22%7D%0A", "n1%00"}) {
    json none = server_->get_json("/api/v1/replicas?node=" + node);
    ASSERT_TRUE(none.is_object()) << node;
    EXPECT_TRUE(none["items"].empty()) << node << ": " << none.dump();
  }
}

// Every field of a replica, as the API's to_json writes them.
void expect_every_replica_field(const json& replica) {
  ASSERT_TRUE(replica.is_object()) << replica.dump();
  EXPECT_EQ(replica.value("kind", ""), "Replica") << replica.dump();
  for (const char* field : {"name", "uid", "created_ms", "revision"}) {
    EXPECT_TRUE(replica["metadata"].contains(field)) << field << " in " << replica.dump();
  }
  for (const char* field : {"deployment", "model", "engine", "node", "gpus", "vram_mb", "plan_version", "stop",
                            "draining_since_ms", "sleep_level", "max_context", "max_seqs", "engine_args", "env"}) {
    EXPECT_TRUE(replica["spec"].contains(field)) << field << " in " << replica.dump();
  }
  for (const char* field : {"phase", "endpoint", "port", "pid", "restarts", "last_error", "message", "plan_version",
                            "updated_ms", "next_restart_ms"}) {
    EXPECT_TRUE(replica["status"].contains(field)) << field << " in " << replica.dump();
  }
}

TEST_F(WatchTest, APlacedReplicaIsStoredWithoutItsDefaultsAndTheApiStillGivesEveryField) {
  join("n1");
  json body = {{"name", "a"}, {"spec", {{"model", "m"}, {"engine", "sim"}, {"replicas", 1}, {"vram_mb", 1024}}}};
  auto deployed = client().request("POST", api("/deployments"), body.dump(), json_headers());
  ASSERT_TRUE(deployed && deployed->status < 300);
  std::string name;
  ASSERT_TRUE(eventually(
      [&] {
        for (const auto& replica : server_->replicas_of("a")) {
          if (replica["spec"].value("node", "") == "n1") name = replica["metadata"]["name"];
        }
        return !name.empty();
      },
      20s));
  // As the store holds it (the gateways' mirror reads it so): the placement without its defaults.
  json state = server_->get_json("/api/v1/gateway/state");
  std::string stored;
  for (const auto& kv : state["kvs"]) {
    if (kv.value("key", "") == "/nebula/replicas/" + name) stored = kv.value("value", "");
  }
  auto document = parse_json(stored);
  ASSERT_TRUE(document) << state.dump();
  EXPECT_EQ((*document)["spec"].value("node", ""), "n1") << stored;
  EXPECT_FALSE((*document)["spec"].contains("stop")) << stored;
  EXPECT_FALSE((*document)["status"].contains("pid")) << stored;
  // Get, list, the watch from the start and an agent's filtered watch: every field.
  expect_every_replica_field(server_->get_json("/api/v1/replicas/" + name));
  json listing = server_->get_json("/api/v1/replicas");
  ASSERT_EQ(listing["items"].size(), 1u) << listing.dump();
  expect_every_replica_field(listing["items"][0]);
  for (const std::string filter : {"", "&node=n1"}) {
    auto lines = watch_lines(client(), api("/replicas?watch=1&revision=1" + filter), [](const std::vector<json>& seen) {
      return !seen.empty() && seen.back()["object"]["spec"].value("node", "") == "n1";
    });
    ASSERT_FALSE(lines.empty()) << filter;
    const json& placed = lines.back()["object"];
    expect_every_replica_field(placed);
    EXPECT_EQ(placed["spec"]["gpus"], json::array({0})) << placed.dump();
    EXPECT_EQ(placed["status"]["phase"], "Scheduled") << placed.dump();
    EXPECT_EQ(placed["spec"]["stop"], false) << placed.dump();
    EXPECT_EQ(placed["metadata"]["revision"], lines.back()["revision"]) << lines.back().dump();
  }
}

int64_t rss_kb(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atoll(line.c_str() + 6);
  }
  return 0;
}

// A loopback connection with a small receive buffer, for a client that stops reading.
int connect_small(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  int size = 4096;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// How much the server's RSS may grow while a watcher stalls under 30 MiB of events. A run that
// drops the backlog grows by 21-24.4 MiB (the documents handled, the allocator's caches;
// measured on 2026-12-06, so a bound of 24 MiB failed now and then), one that kept it would add
// its 30 MiB to that: 40 MiB lies between with room on both sides. Under TSan
// every page the server touches also maps shadow memory (two to four times the page), so a run
// that drops the backlog still grows by about 42 MiB there; a kept backlog would grow it by more
// than 90 MiB, which the larger bound still catches. ASan skips the check (see below).
#if defined(__SANITIZE_THREAD__)
#define NEBULA_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define NEBULA_TSAN 1
#endif
#endif
#if defined(NEBULA_TSAN)
constexpr int64_t kStalledWatchRssBoundKb = 64 * 1024;
#else
constexpr int64_t kStalledWatchRssBoundKb = 40 * 1024;
#endif

TEST_F(WatchTest, AStalledWatcherIsCutOffWithBoundedMemoryAndRelistingWorks) {
  join("n1");
  int port = std::stoi(server_->url().substr(server_->url().rfind(':') + 1));
  int fd = connect_small(port);
  ASSERT_GE(fd, 0);
  std::string request = "GET /api/v1/nodes?watch=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  ASSERT_EQ(::send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
  // Let the watch start before the writes (its answer's headers arrive).
  pollfd ready{fd, POLLIN, 0};
  ASSERT_EQ(::poll(&ready, 1, 10'000), 1);
  int64_t rss_before = rss_kb(server_->process().pid());

  // 60 status changes of a node carrying 256 KiB of model names: each change is an event of
  // about 512 KiB (new and previous document), 30 MiB in all, for a watcher that reads nothing.
  json models = json::array();
  for (int i = 0; models.dump().size() < 256 * 1024; ++i) models.push_back("org/model-" + std::to_string(i) + "@main");
  for (int change = 0; change < 60; ++change) {
    models[0] = "org/changed-" + std::to_string(change) + "@main";
    ASSERT_EQ(report("n1", json{{"models", models}}), 200);
  }
  int64_t rss_after = rss_kb(server_->process().pid());
#if defined(__SANITIZE_ADDRESS__)
  // Under ASan freed memory waits in its quarantine (256 MiB), so the server's RSS says nothing
  // about what it keeps; the cut-off below still shows the backlog was dropped.
  (void)rss_before;
  (void)rss_after;
#else
  EXPECT_LT(rss_after - rss_before, kStalledWatchRssBoundKb) << "the server kept the stalled watcher's backlog";
#endif

  // The stalled client reads again: what was buffered, then the connection ends without the
  // stream's final chunk (it was cut off, not finished).
  std::string received;
  char buffer[65536];
  auto deadline = std::chrono::steady_clock::now() + 60s;
  bool closed = false;
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd wait{fd, POLLIN, 0};
    if (::poll(&wait, 1, 1000) <= 0) continue;
    ssize_t got = ::recv(fd, buffer, sizeof buffer, 0);
    if (got <= 0) {
      closed = true;
      break;
    }
    received.append(buffer, static_cast<size_t>(got));
  }
  ::close(fd);
  EXPECT_TRUE(closed) << "the stalled watch was never cut off";
  EXPECT_LT(received.size(), 20u * 1024 * 1024) << "every event reached a watcher that fell behind";
  EXPECT_EQ(received.find("\r\n0\r\n\r\n"), std::string::npos) << "cut off, not finished";
  EXPECT_NE(server_->process().output().find("was cut off"), std::string::npos) << server_->process().output();

  // Relisting works: a list, then a watch from its revision sees the next change.
  json listing = server_->get_json("/api/v1/nodes");
  ASSERT_TRUE(listing.is_object());
  int64_t revision = listing["revision"];
  ASSERT_EQ(report("n1", json{{"models", json::array({"org/last@main"})}}), 200);
  auto lines = watch_lines(client(), api("/nodes?watch=1&revision=" + std::to_string(revision + 1)),
                           [](const std::vector<json>& seen) { return !seen.empty(); });
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines[0]["object"]["status"]["models"][0], "org/last@main") << lines[0].dump().substr(0, 300);
}

}  // namespace
}  // namespace nebula
