#pragma once
// What a model needs: its shape read from a GGUF header, a safetensors header + config.json, or
// the built-in catalog, and the VRAM estimate a replica of it claims (DESIGN.md §4). Readers
// never load weights and never allocate more than the file can hold, whatever its header says.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "api/api.h"
#include "common/json.h"
#include "common/result.h"

namespace nebula::models {

inline constexpr int64_t kMiB = 1024 * 1024;
inline constexpr int64_t kGiB = 1024 * kMiB;

// The shape of a model: what the VRAM estimate needs. 0 / "" = unknown.
struct ModelInfo {
  std::string id;      // catalog id or file path
  std::string source;  // "catalog", "gguf", "safetensors"
  std::string architecture;
  int64_t parameters = 0;
  int layers = 0;
  int heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int hidden_size = 0;
  int context_length = 0;
  int experts = 0;  // mixture of experts: experts per layer
  int64_t vocab_size = 0;
  std::string dtype;         // dominant weight dtype, normalised ("bf16", "fp16", "Q4_K", ...)
  std::string quantization;  // "" for plain float weights; "awq-int4", "fp8", "Q4_K_M", ...
  int64_t weight_bytes = 0;
  std::map<std::string, int64_t> bytes_by_dtype;  // from files: bytes of tensors per dtype
  int64_t tensor_count = 0;
};

// Bytes per element of a weight or KV-cache dtype ("fp16", "bfloat16", "fp8", "int4", ...);
// nullopt when unknown. normalize_dtype maps spellings onto fp32, fp16, bf16, fp8, int8, int4.
std::optional<double> dtype_bytes(std::string_view dtype);
std::string normalize_dtype(std::string_view dtype);

// ---- GGUF -------------------------------------------------------------------------------------

// One metadata value. Scalars keep their value; arrays keep their element type and length, and
// their values only when they are integers and few (per-layer head counts); token lists are
// skipped, not stored.
struct GgufValue {
  uint32_t type = 0;  // GGUF value type (0 UINT8 ... 12 FLOAT64)
  std::variant<std::monostate, int64_t, uint64_t, double, bool, std::string> scalar;
  uint32_t array_type = 0;
  uint64_t array_length = 0;
  std::vector<int64_t> array_ints;

  std::optional<int64_t> as_int() const;  // integer scalars, and the largest of an int array
  std::optional<std::string> as_string() const;
};

struct GgufTensor {
  std::string name;
  uint32_t type = 0;  // ggml type
  std::vector<uint64_t> shape;
  uint64_t offset = 0;  // relative to the data section
  int64_t elements = 0;
  int64_t bytes = 0;
};

struct GgufFile {
  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;  // where tensor data starts in the file
  std::map<std::string, GgufValue> metadata;
  std::vector<GgufTensor> tensors;

