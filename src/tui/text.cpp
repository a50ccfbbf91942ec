#include "tui/text.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace nebula::tui {

std::string printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    auto byte = static_cast<unsigned char>(text[i]);
    if (byte == '\t') {
      out.push_back(' ');
    } else if (byte >= 0x20 && byte < 0x7f) {
      out.push_back(static_cast<char>(byte));
    } else if (byte >= 0xc0) {
      // A UTF-8 lead byte: its continuation bytes (10xxxxxx) are part of the same '?'.
      out.push_back('?');
      while (i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xc0) == 0x80) ++i;
    } else {
      out.push_back('?');
    }
  }
  return out;
}

std::string fit(std::string_view text, size_t width) {
  if (text.size() <= width) return std::string(text);
  if (width == 0) return "";
  return std::string(text.substr(0, width - 1)) + "~";
}

std::string format_rate(std::optional<double> per_second) {
  if (!per_second || !std::isfinite(*per_second)) return "-";
  if (*per_second < 100) return fmt::format("{:.1f}", *per_second);
  return fmt::format("{:.0f}", *per_second);
}

std::string format_seconds(std::optional<double> seconds) {
  if (!seconds || !std::isfinite(*seconds) || *seconds < 0) return "-";
  if (*seconds < 1) return fmt::format("{:.0f}ms", *seconds * 1000);
  return fmt::format("{:.2f}s", *seconds);
}

std::string format_gib(int64_t mb) {
  return fmt::format("{:.1f}", static_cast<double>(mb) / 1024.0);
}

std::string bar(double used, double total, int width) {
  if (width < 3) return "";
  int inside = width - 2;
  double fraction = total > 0 && std::isfinite(used) ? std::clamp(used / total, 0.0, 1.0) : 0.0;
  int filled = static_cast<int>(std::lround(fraction * inside));
  if (filled == 0 && used > 0 && total > 0) filled = 1;  // something is there: show it
  return "[" + std::string(filled, '#') + std::string(inside - filled, '.') + "]";
}

std::string age(int64_t since_ms, int64_t now_ms) {
  if (since_ms <= 0) return "-";
  int64_t seconds = std::max<int64_t>(0, (now_ms - since_ms) / 1000);
  if (seconds < 120) return fmt::format("{}s", seconds);
  if (seconds < 7200) return fmt::format("{}m", seconds / 60);
  if (seconds < 172800) return fmt::format("{}h", seconds / 3600);
  return fmt::format("{}d", seconds / 86400);
}

}  // namespace nebula::tui
