#include "tui/feed.h"

#include <fmt/format.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <thread>

#include "api/modes.h"
#include "common/json.h"

namespace nebula::tui {

using namespace std::chrono_literals;

void Inbox::post(Update update) {
  std::lock_guard lock(mutex_);
  updates_.push_back(std::move(update));
}

bool Inbox::apply(Model& model) {
  std::vector<Update> updates;
  {
    std::lock_guard lock(mutex_);
    updates.swap(updates_);
  }
  for (auto& update : updates) update(model);
  return !updates.empty();
}

namespace {

enum class Resource { Nodes, Deployments, Replicas, Events };

const char* plural(Resource resource) {
  switch (resource) {
    case Resource::Nodes: return "nodes";
    case Resource::Deployments: return "deployments";
    case Resource::Replicas: return "replicas";
    case Resource::Events: return "events";
  }
  return "";
}

// The update that puts one document into the model; empty when the document does not read as
// one (it is skipped, as a hostile or newer document should be).
Inbox::Update put_update(Resource resource, const json& document) {
  switch (resource) {
    case Resource::Nodes:
      if (auto node = api::node_from_json(document)) {
        return [value = std::move(*node)](Model& model) { model.put_node(value); };
      }
      break;
    case Resource::Deployments:
      if (auto deployment = api::deployment_from_json(document)) {
        return [value = std::move(*deployment)](Model& model) { model.put_deployment(value); };
      }
      break;
    case Resource::Replicas:
      if (auto replica = api::replica_from_json(document)) {
        return [value = std::move(*replica)](Model& model) { model.put_replica(value); };
      }
      break;
    case Resource::Events:
      if (auto event = api::event_from_json(document)) {
        return [value = std::move(*event)](Model& model) { model.put_event(value); };
      }
      break;
  }
  return {};
}

Inbox::Update remove_update(Resource resource, const std::string& name) {
  return [resource, name](Model& model) {
    if (resource == Resource::Nodes) model.remove_node(name);
    if (resource == Resource::Deployments) model.remove_deployment(name);
    if (resource == Resource::Replicas) model.remove_replica(name);
  };
}

// A whole listing: the model forgets what is not in it (deletes a broken watch missed).
Inbox::Update listing_update(Resource resource, const json& items) {
  std::vector<Inbox::Update> puts;
  for (const auto& item : items) {
    if (auto update = put_update(resource, item)) puts.push_back(std::move(update));
  }
  return [resource, puts = std::move(puts)](Model& model) {
    if (resource == Resource::Nodes) model.set_nodes({});
    if (resource == Resource::Deployments) model.set_deployments({});
    if (resource == Resource::Replicas) model.set_replicas({});
    if (resource == Resource::Events) model.set_events({});
    for (const auto& put : puts) put(model);
  };
}

int64_t integer(const json& object, const char* field) {
  if (!object.is_object()) return 0;
  auto it = object.find(field);
  return it != object.end() && it->is_number_integer() ? it->get<int64_t>() : 0;
}

std::string text(const json& object, const char* field) {
  if (!object.is_object()) return "";
  auto it = object.find(field);
  return it != object.end() && it->is_string() ? it->get<std::string>() : "";
}

std::vector<std::string> names(const json& object, const char* field) {
  std::vector<std::string> values;
  if (!object.is_object() || !object.contains(field) || !object[field].is_array()) return values;
  for (const auto& value : object[field]) {
    if (value.is_string()) values.push_back(value.get<std::string>());
  }
  return values;
}

// The message of an error answer: {"error": {"message"}}, else the body, else the status.
std::string error_message(int status, const std::string& body) {
  auto document = parse_json(body);
  if (document && document->is_object() && document->contains("error")) {
    std::string message = text((*document)["error"], "message");
    if (!message.empty()) return message;
  }
  std::string first_line = body.substr(0, body.find('\n'));
  return first_line.empty() ? fmt::format("HTTP {}", status) : fmt::format("HTTP {}: {}", status, first_line);
}

// Paths, built outside the coroutines: g++ 12 miscompiles braced initialisers holding string
// literals inside them.
std::string list_path(Resource resource) {
  return api_path({plural(resource)});
}

std::string watch_path(Resource resource, int64_t revision) {
  return api_path({plural(resource)}, {{"watch", "1"}, {"revision", std::to_string(revision)}});
}

std::string logs_path(const std::string& deployment, const std::string& tail) {
  return api_path({"deployments", deployment, "logs"}, {{"replica", "0"}, {"follow", "1"}, {"tail", tail}});
}

// The method, path and body that carry a command out.
struct Call {
  std::string method = "POST";
  std::string path;
  std::string body;
  std::chrono::milliseconds timeout{30'000};
};

Call call_for(const Command& command) {
  Call call;
  switch (command.kind) {
    case Command::Kind::Scale:
      call.method = "PUT";
      call.path = api_path({"deployments", command.target, "scale"});
      call.body = json{{"replicas", command.replicas}}.dump();
      break;
    case Command::Kind::Restart: call.path = api_path({"deployments", command.target, "restart"}); break;
    case Command::Kind::Sleep: call.path = api_path({"deployments", command.target, "sleep"}); break;
    case Command::Kind::Wake: call.path = api_path({"deployments", command.target, "wake"}); break;
    case Command::Kind::ModeDryRun:
      call.path = api_path({"modes", command.target, "switch"}, {{"dry_run", "1"}});
      break;
    case Command::Kind::ModeSwitch:
      // The switch answers when it is done or rolled back: the server's timeouts (60 s for the
      // VRAM, 120 s for readiness), each possibly twice with a rollback, and some slack.
      call.path = api_path({"modes", command.target, "switch"});
      call.timeout = std::chrono::seconds(420);
      break;
    case Command::Kind::FollowLogs:
    case Command::Kind::StopLogs: break;
  }
  return call;
}

// A watch line longer than this is not a document the server would send.
constexpr size_t kMaxLine = 16 << 20;

}  // namespace

struct Feed::Impl : std::enable_shared_from_this<Feed::Impl> {
  Impl(Connection connection_in, Inbox& inbox_in)
      : connection(std::move(connection_in)), inbox(inbox_in), client(std::make_unique<http::Client>(io)) {}

