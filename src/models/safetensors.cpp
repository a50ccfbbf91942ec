// safetensors header reader (https://huggingface.co/docs/safetensors): an 8-byte little-endian
// header length, that much JSON naming each tensor's dtype, shape and data_offsets, then the
// data. Only the header is read. Also Hugging Face config.json and checkpoint directories.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/json.h"
#include "common/json_depth.h"
#include "models/models.h"
#include "models/reader.h"

namespace nebula::models {

namespace {

// safetensors itself refuses headers over 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100 * 1000 * 1000;
constexpr int kMaxJsonDepth = 64;
constexpr uint64_t kMaxConfigBytes = 16 * 1024 * 1024;
constexpr size_t kMaxShards = 4096;

int dtype_size(const std::string& dtype) {
  static const std::map<std::string, int> kSizes = {
      {"BOOL", 1}, {"U8", 1},   {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1}, {"I16", 2}, {"U16", 2},
      {"F16", 2},  {"BF16", 2}, {"I32", 4}, {"U32", 4},     {"F32", 4},     {"F64", 8},     {"I64", 8}, {"U64", 8},
  };
  auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

Result<json> parse_bounded_json(std::string_view text, const std::string& what) {
  if (json_depth(text, kMaxJsonDepth) > kMaxJsonDepth) {
    return make_error(ErrorCode::InvalidArgument, fmt::format("{}: JSON nested deeper than {}", what, kMaxJsonDepth));
  }
  json document = json::parse(text.begin(), text.end(), nullptr, false);
  if (document.is_discarded()) return make_error(ErrorCode::InvalidArgument, what + ": invalid JSON");
  if (!document.is_object()) return make_error(ErrorCode::InvalidArgument, what + ": expected a JSON object");
  return document;
}

Status invalid(const std::string& message) {
  return make_error(ErrorCode::InvalidArgument, "safetensors: " + message);
}

Result<SafetensorsTensor> tensor_from(const std::string& name, const json& entry, uint64_t data_bytes) {
  SafetensorsTensor tensor;
  tensor.name = name;
  if (!entry.is_object()) return invalid(fmt::format("tensor '{}' is not an object", name)).error();
  auto dtype = entry.find("dtype");
  if (dtype == entry.end() || !dtype->is_string())
    return invalid(fmt::format("tensor '{}' has no dtype", name)).error();
  tensor.dtype = dtype->get<std::string>();
  int size = dtype_size(tensor.dtype);
  if (size == 0) return invalid(fmt::format("tensor '{}' has unknown dtype '{}'", name, tensor.dtype)).error();
  auto shape = entry.find("shape");
  if (shape == entry.end() || !shape->is_array() || shape->size() > 16) {
    return invalid(fmt::format("tensor '{}' has no valid shape", name)).error();
  }
  uint64_t elements = 1;
  for (const auto& extent : *shape) {
    if (!extent.is_number_unsigned()) {
      return invalid(fmt::format("tensor '{}': shape entries must be non-negative integers", name)).error();
    }
    uint64_t value = extent.get<uint64_t>();
    if (value > static_cast<uint64_t>(INT64_MAX) ||
        (value != 0 && elements > static_cast<uint64_t>(INT64_MAX) / value)) {
      return invalid(fmt::format("tensor '{}' is too large", name)).error();
    }
    elements *= value;
    tensor.shape.push_back(static_cast<int64_t>(value));
  }
  if (elements > static_cast<uint64_t>(INT64_MAX) / static_cast<uint64_t>(size)) {
    return invalid(fmt::format("tensor '{}' is too large", name)).error();
  }
  auto offsets = entry.find("data_offsets");
  if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
      !(*offsets)[1].is_number_unsigned()) {
    return invalid(fmt::format("tensor '{}' needs data_offsets [begin, end]", name)).error();
  }
  uint64_t begin = (*offsets)[0].get<uint64_t>();
  uint64_t end = (*offsets)[1].get<uint64_t>();
  uint64_t bytes = elements * static_cast<uint64_t>(size);
  if (begin > end || end - begin != bytes) {
    return invalid(fmt::format("tensor '{}': data_offsets [{}, {}] do not hold {} × {} = {} bytes", name, begin, end,
                               elements, tensor.dtype, bytes))
        .error();
  }
  if (end > data_bytes) {
    return invalid(
               fmt::format("tensor '{}' ends at byte {} of a {}-byte data section: truncated?", name, end, data_bytes))
        .error();
  }
  tensor.elements = static_cast<int64_t>(elements);
  tensor.bytes = static_cast<int64_t>(bytes);
  return tensor;
}

std::string normalized_safetensors_dtype(const std::string& dtype) {
  if (dtype == "BF16") return "bf16";
  if (dtype == "F16") return "fp16";
  if (dtype == "F32") return "fp32";
  if (dtype.rfind("F8", 0) == 0) return "fp8";
  if (dtype == "I8" || dtype == "U8") return "int8";
  return dtype;
}

Result<std::string> read_small_file(const std::string& path, uint64_t max_bytes) {
  std::error_code ec;
  auto size = std::filesystem::file_size(path, ec);
  if (ec) return make_error(ErrorCode::NotFound, fmt::format("cannot read {}: {}", path, ec.message()));
  if (size > max_bytes)
    return make_error(ErrorCode::InvalidArgument, fmt::format("{} is larger than {} bytes", path, max_bytes));
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(ErrorCode::NotFound, "cannot open " + path);
  std::string text(size, '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  if (static_cast<uint64_t>(in.gcount()) != size)
    return make_error(ErrorCode::InvalidArgument, "short read of " + path);
  return text;
}

int int_field(const json& object, std::initializer_list<const char*> names) {
  for (const char* name : names) {
    auto it = object.find(name);
    if (it != object.end() && it->is_number_integer()) {
      auto value = it->get<int64_t>();
      if (value > 0 && value <= INT32_MAX) return static_cast<int>(value);
    }
  }
  return 0;
}

}  // namespace

Result<SafetensorsFile> parse_safetensors(std::string_view bytes, uint64_t file_size) {
  if (bytes.size() < 8 || file_size < 8) return invalid("file shorter than the 8-byte header length").error();
  uint64_t length = 0;
  for (int i = 0; i < 8; ++i) length |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  if (length > kMaxHeaderBytes)
    return invalid(fmt::format("header of {} bytes is over the 100 MB limit", length)).error();
  if (length > file_size - 8)
    return invalid(fmt::format("header of {} bytes exceeds the file ({} bytes)", length, file_size)).error();
  if (length > bytes.size() - 8) return invalid("truncated header").error();
  std::string_view header = bytes.substr(8, length);
  auto document = parse_bounded_json(header, "safetensors header");
  if (!document) return document.error();
  SafetensorsFile file;
  file.header_bytes = static_cast<int64_t>(length);
  uint64_t data_bytes = file_size - 8 - length;
  for (const auto& [name, entry] : document->items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return invalid("__metadata__ must be an object").error();
      for (const auto& [key, value] : entry.items()) {
        if (value.is_string()) file.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    auto tensor = tensor_from(name, entry, data_bytes);
    if (!tensor) return tensor.error();
    file.tensors.push_back(std::move(*tensor));
  }
  return file;
}

Result<SafetensorsFile> read_safetensors(const std::string& path) {
  auto source = FileSource::open(path);
  if (!source) return source.error();
  uint64_t file_size = (*source)->size();
  char prefix[8];
  if (!(*source)->read_at(0, prefix, 8)) {
    return make_error(ErrorCode::InvalidArgument, path + ": safetensors: file shorter than the 8-byte header length");
  }
  uint64_t length = 0;
  for (int i = 0; i < 8; ++i) length |= static_cast<uint64_t>(static_cast<unsigned char>(prefix[i])) << (8 * i);
  // Allocate the header only once it is known to fit in the file and under the limit.
  std::string head(prefix, 8);
  if (length <= kMaxHeaderBytes && length <= file_size - 8) {
    head.resize(8 + length);
    if (!(*source)->read_at(8, head.data() + 8, length)) {
      return make_error(ErrorCode::InvalidArgument, path + ": safetensors: truncated header");
    }
  }
  auto file = parse_safetensors(head, file_size);
  if (!file) return make_error(file.error().code, path + ": " + file.error().message);
  return file;
}

Result<ModelInfo> info_from_config_json(std::string_view text) {
  auto document = parse_bounded_json(text, "config.json");
  if (!document) return document.error();
  json config = *document;
  // Multimodal models keep the language model's shape in text_config.
  if (auto text_config = config.find("text_config"); text_config != config.end() && text_config->is_object() &&
                                                     int_field(config, {"num_hidden_layers", "n_layer"}) == 0) {
    json merged = *text_config;
    for (const auto& [key, value] : config.items()) {
      if (!merged.contains(key)) merged[key] = value;
    }
    config = std::move(merged);
  }
  ModelInfo info;
  info.source = "safetensors";
  if (auto type = config.find("model_type"); type != config.end() && type->is_string()) {
    info.architecture = type->get<std::string>();
  }
  info.layers = int_field(config, {"num_hidden_layers", "n_layer", "num_layers"});
  info.heads = int_field(config, {"num_attention_heads", "n_head"});
  info.kv_heads = int_field(config, {"num_key_value_heads", "multi_query_group_num"});
  if (info.kv_heads == 0) info.kv_heads = info.heads;
  info.hidden_size = int_field(config, {"hidden_size", "n_embd", "d_model"});
  info.head_dim = int_field(config, {"head_dim"});
  if (info.head_dim == 0 && info.heads > 0) info.head_dim = info.hidden_size / info.heads;
  info.context_length = int_field(config, {"max_position_embeddings", "n_positions", "seq_length"});
  info.vocab_size = int_field(config, {"vocab_size"});
  info.experts = int_field(config, {"num_local_experts", "num_experts"});
  if (auto dtype = config.find("torch_dtype"); dtype != config.end() && dtype->is_string()) {
    info.dtype = normalize_dtype(dtype->get<std::string>());
  }
  if (auto quant = config.find("quantization_config"); quant != config.end() && quant->is_object()) {
    std::string method = quant->value("quant_method", "");
    int bits = int_field(*quant, {"bits", "w_bit"});
    info.quantization = bits > 0 ? fmt::format("{}-int{}", method, bits) : method;
  }
  return info;
}

Result<ModelInfo> read_safetensors_checkpoint(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path root(path);
  std::vector<fs::path> shards;
  fs::path directory;
  if (fs::is_directory(root, ec)) {
    directory = root;
    for (const auto& entry : fs::directory_iterator(root, ec)) {
      if (entry.path().extension() == ".safetensors") shards.push_back(entry.path());
      if (shards.size() > kMaxShards) {
        return make_error(ErrorCode::InvalidArgument, fmt::format("{}: more than {} shards", path, kMaxShards));
      }
    }
    std::sort(shards.begin(), shards.end());
  } else if (fs::exists(root, ec)) {
    directory = root.parent_path();
    shards.push_back(root);
  } else {
    return make_error(ErrorCode::NotFound, path + ": no such file or directory");
  }
  ModelInfo info;
  fs::path config_path = directory / "config.json";
  if (fs::exists(config_path, ec)) {
    auto text = read_small_file(config_path.string(), kMaxConfigBytes);
    if (!text) return text.error();
    auto from_config = info_from_config_json(*text);
    if (!from_config)
      return make_error(ErrorCode::InvalidArgument, config_path.string() + ": " + from_config.error().message);
    info = std::move(*from_config);
  }
  if (shards.empty() && info.layers == 0) {
    return make_error(ErrorCode::InvalidArgument, path + ": no .safetensors files and no config.json");
  }
  std::string config_dtype = info.dtype;
  info.source = "safetensors";
  info.id = path;
  for (const auto& shard : shards) {
    auto file = read_safetensors(shard.string());
    if (!file) return file.error();
    for (const auto& tensor : file->tensors) {
      info.parameters += tensor.elements;
      info.weight_bytes += tensor.bytes;
      info.bytes_by_dtype[tensor.dtype] += tensor.bytes;
      ++info.tensor_count;
    }
  }
  int64_t most = -1;
  for (const auto& [dtype, bytes] : info.bytes_by_dtype) {
    if (bytes > most) {
      most = bytes;
      info.dtype = normalized_safetensors_dtype(dtype);
    }
  }
  if (info.dtype.empty()) info.dtype = config_dtype;
  return info;
}

bool looks_like_path(const std::string& model) {
  if (model.empty()) return false;
  if (model.front() == '/' || model.rfind("./", 0) == 0 || model.rfind("../", 0) == 0 || model.rfind("~/", 0) == 0) {
    return true;
  }
  std::error_code ec;
  return std::filesystem::exists(model, ec);
}

Result<ModelInfo> read_model_path(const std::string& path) {
  std::string expanded = path;
  if (expanded.rfind("~/", 0) == 0) {
    const char* home = std::getenv("HOME");
    if (home) expanded = std::string(home) + expanded.substr(1);
  }
  std::error_code ec;
  if (!std::filesystem::exists(expanded, ec))
    return make_error(ErrorCode::NotFound, path + ": no such file or directory");
  if (std::filesystem::path(expanded).extension() == ".gguf") {
    auto file = read_gguf(expanded);
    if (!file) return file.error();
    ModelInfo info = file->info();
    info.id = path;
    return info;
  }
  if (!std::filesystem::is_directory(expanded, ec)) {
    // Not named .gguf: sniff the magic before taking it for safetensors.
    std::ifstream in(expanded, std::ios::binary);
    char magic[4] = {};
    in.read(magic, 4);
    if (in.gcount() == 4 && std::string_view(magic, 4) == "GGUF") {
      auto file = read_gguf(expanded);
      if (!file) return file.error();
      ModelInfo info = file->info();
      info.id = path;
      return info;
    }
  }
  auto info = read_safetensors_checkpoint(expanded);
  if (info) info->id = path;
  return info;
}

Result<std::unique_ptr<FileSource>> FileSource::open(const std::string& path) {
  auto source = std::unique_ptr<FileSource>(new FileSource());
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return make_error(ErrorCode::InvalidArgument, path + " is a directory");
  source->in_.open(path, std::ios::binary);
  if (!source->in_) return make_error(ErrorCode::NotFound, "cannot open " + path);
  source->in_.seekg(0, std::ios::end);
  auto end = source->in_.tellg();
  if (end < 0) return make_error(ErrorCode::InvalidArgument, "cannot size " + path);
  source->size_ = static_cast<uint64_t>(end);
  return source;
}

bool FileSource::read_at(uint64_t offset, char* out, size_t n) {
  if (offset > size_ || n > size_ - offset) return false;
  if (n == 0) return true;
  if (offset >= window_start_ && offset + n <= window_start_ + window_.size()) {
    std::memcpy(out, window_.data() + (offset - window_start_), n);
    return true;
  }
  if (n > kWindow) {
    in_.clear();
    in_.seekg(static_cast<std::streamoff>(offset));
    in_.read(out, static_cast<std::streamsize>(n));
    return static_cast<size_t>(in_.gcount()) == n;
  }
  window_start_ = offset;
  window_.resize(static_cast<size_t>(std::min<uint64_t>(kWindow, size_ - offset)));
  in_.clear();
  in_.seekg(static_cast<std::streamoff>(offset));
  in_.read(window_.data(), static_cast<std::streamsize>(window_.size()));
  if (static_cast<size_t>(in_.gcount()) != window_.size()) {
    window_.clear();
    return false;
  }
  std::memcpy(out, window_.data(), n);
  return true;
}

}  // namespace nebula::models