  ModelInfo info() const;
};

// ggml tensor type name ("F16", "Q4_K", ...) or "" when unknown.
std::string ggml_type_name(uint32_t type);

// Reads the header of a GGUF v2/v3 file: metadata and tensor infos, checking every tensor's data
// lies inside the file. InvalidArgument naming the problem and byte offset on a bad file.
Result<GgufFile> read_gguf(const std::string& path);
// The same over a whole file held in memory (tests, fuzzing).
Result<GgufFile> parse_gguf(std::string_view bytes);

// ---- safetensors ------------------------------------------------------------------------------

struct SafetensorsTensor {
  std::string name;
  std::string dtype;  // as written: "BF16", "F16", "F32", "I8", "F8_E4M3", ...
  std::vector<int64_t> shape;
  int64_t elements = 0;
  int64_t bytes = 0;
};

struct SafetensorsFile {
  std::vector<SafetensorsTensor> tensors;
  std::map<std::string, std::string> metadata;  // "__metadata__"
  int64_t header_bytes = 0;
};

// The header of one .safetensors file: 8-byte little-endian length, then that much JSON. Checks
// dtypes, shapes and that data_offsets match the sizes and lie inside the file.
Result<SafetensorsFile> read_safetensors(const std::string& path);
// `bytes` is the start of a file of `file_size` bytes (at least the header; tests and fuzzing
// pass the whole file).
Result<SafetensorsFile> parse_safetensors(std::string_view bytes, uint64_t file_size);

// The shape a Hugging Face config.json gives (text_config for multimodal models).
Result<ModelInfo> info_from_config_json(std::string_view text);

// A checkpoint: a .safetensors file, or a directory of them (sharded), with config.json beside
// it. Tensor bytes come from the headers, the shape from config.json.
Result<ModelInfo> read_safetensors_checkpoint(const std::string& path);

// A local model: a .gguf file, a .safetensors file or a checkpoint directory.
Result<ModelInfo> read_model_path(const std::string& path);
// True when `model` names something on the local file system (absolute, ./, ../, ~/ or existing).
bool looks_like_path(const std::string& model);

// ---- catalog ----------------------------------------------------------------------------------

struct QuantizedVariant {
  std::string id;            // Hugging Face id
  std::string alias;         // lowercase short name
  std::string quantization;  // "awq-int4", "gptq-int4", "fp8"
  double bits = 16;          // bits per quantised weight, group scales included
};

struct CatalogEntry {
  std::string id;     // Hugging Face id: "meta-llama/Llama-3.1-8B-Instruct"
  std::string alias;  // "llama-3.1-8b-instruct"
  std::string architecture;
  int64_t parameters = 0;
  int layers = 0;
  int hidden_size = 0;
  int heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int context_length = 0;
  int64_t vocab_size = 0;
  bool tied_embeddings = false;
  int experts = 0;
  std::string dtype = "bf16";
  std::vector<QuantizedVariant> variants;
};

const std::vector<CatalogEntry>& catalog();

struct CatalogMatch {
  const CatalogEntry* entry = nullptr;
  const QuantizedVariant* variant = nullptr;  // set when the name is a quantised variant
  ModelInfo info;                             // the shape, with the variant's weight bytes
};
// Finds a model by Hugging Face id or alias, case-insensitively; the base name of an instruct
// model ("qwen2.5-7b") finds it too, and so do the quantised variants' ids and aliases.
std::optional<CatalogMatch> find_in_catalog(std::string_view name);

// Weight bytes of a catalog model quantised to `bits`: embeddings (and an untied output head)
// stay 16-bit, everything else takes `bits` per parameter.
int64_t quantized_weight_bytes(const CatalogEntry& entry, double bits);

// ---- the estimate -----------------------------------------------------------------------------

// Context used when neither the spec nor the engine says: the model's own, capped here, since
// models advertise 128k and a default must not claim a whole card for one sequence.
inline constexpr int kDefaultContextCap = 8192;
// vLLM's default --gpu-memory-utilization.
inline constexpr double kVllmGpuMemoryUtilization = 0.9;

struct Estimate {
  std::string model;
  // Where the shape came from: "spec.vram_mb", "catalog:<id>", "gguf:<path>",
  // "safetensors:<path>", "name:<N>B" (parameter count in the name), "default" (nothing known).
  std::string source;
  std::vector<std::string> notes;  // fallbacks taken, files that could not be read
  std::string engine;
  int64_t parameters = 0;
  std::string weights_dtype;
  std::string quantization;
  int64_t weights_bytes = 0;
  int layers = 0;
  int kv_heads = 0;
  int head_dim = 0;
  std::string kv_cache_dtype;
  int64_t kv_bytes_per_token = 0;
  int context = 0;
  int sequences = 0;
  int64_t kv_cache_bytes = 0;  // kv_bytes_per_token × context × sequences
  int64_t overhead_bytes = 0;  // engine: CUDA context, activations, graphs; per GPU × GPUs
  int64_t total_bytes = 0;     // weights + KV cache + overhead, per replica
  int tensor_parallel = 1;
  int64_t per_gpu_bytes = 0;  // total / tensor_parallel, rounded up
  // > 0: the engine claims this fraction of each card (vLLM), so a replica takes
  // fraction × card memory wherever it lands; per_gpu_bytes must fit inside that.
  double gpu_memory_utilization = 0;
  // What the replica reserves before placement, in MiB summed over its GPUs: ceil(total).
  int64_t vram_mb = 0;
  int64_t per_gpu_mb = 0;
};

// The estimate for one replica of `spec`: spec.vram_mb when set; otherwise the shape from the
// catalog, then the model file when spec.model is a local path, then the parameter count in the
// name; every shape value can be overridden by the spec (dtype, kv_cache_dtype, shape.*).
Estimate estimate(const api::DeploymentSpec& spec);
// The same with a shape already known (models inspect of a file).
Estimate estimate_with(const api::DeploymentSpec& spec, const ModelInfo& info, const std::string& source);

// The fraction of each card a replica of `spec` claims whatever the model needs (vLLM's
// gpu_memory_utilization, default 0.9); 0 when it claims only its estimate (other engines, an
// explicit spec.vram_mb, or no GPUs).
double claimed_fraction(const api::DeploymentSpec& spec);

// The estimate as JSON (sizes in bytes and MiB), for the API and `nebula models inspect -o json`.
json estimate_to_json(const Estimate& estimate);

// Base overhead per GPU for an engine, bytes.
int64_t engine_overhead_bytes(const std::string& engine);

// Billions of parameters named in a model id: "llama-3.1-8b" -> 8, "mixtral-8x7b" -> 56. 0 if none.
double parameters_billions_in_name(const std::string& model);

}  // namespace nebula::models