  Connection connection;
  Inbox& inbox;
  asio::io_context io;
  std::unique_ptr<http::Client> client;
  std::thread thread;
  uint64_t log_stream = 0;  // the log view being followed; 0 none (the io thread's)

  std::string url(const std::string& path) const { return connection.server + path; }

  awaitable<void> pause(std::chrono::milliseconds duration) {
    asio::steady_timer timer(io);
    timer.expires_after(duration);
    boost::system::error_code ignored;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }

  void disconnected(const std::string& why) {
    inbox.post([why](Model& model) { model.set_link(Link::Unreachable, why); });
  }

  void refused(const std::string& why) {
    inbox.post([why](Model& model) { model.set_link(Link::Refused, why); });
  }

  // GET path; the body of a 200, else the reason it is not one. *answered says whether the
  // server answered at all.
  awaitable<Result<std::string>> get(const std::string& path, bool* answered = nullptr,
                                     std::chrono::milliseconds timeout = 10s) {
    auto response = co_await client->request("GET", url(path), "", connection.headers, timeout);
    if (answered) *answered = static_cast<bool>(response);
    if (!response) {
      co_return make_error(response.error().code,
                           fmt::format("cannot reach {}: {}", connection.server, response.error().message));
    }
    if (response->status != 200) {
      co_return make_error(ErrorCode::Unavailable, error_message(response->status, response->body));
    }
    co_return std::move(response->body);
  }

  // List, then watch from the listing's revision; list again whenever the watch breaks.
  awaitable<void> follow(Resource resource) {
    std::string path = list_path(resource);
    while (true) {
      bool answered = false;
      auto body = co_await get(path, &answered);
      auto listing = body ? parse_json(*body) : Result<json>(body.error());
      if (!listing || !listing->is_object() || !listing->contains("items") || !(*listing)["items"].is_array()) {
        std::string why = listing ? fmt::format("GET {}: not a listing", path) : listing.error().message;
        if (answered) {
          refused(why);
        } else {
          disconnected(why);
        }
        co_await pause(1s);
        continue;
      }
      inbox.post(listing_update(resource, (*listing)["items"]));
      int64_t revision = integer(*listing, "revision");
      auto stream = co_await client->open("GET", url(watch_path(resource, revision + 1)), "", connection.headers, 10s);
      if (!stream || (*stream)->status != 200) {
        if (!stream) disconnected(fmt::format("cannot reach {}: {}", connection.server, stream.error().message));
        co_await pause(1s);
        continue;
      }
      std::string buffer;
      while (true) {
        // The server writes a keep-alive line every 15 s.
        auto piece = co_await (*stream)->read(40s);
        if (!piece || piece->empty()) break;
        buffer += *piece;
        size_t start = 0;
        for (size_t end; (end = buffer.find('\n', start)) != std::string::npos; start = end + 1) {
          auto change = parse_json(std::string_view(buffer).substr(start, end - start));
          if (!change || !change->is_object() || !change->contains("object")) continue;
          const json& object = (*change)["object"];
          if (text(*change, "type") == "DELETE") {
            std::string name = object.is_object() ? text(object["metadata"], "name") : "";
            if (!name.empty()) inbox.post(remove_update(resource, name));
          } else if (auto update = put_update(resource, object)) {
            inbox.post(std::move(update));
          }
        }
        buffer.erase(0, start);
        if (buffer.size() > kMaxLine) break;
      }
      co_await pause(200ms);
    }
  }

