#pragma once
// Test-only: a Docker Engine API stand-in on a real unix socket, speaking real HTTP/1.1. Each
// connection is served on a thread of its own (so one held answer does not hold the others),
// answers come from a function, and every request is recorded. Used by the unit tests of
// engines/docker and agent/container_runtime, and by tests/docker_e2e_test.cpp.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <set>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace nebula::engines::testing {

namespace fake_docker_detail {
namespace beast_http = boost::beast::http;
using Local = boost::asio::local::stream_protocol;
namespace fs = std::filesystem;
}  // namespace fake_docker_detail
using namespace fake_docker_detail;

struct Seen {
  std::string method;
  std::string target;
  std::string body;
  bool operator==(const Seen&) const = default;
};
struct Answer {
  int status = 200;
  std::string body;
  bool chunked = false;
};

// Docker's log framing: an 8-byte header (stream, 0, 0, 0, big-endian size) per frame.
inline std::string docker_log_frame(int stream, const std::string& text) {
  std::string header(8, '\0');
  header[0] = static_cast<char>(stream);
  uint32_t size = static_cast<uint32_t>(text.size());
  for (int i = 0; i < 4; ++i) header[4 + i] = static_cast<char>((size >> (8 * (3 - i))) & 0xff);
  return header + text;
}

// A Docker Engine API stand-in: a real unix socket, real HTTP/1.1, each connection served on a
// thread of its own (so one held answer does not hold the others), answers from a function, and
// a record of every request. The handler runs without the fake's lock.
class FakeDocker {
 public:
  using Handler = std::function<Answer(const Seen&)>;

  FakeDocker(const fs::path& socket_path, Handler handler)
      : path_(socket_path.string()), handler_(std::move(handler)), acceptor_(io_, Local::endpoint(path_)) {
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~FakeDocker() {
    io_.stop();
    thread_.join();
    std::vector<std::thread> connections;
    {
      std::lock_guard lock(mutex_);
      // A client that never finishes its request must not hold the destruction.
      for (int fd : open_fds_) ::shutdown(fd, SHUT_RDWR);
      connections.swap(connections_);
    }
    for (auto& connection : connections) connection.join();
    std::error_code ignored;
    fs::remove(path_, ignored);
  }
  std::vector<Seen> seen() {
    std::lock_guard lock(mutex_);
    return seen_;
  }
  std::vector<std::string> targets() {
    std::vector<std::string> out;
    for (const Seen& request : seen()) out.push_back(request.method + " " + request.target);
    return out;
  }
  const std::string& path() const { return path_; }

 private:
  void accept() {
    acceptor_.async_accept([this](boost::system::error_code error, Local::socket socket) {
      if (error) return;
      std::lock_guard lock(mutex_);
      open_fds_.insert(socket.native_handle());
      connections_.emplace_back([this, connection = std::move(socket)]() mutable {
        serve(connection);
        std::lock_guard lock(mutex_);
        open_fds_.erase(connection.native_handle());
        boost::system::error_code ignored;
        connection.close(ignored);
      });
      accept();
    });
  }

  // One request per connection: the client opens one per call.
  void serve(Local::socket& socket) {
    boost::beast::flat_buffer buffer;
    beast_http::request<beast_http::string_body> request;
    boost::system::error_code error;
    beast_http::read(socket, buffer, request, error);
    if (error) return;
    Seen seen{std::string(request.method_string()), std::string(request.target()), request.body()};
    {
      std::lock_guard lock(mutex_);
      seen_.push_back(seen);
    }
    Answer answer = handler_(seen);
    beast_http::response<beast_http::string_body> response{static_cast<beast_http::status>(answer.status), 11};
    response.set(beast_http::field::content_type, "application/json");
    response.set(beast_http::field::server, "Docker/24.0.7 (linux)");
    response.body() = answer.body;
    if (answer.chunked) {
      response.chunked(true);
    } else {
      response.prepare_payload();
    }
    beast_http::write(socket, response, error);
  }

  std::string path_;
  Handler handler_;
  boost::asio::io_context io_;
  Local::acceptor acceptor_;
  std::thread thread_;
  std::mutex mutex_;
  std::vector<std::thread> connections_;
  std::set<int> open_fds_;
  std::vector<Seen> seen_;
};

}  // namespace nebula::engines::testing
