#include "sim/structured.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>

namespace nebula::sim {
namespace {

// A check follows $refs at most this deep (a schema that refers to itself is checked once).
constexpr int kMaxCheckDepth = 64;
// Past this depth the writer leaves optional members out and makes arrays as short as allowed,
// so recursive schemas end; past kMaxWriteDepth a value the schema requires is written anyway.
constexpr int kShallowDepth = 5;
constexpr int kMaxWriteDepth = 48;
// The range a number without bounds is drawn from.
constexpr double kDefaultSpan = 100;
constexpr double kLargest = 1e15;

constexpr std::string_view kWords[] = {
    "lorem",  "ipsum", "dolor",   "sit",  "amet",    "consectetur", "adipiscing", "elit",    "sed",     "do",
    "tempor", "magna", "aliqua",  "enim", "minim",   "veniam",      "quis",       "nostrud", "ullamco", "nisi",
    "ex",     "ea",    "commodo", "duis", "aute",    "irure",       "velit",      "esse",    "cillum",  "fugiat",
    "nulla",  "sint",  "culpa",   "qui",  "officia", "mollit",      "anim",       "id",      "est",     "laborum"};
constexpr size_t kWordCount = sizeof(kWords) / sizeof(kWords[0]);

const char* const kTypes[] = {"object", "array", "string", "number", "integer", "boolean", "null"};

bool known_type(const ordered_json& type) {
  if (!type.is_string()) return false;
  return std::any_of(std::begin(kTypes), std::end(kTypes), [&](const char* name) { return type == name; });
}

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t bound) { return bound == 0 ? 0 : next() % bound; }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  bool chance(double probability) { return uniform() < probability; }

 private:
  uint64_t state_;
};

// "#/$defs/Name" or "#/definitions/Name" (JSON-pointer escapes ~0 and ~1 undone), or "#".
const ordered_json* resolve_ref(const ordered_json& root, const std::string& ref) {
  if (ref == "#") return &root;
  for (std::string_view container : {std::string_view("$defs"), std::string_view("definitions")}) {
    std::string prefix = fmt::format("#/{}/", container);
    if (ref.rfind(prefix, 0) != 0) continue;
    std::string name;
    for (size_t i = prefix.size(); i < ref.size(); ++i) {
      if (ref[i] == '~' && i + 1 < ref.size() && (ref[i + 1] == '0' || ref[i + 1] == '1')) {
        name += ref[i + 1] == '0' ? '~' : '/';
        ++i;
      } else if (ref[i] == '/') {
        return nullptr;  // deeper pointers are not supported
      } else {
        name += ref[i];
      }
    }
    auto defs = root.find(std::string(container));
    if (defs == root.end() || !defs->is_object()) return nullptr;
    auto target = defs->find(name);
    return target == defs->end() ? nullptr : &*target;
  }
  return nullptr;
}

