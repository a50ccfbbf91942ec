#include "store/etcd_store.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <set>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "common/json.h"
#include "etcd_cluster.h"
#include "http/http.h"
#include "process_helpers.h"
#include "store/list_watch.h"

namespace nebula::store {
namespace {

using namespace std::chrono_literals;
using nebula::testing::EtcdCluster;
using nebula::testing::eventually;

TEST(EtcdUrl, ParsesEndpointsAndOptions) {
  auto plain = parse_etcd_url("etcd://127.0.0.1:2379,db2:2380");
  ASSERT_TRUE(plain.ok()) << plain.error().message;
  EXPECT_EQ(plain->endpoints, (std::vector<std::string>{"http://127.0.0.1:2379", "http://db2:2380"}));
  EXPECT_TRUE(plain->user.empty());

  auto secure =
      parse_etcd_url("etcd://[::1]:2379/?ca=/ca.pem&cert=/c.pem&key=/k.pem&user=root&password=pw&timeout_ms=500");
  ASSERT_TRUE(secure.ok()) << secure.error().message;
  EXPECT_EQ(secure->endpoints, (std::vector<std::string>{"https://[::1]:2379"}));
  EXPECT_EQ(secure->ca_file, "/ca.pem");
  EXPECT_EQ(secure->cert_file, "/c.pem");
  EXPECT_EQ(secure->key_file, "/k.pem");
  EXPECT_EQ(secure->user, "root");
  EXPECT_EQ(secure->password, "pw");
  EXPECT_EQ(secure->request_timeout, 500ms);
  EXPECT_EQ(parse_etcd_url("etcd://h:1?tls=1")->endpoints[0], "https://h:1");
  EXPECT_TRUE(plain->grpc_batches);
  EXPECT_FALSE(parse_etcd_url("etcd://h:1?grpc=0")->grpc_batches);
}

TEST(EtcdUrl, RejectsBadUrls) {
  for (const char* bad : {"etcd://",
                          "etcd://,",
                          "etcd://h",
                          "etcd://h:",
                          "etcd://h:0",
                          "etcd://h:65536",
                          "etcd://h:12x",
                          "etcd://:2379",
                          "etcd://h:1,",
                          "etcd://us@h:1",
                          "etcd://h/x:1",
                          "etcd://h:1?nope=1",
                          "etcd://h:1?tls=maybe",
                          "etcd://h:1?grpc=",
                          "etcd://h:1?user=a",
                          "etcd://h:1?cert=/c.pem",
                          "etcd://h:1?timeout_ms=-5",
                          "etcd://h:1?timeout_ms=99999999999",
                          "etcd://h:1?ca",
                          "http://h:1"}) {
    auto parsed = parse_etcd_url(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.error().code, ErrorCode::InvalidArgument) << bad;
    EXPECT_NE(parsed.error().message.find("bad etcd URL"), std::string::npos) << parsed.error().message;
  }
}

TEST(StoreOpen, SaysWhatItAccepts) {
  for (const char* bad : {"", "mysql://db", "sqlite://", "sqlite:/x", "etcd://nohost", "ETCD://h:1"}) {
    auto opened = open(bad);
    ASSERT_FALSE(opened.ok()) << bad;
    EXPECT_EQ(opened.error().code, ErrorCode::InvalidArgument) << bad;
  }
  EXPECT_NE(open("mysql://db").error().message.find("sqlite://PATH or etcd://"), std::string::npos);
}

TEST(StoreOpen, OpensSqlite) {
  nebula::testing::TempDir dir;
  auto opened = open("sqlite://" + dir.path() + "/s.db");
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  EXPECT_EQ(*(*opened)->put("k", "v"), 1);
}

TEST(StoreOpen, UnreachableEtcdFailsClearly) {
  int port = nebula::testing::free_port();
  auto opened = open("etcd://127.0.0.1:" + std::to_string(port) + "?timeout_ms=300");
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.error().code, ErrorCode::Unavailable);
  EXPECT_NE(opened.error().message.find("127.0.0.1:" + std::to_string(port)), std::string::npos)
      << opened.error().message;
}

// A real 3-member cluster; each test gets a fresh one.
class EtcdClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!EtcdCluster::available()) GTEST_SKIP() << "etcd is not installed (not on PATH)";
    cluster_ = std::make_unique<EtcdCluster>(3);
  }
  std::unique_ptr<EtcdStore> open_store(std::vector<int> members) {
    EtcdOptions options;
    for (int member : members) options.endpoints.push_back(cluster_->endpoint(member));
    options.request_timeout = 10s;
    auto store = EtcdStore::open(options);
    if (!store) throw std::runtime_error(store.error().message);
    return std::move(store).value();
  }
  std::unique_ptr<EtcdCluster> cluster_;
};

