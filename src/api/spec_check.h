#pragma once
// Reading what a user wrote (a spec file, a PUT body) strictly: a field no reader knows is an
// error naming it and the closest known one, as kubectl's --validate=strict does.
#include <string>
#include <string_view>
#include <vector>

#include "api/api.h"

namespace nebula::api {

// deployment_from_json(), and then every field of the document, its metadata, spec and
// spec.shape must be one the reader knows (status is the controller's and is not checked).
// "kind", "apiVersion" and a top-level "name" are accepted.
Result<Deployment> deployment_from_user_json(const json& value);

// The candidates closest to `word` by edit distance, closest first, at most `limit`, and only
// those close enough to be a plausible misspelling (or that contain it, or it them).
std::vector<std::string> closest_names(std::string_view word, const std::vector<std::string>& candidates,
                                       size_t limit = 1);

}  // namespace nebula::api