  // Every second: the modes (also the connection check) and the gateway's metrics.
  awaitable<void> poll() {
    while (true) {
      bool answered = false;
      auto modes_body = co_await get("/api/v1/modes", &answered);
      if (!modes_body && answered) {
        refused(modes_body.error().message);
      } else if (!modes_body) {
        disconnected(modes_body.error().message);
      } else {
        std::vector<api::Mode> modes;
        auto listing = parse_json(*modes_body);
        if (listing && listing->is_object() && listing->contains("items") && (*listing)["items"].is_array()) {
          for (const auto& item : (*listing)["items"]) {
            if (auto mode = api::mode_from_json(item)) modes.push_back(std::move(*mode));
          }
        }
        inbox.post([modes = std::move(modes)](Model& model) {
          model.set_link(Link::Connected);
          model.set_modes(modes);
        });
      }
      // Without an admin key /metrics is refused: the figures then stay empty.
      auto metrics = co_await get("/metrics");
      if (metrics) {
        auto counters = gateway_counters(parse_prometheus(*metrics));
        auto at = std::chrono::steady_clock::now();
        inbox.post([counters = std::move(counters), at](Model& model) { model.set_metrics(counters, at); });
      }
      co_await pause(1s);
    }
  }

  awaitable<void> logs(std::string deployment, uint64_t stream_id) {
    // Follows the log; a quiet stream is reopened from its end every 15 s, which is also when a
    // closed view's stream notices it is no longer wanted.
    std::string tail = "16384";
    while (log_stream == stream_id) {
      auto path = logs_path(deployment, tail);
      auto stream = co_await client->open("GET", url(path), "", connection.headers, 10s);
      if (log_stream != stream_id) co_return;
      if (!stream) {
        inbox.post([stream_id, why = stream.error().message](Model& model) {
          model.log_ended(stream_id, "cannot reach the server: " + why + ", retrying");
        });
        co_await pause(1s);
        continue;
      }
      if ((*stream)->status != 200) {
        auto body = co_await (*stream)->read_all(10s);
        std::string why = error_message((*stream)->status, body ? *body : "");
        inbox.post([stream_id, why](Model& model) { model.log_ended(stream_id, why); });
        co_return;
      }
      inbox.post([stream_id](Model& model) { model.log_ended(stream_id, "following"); });
      tail = "0";
      while (log_stream == stream_id) {
        auto piece = co_await (*stream)->read(15s);
        if (!piece || piece->empty() || log_stream != stream_id) break;
        inbox.post([stream_id, piece = std::move(*piece)](Model& model) { model.append_log(stream_id, piece); });
      }
    }
  }

  awaitable<void> run(Command command) {
    CommandOutcome outcome;
    outcome.command = command;
    if (command.kind == Command::Kind::FollowLogs) {
      log_stream = command.stream;
      co_await logs(command.target, command.stream);
      co_return;
    }
    if (command.kind == Command::Kind::StopLogs) {
      if (log_stream == command.stream) log_stream = 0;
      co_return;
    }
    Call call = call_for(command);
    auto response = co_await client->request(call.method, url(call.path), call.body, connection.headers, call.timeout);
    if (!response) {
      outcome.error = fmt::format("cannot reach {}: {}", connection.server, response.error().message);
    } else {
      outcome.ok = response->status >= 200 && response->status < 300;
      if (!outcome.ok) outcome.error = error_message(response->status, response->body);
      auto answer = parse_json(response->body);
      if (answer && answer->is_object()) {
        outcome.plan.started = names(*answer, "started");
        outcome.plan.stopped = names(*answer, "stopped");
        outcome.plan.slept = names(*answer, "slept");
        outcome.plan.woken = names(*answer, "woken");
        outcome.plan.duration_ms = integer(*answer, "duration_ms");
        outcome.plan.rolled_back = answer->contains("rolled_back") && (*answer)["rolled_back"] == true;
      }
    }
    inbox.post([outcome = std::move(outcome)](Model& model) { model.command_finished(outcome); });
  }
};

Feed::Feed(Connection connection, Inbox& inbox) : impl_(std::make_shared<Impl>(std::move(connection), inbox)) {
  while (!impl_->connection.server.empty() && impl_->connection.server.back() == '/')
    impl_->connection.server.pop_back();
  for (auto resource : {Resource::Nodes, Resource::Deployments, Resource::Replicas, Resource::Events}) {
    asio::co_spawn(impl_->io, impl_->follow(resource), asio::detached);
  }
  asio::co_spawn(impl_->io, impl_->poll(), asio::detached);
  impl_->thread = std::thread([impl = impl_] { impl->io.run(); });
}

Feed::~Feed() {
  impl_->io.stop();
  impl_->thread.join();
  impl_->client.reset();
}

void Feed::submit(Command command) {
  asio::post(impl_->io, [impl = impl_, command = std::move(command)]() mutable {
    asio::co_spawn(impl->io, impl->run(std::move(command)), asio::detached);
  });
}

}  // namespace nebula::tui
