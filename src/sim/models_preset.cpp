// llama-server's model preset file (--models-preset), read as llama.cpp's common/preset.cpp does:
// `[section]` lines, `key = value` lines (a value ends at ';', '#' or the line's end), comment
// lines starting with ';' or '#'. The [*] section applies to every model; keys before the first
// section apply too, and also make an implicit section `default` that llama-server lists as a model
// (PresetModel::implicit_default). The simulator serves one model, the first named section.
#include <fmt/format.h>

#include <fstream>
#include <initializer_list>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "sim/sim.h"

namespace nebula::sim {
namespace {

std::string trim(const std::string& text) {
  size_t begin = text.find_first_not_of(" \t\r");
  if (begin == std::string::npos) return "";
  size_t end = text.find_last_not_of(" \t\r");
  return text.substr(begin, end - begin + 1);
}

int number(const std::string& path, const std::string& key, const std::string& value) {
  try {
    size_t used = 0;
    int parsed = std::stoi(value, &used);
    if (used == value.size() && parsed >= 0) return parsed;
  } catch (const std::exception&) {
    // reported below
  }
  throw std::invalid_argument(fmt::format("{}: {} = {} is not a number", path, key, value));
}

}  // namespace

PresetModel read_models_preset(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument("cannot read the models preset " + path);
  using Section = std::map<std::string, std::string>;
  Section global;
  std::vector<std::pair<std::string, Section>> sections;
  Section* current = &global;
  bool outside_sections = false;  // a key came before any section
  bool seen_star = false;
  std::string line;
  while (std::getline(in, line)) {
    std::string text = trim(line);
    if (text.empty() || text[0] == ';' || text[0] == '#') continue;
    if (text[0] == '[') {
      size_t close = text.find(']');
      if (close == std::string::npos) throw std::invalid_argument(fmt::format("{}: bad section line '{}'", path, text));
      std::string name = trim(text.substr(1, close - 1));
      if (name == "*") {
        current = &global;
        seen_star = true;
      } else {
        sections.emplace_back(name, Section{});
        current = &sections.back().second;
      }
      continue;
    }
    size_t equals = text.find('=');
    if (equals == std::string::npos) throw std::invalid_argument(fmt::format("{}: bad line '{}'", path, text));
    std::string value = text.substr(equals + 1);
    value = trim(value.substr(0, value.find_first_of(";#")));
    (*current)[trim(text.substr(0, equals))] = value;
    if (sections.empty() && current == &global && !seen_star) outside_sections = true;
  }
  if (sections.empty()) throw std::invalid_argument("the models preset " + path + " names no model");
  Section merged = global;
  for (const auto& [key, value] : sections.front().second) merged[key] = value;
  merged.erase("version");
  PresetModel model;
  model.name = sections.front().first;
  model.implicit_default = outside_sections;
  auto value_of = [&](std::initializer_list<const char*> keys) -> std::optional<std::pair<std::string, std::string>> {
    for (const char* key : keys) {
      if (auto found = merged.find(key); found != merged.end()) return std::make_pair(found->first, found->second);
    }
    return std::nullopt;
  };
  if (auto found = value_of({"model", "m"})) model.model = found->second;
  if (auto found = value_of({"c", "ctx-size"})) model.context = number(path, found->first, found->second);
  if (auto found = value_of({"parallel", "np"})) model.parallel = number(path, found->first, found->second);
  return model;
}

}  // namespace nebula::sim
