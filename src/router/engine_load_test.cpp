#include "router/engine_load.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "sim/engine.h"
#include "sim/metrics_text.h"

namespace nebula::router {
namespace {

TEST(EngineLoad, ReadsVllm) {
  auto load = parse_engine_load(R"(# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 3
vllm:num_requests_waiting{model_name="m"} 7
vllm:kv_cache_usage_perc{model_name="m"} 0.25
vllm:cache_config_info{block_size="16",enable_prefix_caching="True",num_gpu_blocks="1000"} 1.0
vllm:time_to_first_token_seconds_bucket{model_name="m",le="0.001"} 4
)");
  EXPECT_EQ(load.running, 3);
  EXPECT_EQ(load.waiting, 7);
  EXPECT_DOUBLE_EQ(load.kv_usage, 0.25);
  EXPECT_EQ(load.kv_capacity_tokens, 16'000);
  EXPECT_EQ(load.at, SteadyClock::time_point{}) << "the caller says when it was read";
}

TEST(EngineLoad, ReadsOlderVllmCacheUsageOnlyWhenTheNewNameIsMissing) {
  EXPECT_DOUBLE_EQ(parse_engine_load("vllm:gpu_cache_usage_perc 0.5\n").kv_usage, 0.5);
  EXPECT_DOUBLE_EQ(parse_engine_load("vllm:gpu_cache_usage_perc 0.5\nvllm:kv_cache_usage_perc 0.75\n").kv_usage, 0.75);
}

TEST(EngineLoad, ReadsSglang) {
  auto load = parse_engine_load(
      "sglang:num_queue_reqs{model_name=\"m\"} 2\nsglang:num_running_reqs{model_name=\"m\"} 5\n"
      "sglang:token_usage{model_name=\"m\"} 0.5\nsglang:max_total_num_tokens{model_name=\"m\"} 123456\n"
      "sglang:cache_hit_rate{model_name=\"m\"} 0.9\n");
  EXPECT_EQ(load.waiting, 2);
  EXPECT_EQ(load.running, 5);
  EXPECT_DOUBLE_EQ(load.kv_usage, 0.5);
  EXPECT_EQ(load.kv_capacity_tokens, 123'456);
}

TEST(EngineLoad, ReadsLlamaCpp) {
  auto load = parse_engine_load(
      "llamacpp:requests_deferred 1\nllamacpp:requests_processing 4\nllamacpp:kv_cache_usage_ratio 0.125\n"
      "llamacpp:n_decode_total 99\n");
  EXPECT_EQ(load.waiting, 1);
  EXPECT_EQ(load.running, 4);
  EXPECT_DOUBLE_EQ(load.kv_usage, 0.125);
  EXPECT_EQ(load.kv_capacity_tokens, 0);
}

TEST(EngineLoad, SumsCountsOverModelsAndAveragesUsage) {
  auto load = parse_engine_load(
      "vllm:num_requests_waiting{model_name=\"a\"} 1\nvllm:num_requests_waiting{model_name=\"b\"} 2\n"
      "vllm:num_requests_running{model_name=\"a\"} 10\nvllm:num_requests_running{model_name=\"b\"} 20\n"
      "vllm:kv_cache_usage_perc{model_name=\"a\"} 0.2\nvllm:kv_cache_usage_perc{model_name=\"b\"} 0.6\n"
      "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"10\"} 1\n"
      "vllm:cache_config_info{num_gpu_blocks=\"20\",block_size=\"32\"} 1\n");
  EXPECT_EQ(load.waiting, 3);
  EXPECT_EQ(load.running, 30);
  EXPECT_DOUBLE_EQ(load.kv_usage, 0.4);
  EXPECT_EQ(load.kv_capacity_tokens, 16 * 10 + 20 * 32);
}

TEST(EngineLoad, UnknownFiguresStayUnknown) {
  for (const char* text : {"", "\n\n", "# only a comment\n", "tgi_queue_size 3\n", "vllm:num_requests_waiting\n"}) {
    auto load = parse_engine_load(text);
    EXPECT_EQ(load.waiting, -1) << text;
    EXPECT_EQ(load.running, -1) << text;
    EXPECT_EQ(load.kv_usage, -1) << text;
    EXPECT_EQ(load.kv_capacity_tokens, 0) << text;
  }
}

TEST(EngineLoad, SkipsGarbageAndImpossibleValues) {
  auto load = parse_engine_load(
      "vllm:num_requests_waiting{model_name=\"a\"} NaN\n"
      "vllm:num_requests_waiting{model_name=\"b\"} +Inf\n"
      "vllm:num_requests_waiting{model_name=\"c\"} -3\n"
      "vllm:num_requests_waiting{model_name=\"d\"} 12abc\n"
      "vllm:num_requests_waiting{model_name=\"e} 5\n"                         // unterminated label value
      "vllm:num_requests_waiting{model_name=\"f\" 5\n"                        // unterminated label set
      "vllm:num_requests_waiting{=\"g\"} 5\r\n"                               // no label name: still a sample
      "vllm:num_requests_waiting{model_name=\"h\\\"}\"} 2 1700000000000\r\n"  // escaped quote, timestamp
      "vllm:num_requests_running{model_name=\"x\"}\n"
      "vllm:kv_cache_usage_perc 7\n"  // not a share: clamped
      "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"lots\"} 1\n"
      "vllm:cache_config_info{block_size=\"1e300\",num_gpu_blocks=\"1e300\"} 1\n"
      "\xff\xfe garbage \x01\n");
  EXPECT_EQ(load.waiting, 7);
  EXPECT_EQ(load.running, -1);
  EXPECT_DOUBLE_EQ(load.kv_usage, 1.0);
  EXPECT_EQ(load.kv_capacity_tokens, 1'000'000'000'000'000) << "an absurd capacity is capped, not undefined";
}

TEST(EngineLoad, RandomBytesNeverCrash) {
  std::mt19937 random(14);
  const std::string alphabet = "vlm:_num_requests_waiting{}=\",\\ \n\t#0123456789.eE+-NaInf";
  for (int round = 0; round < 2000; ++round) {
    std::string text;
    size_t length = random() % 300;
    for (size_t i = 0; i < length; ++i) {
      text.push_back(random() % 4 == 0 ? static_cast<char>(random() % 256) : alphabet[random() % alphabet.size()]);
    }
    if (round % 2) text = "vllm:num_requests_waiting" + text;
    auto load = parse_engine_load(text);
    EXPECT_TRUE(load.waiting == -1 || load.waiting >= 0);
    EXPECT_TRUE(load.kv_usage == -1 || (load.kv_usage >= 0 && load.kv_usage <= 1));
    EXPECT_GE(load.kv_capacity_tokens, 0);
  }
}

// What `nebula engine-sim` serves in each dialect is read as such.
TEST(EngineLoad, ReadsTheSimulatorsDialects) {
  sim::EngineConfig config;
  config.block_size = 16;
  config.num_kv_blocks = 512;
  sim::Engine engine(config);
  sim::ServerGauges gauges;
  gauges.model = "m";
  for (auto dialect : {sim::Dialect::Vllm, sim::Dialect::Sglang, sim::Dialect::Llamacpp}) {
    auto load = parse_engine_load(sim::render_metrics(dialect, engine, gauges));
    EXPECT_EQ(load.waiting, 0) << static_cast<int>(dialect);
    EXPECT_EQ(load.running, 0) << static_cast<int>(dialect);
    EXPECT_EQ(load.kv_usage, 0) << static_cast<int>(dialect);
    if (dialect == sim::Dialect::Vllm) {
      EXPECT_EQ(load.kv_capacity_tokens, 16 * 512);
    }
  }
  auto tgi = parse_engine_load(sim::render_metrics(sim::Dialect::Tgi, engine, gauges));
  EXPECT_EQ(tgi.waiting, -1) << "TGI's names are not read";
}

}  // namespace
}  // namespace nebula::router