std::optional<double> number_member(const ordered_json& schema, const char* name) {
  auto it = schema.find(name);
  if (it == schema.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

class Checker {
 public:
  explicit Checker(const ordered_json& root) : root_(root) {}

  std::optional<std::string> check(const ordered_json& schema, const std::string& path, int depth) {
    if (schema.is_boolean()) {
      if (!schema.get<bool>()) return fmt::format("{}: the schema `false` matches nothing", path);
      return std::nullopt;
    }
    if (!schema.is_object()) return fmt::format("{}: a schema must be an object, got {}", path, schema.type_name());
    if (depth > kMaxCheckDepth) return fmt::format("{}: the schema nests too deeply", path);
    if (auto ref = schema.find("$ref"); ref != schema.end()) {
      if (!ref->is_string()) return fmt::format("{}.$ref: must be a string", path);
      const ordered_json* target = resolve_ref(root_, ref->get<std::string>());
      if (!target)
        return fmt::format("{}.$ref: '{}' does not resolve (use #/$defs/NAME)", path, ref->get<std::string>());
      if (checked_refs_.insert(target).second) {
        if (auto error = check(*target, ref->get<std::string>(), depth + 1)) return error;
      }
    }
    if (auto type = schema.find("type"); type != schema.end()) {
      if (type->is_array()) {
        if (type->empty()) return fmt::format("{}.type: an empty list of types", path);
        for (const ordered_json& item : *type) {
          if (!known_type(item)) return fmt::format("{}.type: unknown type {}", path, item.dump());
        }
      } else if (!known_type(*type)) {
        return fmt::format("{}.type: unknown type {}", path, type->dump());
      }
    }
    if (auto values = schema.find("enum"); values != schema.end()) {
      if (!values->is_array() || values->empty()) return fmt::format("{}.enum: must be a non-empty list", path);
    }
    if (auto error = check_object_keywords(schema, path, depth)) return error;
    if (auto error = check_array_keywords(schema, path, depth)) return error;
    if (auto error = check_bounds(schema, path)) return error;
    for (const char* combinator : {"anyOf", "oneOf", "allOf"}) {
      auto branches = schema.find(combinator);
      if (branches == schema.end()) continue;
      if (!branches->is_array() || branches->empty()) {
        return fmt::format("{}.{}: must be a non-empty list of schemas", path, combinator);
      }
      for (size_t index = 0; index < branches->size(); ++index) {
        if (auto error = check((*branches)[index], fmt::format("{}.{}[{}]", path, combinator, index), depth + 1)) {
          return error;
        }
      }
    }
    return std::nullopt;
  }

 private:
  std::optional<std::string> check_object_keywords(const ordered_json& schema, const std::string& path, int depth) {
    auto properties = schema.find("properties");
    if (properties != schema.end()) {
      if (!properties->is_object()) return fmt::format("{}.properties: must be an object", path);
      for (const auto& [name, property] : properties->items()) {
        if (auto error = check(property, fmt::format("{}.properties.{}", path, name), depth + 1)) return error;
      }
    }
    auto additional = schema.find("additionalProperties");
    if (additional != schema.end() && !additional->is_boolean()) {
      if (auto error = check(*additional, path + ".additionalProperties", depth + 1)) return error;
    }
    if (auto required = schema.find("required"); required != schema.end()) {
      if (!required->is_array()) return fmt::format("{}.required: must be a list of names", path);
      bool closed = additional != schema.end() && *additional == false;
      for (const ordered_json& name : *required) {
        if (!name.is_string()) return fmt::format("{}.required: must be a list of names", path);
        bool declared = properties != schema.end() && properties->contains(name.get<std::string>());
        if (closed && !declared) {
          return fmt::format(
              "{}.required: '{}' is required but additionalProperties is false and it is not a "
              "property",
              path, name.get<std::string>());
        }
      }
    }
    return std::nullopt;
  }

  std::optional<std::string> check_array_keywords(const ordered_json& schema, const std::string& path, int depth) {
    for (const char* name : {"items", "prefixItems"}) {
      auto items = schema.find(name);
      if (items == schema.end()) continue;
      if (!items->is_array()) {
        if (auto error = check(*items, fmt::format("{}.{}", path, name), depth + 1)) return error;
        continue;
      }
      // A tuple: one schema per position (draft 7's items list, 2020-12's prefixItems).
      for (size_t index = 0; index < items->size(); ++index) {
        if (auto error = check((*items)[index], fmt::format("{}.{}[{}]", path, name, index), depth + 1)) return error;
      }
    }
    return std::nullopt;
  }

  static std::optional<std::string> check_bounds(const ordered_json& schema, const std::string& path) {
    for (auto [low, high] : {std::pair{"minItems", "maxItems"}, std::pair{"minLength", "maxLength"}}) {
      for (const char* name : {low, high}) {
        auto it = schema.find(name);
        if (it != schema.end() && (!it->is_number_integer() || it->get<int64_t>() < 0)) {
          return fmt::format("{}.{}: must be a non-negative integer", path, name);
        }
      }
      if (schema.contains(low) && schema.contains(high) && schema[low].get<int64_t>() > schema[high].get<int64_t>()) {
        return fmt::format("{}: {} is greater than {}", path, low, high);
      }
    }
    for (const char* name : {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}) {
      auto it = schema.find(name);
      if (it != schema.end() && !it->is_number()) return fmt::format("{}.{}: must be a number", path, name);
    }
    auto low = number_member(schema, "minimum");
    auto high = number_member(schema, "maximum");
    if (low && high && *low > *high) return fmt::format("{}: minimum is greater than maximum", path);
    return std::nullopt;
  }

  const ordered_json& root_;
  std::set<const ordered_json*> checked_refs_;
};

// Writes JSON the way models do: ", " and ": " between members.
void write_value(const ordered_json& value, std::string& out) {
  if (value.is_object()) {
    out += '{';
    bool first = true;
    for (const auto& [key, member] : value.items()) {
      if (!first) out += ", ";
      first = false;
      out += ordered_json(key).dump(-1, ' ', false, ordered_json::error_handler_t::replace);
      out += ": ";
      write_value(member, out);
    }
    out += '}';
  } else if (value.is_array()) {
    out += '[';
    for (size_t index = 0; index < value.size(); ++index) {
      if (index > 0) out += ", ";
      write_value(value[index], out);
    }
    out += ']';
  } else {
    out += value.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
  }
}

class Writer {
 public:
  Writer(const ordered_json* root, uint64_t seed, size_t max_bytes) : root_(root), rng_(seed), max_bytes_(max_bytes) {}

  bool exhausted() const { return out_.size() >= max_bytes_; }

  void value(const ordered_json& schema, int depth) {
    if (exhausted()) return;
    if (depth > kMaxWriteDepth) {
      out_ += "null";  // a schema that requires itself without end: no finite value conforms
      return;
    }
    if (!schema.is_object() || schema.empty()) return any(depth);
    if (auto ref = schema.find("$ref"); ref != schema.end() && root_) {
      if (const ordered_json* target = resolve_ref(*root_, ref->get<std::string>())) return value(*target, depth + 1);
    }
    if (auto constant = schema.find("const"); constant != schema.end()) return write_value(*constant, out_);
    if (auto values = schema.find("enum"); values != schema.end()) {
      return write_value((*values)[rng_.below(values->size())], out_);
    }
    for (const char* combinator : {"anyOf", "oneOf"}) {
      if (auto branches = schema.find(combinator); branches != schema.end()) {
        return value((*branches)[rng_.below(branches->size())], depth + 1);
      }
    }
    if (schema.contains("allOf")) return value(merged(schema), depth + 1);
    std::string type = pick_type(schema);
    if (type == "object") return object(schema, depth);
    if (type == "array") return array(schema, depth);
    if (type == "string") return string(schema);
    if (type == "integer") return integer(schema);
    if (type == "number") return number(schema);
    if (type == "boolean") {
      out_ += rng_.chance(0.5) ? "true" : "false";
      return;
    }
    if (type == "null") {
      out_ += "null";
      return;
    }
    any(depth);
  }

  // Any object (response_format json_object): a few members of mixed types.
  void any_object(int depth) {
    int members = 2 + static_cast<int>(rng_.below(3));
    out_ += '{';
    for (const std::string& key : distinct_words(members)) {
      if (out_.back() != '{') out_ += ", ";
      write_key(key);
      any(depth + 1);
    }
    out_ += '}';
  }

  std::string take() { return std::move(out_); }

 private:
  std::string pick_type(const ordered_json& schema) {
    auto type = schema.find("type");
    if (type != schema.end() && type->is_string()) return type->get<std::string>();
    if (type != schema.end() && type->is_array() && !type->empty()) {
      // Prefer a value to null, as a model asked for data does.
      std::vector<std::string> types;
      for (const ordered_json& item : *type) types.push_back(item.get<std::string>());
      std::vector<std::string> values;
      std::copy_if(types.begin(), types.end(), std::back_inserter(values), [](const auto& t) { return t != "null"; });
      if (values.empty() || rng_.chance(0.15)) return types[rng_.below(types.size())];
      return values[rng_.below(values.size())];
    }
    if (schema.contains("properties") || schema.contains("additionalProperties") || schema.contains("required")) {
      return "object";
    }
    if (schema.contains("items") || schema.contains("prefixItems") || schema.contains("minItems") ||
        schema.contains("maxItems")) {
      return "array";
    }
    if (schema.contains("minLength") || schema.contains("maxLength")) return "string";
    if (schema.contains("minimum") || schema.contains("maximum")) return "number";
    return "";
  }

  // allOf: the members' object keywords together (properties and required joined), the first
  // value of every other keyword.
  ordered_json merged(const ordered_json& schema) const {
    ordered_json result = schema;
    result.erase("allOf");
    for (const ordered_json& branch_ref : schema["allOf"]) {
      const ordered_json* branch = &branch_ref;
      if (branch->is_object() && branch->contains("$ref") && root_) {
        if (const ordered_json* target = resolve_ref(*root_, (*branch)["$ref"].get<std::string>())) branch = target;
      }
      if (!branch->is_object()) continue;
      for (const auto& [key, member] : branch->items()) {
        if (key == "properties" && member.is_object()) {
          for (const auto& [name, property] : member.items()) {
            if (!result["properties"].contains(name)) result["properties"][name] = property;
          }
        } else if (key == "required" && member.is_array()) {
          for (const ordered_json& name : member) result["required"].push_back(name);
        } else if (!result.contains(key)) {
          result[key] = member;
        }
      }
    }
    return result;
  }

  void write_key(const std::string& key) {
    out_ += ordered_json(key).dump(-1, ' ', false, ordered_json::error_handler_t::replace);
    out_ += ": ";
  }

  void object(const ordered_json& schema, int depth) {
    std::set<std::string> required;
    if (auto names = schema.find("required"); names != schema.end() && names->is_array()) {
      for (const ordered_json& name : *names) {
        if (name.is_string()) required.insert(name.get<std::string>());
      }
    }
    bool shallow = depth >= kShallowDepth;
    std::set<std::string> written;
    out_ += '{';
    auto member = [&](const std::string& key) {
      if (out_.back() != '{') out_ += ", ";
      write_key(key);
      written.insert(key);
    };
    auto properties = schema.find("properties");
    if (properties != schema.end() && properties->is_object()) {
      for (const auto& [name, property] : properties->items()) {
        if (!required.count(name) && (shallow || !rng_.chance(0.7))) continue;
        member(name);
        value(property, depth + 1);
      }
    }
    auto additional = schema.find("additionalProperties");
    bool closed = additional != schema.end() && *additional == false;
    for (const std::string& name : required) {
      if (written.count(name)) continue;
      member(name);  // required but not described: anything the additional properties allow
      if (additional != schema.end() && additional->is_object()) {
        value(*additional, depth + 1);
      } else {
        any(depth + 1);
      }
    }
    bool described = properties != schema.end() && properties->is_object() && !properties->empty();
    if (!closed && !described && !shallow && written.empty()) {
      // A free-form object: a member or two.
      int extra = 1 + static_cast<int>(rng_.below(2));
      for (const std::string& key : distinct_words(extra)) {
        member(key);
        if (additional != schema.end() && additional->is_object()) {
          value(*additional, depth + 1);
        } else {
          any(depth + 1);
        }
      }
    }
    out_ += '}';
  }

  // A tuple's positions, in order (then nothing more: the shortest list the tuple allows).
  const ordered_json* tuple(const ordered_json& schema) const {
    for (const char* name : {"prefixItems", "items"}) {
      auto items = schema.find(name);
      if (items != schema.end() && items->is_array()) return &*items;
    }
    return nullptr;
  }

  void array(const ordered_json& schema, int depth) {
    if (const ordered_json* positions = tuple(schema)) {
      out_ += '[';
      for (size_t index = 0; index < positions->size() && !exhausted(); ++index) {
        if (index > 0) out_ += ", ";
        value((*positions)[index], depth + 1);
      }
      out_ += ']';
      return;
    }
    constexpr int64_t kManyItems = 1 << 20;  // beyond any budget; keeps low + 3 from overflowing
    int64_t low = std::min(schema.contains("minItems") ? schema["minItems"].get<int64_t>() : 0, kManyItems);
    int64_t high = schema.contains("maxItems") ? schema["maxItems"].get<int64_t>() : low + 3;
    high = std::min(high, low + 3);
    if (depth >= kShallowDepth) high = low;
    if (low == 0 && high > 0 && depth < kShallowDepth) low = 1;  // an empty list is rarely the answer
    int64_t count = low + static_cast<int64_t>(rng_.below(static_cast<uint64_t>(high - low) + 1));
    static const ordered_json kAnything = ordered_json::object();
    auto items = schema.find("items");
    const ordered_json& item = items != schema.end() ? *items : kAnything;
    out_ += '[';
    for (int64_t index = 0; index < count && !exhausted(); ++index) {
      if (index > 0) out_ += ", ";
      value(item, depth + 1);
    }
    out_ += ']';
  }

  void string(const ordered_json& schema) {
    std::string text;
    std::string format =
        schema.contains("format") && schema["format"].is_string() ? schema["format"].get<std::string>() : "";
    int day = 1 + static_cast<int>(rng_.below(28));
    int month = 1 + static_cast<int>(rng_.below(12));
    if (format == "date-time") {
      text = fmt::format("2025-{:02}-{:02}T{:02}:{:02}:00Z", month, day, rng_.below(24), rng_.below(60));
    } else if (format == "date") {
      text = fmt::format("2025-{:02}-{:02}", month, day);
    } else if (format == "time") {
      text = fmt::format("{:02}:{:02}:00", rng_.below(24), rng_.below(60));
    } else if (format == "email") {
      text = fmt::format("{}@example.com", word());
    } else if (format == "uri" || format == "url") {
      text = fmt::format("https://example.com/{}", word());
    } else if (format == "uuid") {
      text = fmt::format("{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}", rng_.next() & 0xffffffffU, rng_.below(0x10000),
                         rng_.below(0x1000), rng_.below(0x1000), rng_.next() & 0xffffffffffffULL);
    } else {
      int words = 1 + static_cast<int>(rng_.below(4));
      for (int index = 0; index < words; ++index) {
        if (index > 0) text += ' ';
        text += word();
      }
    }
    size_t min_length = schema.contains("minLength") ? schema["minLength"].get<size_t>() : 0;
    size_t max_length = schema.contains("maxLength") ? schema["maxLength"].get<size_t>() : std::string::npos;
    while (text.size() < min_length && out_.size() + text.size() < max_bytes_) text += " " + std::string(word());
    if (text.size() > max_length) text.resize(max_length);
    while (!text.empty() && text.back() == ' ' && text.size() > min_length) text.pop_back();
    out_ += ordered_json(text).dump();
  }

  // [low, high] from minimum/maximum and the exclusive bounds (numbers, as drafts 6+ write them).
  std::pair<double, double> range(const ordered_json& schema, bool integer) const {
    std::optional<double> low = number_member(schema, "minimum");
    std::optional<double> high = number_member(schema, "maximum");
    double step = integer ? 1 : 0.01;
    if (auto bound = number_member(schema, "exclusiveMinimum"))
      low = std::max(low.value_or(*bound + step), *bound + step);
    if (auto bound = number_member(schema, "exclusiveMaximum"))
      high = std::min(high.value_or(*bound - step), *bound - step);
    if (!low && !high) low = 0;
    if (!low) low = *high - kDefaultSpan;
    if (!high) high = *low + kDefaultSpan;
    return {std::clamp(*low, -kLargest, kLargest), std::clamp(*high, -kLargest, kLargest)};
  }

  void integer(const ordered_json& schema) {
    auto [low, high] = range(schema, true);
    auto first = static_cast<int64_t>(std::ceil(low));
    auto last = static_cast<int64_t>(std::floor(high));
    if (last < first) last = first;
    out_ += std::to_string(first + static_cast<int64_t>(rng_.below(static_cast<uint64_t>(last - first) + 1)));
  }

  void number(const ordered_json& schema) {
    auto [low, high] = range(schema, false);
    double drawn = low + rng_.uniform() * (high - low);
    double rounded = std::round(drawn * 100) / 100;
    double chosen = rounded >= low && rounded <= high ? rounded : drawn;
    if (chosen < low || chosen > high) chosen = low;
    out_ += fmt::format("{}", chosen);
    if (std::floor(chosen) == chosen && std::fabs(chosen) < kLargest) out_ += ".0";
  }

  void any(int depth) {
    int choice = static_cast<int>(rng_.below(depth >= kShallowDepth ? 4 : 6));
    switch (choice) {
      case 0: out_ += ordered_json(std::string(word())).dump(); break;
      case 1: out_ += std::to_string(rng_.below(1000)); break;
      case 2: out_ += fmt::format("{}", static_cast<double>(rng_.below(10000)) / 100 + 0.01); break;
      case 3: out_ += rng_.chance(0.5) ? "true" : "false"; break;
      case 4: any_object(depth + 1); break;
      default:
        out_ += '[';
        out_ += ordered_json(std::string(word())).dump();
        out_ += ", ";
        out_ += ordered_json(std::string(word())).dump();
        out_ += ']';
    }
  }

  std::string_view word() { return kWords[rng_.below(kWordCount)]; }

  std::vector<std::string> distinct_words(int count) {
    std::vector<std::string> words;
    while (static_cast<int>(words.size()) < count) {
      std::string candidate(word());
      if (std::find(words.begin(), words.end(), candidate) == words.end()) words.push_back(std::move(candidate));
    }
    return words;
  }

  const ordered_json* root_;
  SplitMix64 rng_;
  size_t max_bytes_;
  std::string out_;
};

bool word_byte(unsigned char c) {
  return std::isalnum(c) || c == '_' || c >= 0x80;
}

}  // namespace

std::optional<std::string> schema_error(const ordered_json& schema) {
  if (!schema.is_object() && !schema.is_boolean()) {
    return fmt::format("the schema must be a JSON object, got {}", schema.type_name());
  }
  return Checker(schema).check(schema, "$", 0);
}

GeneratedJson generate_json(const ordered_json* schema, uint64_t seed, size_t max_bytes) {
  Writer writer(schema, seed, max_bytes);
  if (!schema || schema->is_boolean() || (schema->is_object() && schema->empty())) {
    writer.any_object(0);
  } else {
    writer.value(*schema, 0);
  }
  GeneratedJson generated;
  generated.complete = !writer.exhausted();
  generated.text = writer.take();
  if (generated.text.size() > max_bytes) generated.text.resize(max_bytes);
  return generated;
}

std::vector<std::string> json_tokens(std::string_view text) {
  std::vector<std::string> tokens;
  size_t position = 0;
  while (position < text.size()) {
    size_t start = position;
    while (position < text.size() && text[position] == ' ') ++position;
    if (position == text.size()) {
      if (tokens.empty()) {
        tokens.emplace_back(text.substr(start));
      } else {
        tokens.back() += text.substr(start);
      }
      break;
    }
    if (word_byte(static_cast<unsigned char>(text[position]))) {
      while (position < text.size() && word_byte(static_cast<unsigned char>(text[position]))) ++position;
    } else {
      ++position;
      if (position < text.size() && text[position] != ' ' && !word_byte(static_cast<unsigned char>(text[position]))) {
        ++position;
      }
    }
    tokens.emplace_back(text.substr(start, position - start));
  }
  return tokens;
}

}  // namespace nebula::sim
