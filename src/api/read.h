#pragma once
// Private to src/api: reading resource documents with errors that name the bad field.
#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "api/api.h"

namespace nebula::api::detail {

// Thrown by the readers; guarded() turns it into InvalidArgument.
struct FieldError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline const char* type_name(const json& value) {
  return value.type_name();
}

// While a FieldLog is alive on a thread, the readers below note every field they look for, by
// the object it was looked for in: deployment_from_user_json() then finds the fields of a
// user's document that no reader knows.
struct FieldLog {
  std::vector<std::pair<const json*, std::string>> read;
  FieldLog() : previous_(current()) { current() = this; }
  ~FieldLog() { current() = previous_; }
  FieldLog(const FieldLog&) = delete;
  FieldLog& operator=(const FieldLog&) = delete;
  static FieldLog*& current() {
    thread_local FieldLog* log = nullptr;
    return log;
  }

 private:
  FieldLog* previous_;
};

inline void note_read(const json& object, const char* name) {
  if (FieldLog* log = FieldLog::current()) log->read.emplace_back(&object, name);
}

// A whole number that fits T: 1.7 is not a replica count, and 1e12 does not fit an int.
template <typename T>
T whole_number(const json& value, const char* name) {
  if (value.is_number_float()) {
    double number = value.get<double>();
    if (!std::isfinite(number) || number != std::floor(number)) {
      throw FieldError(fmt::format("field '{}' must be a whole number, got {}", name, value.dump()));
    }
    if (!(number >= static_cast<double>(std::numeric_limits<T>::min()) &&
          number < static_cast<double>(std::numeric_limits<T>::max()) + 1.0)) {
      throw FieldError(fmt::format("field '{}' is too large ({})", name, value.dump()));
    }
    return static_cast<T>(number);
  }
  if (value.is_number_unsigned()) {
    if (std::cmp_greater(value.get<uint64_t>(), std::numeric_limits<T>::max())) {
      throw FieldError(fmt::format("field '{}' is too large ({})", name, value.dump()));
    }
    return static_cast<T>(value.get<uint64_t>());
  }
  if (value.is_number_integer()) {
    int64_t number = value.get<int64_t>();
    if (std::cmp_greater(number, std::numeric_limits<T>::max())) {
      throw FieldError(fmt::format("field '{}' is too large ({})", name, value.dump()));
    }
    if (std::cmp_less(number, std::numeric_limits<T>::min())) {
      throw FieldError(fmt::format("field '{}' is out of range ({})", name, value.dump()));
    }
    return static_cast<T>(number);
  }
  throw FieldError(fmt::format("field '{}' must be a whole number, got {}", name, type_name(value)));
}

// Reads an optional field: absent or null leaves `out` as it is; a wrong type names the field.
template <typename T>
void read(const json& object, const char* name, T& out) {
  note_read(object, name);
  auto it = object.find(name);
  if (it == object.end() || it->is_null()) return;
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    out = whole_number<T>(*it, name);
  } else {
    try {
      out = it->get<T>();
    } catch (const json::exception&) {
      throw FieldError(fmt::format("field '{}' has the wrong type ({})", name, type_name(*it)));
    }
  }
}

inline const json& object_field(const json& object, const char* name) {
  static const json kEmpty = json::object();
  note_read(object, name);
  auto it = object.find(name);
  if (it == object.end() || it->is_null()) return kEmpty;
  if (!it->is_object()) throw FieldError(fmt::format("field '{}' must be an object", name));
  return *it;
}

inline void require_object(const json& value, const char* what) {
  if (!value.is_object()) throw FieldError(fmt::format("{} must be a JSON object, got {}", what, type_name(value)));
}

template <typename F>
auto guarded(F&& parse) -> Result<decltype(parse())> {
  try {
    return parse();
  } catch (const FieldError& error) {
    return make_error(ErrorCode::InvalidArgument, error.what());
  } catch (const json::exception& error) {
    return make_error(ErrorCode::InvalidArgument, error.what());
  }
}

inline Metadata metadata_from(const json& value) {
  Metadata metadata;
  const json& object = object_field(value, "metadata");
  read(object, "name", metadata.name);
  read(object, "uid", metadata.uid);
  read(object, "created_ms", metadata.created_ms);
  read(object, "revision", metadata.revision);
  read(object, "labels", metadata.labels);
  return metadata;
}

}  // namespace nebula::api::detail