// Two batches of placements as a controller pass writes them: compare-and-swap puts.
std::vector<std::vector<Put>> two_batches(EtcdStore& store, const std::string& tag) {
  std::vector<std::vector<Put>> batches(2);
  for (int i = 0; i < 200; ++i) {
    std::string key = "/r/" + tag + "-" + std::to_string(i);
    auto created = store.put(key, "pending");
    if (!created) throw std::runtime_error(created.error().message);
    batches[i / 100].push_back({key, tag + "-placed-" + std::to_string(i), Precondition::at(*created)});
  }
  return batches;
}

// A TCP proxy on a free loopback port in front of one etcd member that passes HTTP/1.1 only, as
// an HTTP proxy in front of etcd would: a connection that opens with HTTP/2's preface (gRPC) is
// closed at once.
class Http1OnlyProxy {
 public:
  explicit Http1OnlyProxy(int upstream_port)
      : upstream_port_(upstream_port), listener_(nebula::testing::listen_on_loopback(&port_)) {
    accepter_ = std::thread([this] { accept_loop(); });
  }
  ~Http1OnlyProxy() {
    stopping_ = true;
    ::shutdown(listener_, SHUT_RDWR);
    accepter_.join();
    for (auto& thread : pipes_) thread.join();
    ::close(listener_);
  }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int refused() const { return refused_.load(); }

