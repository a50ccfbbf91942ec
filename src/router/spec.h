#pragma once
// The routing spec's grammar, shared by every policy: NAME[,PARAM=NUMBER...], e.g.
// "prefix+load,prefix=2,queue=1,kv=1". Each policy declares the parameters it takes; reading a
// spec against them is strict (an unknown, repeated, malformed or out-of-range parameter is
// InvalidArgument naming it), and format_spec() writes the canonical form back.
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"

namespace nebula::router {

// Longer specs are refused before anything else is looked at.
inline constexpr size_t kMaxSpecChars = 256;

// A parameter a policy takes.
struct ParamDef {
  std::string_view name;
  double default_value = 0;
  double min = 0;
  double max = 0;
  bool whole = false;   // a count: no fraction
  bool weight = false;  // a scorer's weight (see read_params)
  std::string_view help;
};

// The spec cut into its name and NAME=VALUE parts, values still text.
struct SpecParts {
  std::string name;
  std::vector<std::pair<std::string, std::string>> params;
};

// Parameter values by name, every declared parameter present.
using ParamValues = std::map<std::string, double, std::less<>>;

// Syntax only: length, characters, the name, NAME=VALUE parts.
Result<SpecParts> split_spec(std::string_view spec);

// The values of `parts` against the parameters `policy` declares. Tunables not given keep their
// defaults. Weights: when the spec gives none, all take their defaults; when it gives some, the
// ones left out are 0 (the spec lists the scorers it wants), and at least one must be above 0.
Result<ParamValues> read_params(const SpecParts& parts, std::span<const ParamDef> params);

// The canonical spec: the name, then every weight above 0 and every tunable not at its default,
// in declaration order. make_policy(format_spec(...)) makes the same policy.
std::string format_spec(std::string_view name, std::span<const ParamDef> params, const ParamValues& values);

// A number as a spec writes it: "2", "0.5", "1.25".
std::string format_number(double value);
// Text from a spec made safe to quote in a message: bytes outside printable ASCII as \xNN.
std::string printable(std::string_view text);

}  // namespace nebula::router
