#pragma once
// How deep JSON text nests, measured before it is parsed: a body of a million '[' must not
// exhaust the parser's stack. Kept apart from common/json.h so few files include it.

#include <string_view>

namespace nebula {

// Deepest nesting of arrays and objects in JSON text, strings skipped; stops counting once it
// passes `limit` (the answer is then limit + 1).
int json_depth(std::string_view text, int limit);

}  // namespace nebula
