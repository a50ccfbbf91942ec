#pragma once
// What an engine says about its own load, read from its Prometheus /metrics text.
#include <string_view>

#include "router/policy.h"

namespace nebula::router {

// The EngineLoad in `metrics_text` (`at` left unset), from whichever dialect it speaks:
//   vLLM      vllm:num_requests_waiting, vllm:num_requests_running, vllm:kv_cache_usage_perc
//             (older: vllm:gpu_cache_usage_perc), capacity = num_gpu_blocks x block_size of
//             vllm:cache_config_info's labels;
//   SGLang    sglang:num_queue_reqs, sglang:num_running_reqs, sglang:token_usage,
//             sglang:max_total_num_tokens;
//   llama.cpp llamacpp:requests_deferred, llamacpp:requests_processing,
//             llamacpp:kv_cache_usage_ratio.
// Request counts and capacities are summed over label sets (an engine serving several models);
// KV usage is their mean. A figure no sample gives stays unknown (-1, capacity 0). Never fails:
// comments, garbage lines, negative, NaN and infinite values are skipped.
EngineLoad parse_engine_load(std::string_view metrics_text);

}  // namespace nebula::router
