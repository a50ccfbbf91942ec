#include "common/prometheus.h"

#include <gtest/gtest.h>

namespace nebula {
namespace {

TEST(PrometheusLabel, EscapesBackslashQuoteAndNewlineOnly) {
  EXPECT_EQ(prometheus_label("qwen2.5-0.5b"), "qwen2.5-0.5b");
  EXPECT_EQ(prometheus_label(""), "");
  EXPECT_EQ(prometheus_label(R"(a"b)"), R"(a\"b)");
  EXPECT_EQ(prometheus_label(R"(a\b)"), R"(a\\b)");
  EXPECT_EQ(prometheus_label("a\nb"), R"(a\nb)");
  // A value that tries to close the label set and start a sample of its own stays one value.
  EXPECT_EQ(prometheus_label("x\"} 1\nnebula_fake 2\n"), R"(x\"} 1\nnebula_fake 2\n)");
  // Other bytes, UTF-8 included, pass as they are.
  EXPECT_EQ(prometheus_label("mod\xc3\xa8le\t{}=,"), "mod\xc3\xa8le\t{}=,");
}

}  // namespace
}  // namespace nebula