 private:
  void accept_loop() {
    for (;;) {
      int client = ::accept(listener_, nullptr, nullptr);
      if (client < 0) return;
      pipes_.emplace_back([this, client] { pipe(client); });
    }
  }
  // Copies both ways until either side closes or the proxy stops.
  void pipe(int client) {
    int upstream = nebula::testing::connect_to_loopback(upstream_port_);
    if (upstream < 0) {
      ::close(client);
      return;
    }
    bool first = true;
    char buffer[65536];
    while (!stopping_) {
      pollfd fds[2] = {{client, POLLIN, 0}, {upstream, POLLIN, 0}};
      if (::poll(fds, 2, 100) < 0) break;
      bool open = true;
      for (int side = 0; side < 2 && open; ++side) {
        if (!(fds[side].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t got = ::recv(fds[side].fd, buffer, sizeof buffer, 0);
        if (got <= 0) {
          open = false;
          break;
        }
        if (side == 0 && first) {
          first = false;
          if (std::string_view(buffer, static_cast<size_t>(got)).rfind("PRI * HTTP/2.0", 0) == 0) {
            refused_ += 1;
            open = false;
            break;
          }
        }
        int to = side == 0 ? upstream : client;
        for (ssize_t sent = 0; sent < got && open;) {
          ssize_t wrote = ::send(to, buffer + sent, static_cast<size_t>(got - sent), MSG_NOSIGNAL);
          if (wrote <= 0) open = false;
          sent += wrote;
        }
      }
      if (!open) break;
    }
    ::close(upstream);
    ::close(client);
  }

  int upstream_port_;
  int port_ = 0;  // before listener_, which sets it
  int listener_ = -1;
  std::atomic<bool> stopping_{false};
  std::atomic<int> refused_{0};
  std::thread accepter_;
  std::vector<std::thread> pipes_;  // the accept loop's only, until it ends
};

// Holds the watch's thread inside a callback until released: the watch is "away" meanwhile.
class Gate {
 public:
  void close() {
    std::lock_guard lock(mutex_);
    closed_ = true;
  }
  // Called from the callback: notes the arrival and waits while the gate is closed.
  void pass() {
    std::unique_lock lock(mutex_);
    ++waiting_;
    changed_.notify_all();
    changed_.wait(lock, [this] { return !closed_; });
  }
  bool wait_arrival() {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, 10s, [this] { return waiting_ > 0; });
  }
  void open() {
    std::lock_guard lock(mutex_);
    closed_ = false;
    changed_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  bool closed_ = false;
  int waiting_ = 0;
};

TEST_F(EtcdClusterTest, MemberKilledMidWatchAndMidWriteLosesAndRepeatsNothing) {
  auto watcher = open_store({0, 1, 2});
  auto writer = open_store({0, 1, 2});
  std::mutex mutex;
  std::vector<int64_t> revisions;
  auto watch = watcher->watch("k/", 0, [&](const WatchEvent& event) {
    std::lock_guard lock(mutex);
    revisions.push_back(event.kv.mod_revision);
  });
  ASSERT_TRUE(watch.ok()) << watch.error().message;

  // Each write is retried until acknowledged; a retried one may have been applied twice, which
  // shows as one more revision, never as a gap.
  std::atomic<bool> stop{false};
  std::atomic<int> acknowledged{0};
  std::map<std::string, std::string> written;
  std::mutex written_mutex;
  std::thread writes([&] {
    for (int i = 0; !stop.load(); ++i) {
      std::string key = "k/" + std::to_string(i);
      while (!stop.load()) {
        if (writer->put(key, "v" + std::to_string(i)).ok()) {
          std::lock_guard lock(written_mutex);
          written[key] = "v" + std::to_string(i);
          acknowledged.fetch_add(1);
          break;
        }
      }
    }
  });
  auto count = [&] {
    std::lock_guard lock(mutex);
    return revisions.size();
  };
  ASSERT_TRUE(eventually([&] { return count() >= 20; }, 20s, 5ms));
  cluster_->kill(0);
  int before = acknowledged.load();
  bool progressed = eventually([&] { return acknowledged.load() >= before + 40; }, 30s, 10ms);
  stop = true;
  writes.join();
  ASSERT_TRUE(progressed) << "writes did not resume on the other members";
  EXPECT_NE(writer->current_endpoint(), cluster_->endpoint(0));

  int64_t last = writer->revision();
  ASSERT_TRUE(eventually(
      [&] {
        std::lock_guard lock(mutex);
        return !revisions.empty() && revisions.back() >= last;
      },
      20s, 10ms));
  EXPECT_NE(watcher->current_endpoint(), cluster_->endpoint(0));
  std::lock_guard lock(mutex);
  ASSERT_FALSE(revisions.empty());
  for (size_t i = 1; i < revisions.size(); ++i) {
    ASSERT_EQ(revisions[i], revisions[i - 1] + 1) << "at event " << i;
  }
  EXPECT_EQ(revisions.back(), last);
  // Every acknowledged write is there.
  auto listing = writer->list("k/");
  ASSERT_TRUE(listing.ok());
  std::map<std::string, std::string> stored;
  for (const auto& kv : listing->kvs) stored[kv.key] = kv.value;
  std::lock_guard written_lock(written_mutex);
  for (const auto& [key, value] : written) EXPECT_EQ(stored[key], value) << key;
}

// A member that hangs with its connections open (paused, or cut off by a partition) says
// nothing, not even an error: the watch notices by asking it for its status, and moves on.
TEST_F(EtcdClusterTest, AWatchLeavesAMemberThatHangsWithoutClosingItsConnection) {
  EtcdOptions options;
  for (int member : {0, 1, 2}) options.endpoints.push_back(cluster_->endpoint(member));
  options.request_timeout = 10s;
  options.watch_probe = 300ms;
  auto opened = EtcdStore::open(options);
  ASSERT_TRUE(opened) << opened.error().message;
  auto watcher = std::move(opened).value();
  auto writer = open_store({1, 2});
  std::mutex mutex;
  std::set<std::string> seen;
  auto watch = watcher->watch("h/", 0, [&](const WatchEvent& event) {
    std::lock_guard lock(mutex);
    seen.insert(event.kv.key);
  });
  ASSERT_TRUE(watch.ok()) << watch.error().message;
  ASSERT_TRUE(writer->put("h/before", "1").ok());
  auto saw = [&](const std::string& key) {
    std::lock_guard lock(mutex);
    return seen.count(key) > 0;
  };
  ASSERT_TRUE(eventually([&] { return saw("h/before"); }, 10s, 5ms));
  ASSERT_EQ(watcher->current_endpoint(), cluster_->endpoint(0));
  cluster_->pause(0);
  ASSERT_TRUE(writer->put("h/during", "2").ok());
  bool moved = eventually([&] { return saw("h/during"); }, 30s, 10ms);
  cluster_->resume(0);
  EXPECT_TRUE(moved) << "the watch stayed on the hung member";
  EXPECT_NE(watcher->current_endpoint(), cluster_->endpoint(0));
}

TEST_F(EtcdClusterTest, CompactionWhileAWatchIsAwayEndsItAndListWatchResyncs) {
  auto watcher = open_store({0, 1});
  auto writer = open_store({1, 2});
  ASSERT_TRUE(writer->put("c/gone", "x").ok());
  ASSERT_TRUE(writer->put("c/kept", "1").ok());

  // A raw watch, and a consumer on ListWatch, both held inside a callback while their member dies
  // and the revisions they have still to see are compacted.
  Gate gate;
  gate.close();
  std::atomic<bool> gated{false};
  std::mutex mutex;
  std::vector<std::string> raw_keys;
  std::optional<Error> raw_end;
  // From the writer's revision, not 0: the watcher's member may not have applied those puts yet.
  auto raw = watcher->watch(
      "c/", writer->revision() + 1,
      [&](const WatchEvent& event) {
        {
          std::lock_guard lock(mutex);
          raw_keys.push_back(event.kv.key);
        }
        if (gated.load()) gate.pass();
      },
      [&](const Error& error) {
        std::lock_guard lock(mutex);
        raw_end = error;
      });
  ASSERT_TRUE(raw.ok()) << raw.error().message;

  std::map<std::string, std::string> mirror;
  ListWatch list_watch(*watcher, "c/", [&](const WatchEvent& event) {
    {
      std::lock_guard lock(mutex);
      if (event.type == WatchEvent::Type::Put) {
        mirror[event.kv.key] = event.kv.value;
      } else {
        mirror.erase(event.kv.key);
      }
    }
    if (gated.load()) gate.pass();
  });
  ASSERT_TRUE(list_watch.start().ok());
  // Whatever happens below, the watch thread is let go before the watches are cancelled.
  struct OpenOnExit {
    Gate& gate;
    ~OpenOnExit() { gate.open(); }
  } open_on_exit{gate};
  gated = true;

  ASSERT_TRUE(writer->put("c/kept", "2").ok());
  ASSERT_TRUE(gate.wait_arrival());
  cluster_->kill(0);
  // The killed member may have been etcd's leader: a delete caught in the election fails with
  // its outcome unknown, and is sent again (NotFound then means the first one took).
  ASSERT_TRUE(eventually(
      [&] {
        auto removed = writer->remove("c/gone");
        return removed.ok() || removed.error().code == ErrorCode::NotFound;
      },
      20s, 10ms));
  ASSERT_TRUE(writer->put("c/new", "3").ok());
  ASSERT_TRUE(writer->put("c/kept", "4").ok());
  ASSERT_TRUE(writer->compact(writer->revision()).ok());
  gated = false;
  gate.open();

  ASSERT_TRUE(eventually(
      [&] {
        std::lock_guard lock(mutex);
        return raw_end.has_value();
      },
      20s, 10ms));
  {
    std::lock_guard lock(mutex);
    EXPECT_EQ(raw_end->code, ErrorCode::Compacted) << raw_end->message;
    // c/kept=2 if the dead member sent it before dying; nothing after it either way.
    EXPECT_TRUE(raw_keys.empty() || raw_keys == std::vector<std::string>{"c/kept"}) << raw_keys.size();
  }
  ASSERT_TRUE(eventually([&] { return list_watch.resyncs() >= 1; }, 20s, 10ms));
  ASSERT_TRUE(eventually(
      [&] {
        std::lock_guard lock(mutex);
        return mirror == std::map<std::string, std::string>{{"c/kept", "4"}, {"c/new", "3"}};
      },
      20s, 10ms));
  // And it keeps following.
  ASSERT_TRUE(writer->put("c/after", "5").ok());
  ASSERT_TRUE(eventually(
      [&] {
        std::lock_guard lock(mutex);
        return mirror.count("c/after") == 1;
      },
      20s, 10ms));
}

TEST_F(EtcdClusterTest, LeaseExpiresUnlessKeptAlive) {
  auto store = open_store({0, 1, 2});
  EXPECT_EQ(store->expire_leases(), 0);  // etcd's job
  auto lapsing = store->grant_lease(1000);
  auto kept = store->grant_lease(1000);
  ASSERT_TRUE(lapsing.ok() && kept.ok());
  ASSERT_TRUE(store->put("l/lapsing", "x", Precondition::none(), *lapsing).ok());
  ASSERT_TRUE(store->put("l/kept", "x", Precondition::none(), *kept).ok());
  EXPECT_EQ((*store->get("l/lapsing"))->lease, *lapsing);

  std::mutex mutex;
  std::vector<WatchEvent> events;
  auto watch = store->watch("l/", 0, [&](const WatchEvent& event) {
    std::lock_guard lock(mutex);
    events.push_back(event);
  });
  ASSERT_TRUE(watch.ok());
  // Renews `kept` every 200 ms (well inside its 1 s TTL) until told to stop, which it hears at once.
  std::mutex keeper_mutex;
  std::condition_variable keeper_wake;
  bool stop_keeper = false;
  std::thread keeper([&] {
    std::unique_lock lock(keeper_mutex);
    do {
      (void)store->keep_alive(*kept);
    } while (!keeper_wake.wait_for(lock, 200ms, [&] { return stop_keeper; }));
  });
  auto stop = [&] {
    {
      std::lock_guard lock(keeper_mutex);
      stop_keeper = true;
    }
    keeper_wake.notify_all();
  };
  bool expired = eventually(
      [&] {
        std::lock_guard lock(mutex);
        return !events.empty();
      },
      20s, 20ms);
  stop();
  keeper.join();
  ASSERT_TRUE(expired);
  {
    std::lock_guard lock(mutex);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].type, WatchEvent::Type::Delete);
    EXPECT_EQ(events[0].kv.key, "l/lapsing");
  }
  EXPECT_FALSE(store->get("l/lapsing")->has_value());
  EXPECT_TRUE(store->get("l/kept")->has_value());
  EXPECT_EQ(store->keep_alive(*lapsing).error().code, ErrorCode::NotFound);
  ASSERT_TRUE(store->revoke_lease(*kept).ok());
  EXPECT_FALSE(store->get("l/kept")->has_value());
}

