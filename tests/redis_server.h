#pragma once
// A real redis-server for tests: started on a free loopback port in a temp dir, without
// persistence, and killed by the destructor. Tests skip when redis-server is not installed.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "process_helpers.h"

namespace nebula::testing {

class RedisServer {
 public:
  // "" when redis-server is on PATH, else why the test skips.
  static std::string missing() {
    return find_on_path("redis-server").empty() ? "redis-server is not installed (apt-get install redis-server)" : "";
  }

  // With a password, Redis asks every client to AUTH first (--requirepass).
  explicit RedisServer(std::string password = "") : port_(free_port()), password_(std::move(password)) { start(); }
  ~RedisServer() { stop(); }

  int port() const { return port_; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }
  bool ready() const { return ping(); }

  void stop() {
    if (child_) child_->stop(SIGKILL, std::chrono::seconds(5));
    child_.reset();
  }
  // Starts it again on the same port (empty: nothing survives a stop).
  void start() {
    std::vector<std::string> argv = {find_on_path("redis-server"),
                                     "--port",
                                     std::to_string(port_),
                                     "--bind",
                                     "127.0.0.1",
                                     "--dir",
                                     dir_.path(),
                                     "--save",
                                     "",
                                     "--appendonly",
                                     "no"};
    if (!password_.empty()) argv.insert(argv.end(), {"--requirepass", password_});
    child_ = std::make_unique<Child>(argv, dir_.path() + "/redis.log");
    eventually([this] { return ping(); }, std::chrono::seconds(10), std::chrono::milliseconds(20));
  }

  // SIGSTOP and SIGCONT: a Redis that stalls (its connections stay open, nothing answers).
  void pause() const {
    if (child_) ::kill(child_->pid(), SIGSTOP);
  }
  void resume() const {
    if (child_) ::kill(child_->pid(), SIGCONT);
  }
  // Bytes clients sent that Redis has not read yet, over its loopback connections (from
  // /proc/net/tcp): while paused, > 0 once a client's command has reached it.
  size_t unread_bytes() const {
    std::ifstream table("/proc/net/tcp");
    std::string line;
    std::getline(table, line);  // the column names
    size_t unread = 0;
    while (std::getline(table, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, queues;
      fields >> slot >> local >> remote >> state >> queues;
      auto colon = local.find(':');
      auto queue_colon = queues.find(':');
      if (colon == std::string::npos || queue_colon == std::string::npos || state != "01") continue;
      if (std::stoi(local.substr(colon + 1), nullptr, 16) != port_) continue;
      unread += std::stoul(queues.substr(queue_colon + 1), nullptr, 16);
    }
    return unread;
  }

  // One command in Redis's inline form ("FLUSHALL"), answered with its first reply line (after
  // logging in when Redis has a password).
  std::string command(const std::string& line) const {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return "";
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port_));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::string reply;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
      std::string request = line + "\r\n";
      if (!password_.empty()) request = "AUTH " + password_ + "\r\n" + request;
      if (::write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
        char buffer[512];
        while (reply.size() < sizeof buffer) {
          ssize_t got = ::read(fd, buffer, sizeof buffer);
          if (got <= 0) break;
          reply.append(buffer, static_cast<size_t>(got));
          if (password_.empty() || reply.find("\r\n") + 2 < reply.size()) break;  // the AUTH's "+OK" and more
        }
        if (!password_.empty() && reply.rfind("+OK\r\n", 0) == 0) reply.erase(0, 5);
      }
    }
    ::close(fd);
    return reply;
  }

 private:
  bool ping() const { return command("PING").rfind("+PONG", 0) == 0; }

  int port_;
  std::string password_;
  TempDir dir_;
  std::unique_ptr<Child> child_;
};

}  // namespace nebula::testing
