#pragma once
// The network side of `nebula top`: a thread of its own that lists and watches nodes,
// deployments, replicas and events (GET /api/v1/<plural>, then ?watch=1 from the listing's
// revision), scrapes the gateway's /metrics and the modes every second, and carries out the
// Commands keys make. It never touches the Model: it posts updates to an Inbox that the UI
// thread applies between frames, so the UI never waits on the network. When the server cannot
// be reached it says so and retries every second.
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "http/http.h"
#include "tui/model.h"

namespace nebula::tui {

// Updates from the Feed's thread for the UI thread. Thread-safe.
class Inbox {
 public:
  using Update = std::function<void(Model&)>;
  void post(Update update);
  // Applies the waiting updates in the order they were posted; true when there were any.
  bool apply(Model& model);

 private:
  std::mutex mutex_;
  std::vector<Update> updates_;
};

struct Connection {
  std::string server;     // "http://127.0.0.1:8080", no trailing slash
  http::Headers headers;  // Authorization, when a key is known
};

class Feed {
 public:
  // Starts the thread at once.
  Feed(Connection connection, Inbox& inbox);
  // Stops the thread: open requests are abandoned.
  ~Feed();
  Feed(const Feed&) = delete;
  Feed& operator=(const Feed&) = delete;

  // Carries a command out in the background; its outcome arrives through the Inbox. Thread-safe.
  void submit(Command command);

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// Management API paths: http::api_path().
using http::api_path;

}  // namespace nebula::tui
