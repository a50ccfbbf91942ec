#include "api/spec_check.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <set>

#include "api/read.h"

namespace nebula::api {

namespace {

std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Levenshtein distance with a transposition counting as one edit ("instrcut" -> "instruct").
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

// "spec.shape" for the messages.
std::string where(const std::string& path, const std::string& field) {
  return path.empty() ? field : path + "." + field;
}

}  // namespace

std::vector<std::string> closest_names(std::string_view word, const std::vector<std::string>& candidates,
                                       size_t limit) {
  std::string wanted = lower(word);
  std::vector<std::pair<size_t, std::string>> scored;
  for (const auto& candidate : candidates) {
    std::string name = lower(candidate);
    size_t distance = edit_distance(wanted, name);
    // A third of the longer name may differ; a name containing the other is close too.
    size_t allowed = std::max<size_t>(2, std::max(wanted.size(), name.size()) / 3);
    bool contains =
        wanted.size() >= 3 && (name.find(wanted) != std::string::npos || wanted.find(name) != std::string::npos);
    if (distance <= allowed || contains)
      scored.emplace_back(contains ? std::min(distance, allowed) : distance, candidate);
  }
  std::stable_sort(scored.begin(), scored.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::string> names;
  for (const auto& [distance, name] : scored) {
    if (names.size() >= limit) break;
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  }
  return names;
}

Result<Deployment> deployment_from_user_json(const json& value) {
  detail::FieldLog log;
  auto deployment = deployment_from_json(value);
  if (!deployment) return deployment;
  // The objects to check, by path; status is left out on purpose.
  std::vector<std::pair<std::string, const json*>> objects = {{"", &value}};
  auto child = [&](const json& parent, const char* field, const std::string& path) {
    auto it = parent.find(field);
    if (it != parent.end() && it->is_object()) objects.emplace_back(path, &*it);
  };
  child(value, "metadata", "metadata");
  child(value, "spec", "spec");
  if (auto spec = value.find("spec"); spec != value.end() && spec->is_object()) child(*spec, "shape", "spec.shape");
  for (const auto& [path, object] : objects) {
    std::vector<std::string> known;
    for (const auto& [read_in, field] : log.read) {
      if (read_in == object) known.push_back(field);
    }
    if (path.empty()) known.insert(known.end(), {"kind", "apiVersion", "name"});
    std::set<std::string> known_set(known.begin(), known.end());
    for (const auto& [field, ignored] : object->items()) {
      if (known_set.count(field)) continue;
      auto suggestion = closest_names(field, std::vector<std::string>(known_set.begin(), known_set.end()));
      std::string message = fmt::format("unknown field '{}'", where(path, field));
      if (!suggestion.empty()) message += fmt::format(" (did you mean '{}'?)", where(path, suggestion.front()));
      return make_error(ErrorCode::InvalidArgument, message);
    }
  }
  return deployment;
}

}  // namespace nebula::api