// Calls the JSON gateway directly, as an operator's etcdctl would.
void etcd_call(const std::string& endpoint, const std::string& path, const json& body, const std::string& token = "") {
  http::BlockingClient client;
  http::Headers headers{{"Content-Type", "application/json"}};
  if (!token.empty()) headers.push_back({"Authorization", token});
  auto response = client.request("POST", endpoint + path, body.dump(), headers, 10s);
  ASSERT_TRUE(response.ok()) << response.error().message;
  ASSERT_EQ(response->status, 200) << path << ": " << response->body;
}

TEST(EtcdAuth, LogsInAndAgainOnAnotherMember) {
  if (!EtcdCluster::available()) GTEST_SKIP() << "etcd is not installed (not on PATH)";
  EtcdCluster cluster(3);
  etcd_call(cluster.endpoint(0), "/v3/auth/user/add", {{"name", "root"}, {"password", "s3cret"}});
  etcd_call(cluster.endpoint(0), "/v3/auth/user/grant", {{"user", "root"}, {"role", "root"}});
  etcd_call(cluster.endpoint(0), "/v3/auth/enable", json::object());

  EtcdOptions anonymous;
  anonymous.endpoints = {cluster.endpoint(0)};
  anonymous.request_timeout = 2s;
  auto refused = EtcdStore::open(anonymous);
  ASSERT_FALSE(refused.ok());

  EtcdOptions wrong = anonymous;
  wrong.user = "root";
  wrong.password = "nope";
  auto bad_password = EtcdStore::open(wrong);
  ASSERT_FALSE(bad_password.ok());
  EXPECT_EQ(bad_password.error().code, ErrorCode::Unauthenticated) << bad_password.error().message;

  auto url = parse_etcd_url(cluster.url() + "?user=root&password=s3cret");
  ASSERT_TRUE(url.ok());
  auto store = EtcdStore::open(*url);
  ASSERT_TRUE(store.ok()) << store.error().message;
  ASSERT_TRUE((*store)->put("a", "1").ok());
  std::atomic<int> seen{0};
  auto watch = (*store)->watch("", 0, [&](const WatchEvent&) { seen.fetch_add(1); });
  ASSERT_TRUE(watch.ok()) << watch.error().message;
  // The member that issued the token dies: the next one takes it (or a new login).
  // Batches over gRPC carry the token.
  auto* etcd = dynamic_cast<EtcdStore*>(store->get());
  ASSERT_NE(etcd, nullptr);
  ASSERT_TRUE(etcd->put_batches(two_batches(*etcd, "before"))[1].ok());
  EXPECT_EQ(etcd->txns_over_grpc(), 2u);
  cluster.kill(0);
  auto written = (*store)->put("b", "2");
  ASSERT_TRUE(written.ok()) << written.error().message;
  EXPECT_NE((*store)->current_endpoint(), cluster.endpoint(0));
  ASSERT_TRUE(eventually([&] { return seen.load() >= 1; }, 20s, 10ms));
  EXPECT_EQ((*(*store)->get("b"))->value, "2");
  // On the new member, with the token it issued (or, when it refuses one, through the gateway,
  // which logs in again): written either way.
  for (const auto& outcome : etcd->put_batches(two_batches(*etcd, "after"))) {
    ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  }
  EXPECT_EQ((*etcd->get("/r/after-150"))->value, "after-placed-150");
}

