// The stdio transport: messages are lines on stdin; answers and notifications are lines on stdout.
// The main thread reads stdin; one I/O thread runs the Server and writes stdout, so writes never
// interleave.
#include "mcp/mcp.h"

#include <fmt/format.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <thread>

#include "common/log.h"

namespace nebula::mcp {

namespace {

// Writes all of text; false when stdout is gone.
bool write_all(int fd, std::string_view text) {
  while (!text.empty()) {
    ssize_t written = ::write(fd, text.data(), text.size());
    if (written < 0 && errno == EINTR) continue;
    if (written <= 0) return false;
    text.remove_prefix(static_cast<size_t>(written));
  }
  return true;
}

// Everything the I/O thread owns.
struct Stdio {
  Stdio(const StdioOptions& options, asio::io_context& io) : io(io), client(io), output_fd(options.output_fd) {
    auto api = std::make_shared<HttpApi>(client, options.server_url, options.headers);
    server = std::make_unique<Server>(api, io.get_executor(), options.server,
                                      [this](json notification) { send(notification); });
  }
  asio::io_context& io;
  http::Client client;
  int output_fd;
  std::unique_ptr<Server> server;
  size_t in_flight = 0;
  bool input_ended = false;
  bool output_gone = false;

  void send(const json& message) {
    if (output_gone) return;
    // dump() with replace: a non-UTF-8 byte from upstream cannot abort the process.
    if (!write_all(output_fd, message.dump(-1, ' ', false, json::error_handler_t::replace) + "\n")) {
      output_gone = true;
      spdlog::warn("mcp: stdout is closed");
    }
  }

  void finish_if_done() {
    if (input_ended && in_flight == 0) {
      server->close();
      io.stop();
    }
  }

  static awaitable<void> serve(Stdio* self, std::string line) {
    auto answer = co_await self->server->handle(std::move(line));
    if (answer) self->send(*answer);
    --self->in_flight;
    self->finish_if_done();
  }

  void accept(std::string line) {
    ++in_flight;
    asio::co_spawn(io, serve(this, std::move(line)), asio::detached);
  }
};

}  // namespace

int run_stdio(const StdioOptions& options) {
  asio::io_context io;
  auto work = asio::make_work_guard(io);
  Stdio stdio(options, io);
  std::thread io_thread([&io] { io.run(); });

  std::string line;
  bool oversized = false;
  char buffer[65536];
  while (true) {
    ssize_t got = ::read(options.input_fd, buffer, sizeof buffer);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    std::string_view chunk(buffer, static_cast<size_t>(got));
    while (!chunk.empty()) {
      size_t newline = chunk.find('\n');
      std::string_view piece = chunk.substr(0, newline);
      if (!oversized) {
        if (line.size() + piece.size() > kMaxMessageBytes) {
          // Not kept: the rest of the line is skipped, then the error is answered.
          oversized = true;
          line.clear();
          line.shrink_to_fit();
        } else {
          line.append(piece);
        }
      }
      if (newline == std::string_view::npos) break;
      chunk.remove_prefix(newline + 1);
      if (oversized) {
        asio::post(io, [&stdio] {
          stdio.send(error_response(nullptr, RpcError::InvalidRequest,
                                    fmt::format("message larger than the limit of {} bytes", kMaxMessageBytes)));
        });
        oversized = false;
      } else {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        bool blank = line.find_first_not_of(" \t") == std::string::npos;
        if (!blank) asio::post(io, [&stdio, message = std::move(line)]() mutable { stdio.accept(std::move(message)); });
      }
      line.clear();
    }
  }
  // EOF: a last line without a newline is still a message; then answer what is in flight and stop.
  if (!oversized && line.find_first_not_of(" \t\r") != std::string::npos) {
    asio::post(io, [&stdio, message = std::move(line)]() mutable { stdio.accept(std::move(message)); });
  }
  asio::post(io, [&stdio] {
    stdio.input_ended = true;
    stdio.finish_if_done();
  });
  work.reset();
  io_thread.join();
  return 0;
}

}  // namespace nebula::mcp
