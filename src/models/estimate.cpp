// The VRAM estimate of one replica (DESIGN.md §4):
//   weights + KV cache (2 × layers × KV heads × head dim × bytes per element × context × sequences)
//   + engine overhead (per GPU), split evenly across tensor-parallel GPUs.
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <regex>

#include "models/models.h"

namespace nebula::models {

namespace {

int64_t ceil_div(int64_t a, int64_t b) {
  return b > 0 ? (a + b - 1) / b : 0;
}

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

}  // namespace

std::string normalize_dtype(std::string_view dtype) {
  std::string d = lower(dtype);
  if (d == "float32" || d == "fp32" || d == "f32" || d == "float") return "fp32";
  if (d == "float16" || d == "fp16" || d == "f16" || d == "half") return "fp16";
  if (d == "bfloat16" || d == "bf16") return "bf16";
  if (d.rfind("fp8", 0) == 0 || d.rfind("float8", 0) == 0 || d.rfind("f8_", 0) == 0) return "fp8";
  if (d == "int8" || d == "i8") return "int8";
  if (d == "int4") return "int4";
  return d;
}

std::optional<double> dtype_bytes(std::string_view dtype) {
  std::string d = normalize_dtype(dtype);
  if (d == "fp32") return 4.0;
  if (d == "fp16" || d == "bf16") return 2.0;
  if (d == "fp8" || d == "int8") return 1.0;
  if (d == "int4") return 0.5;
  return std::nullopt;
}

int64_t engine_overhead_bytes(const std::string& engine) {
  // vLLM, SGLang, TGI: CUDA context, CUDA graphs, activation and sampler workspace.
  if (engine == "vllm" || engine == "sglang" || engine == "tgi") return 2 * kGiB;
  // llama.cpp's compute buffers are small.
  if (engine == "llamacpp" || engine == "ollama") return 512 * kMiB;
  return 1 * kGiB;
}

double parameters_billions_in_name(const std::string& model) {
  static const std::regex kSize(R"((?:^|[-_/:])(?:(\d+)x)?(\d+(?:\.\d+)?)[bB](?=$|[-_/:]))");
  double best = 0;
  for (auto it = std::sregex_iterator(model.begin(), model.end(), kSize); it != std::sregex_iterator(); ++it) {
    double experts = (*it)[1].matched ? std::stod((*it)[1].str()) : 1;
    best = std::max(best, experts * std::stod((*it)[2].str()));
  }
  return best;
}

double claimed_fraction(const api::DeploymentSpec& spec) {
  if (spec.vram_mb > 0 || spec.gpus_per_replica == 0) return 0;
  if (spec.gpu_memory_utilization > 0) return spec.gpu_memory_utilization;
  return spec.engine == "vllm" ? kVllmGpuMemoryUtilization : 0;
}

Estimate estimate_with(const api::DeploymentSpec& spec, const ModelInfo& info, const std::string& source) {
  Estimate e;
  e.model = spec.model;
  e.engine = spec.engine;
  e.source = source;
  e.tensor_parallel = std::max(1, spec.gpus_per_replica);
  e.parameters = info.parameters;
  e.quantization = info.quantization;

  // Weights: the spec's dtype recasts them (vLLM --dtype, --quantization fp8); otherwise what the
  // file or catalog says.
  std::string wanted_dtype = spec.dtype.empty() || spec.dtype == "auto" ? "" : normalize_dtype(spec.dtype);
  e.weights_dtype = !wanted_dtype.empty() ? wanted_dtype : !info.dtype.empty() ? info.dtype : "fp16";
  if (spec.shape.weights_mb > 0) {
    e.weights_bytes = spec.shape.weights_mb * kMiB;
    e.notes.push_back("weights from spec.shape.weights_mb");
  } else if (!wanted_dtype.empty() && wanted_dtype != info.dtype && info.parameters > 0) {
    e.weights_bytes =
        static_cast<int64_t>(static_cast<double>(info.parameters) * dtype_bytes(wanted_dtype).value_or(2));
    e.quantization = wanted_dtype == "fp16" || wanted_dtype == "bf16" || wanted_dtype == "fp32" ? "" : wanted_dtype;
  } else if (info.weight_bytes > 0) {
    e.weights_bytes = info.weight_bytes;
  } else {
    e.weights_bytes =
        static_cast<int64_t>(static_cast<double>(info.parameters) * dtype_bytes(e.weights_dtype).value_or(2));
  }

  // KV cache.
  e.layers = spec.shape.layers > 0 ? spec.shape.layers : info.layers;
  e.kv_heads = spec.shape.kv_heads > 0 ? spec.shape.kv_heads : info.kv_heads;
  e.head_dim = spec.shape.head_dim > 0 ? spec.shape.head_dim : info.head_dim;
  if (!spec.kv_cache_dtype.empty() && spec.kv_cache_dtype != "auto") {
    e.kv_cache_dtype = normalize_dtype(spec.kv_cache_dtype);
  } else {
    // Engines keep the cache in the model's float type; quantised weights still get a 16-bit cache.
    bool float_weights = e.weights_dtype == "fp32" || e.weights_dtype == "fp16" || e.weights_dtype == "bf16";
    e.kv_cache_dtype = float_weights ? e.weights_dtype : "fp16";
  }
  double kv_element = dtype_bytes(e.kv_cache_dtype).value_or(2);
  e.kv_bytes_per_token =
      static_cast<int64_t>(2.0 * e.layers * e.kv_heads * static_cast<double>(e.head_dim) * kv_element);
  if (spec.max_context > 0) {
    e.context = spec.max_context;
  } else if (info.context_length > 0) {
    e.context = std::min(info.context_length, kDefaultContextCap);
  } else {
    e.context = 4096;
  }
  e.sequences = spec.max_seqs > 0 ? spec.max_seqs : 1;
  e.kv_cache_bytes = e.kv_bytes_per_token * static_cast<int64_t>(e.context) * e.sequences;
  if (e.kv_bytes_per_token == 0) e.notes.push_back("KV cache unknown: the model's layers and KV heads are not known");

  e.overhead_bytes = spec.shape.overhead_mb > 0 ? spec.shape.overhead_mb * kMiB
                                                : engine_overhead_bytes(spec.engine) * e.tensor_parallel;
  e.total_bytes = e.weights_bytes + e.kv_cache_bytes + e.overhead_bytes;
  e.per_gpu_bytes = ceil_div(e.total_bytes, e.tensor_parallel);
  e.per_gpu_mb = ceil_div(e.per_gpu_bytes, kMiB);
  e.vram_mb = e.per_gpu_mb * e.tensor_parallel;
  e.gpu_memory_utilization = claimed_fraction(spec);
  if (spec.gpus_per_replica == 0) {
    e.notes.push_back("gpus_per_replica is 0: runs on CPU, claims no VRAM");
    e.per_gpu_bytes = e.per_gpu_mb = e.vram_mb = 0;
    e.gpu_memory_utilization = 0;
  }
  return e;
}

Estimate estimate(const api::DeploymentSpec& spec) {
  if (spec.vram_mb > 0) {
    Estimate e;
    e.model = spec.model;
    e.engine = spec.engine;
    e.source = "spec.vram_mb";
    e.tensor_parallel = std::max(1, spec.gpus_per_replica);
    e.total_bytes = spec.vram_mb * kMiB;
    e.per_gpu_mb = ceil_div(spec.vram_mb, e.tensor_parallel);
    e.per_gpu_bytes = e.per_gpu_mb * kMiB;
    e.vram_mb = spec.vram_mb;
    return e;
  }
  std::vector<std::string> notes;
  if (auto match = find_in_catalog(spec.model)) {
    return estimate_with(spec, match->info, "catalog:" + match->info.id);
  }
  if (looks_like_path(spec.model)) {
    auto info = read_model_path(spec.model);
    if (info) {
      Estimate e = estimate_with(spec, *info, info->source + ":" + spec.model);
      return e;
    }
    notes.push_back("cannot read the model file: " + info.error().message);
  }
  ModelInfo guess;
  double billions = parameters_billions_in_name(spec.model);
  Estimate e;
  if (billions > 0) {
    // No shape: FP16 weights from the parameter count, and 20% of them + 2 GiB standing in for
    // the KV cache and the engine (GPUStack's rule of thumb).
    guess.parameters = static_cast<int64_t>(billions * 1e9);
    guess.dtype = "fp16";
    e = estimate_with(spec, guess, fmt::format("name:{}B", billions));
    if (spec.shape.overhead_mb == 0 && e.kv_bytes_per_token == 0) {
      e.overhead_bytes = static_cast<int64_t>(std::ceil(static_cast<double>(e.weights_bytes) * 0.2)) + 2 * kGiB;
    }
  } else {
    // Nothing known: 8 GiB, all of it "overhead".
    guess.dtype = "fp16";
    e = estimate_with(spec, guess, "default");
    if (spec.shape.overhead_mb == 0 && spec.shape.weights_mb == 0 && e.kv_bytes_per_token == 0) {
      e.overhead_bytes = 8 * kGiB;
    }
    notes.push_back("the model is not in the catalog and its name gives no size: 8 GiB assumed; set vram_mb");
  }
  e.total_bytes = e.weights_bytes + e.kv_cache_bytes + e.overhead_bytes;
  e.per_gpu_bytes = ceil_div(e.total_bytes, e.tensor_parallel);
  e.per_gpu_mb = ceil_div(e.per_gpu_bytes, kMiB);
  e.vram_mb = e.per_gpu_mb * e.tensor_parallel;
  if (spec.gpus_per_replica == 0) e.per_gpu_bytes = e.per_gpu_mb = e.vram_mb = 0;
  e.notes.insert(e.notes.begin(), notes.begin(), notes.end());
  return e;
}

json estimate_to_json(const Estimate& e) {
  return json{{"model", e.model},
              {"source", e.source},
              {"notes", e.notes},
              {"engine", e.engine},
              {"parameters", e.parameters},
              {"weights_dtype", e.weights_dtype},
              {"quantization", e.quantization},
              {"weights_bytes", e.weights_bytes},
              {"layers", e.layers},
              {"kv_heads", e.kv_heads},
              {"head_dim", e.head_dim},
              {"kv_cache_dtype", e.kv_cache_dtype},
              {"kv_bytes_per_token", e.kv_bytes_per_token},
              {"context", e.context},
              {"sequences", e.sequences},
              {"kv_cache_bytes", e.kv_cache_bytes},
              {"overhead_bytes", e.overhead_bytes},
              {"total_bytes", e.total_bytes},
              {"tensor_parallel", e.tensor_parallel},
              {"per_gpu_bytes", e.per_gpu_bytes},
              {"gpu_memory_utilization", e.gpu_memory_utilization},
              {"vram_mb", e.vram_mb},
              {"per_gpu_mb", e.per_gpu_mb}};
}

}  // namespace nebula::models