TEST(EtcdTlsTest, ClientCertificateAndCaFromTheUrl) {
  if (!EtcdCluster::available()) GTEST_SKIP() << "etcd is not installed (not on PATH)";
  nebula::testing::TempDir dir;
  auto tls = nebula::testing::EtcdTls::make(dir.path());
  EtcdCluster cluster(1, &tls);
  std::string members = cluster.url();  // etcd://127.0.0.1:P
  auto store = open(members + "?ca=" + tls.ca + "&cert=" + tls.client_cert + "&key=" + tls.client_key);
  ASSERT_TRUE(store.ok()) << store.error().message;
  ASSERT_TRUE((*store)->put("a", "1").ok());
  std::atomic<int> seen{0};
  auto watch = (*store)->watch("", 0, [&](const WatchEvent&) { seen.fetch_add(1); });
  ASSERT_TRUE(watch.ok()) << watch.error().message;
  ASSERT_TRUE((*store)->put("b", "2").ok());
  ASSERT_TRUE(eventually([&] { return seen.load() >= 1; }, 10s, 10ms));
  // Batches over gRPC, on TLS with the same certificates.
  auto* etcd = dynamic_cast<EtcdStore*>(store->get());
  ASSERT_NE(etcd, nullptr);
  for (const auto& outcome : etcd->put_batches(two_batches(*etcd, "tls"))) {
    ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  }
  EXPECT_EQ(etcd->txns_over_grpc(), 2u);

  // Without the client certificate, without the CA, or over plain http: refused.
  for (const std::string& refused :
       {members + "?ca=" + tls.ca + "&timeout_ms=1000",
        members + "?tls=1&cert=" + tls.client_cert + "&key=" + tls.client_key + "&timeout_ms=1000",
        members + "?timeout_ms=1000"}) {
    auto opened = open(refused);
    EXPECT_FALSE(opened.ok()) << refused;
  }
  auto missing = open(members + "?ca=" + dir.path() + "/nope.pem");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("nope.pem"), std::string::npos) << missing.error().message;
}

