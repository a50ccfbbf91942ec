#pragma once
// Test-only: an http::Server on 127.0.0.1 (a free port) whose io_context runs on a thread of its
// own, for tests that need a real server to talk to. Handlers that need timers use io().
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "http/http.h"

namespace nebula::http::testing {

class ServerThread {
 public:
  ServerThread() = default;
  ~ServerThread() { stop(); }
  ServerThread(const ServerThread&) = delete;
  ServerThread& operator=(const ServerThread&) = delete;

  asio::io_context& io() { return io_; }

  // Listens on a free loopback port and starts the thread; the port, or why not.
  Result<uint16_t> start(Router router, ServerOptions options = {}) {
    server_ = std::make_unique<Server>(io_, std::move(router), options);
    auto port = server_->listen({"127.0.0.1", 0});
    if (!port) return port;
    port_ = *port;
    work_.emplace(io_.get_executor());
    thread_ = std::thread([this] { io_.run(); });
    return port;
  }

  // Closes the listener and every connection, then ends the thread. Idempotent.
  void stop() {
    if (server_) server_->stop();
    work_.reset();
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }

  Server& server() { return *server_; }
  uint16_t port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
  uint16_t port_ = 0;
};

}  // namespace nebula::http::testing
