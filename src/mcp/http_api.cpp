// HttpApi: the tools' calls and the subscriptions' watches over Nebula's HTTP API.
#include "mcp/mcp.h"

#include <set>

namespace nebula::mcp {

// The watch streams open now, so stop() can cancel them.
struct HttpApi::Watches {
  std::set<http::StreamingResponse*> open;
  bool stopped = false;
};

HttpApi::HttpApi(http::Client& client, std::string base_url, http::Headers headers)
    : client_(client),
      base_url_(std::move(base_url)),
      headers_(std::move(headers)),
      watches_(std::make_shared<Watches>()) {
  while (!base_url_.empty() && base_url_.back() == '/') base_url_.pop_back();
}

HttpApi::~HttpApi() {
  stop();
}

awaitable<Result<ApiAnswer>> HttpApi::call(std::string method, std::string path, std::string body) {
  http::Headers headers = headers_;
  if (!body.empty()) headers.push_back({"Content-Type", "application/json"});
  // A chat completion may wait for a sleeping deployment to wake.
  auto timeout = path.rfind("/v1/", 0) == 0 ? std::chrono::seconds(300) : std::chrono::seconds(30);
  auto response = co_await client_.request(method, base_url_ + path, std::move(body), std::move(headers), timeout);
  if (!response) {
    co_return make_error(response.error().code,
                         "cannot reach the Nebula server at " + base_url_ + ": " + response.error().message);
  }
  co_return ApiAnswer{response->status, std::move(response->body)};
}

awaitable<Result<int>> HttpApi::watch(std::string path, std::function<void(const json&)> on_event) {
  auto watches = watches_;
  if (watches->stopped) co_return 0;
  auto opened = co_await client_.open("GET", base_url_ + path, "", headers_, std::chrono::seconds(30));
  if (!opened) co_return opened.error();
  std::unique_ptr<http::StreamingResponse> stream = std::move(*opened);
  if (stream->status != 200 || watches->stopped) {
    stream->cancel();
    co_return stream->status;
  }
  // Listed while open, also when this coroutine's frame is destroyed with its io_context.
  struct Listed {
    std::shared_ptr<Watches> watches;
    http::StreamingResponse* stream;
    ~Listed() { watches->open.erase(stream); }
  };
  watches->open.insert(stream.get());
  Listed listed{watches, stream.get()};
  std::string pending;
  while (!watches->stopped) {
    // The server writes a keep-alive line every 15 s; silence for longer means it is gone.
    auto piece = co_await stream->read(std::chrono::seconds(45));
    if (!piece || piece->empty()) break;
    pending += *piece;
    size_t start = 0;
    for (size_t end = pending.find('\n'); end != std::string::npos; end = pending.find('\n', start)) {
      std::string_view line(pending.data() + start, end - start);
      start = end + 1;
      if (line.empty()) continue;
      auto event = parse_json(line);
      if (event && event->is_object()) on_event(*event);
    }
    pending.erase(0, start);
    if (pending.size() > kMaxMessageBytes) break;
  }
  stream->cancel();
  co_return 200;
}

void HttpApi::stop() {
  watches_->stopped = true;
  auto open = watches_->open;
  for (auto* stream : open) stream->cancel();
}

}  // namespace nebula::mcp
