#pragma once
// How figures and server text become screen text: units, bars, and the one rule that keeps
// hostile text (escape sequences in an event message or a log) from reaching the terminal.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace nebula::tui {

// Printable ASCII only: a control character becomes '?', a tab a space, and a multi-byte UTF-8
// character one '?' (the screen counts one column per byte).
std::string printable(std::string_view text);
// At most `width` characters, cut with "~" when longer.
std::string fit(std::string_view text, size_t width);
// "12.3" below 100, "123" from there; "-" when not known.
std::string format_rate(std::optional<double> per_second);
// "850ms", "1.25s", "-".
std::string format_seconds(std::optional<double> seconds);
// "79.6" (GiB, one decimal) from MiB.
std::string format_gib(int64_t mb);
// "[#####.....]" of `width` characters (brackets included), filled in proportion; width < 3
// gives "".
std::string bar(double used, double total, int width);
// "5s", "3m", "2h", "4d" between two Unix-ms times; "-" for an unknown time.
std::string age(int64_t since_ms, int64_t now_ms);

}  // namespace nebula::tui
