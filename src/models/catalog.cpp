// The built-in catalog: shapes of well-known models as their Hugging Face config.json files give
// them, and parameter counts as their model cards and safetensors headers give them. Used for
// simulated deployments and for estimates before a download.
#include <algorithm>
#include <cctype>

#include "models/models.h"

namespace nebula::models {

namespace {

// AWQ and GPTQ at 4 bits with group size 128: 4 bits per weight plus a 16-bit scale and a 4-bit
// zero point per group of 128.
constexpr double kInt4GroupBits = 4.0 + 20.0 / 128.0;
constexpr double kInt8GroupBits = 8.0 + 20.0 / 128.0;

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

// The last path segment, lowercased: "meta-llama/Llama-3.1-8B-Instruct" -> "llama-3.1-8b-instruct".
std::string short_name(std::string_view id) {
  size_t slash = id.rfind('/');
  return lower(slash == std::string_view::npos ? id : id.substr(slash + 1));
}

// The name without its chat-tuning token: "qwen2.5-7b-instruct" -> "qwen2.5-7b",
// "gemma-2-9b-it" -> "gemma-2-9b", "tinyllama-1.1b-chat-v1.0" -> "tinyllama-1.1b-v1.0".
std::string base_name(const std::string& name) {
  for (const char* token : {"-instruct", "-chat", "-it"}) {
    size_t at = name.find(token);
    while (at != std::string::npos) {
      size_t end = at + std::char_traits<char>::length(token);
      if (end == name.size() || name[end] == '-') return name.substr(0, at) + name.substr(end);
      at = name.find(token, at + 1);
    }
  }
  return name;
}

QuantizedVariant awq(std::string id) {
  std::string alias = short_name(id);
  return {std::move(id), std::move(alias), "awq-int4", kInt4GroupBits};
}
QuantizedVariant fp8(std::string id) {
  std::string alias = short_name(id);
  return {std::move(id), std::move(alias), "fp8", 8.0};
}
QuantizedVariant gptq_int8(std::string id) {
  std::string alias = short_name(id);
  return {std::move(id), std::move(alias), "gptq-int8", kInt8GroupBits};
}

CatalogEntry entry(std::string id, std::string architecture, int64_t parameters, int layers, int hidden, int heads,
                   int kv_heads, int head_dim, int context, int64_t vocab, bool tied,
                   std::vector<QuantizedVariant> variants = {}, int experts = 0) {
  CatalogEntry e;
  e.alias = short_name(id);
  e.id = std::move(id);
  e.architecture = std::move(architecture);
  e.parameters = parameters;
  e.layers = layers;
  e.hidden_size = hidden;
  e.heads = heads;
  e.kv_heads = kv_heads;
  e.head_dim = head_dim;
  e.context_length = context;
  e.vocab_size = vocab;
  e.tied_embeddings = tied;
  e.variants = std::move(variants);
  e.experts = experts;
  return e;
}

std::vector<CatalogEntry> build_catalog() {
  std::vector<CatalogEntry> entries;
  auto qwen = [&](const std::string& size, int64_t parameters, int layers, int hidden, int heads, int kv_heads,
                  bool tied) {
    std::string id = "Qwen/Qwen2.5-" + size + "-Instruct";
    entries.push_back(entry(id, "qwen2", parameters, layers, hidden, heads, kv_heads, 128, 32768, 151936, tied,
                            {awq(id + "-AWQ"), gptq_int8(id + "-GPTQ-Int8")}));
  };
  entries.push_back(entry(
      "meta-llama/Llama-3.1-8B-Instruct", "llama", 8'030'261'248, 32, 4096, 32, 8, 128, 131072, 128256, false,
      {awq("hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"), fp8("neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8")}));
  entries.push_back(entry("meta-llama/Llama-3.1-70B-Instruct", "llama", 70'553'706'496, 80, 8192, 64, 8, 128, 131072,
                          128256, false,
                          {awq("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"),
                           fp8("neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8")}));
  entries.push_back(
      entry("meta-llama/Llama-3.3-70B-Instruct", "llama", 70'553'706'496, 80, 8192, 64, 8, 128, 131072, 128256, false));
  entries.push_back(
      entry("meta-llama/Llama-3.2-1B-Instruct", "llama", 1'235'814'400, 16, 2048, 32, 8, 64, 131072, 128256, true));
  entries.push_back(
      entry("meta-llama/Llama-3.2-3B-Instruct", "llama", 3'212'749'824, 28, 3072, 24, 8, 128, 131072, 128256, true));
  // Qwen2.5-0.5B's head dimension is 64 (896 / 14); the others' 128.
  entries.push_back(entry("Qwen/Qwen2.5-0.5B-Instruct", "qwen2", 494'032'768, 24, 896, 14, 2, 64, 32768, 151936, true,
                          {awq("Qwen/Qwen2.5-0.5B-Instruct-AWQ"), gptq_int8("Qwen/Qwen2.5-0.5B-Instruct-GPTQ-Int8")}));
  qwen("1.5B", 1'543'714'304, 28, 1536, 12, 2, true);
  qwen("3B", 3'085'938'688, 36, 2048, 16, 2, true);
  qwen("7B", 7'615'616'512, 28, 3584, 28, 4, false);
  qwen("14B", 14'770'033'664, 48, 5120, 40, 8, false);
  qwen("32B", 32'763'876'352, 64, 5120, 40, 8, false);
  qwen("72B", 72'706'203'648, 80, 8192, 64, 8, false);
  entries.push_back(
      entry("mistralai/Mistral-7B-Instruct-v0.3", "mistral", 7'248'023'552, 32, 4096, 32, 8, 128, 32768, 32768, false));
  entries.push_back(entry("mistralai/Mistral-Nemo-Instruct-2407", "mistral", 12'247'782'400, 40, 5120, 32, 8, 128,
                          131072, 131072, false));
  entries.push_back(entry("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral", 46'702'792'704, 32, 4096, 32, 8, 128,
                          32768, 32000, false, {awq("TheBloke/Mixtral-8x7B-Instruct-v0.1-AWQ")}, 8));
  entries.push_back(entry("google/gemma-2-2b-it", "gemma2", 2'614'341'888, 26, 2304, 8, 4, 256, 8192, 256000, true));
  entries.push_back(entry("google/gemma-2-9b-it", "gemma2", 9'241'705'984, 42, 3584, 16, 8, 256, 8192, 256000, true));
  entries.push_back(
      entry("google/gemma-2-27b-it", "gemma2", 27'227'128'320, 46, 4608, 32, 16, 128, 8192, 256000, true));
  entries.push_back(
      entry("microsoft/Phi-3-mini-4k-instruct", "phi3", 3'821'079'552, 32, 3072, 32, 32, 96, 4096, 32064, false));
  entries.push_back(
      entry("microsoft/Phi-3-mini-128k-instruct", "phi3", 3'821'079'552, 32, 3072, 32, 32, 96, 131072, 32064, false));
  entries.push_back(
      entry("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "llama", 1'100'048'384, 22, 2048, 32, 4, 64, 2048, 32000, false));
  return entries;
}

ModelInfo info_of(const CatalogEntry& e, const QuantizedVariant* variant) {
  ModelInfo info;
  info.id = variant ? variant->id : e.id;
  info.source = "catalog";
  info.architecture = e.architecture;
  info.parameters = e.parameters;
  info.layers = e.layers;
  info.heads = e.heads;
  info.kv_heads = e.kv_heads;
  info.head_dim = e.head_dim;
  info.hidden_size = e.hidden_size;
  info.context_length = e.context_length;
  info.experts = e.experts;
  info.vocab_size = e.vocab_size;
  if (variant) {
    info.dtype = variant->quantization == "fp8" ? "fp8" : variant->bits < 8 ? "int4" : "int8";
    info.quantization = variant->quantization;
    info.weight_bytes = quantized_weight_bytes(e, variant->bits);
  } else {
    info.dtype = e.dtype;
    info.weight_bytes = e.parameters * 2;
  }
  return info;
}

}  // namespace

const std::vector<CatalogEntry>& catalog() {
  static const std::vector<CatalogEntry> entries = build_catalog();
  return entries;
}

int64_t quantized_weight_bytes(const CatalogEntry& entry, double bits) {
  int64_t embedding = entry.vocab_size * entry.hidden_size * (entry.tied_embeddings ? 1 : 2);
  int64_t rest = std::max<int64_t>(0, entry.parameters - embedding);
  return embedding * 2 + static_cast<int64_t>(static_cast<double>(rest) * bits / 8.0);
}

std::optional<CatalogMatch> find_in_catalog(std::string_view name) {
  std::string wanted = lower(name);
  std::string wanted_short = short_name(name);
  std::string wanted_base = base_name(wanted_short);
  // Llama 3.1 quantisations are published as "Meta-Llama-3.1-..."; read them as the same model.
  if (wanted_base.rfind("meta-llama-", 0) == 0) wanted_base = wanted_base.substr(5);
  for (const auto& e : catalog()) {
    for (const auto& variant : e.variants) {
      if (wanted == lower(variant.id) || wanted_short == variant.alias) {
        return CatalogMatch{&e, &variant, info_of(e, &variant)};
      }
    }
  }
  for (const auto& e : catalog()) {
    if (wanted == lower(e.id) || wanted_short == e.alias || wanted_base == base_name(e.alias)) {
      return CatalogMatch{&e, nullptr, info_of(e, nullptr)};
    }
  }
  return std::nullopt;
}

}  // namespace nebula::models