// put_batches over gRPC and through the JSON gateway: the same outcomes (revisions in the
// store's numbering, conflicts), the same values, and the same refusal of a stale precondition.
TEST_F(EtcdClusterTest, BatchesOverGrpcAndThroughTheGatewayWriteTheSame) {
  auto over_grpc = open_store({0, 1, 2});
  EtcdOptions json_only;
  json_only.endpoints = {cluster_->endpoint(1)};
  json_only.grpc_batches = false;
  auto gateway = std::move(EtcdStore::open(json_only)).value();
  for (auto* store : {over_grpc.get(), gateway.get()}) {
    std::string tag = store == over_grpc.get() ? "grpc" : "json";
    auto batches = two_batches(*store, tag);
    auto before = store->revision();
    auto outcomes = store->put_batches(batches);
    ASSERT_EQ(outcomes.size(), 2u);
    for (const auto& outcome : outcomes) {
      ASSERT_TRUE(outcome.ok()) << tag << ": " << outcome.error().message;
      ASSERT_EQ(outcome->size(), 100u);
      EXPECT_GT(outcome->front(), before);
      EXPECT_LE(outcome->front(), store->revision());
    }
    auto placed = store->get("/r/" + tag + "-150");
    ASSERT_TRUE(placed.ok() && placed->has_value());
    EXPECT_EQ((*placed)->value, tag + "-placed-150");
    EXPECT_EQ((*placed)->mod_revision, (*outcomes[1])[0]);
    // The same batches again: their preconditions are stale now, nothing is written.
    auto stale = store->put_batches(batches);
    for (const auto& outcome : stale) {
      ASSERT_FALSE(outcome.ok());
      EXPECT_EQ(outcome.error().code, ErrorCode::Conflict) << tag;
    }
    // A key that must not exist yet: created once, refused the second time.
    std::vector<std::vector<Put>> fresh = {{{"/r/" + tag + "-new", "x", Precondition::absent()}}};
    EXPECT_TRUE(store->put_batches(fresh)[0].ok());
    EXPECT_EQ(store->put_batches(fresh)[0].error().code, ErrorCode::Conflict);
  }
  EXPECT_EQ(over_grpc->txns_over_grpc(), 6u);  // conflicts are answers too
  EXPECT_EQ(gateway->txns_over_grpc(), 0u);
}

