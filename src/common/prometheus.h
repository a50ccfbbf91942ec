#pragma once
// The Prometheus text exposition format, shared by every /metrics we serve.
#include <string>
#include <string_view>

namespace nebula {

// A label value as the exposition format writes it: backslash, double quote and newline escaped.
inline std::string prometheus_label(std::string_view value) {
  std::string escaped;
  escaped.reserve(value.size());
  for (char c : value) {
    if (c == '\\' || c == '"') escaped.push_back('\\');
    if (c == '\n') {
      escaped += "\\n";
      continue;
    }
    escaped.push_back(c);
  }
  return escaped;
}

}  // namespace nebula
