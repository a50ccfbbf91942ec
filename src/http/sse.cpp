#include "http/sse.h"

#include <cstring>

namespace nebula::http {

namespace {
// Where the line starting at `from` ends: its first '\r' or '\n', or npos. Two memchr passes
// (a '\r' is rare); std::string_view::find_first_of calls memchr on its set once per byte.
size_t line_end(std::string_view bytes, size_t from) {
  const char* begin = bytes.data() + from;
  size_t size = bytes.size() - from;
  const char* newline = static_cast<const char*>(std::memchr(begin, '\n', size));
  size_t limit = newline ? static_cast<size_t>(newline - begin) : size;
  if (const char* cr = static_cast<const char*>(std::memchr(begin, '\r', limit))) return from + (cr - begin);
  return newline ? from + limit : std::string_view::npos;
}
}  // namespace

std::string format_sse(std::string_view data, std::string_view event) {
  std::string out;
  out.reserve(data.size() + 16);
  if (!event.empty()) {
    out.append("event: ").append(event).push_back('\n');
  }
  size_t start = 0;
  while (true) {
    size_t end = data.find('\n', start);
    out.append("data: ").append(data.substr(start, end == std::string_view::npos ? end : end - start));
    out.push_back('\n');
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  out.push_back('\n');
  return out;
}

void SseParser::feed(std::string_view bytes, std::vector<SseEvent>& out) {
  size_t i = 0;
  if (last_was_cr_ && !bytes.empty() && bytes[0] == '\n') i = 1;  // the \n of a \r\n split across feeds
  last_was_cr_ = false;
  while (i < bytes.size()) {
    // Whole lines at a time: find the next line end instead of copying byte by byte.
    size_t end = line_end(bytes, i);
    if (end == std::string_view::npos) {
      line_.append(bytes.substr(i));
      return;
    }
    if (line_.empty()) {
      take_line(bytes.substr(i, end - i), out);
    } else {
      line_.append(bytes.substr(i, end - i));
      take_line(line_, out);
      line_.clear();
    }
    if (bytes[end] == '\r') {
      if (end + 1 < bytes.size()) {
        if (bytes[end + 1] == '\n') ++end;
      } else {
        last_was_cr_ = true;
      }
    }
    i = end + 1;
  }
}

void SseParser::take_line(std::string_view line, std::vector<SseEvent>& out) {
  if (line.empty()) {  // a blank line dispatches the event
    if (has_data_ || !current_.event.empty()) out.push_back(std::move(current_));
    current_ = SseEvent{};
    has_data_ = false;
    return;
  }
  if (line.front() == ':') return;  // comment
  size_t colon = line.find(':');
  std::string_view field = line.substr(0, colon);
  std::string_view value;
  if (colon != std::string_view::npos) {
    value = line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  }
  if (field == "data") {
    if (has_data_) current_.data.push_back('\n');
    current_.data.append(value);
    has_data_ = true;
  } else if (field == "event") {
    current_.event = std::string(value);
  } else if (field == "id") {
    current_.id = std::string(value);
  }
}

}  // namespace nebula::http