// The member followed dies: batches sent to it as it died have an unknown outcome, each all or
// nothing; once gRPC cannot reach it, they go through the gateway, which moves to the next
// member; later batches are over gRPC again, there.
TEST_F(EtcdClusterTest, BatchesFollowTheStoreToTheNextMemberWhenOneDies) {
  auto store = open_store({0, 1, 2});
  ASSERT_TRUE(store->put_batches(two_batches(*store, "a"))[0].ok());
  EXPECT_EQ(store->txns_over_grpc(), 2u);
  auto batches = two_batches(*store, "b");
  cluster_->kill(0);
  auto outcomes = store->put_batches(batches);
  for (size_t batch = 0; batch < outcomes.size(); ++batch) {
    if (outcomes[batch].ok()) continue;
    ASSERT_EQ(outcomes[batch].error().code, ErrorCode::Unavailable) << outcomes[batch].error().message;
    std::set<std::string> values;
    for (const auto& put : batches[batch]) values.insert((*store->get(put.key))->value);
    EXPECT_EQ(values.size(), 1u) << "a transaction applied in part";
  }
  for (const auto& outcome : store->put_batches(two_batches(*store, "c"))) {
    ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  }
  EXPECT_NE(store->current_endpoint(), cluster_->endpoint(0));
  uint64_t over_grpc = store->txns_over_grpc();
  for (const auto& outcome : store->put_batches(two_batches(*store, "d"))) ASSERT_TRUE(outcome.ok());
  EXPECT_EQ(store->txns_over_grpc(), over_grpc + 2);
  EXPECT_EQ((*store->get("/r/d-199"))->value, "d-placed-199");
}

