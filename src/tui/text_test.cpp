#include "tui/text.h"

#include <gtest/gtest.h>

namespace nebula::tui {
namespace {

TEST(TuiText, PrintableKeepsEscapeSequencesOffTheTerminal) {
  EXPECT_EQ(printable("plain text 123"), "plain text 123");
  EXPECT_EQ(printable("\x1b[2Jcleared\x07"), "?[2Jcleared?");
  EXPECT_EQ(printable("a\tb\r\nc"), "a b??c");
  EXPECT_EQ(printable("caf\xc3\xa9 \xe2\x9c\x93"), "caf? ?");  // one '?' per UTF-8 character
  EXPECT_EQ(printable(std::string("nul\0byte", 8)), "nul?byte");
  EXPECT_EQ(printable("\x9b"
                      "31m"),
            "?31m");  // an 8-bit CSI
}

TEST(TuiText, Units) {
  EXPECT_EQ(format_rate(std::nullopt), "-");
  EXPECT_EQ(format_rate(0), "0.0");
  EXPECT_EQ(format_rate(12.34), "12.3");
  EXPECT_EQ(format_rate(1234.5), "1234");
  EXPECT_EQ(format_seconds(0.0451), "45ms");
  EXPECT_EQ(format_seconds(1.5), "1.50s");
  EXPECT_EQ(format_seconds(std::nullopt), "-");
  EXPECT_EQ(format_gib(81920), "80.0");
  EXPECT_EQ(fit("deployment", 6), "deplo~");
  EXPECT_EQ(fit("chat", 6), "chat");
  EXPECT_EQ(age(1000, 6000), "5s");
  EXPECT_EQ(age(0, 6000), "-");
  EXPECT_EQ(age(0 + 1, 1 + 3 * 3600 * 1000), "3h");
}

TEST(TuiText, Bars) {
  EXPECT_EQ(bar(40, 80, 12), "[#####.....]");
  EXPECT_EQ(bar(0, 80, 7), "[.....]");
  EXPECT_EQ(bar(80, 80, 7), "[#####]");
  EXPECT_EQ(bar(200, 80, 7), "[#####]");   // a report above the total is clamped
  EXPECT_EQ(bar(1, 80000, 7), "[#....]");  // a little is still visible
  EXPECT_EQ(bar(10, 0, 7), "[.....]");     // no total reported
  EXPECT_EQ(bar(10, 80, 2), "");
}

}  // namespace
}  // namespace nebula::tui
