#include "router/spec.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>

namespace nebula::router {

namespace {

Error invalid(std::string message) {
  return Error{ErrorCode::InvalidArgument, std::move(message)};
}

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '+';
}

std::string param_names(std::span<const ParamDef> params) {
  std::string names;
  for (const auto& param : params) names += (names.empty() ? "" : ", ") + std::string(param.name);
  return names.empty() ? "none" : names;
}

}  // namespace

std::string printable(std::string_view text) {
  std::string out;
  for (char c : text) {
    auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f) {
      out += c;
    } else {
      out += fmt::format("\\x{:02x}", byte);
    }
  }
  return out;
}

std::string format_number(double value) {
  if (value == std::floor(value) && std::fabs(value) < 1e15) return fmt::format("{}", static_cast<int64_t>(value));
  return fmt::format("{}", value);
}

Result<SpecParts> split_spec(std::string_view spec) {
  if (spec.size() > kMaxSpecChars) {
    return invalid(fmt::format("routing spec is too long ({} characters; at most {})", spec.size(), kMaxSpecChars));
  }
  SpecParts parts;
  size_t start = 0;
  bool first = true;
  while (true) {
    size_t comma = spec.find(',', start);
    std::string_view part =
        spec.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    if (first) {
      if (part.empty()) return invalid(fmt::format("routing spec '{}' has no policy name", printable(spec)));
      if (!std::all_of(part.begin(), part.end(), name_char)) {
        return invalid(fmt::format("routing policy name '{}' may only hold a-z, 0-9, '-' and '+'", printable(part)));
      }
      parts.name = std::string(part);
      first = false;
    } else {
      if (part.empty()) return invalid(fmt::format("routing spec '{}' has an empty parameter", printable(spec)));
      size_t eq = part.find('=');
      if (eq == std::string_view::npos) {
        return invalid(fmt::format("routing parameter '{}' needs a value (name=number)", printable(part)));
      }
      std::string_view name = part.substr(0, eq);
      if (name.empty() || !std::all_of(name.begin(), name.end(), name_char)) {
        return invalid(fmt::format("routing parameter '{}' has no valid name before '='", printable(part)));
      }
      parts.params.emplace_back(std::string(name), std::string(part.substr(eq + 1)));
    }
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return parts;
}

Result<ParamValues> read_params(const SpecParts& parts, std::span<const ParamDef> params) {
  ParamValues values;
  bool weights_given = false;
  for (const auto& [name, text] : parts.params) {
    auto def = std::find_if(params.begin(), params.end(), [&](const ParamDef& p) { return p.name == name; });
    if (def == params.end()) {
      return invalid(fmt::format("unknown parameter '{}' for routing policy '{}' (it takes: {})", printable(name),
                                 parts.name, param_names(params)));
    }
    if (values.count(name)) return invalid(fmt::format("routing parameter '{}' is given twice", name));
    double value = 0;
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || error != std::errc() || end != text.data() + text.size() || !std::isfinite(value)) {
      return invalid(fmt::format("routing parameter '{}' must be a number, got '{}'", name, printable(text)));
    }
    if (value < def->min || value > def->max) {
      return invalid(fmt::format("routing parameter '{}' must be between {} and {}, got {}", name,
                                 format_number(def->min), format_number(def->max), printable(text)));
    }
    if (def->whole && value != std::floor(value)) {
      return invalid(fmt::format("routing parameter '{}' must be a whole number, got {}", name, printable(text)));
    }
    values[name] = value;
    weights_given = weights_given || def->weight;
  }
  bool any_weight = false, weight_above_zero = false;
  std::string weight_names;
  for (const auto& param : params) {
    if (!values.count(param.name)) {
      values[std::string(param.name)] = param.weight && weights_given ? 0 : param.default_value;
    }
    if (param.weight) {
      any_weight = true;
      weight_above_zero = weight_above_zero || values[std::string(param.name)] > 0;
      weight_names += (weight_names.empty() ? "" : ", ") + std::string(param.name);
    }
  }
  if (any_weight && !weight_above_zero) {
    return invalid(fmt::format("routing policy '{}' needs a weight above 0 for one of: {}", parts.name, weight_names));
  }
  return values;
}

std::string format_spec(std::string_view name, std::span<const ParamDef> params, const ParamValues& values) {
  std::string spec(name);
  for (const auto& param : params) {
    auto it = values.find(param.name);
    double value = it == values.end() ? param.default_value : it->second;
    bool shown = param.weight ? value > 0 : value != param.default_value;
    if (shown) spec += fmt::format(",{}={}", param.name, format_number(value));
  }
  return spec;
}

}  // namespace nebula::router
