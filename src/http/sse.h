#pragma once
// Server-sent events (the HTML living standard's text/event-stream), as OpenAI streams use them.
#include <string>
#include <string_view>
#include <vector>

namespace nebula::http {

struct SseEvent {
  std::string event;  // "" = the default "message"
  std::string data;   // data lines joined with '\n'
  std::string id;
};

// One event in wire form: "event: E\n" when E is set, one "data: " line per line of data, "\n".
std::string format_sse(std::string_view data, std::string_view event = {});

// Incremental parser: feed bytes as they arrive in any split; complete events come out.
// Accepts \n, \r\n and \r line ends, ignores comments (":..."), strips one space after the colon.
class SseParser {
 public:
  // Appends the events completed by these bytes to out.
  void feed(std::string_view bytes, std::vector<SseEvent>& out);
  // Bytes of an unfinished event held back.
  size_t pending() const { return line_.size(); }

 private:
  void take_line(std::string_view line, std::vector<SseEvent>& out);
  std::string line_;
  SseEvent current_;
  bool has_data_ = false;
  bool last_was_cr_ = false;
};

}  // namespace nebula::http
