#pragma once
// Private to src/api: reading resource documents with errors that name the bad field.
#include <fmt/format.h>

#include <stdexcept>

#include "api/api.h"

namespace nebula::api::detail {

// Thrown by the readers; guarded() turns it into InvalidArgument.
struct FieldError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline const char* type_name(const json& value) {
  return value.type_name();
}

// Reads an optional field: absent or null leaves `out` as it is; a wrong type names the field.
template <typename T>
void read(const json& object, const char* name, T& out) {
  auto it = object.find(name);
  if (it == object.end() || it->is_null()) return;
  try {
    out = it->get<T>();
  } catch (const json::exception&) {
    throw FieldError(fmt::format("field '{}' has the wrong type ({})", name, type_name(*it)));
  }
}

inline const json& object_field(const json& object, const char* name) {
  static const json kEmpty = json::object();
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
