#include "tui/feed.h"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <mutex>
#include <thread>

#include "http/test_server.h"

namespace nebula::tui {
namespace {

using namespace std::chrono_literals;
using http::Request;
using http::Response;
using http::ResponseWriter;

// Applies the feed's updates until `done` holds or 10 s pass.
bool settle(Inbox& inbox, Model& model, const std::function<bool()>& done) {
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    inbox.apply(model);
    if (done()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

bool has_deployment(const Model& model, const std::string& name) {
  for (const auto& row : model.deployment_rows()) {
    if (row.name == name) return true;
  }
  return false;
}

Response json_response(int status, const std::string& body) {
  Response response;
  response.status = status;
  response.headers.push_back({"Content-Type", "application/json"});
  response.body = body;
  return response;
}

// Built outside coroutines: g++ 12 miscompiles braced initialisers with string literals in them.
http::Headers ndjson_headers() {
  return {{"Content-Type", "application/x-ndjson"}};
}

// A stand-in for the server's API: listings, one watch stream with hostile lines among good
// ones, modes, metrics, and the action endpoints, recording what it was sent.
class FakeApi {
 public:
  FakeApi() {
    http::Router router;
    for (const char* plural : {"nodes", "replicas", "events"}) {
      router.add(
          "GET", std::string("/api/v1/") + plural,
          [this, plural](Request& request, ResponseWriter& writer) -> awaitable<void> {
            remember(request);
            if (request.query_or("watch") == "1") {
              co_await writer.send(json_response(404, R"({"error":{"message":"no watch here"}})"));
              co_return;
            }
            std::string items =
                std::string(plural) == "nodes"
                    ? R"([{"kind":"Node","metadata":{"name":"n1"},"spec":{},"status":{"ready":true,"gpus":[{"index":0,"name":"H100","memory_total_mb":81920,"memory_used_mb":1024}]}}])"
                    : "[]";
            co_await writer.send(json_response(200, R"({"revision":3,"items":)" + items + "}"));
          });
    }
    router.add("GET", "/api/v1/deployments", [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
      remember(request);
      if (request.query_or("watch") != "1") {
        co_await writer.send(json_response(
            200,
            R"({"revision":7,"items":[{"kind":"Deployment","metadata":{"name":"chat"},"spec":{"model":"m","replicas":2},"status":{"ready_replicas":1}}, "not a document", {"spec":{"replicas":"many"}}]})"));
        co_return;
      }
      watch_revision_ = request.query_or("revision");
      co_await writer.start_stream(200, ndjson_headers());
      co_await writer.write("not json at all\n\n[1,2]\n{\"type\":\"PUT\"}\n");
      co_await writer.write(
          R"({"type":"PUT","object":{"kind":"Deployment","metadata":{"name":"added"},"spec":{"model":"m2"}}})");
      co_await writer.write(
          "\n"
          R"({"type":"PUT","object":{"metadata":{"name":"bad"},"spec":{"replicas":"many"}}})"
          "\n");
      co_await writer.write(R"({"type":"DELETE","object":{"metadata":{"name":"chat"}}})"
                            "\n");
      // Then quiet, as a watch is, until the test ends.
      asio::steady_timer timer(server_.io());
      timer.expires_after(30s);
      boost::system::error_code ignored;
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
      co_await writer.finish();
    });
    router.add("GET", "/api/v1/modes", [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
      remember(request);
      co_await writer.send(
          json_response(200, R"({"items":[{"kind":"Mode","metadata":{"name":"night"},"deployments":["added"]}]})"));
    });
    router.add("GET", "/metrics", [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
      remember(request);
      co_await writer.send(Response::text(200, "nebula_queue_depth{model=\"added\"} 4\ngarbage line\n"));
    });
    router.add("PUT", "/api/v1/deployments/{name}/scale",
               [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
                 remember(request);
                 {
                   std::lock_guard lock(mutex_);
                   scale_body_ = request.params["name"] + " " + request.body;
                 }
                 co_await writer.send(json_response(200, "{}"));
               });
    router.add("POST", "/api/v1/deployments/{name}/restart",
               [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
                 remember(request);
                 co_await writer.send(
                     json_response(404, R"({"error":{"code":"not_found","message":"deployment 'x' not found"}})"));
               });
    router.add(
        "POST", "/api/v1/modes/{name}/switch", [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
          remember(request);
          dry_run_ = request.query_or("dry_run") == "1";
          co_await writer.send(json_response(
              200,
              R"({"mode":"night","started":["added"],"stopped":["chat",7],"slept":[],"woken":[],"dry_run":true})"));
        });
    auto port = server_.start(std::move(router));
    EXPECT_TRUE(port);
  }

  std::string url() const { return server_.url(); }
  std::string authorization() {
    std::lock_guard lock(mutex_);
    return authorization_;
  }
  std::string scale_body() {
    std::lock_guard lock(mutex_);
    return scale_body_;
  }
  std::string watch_revision() {
    std::lock_guard lock(mutex_);
    return watch_revision_;
  }
  bool dry_run() const { return dry_run_; }

 private:
  void remember(const Request& request) {
    std::lock_guard lock(mutex_);
    authorization_ = request.header("Authorization");
  }
  std::mutex mutex_;
  std::string authorization_, scale_body_, watch_revision_;
  std::atomic<bool> dry_run_{false};
  http::testing::ServerThread server_;
};

TEST(TuiFeed, ListsThenWatchesSkippingWhatDoesNotRead) {
  FakeApi api;
  Inbox inbox;
  Model model(api.url());
  Feed feed({api.url() + "/", {{"Authorization", "Bearer nb-test"}}}, inbox);
  ASSERT_TRUE(settle(inbox, model, [&] {
    return model.connected() && has_deployment(model, "added") && !has_deployment(model, "chat") &&
           model.node_count() == 1 && !model.mode_rows().empty();
  })) << model.connection_error();
  EXPECT_FALSE(has_deployment(model, "bad"));
  EXPECT_EQ(model.deployment_rows().size(), 1u);
  EXPECT_EQ(api.watch_revision(), "8");  // the listing's revision + 1
  EXPECT_EQ(api.authorization(), "Bearer nb-test");
  auto gpus = model.gpu_rows();
  ASSERT_EQ(gpus.size(), 1u);
  EXPECT_EQ(gpus[0].total_mb, 81920);
  // Metrics: the queue depth of the deployment the watch added.
  ASSERT_TRUE(settle(inbox, model, [&] {
    auto rows = model.deployment_rows();
    return !rows.empty() && rows[0].figures && rows[0].figures->queue_depth == 4;
  }));
}

TEST(TuiFeed, CarriesOutCommandsAndReportsTheirOutcome) {
  FakeApi api;
  Inbox inbox;
  Model model(api.url());
  Feed feed({api.url(), {}}, inbox);
  ASSERT_TRUE(settle(inbox, model, [&] { return has_deployment(model, "added") && !model.mode_rows().empty(); }));

  feed.submit(Command{Command::Kind::Scale, "added", 3});
  ASSERT_TRUE(settle(inbox, model, [&] { return model.message() == "added scaled to 3"; })) << model.message();
  EXPECT_EQ(api.scale_body(), R"(added {"replicas":3})");

  feed.submit(Command{Command::Kind::Restart, "added"});
  ASSERT_TRUE(settle(inbox, model, [&] { return model.message_is_error(); }));
  EXPECT_EQ(model.message(), "restart added failed: deployment 'x' not found");

  // The dry run's lists reach the confirmation (a non-string entry is dropped).
  model.handle_key('m');
  auto dry_run = model.handle_key(keys::kEnter);
  ASSERT_TRUE(dry_run.command);
  feed.submit(*dry_run.command);
  ASSERT_TRUE(settle(inbox, model, [&] { return model.dialog() == Dialog::Confirm; }));
  EXPECT_TRUE(api.dry_run());
  EXPECT_EQ(model.confirm_details()[0], "stop:  chat");
  EXPECT_EQ(model.confirm_details()[1], "start: added");
}

TEST(TuiFeed, SaysDisconnectedWhenNothingListens) {
  std::string url;
  {
    http::testing::ServerThread gone;
    auto port = gone.start(http::Router{});
    ASSERT_TRUE(port);
    url = gone.url();
  }
  Inbox inbox;
  Model model(url);
  Feed feed({url, {}}, inbox);
  ASSERT_TRUE(settle(inbox, model, [&] {
    return !model.connected() && model.connection_error().find("cannot reach " + url) != std::string::npos;
  })) << model.connection_error();
  // A command still gets an answer.
  feed.submit(Command{Command::Kind::Scale, "chat", 1});
  ASSERT_TRUE(settle(inbox, model, [&] { return model.message_is_error(); }));
  EXPECT_NE(model.message().find("scale chat failed: cannot reach"), std::string::npos) << model.message();
}

TEST(TuiFeed, PathsAreEncoded) {
  EXPECT_EQ(api_path({"deployments", "a/b", "logs"}, {{"tail", "1 0"}}), "/api/v1/deployments/a%2Fb/logs?tail=1%200");
}

}  // namespace
}  // namespace nebula::tui