// Behind a proxy that passes only HTTP/1.1, the batches cannot go over gRPC: they go through the
// JSON gateway, and gRPC is not tried again on every call (one refused connect, then a minute's
// rest).
TEST_F(EtcdClusterTest, BatchesGoThroughTheGatewayWhenOnlyHttp1ReachesEtcd) {
  auto port = std::stoi(cluster_->endpoint(0).substr(cluster_->endpoint(0).rfind(':') + 1));
  Http1OnlyProxy proxy(port);
  EtcdOptions options;
  options.endpoints = {proxy.endpoint()};
  options.request_timeout = 10s;
  auto store = std::move(EtcdStore::open(options)).value();
  for (const auto& outcome : store->put_batches(two_batches(*store, "h1"))) {
    ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  }
  EXPECT_EQ((*store->get("/r/h1-199"))->value, "h1-placed-199");
  EXPECT_EQ(store->txns_over_grpc(), 0u);
  EXPECT_GE(proxy.refused(), 1);
  // Passes for 3 s, past gRPC's own reconnect backoff (at most 1 s): no new attempt.
  int refused = proxy.refused();
  auto until = std::chrono::steady_clock::now() + 3s;
  for (int pass = 0; std::chrono::steady_clock::now() < until; ++pass) {
    std::vector<std::vector<Put>> batch = {{{"/r/h2-" + std::to_string(pass), "placed", Precondition::none()}}};
    ASSERT_TRUE(store->put_batches(batch)[0].ok());
  }
  EXPECT_EQ(store->txns_over_grpc(), 0u);
  EXPECT_EQ(proxy.refused(), refused) << "gRPC was tried again within the minute";
}

TEST_F(EtcdClusterTest, CallingTheStoreFromAWatchCallbackFailsInsteadOfHanging) {
  auto store = open_store({0});
  std::atomic<int> code{-1};
  auto watch = store->watch("", 0, [&](const WatchEvent&) {
    auto inner = store->get("x");
    code = inner.ok() ? 1000 : static_cast<int>(inner.error().code);
  });
  ASSERT_TRUE(watch.ok());
  ASSERT_TRUE(store->put("x", "1").ok());
  ASSERT_TRUE(eventually([&] { return code.load() != -1; }, 10s, 5ms));
  EXPECT_EQ(code.load(), static_cast<int>(ErrorCode::Internal));
}

}  // namespace
}  // namespace nebula::store
