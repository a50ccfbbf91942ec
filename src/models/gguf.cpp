// GGUF header reader (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), versions 2 and 3,
// little-endian. Reads metadata and tensor infos only. Every length in the file is checked
// against the bytes that remain before anything is allocated for it, so a hostile header can
// neither crash the reader nor make it allocate more than the file holds.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <fstream>

#include "models/models.h"
#include "models/reader.h"

namespace nebula::models {

namespace {

enum GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// Size of a fixed-size scalar value type; 0 for string and array.
uint64_t scalar_size(uint32_t type) {
  switch (type) {
    case kUint8:
    case kInt8:
    case kBool: return 1;
    case kUint16:
    case kInt16: return 2;
    case kUint32:
    case kInt32:
    case kFloat32: return 4;
    case kUint64:
    case kInt64:
    case kFloat64: return 8;
    default: return 0;
  }
}

// ggml types: name, elements per block, bytes per block (ggml.c's type_traits).
struct GgmlType {
  const char* name;
  uint32_t block;
  uint32_t size;
};
constexpr GgmlType kGgmlTypes[] = {
    {"F32", 1, 4},      {"F16", 1, 2},        {"Q4_0", 32, 18},    {"Q4_1", 32, 20},     {"", 0, 0},
    {"", 0, 0},         {"Q5_0", 32, 22},     {"Q5_1", 32, 24},    {"Q8_0", 32, 34},     {"Q8_1", 32, 36},
    {"Q2_K", 256, 84},  {"Q3_K", 256, 110},   {"Q4_K", 256, 144},  {"Q5_K", 256, 176},   {"Q6_K", 256, 210},
    {"Q8_K", 256, 292}, {"IQ2_XXS", 256, 66}, {"IQ2_XS", 256, 74}, {"IQ3_XXS", 256, 98}, {"IQ1_S", 256, 50},
    {"IQ4_NL", 32, 18}, {"IQ3_S", 256, 110},  {"IQ2_S", 256, 82},  {"IQ4_XS", 256, 136}, {"I8", 1, 1},
    {"I16", 1, 2},      {"I32", 1, 4},        {"I64", 1, 8},       {"F64", 1, 8},        {"IQ1_M", 256, 56},
    {"BF16", 1, 2},     {"", 0, 0},           {"", 0, 0},          {"", 0, 0},           {"TQ1_0", 256, 54},
    {"TQ2_0", 256, 66},
};

const GgmlType* ggml_type(uint32_t type) {
  if (type >= std::size(kGgmlTypes) || kGgmlTypes[type].block == 0) return nullptr;
  return &kGgmlTypes[type];
}

// llama.cpp's general.file_type (LLAMA_FTYPE_*), for the quantisation name of a whole file.
std::string file_type_name(int64_t file_type) {
  switch (file_type) {
    case 0: return "F32";
    case 1: return "F16";
    case 2: return "Q4_0";
    case 3: return "Q4_1";
    case 7: return "Q8_0";
    case 8: return "Q5_0";
    case 9: return "Q5_1";
    case 10: return "Q2_K";
    case 11: return "Q3_K_S";
    case 12: return "Q3_K_M";
    case 13: return "Q3_K_L";
    case 14: return "Q4_K_S";
    case 15: return "Q4_K_M";
    case 16: return "Q5_K_S";
    case 17: return "Q5_K_M";
    case 18: return "Q6_K";
    case 30: return "IQ4_XS";
    case 32: return "BF16";
    default: return "";
  }
}

constexpr uint64_t kMaxKeyBytes = 64 * 1024;
constexpr uint64_t kMaxStoredStringBytes = 1024 * 1024;  // longer strings are skipped, not stored
constexpr uint64_t kMaxStoredArrayInts = 4096;
constexpr int kMaxArrayDepth = 4;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
constexpr uint64_t kMaxTensorNameBytes = 64 * 1024;

class GgufParser {
 public:
  explicit GgufParser(ByteReader& in) : in_(in) {}

  GgufFile parse() {
    GgufFile file;
    char magic[4];
    in_.read(magic, 4, "the magic");
    if (std::memcmp(magic, "GGUF", 4) != 0) in_.fail("not a GGUF file (bad magic)");
    file.version = in_.u32("the version");
    if (file.version == 1) in_.fail("GGUF version 1 is not supported (versions 2 and 3 are)");
    if (file.version != 2 && file.version != 3) {
      // A big-endian file reads as a byte-swapped small number.
      if ((file.version & 0xFFFFu) == 0 && (file.version >> 24) <= 3) in_.fail("big-endian GGUF is not supported");
      in_.fail(fmt::format("unsupported GGUF version {}", file.version));
    }
    uint64_t tensor_count = in_.u64("the tensor count");
    uint64_t kv_count = in_.u64("the metadata count");
    // Each metadata entry takes at least a key length, a type and one byte; each tensor info at
    // least a name length, a dimension count, a type and an offset.
    if (kv_count > in_.remaining() / 13) in_.fail(fmt::format("metadata count {} exceeds the file", kv_count));
    if (tensor_count > in_.remaining() / 24) in_.fail(fmt::format("tensor count {} exceeds the file", tensor_count));

    for (uint64_t i = 0; i < kv_count; ++i) {
      std::string key = in_.string(kMaxKeyBytes, "a metadata key");
      uint32_t type = in_.u32("a metadata type");
      GgufValue value = read_value(type, 0, key);
      file.metadata.insert_or_assign(std::move(key), std::move(value));
    }
    if (auto it = file.metadata.find("general.alignment"); it != file.metadata.end()) {
      auto alignment = it->second.as_int();
      if (!alignment || *alignment <= 0 || (*alignment & (*alignment - 1)) != 0 || *alignment > (1 << 20)) {
        in_.fail("general.alignment must be a power of two");
      }
      file.alignment = static_cast<uint64_t>(*alignment);
    }

    file.tensors.reserve(tensor_count);
    for (uint64_t i = 0; i < tensor_count; ++i) file.tensors.push_back(read_tensor_info(file.alignment));

    uint64_t end_of_header = in_.position();
    file.data_offset = (end_of_header + file.alignment - 1) / file.alignment * file.alignment;
    uint64_t data_bytes = in_.size() > file.data_offset ? in_.size() - file.data_offset : 0;
    for (const auto& tensor : file.tensors) {
      uint64_t bytes = static_cast<uint64_t>(tensor.bytes);
      if (tensor.offset > data_bytes || bytes > data_bytes - tensor.offset) {
        in_.fail(
            fmt::format("tensor '{}' ({} bytes at data offset {}) extends past the end of the file "
                        "({} bytes): truncated?",
                        tensor.name, bytes, tensor.offset, in_.size()));
      }
    }
    return file;
  }

 private:
  GgufValue read_value(uint32_t type, int depth, const std::string& key) {
    GgufValue value;
    value.type = type;
    switch (type) {
      case kUint8: value.scalar = static_cast<uint64_t>(in_.u8(key)); break;
      case kInt8: value.scalar = static_cast<int64_t>(static_cast<int8_t>(in_.u8(key))); break;
      case kUint16: value.scalar = static_cast<uint64_t>(in_.u16(key)); break;
      case kInt16: value.scalar = static_cast<int64_t>(static_cast<int16_t>(in_.u16(key))); break;
      case kUint32: value.scalar = static_cast<uint64_t>(in_.u32(key)); break;
      case kInt32: value.scalar = static_cast<int64_t>(static_cast<int32_t>(in_.u32(key))); break;
      case kUint64: value.scalar = in_.u64(key); break;
      case kInt64: value.scalar = static_cast<int64_t>(in_.u64(key)); break;
      case kFloat32: {
        uint32_t bits = in_.u32(key);
        float number;
        std::memcpy(&number, &bits, sizeof number);
        value.scalar = static_cast<double>(number);
        break;
      }
      case kFloat64: {
        uint64_t bits = in_.u64(key);
        double number;
        std::memcpy(&number, &bits, sizeof number);
        value.scalar = number;
        break;
      }
      case kBool: {
        uint8_t byte = in_.u8(key);
        if (byte > 1) in_.fail(fmt::format("'{}': a bool must be 0 or 1, got {}", key, byte));
        value.scalar = byte == 1;
        break;
      }
      case kString: {
        uint64_t length = in_.u64(key);
        if (length > in_.remaining()) in_.fail(fmt::format("'{}': string of {} bytes exceeds the file", key, length));
        if (length <= kMaxStoredStringBytes) {
          value.scalar = in_.string_of(length, key);
        } else {
          in_.skip(length, key);
        }
        break;
      }
      case kArray: read_array(value, depth, key); break;
      default: in_.fail(fmt::format("'{}': unknown metadata value type {}", key, type));
    }
    return value;
  }

  void read_array(GgufValue& value, int depth, const std::string& key) {
    if (depth >= kMaxArrayDepth) in_.fail(fmt::format("'{}': arrays nested deeper than {}", key, kMaxArrayDepth));
    value.array_type = in_.u32(key);
    value.array_length = in_.u64(key);
    uint64_t length = value.array_length;
    if (uint64_t size = scalar_size(value.array_type); size > 0) {
      if (length > in_.remaining() / size) {
        in_.fail(fmt::format("'{}': array of {} elements exceeds the file", key, length));
      }
      bool keep = value.array_type != kFloat32 && value.array_type != kFloat64 && length <= kMaxStoredArrayInts;
      if (!keep) {
        in_.skip(length * size, key);
        return;
      }
      value.array_ints.reserve(length);
      for (uint64_t i = 0; i < length; ++i) {
        GgufValue element = read_value(value.array_type, depth + 1, key);
        value.array_ints.push_back(element.as_int().value_or(0));
      }
      return;
    }
    if (value.array_type == kString) {
      if (length > in_.remaining() / 8)
        in_.fail(fmt::format("'{}': array of {} strings exceeds the file", key, length));
      for (uint64_t i = 0; i < length; ++i) {
        uint64_t bytes = in_.u64(key);
        in_.skip(bytes, key);
      }
      return;
    }
    if (value.array_type == kArray) {
      if (length > in_.remaining() / 12)
        in_.fail(fmt::format("'{}': array of {} arrays exceeds the file", key, length));
      for (uint64_t i = 0; i < length; ++i) (void)read_value(kArray, depth + 1, key);
      return;
    }
    in_.fail(fmt::format("'{}': unknown array element type {}", key, value.array_type));
  }

  GgufTensor read_tensor_info(uint64_t alignment) {
    GgufTensor tensor;
    tensor.name = in_.string(kMaxTensorNameBytes, "a tensor name");
    uint32_t dims = in_.u32("a tensor's dimension count");
    if (dims == 0 || dims > kMaxDims) {
      in_.fail(fmt::format("tensor '{}' has {} dimensions (1 to {})", tensor.name, dims, kMaxDims));
    }
    uint64_t elements = 1;
    for (uint32_t d = 0; d < dims; ++d) {
      uint64_t extent = in_.u64("a tensor dimension");
      if (extent > static_cast<uint64_t>(INT64_MAX) ||
          (extent != 0 && elements > static_cast<uint64_t>(INT64_MAX) / extent)) {
        in_.fail(fmt::format("tensor '{}' is too large", tensor.name));
      }
      elements *= extent;
      tensor.shape.push_back(extent);
    }
    tensor.type = in_.u32("a tensor type");
    const GgmlType* type = ggml_type(tensor.type);
    if (!type) in_.fail(fmt::format("tensor '{}' has unknown ggml type {}", tensor.name, tensor.type));
    if (tensor.shape[0] % type->block != 0) {
      in_.fail(fmt::format("tensor '{}': row of {} is not a multiple of the {} block size {}", tensor.name,
                           tensor.shape[0], type->name, type->block));
    }
    tensor.offset = in_.u64("a tensor offset");
    if (tensor.offset % alignment != 0) {
      in_.fail(fmt::format("tensor '{}' offset {} is not aligned to {}", tensor.name, tensor.offset, alignment));
    }
    uint64_t blocks = elements / type->block;
    if (blocks > static_cast<uint64_t>(INT64_MAX) / type->size) {
      in_.fail(fmt::format("tensor '{}' is too large", tensor.name));
    }
    tensor.elements = static_cast<int64_t>(elements);
    tensor.bytes = static_cast<int64_t>(blocks * type->size);
    return tensor;
  }

  ByteReader& in_;
};

Result<GgufFile> parse_with(ByteSource& source) {
  ByteReader reader(source, "GGUF");
  try {
    GgufParser parser(reader);
    return parser.parse();
  } catch (const ParseError& error) {
    return make_error(ErrorCode::InvalidArgument, error.what());
  }
}

const GgufValue* find(const GgufFile& file, const std::string& key) {
  auto it = file.metadata.find(key);
  return it == file.metadata.end() ? nullptr : &it->second;
}

int int_or(const GgufFile& file, const std::string& key, int fallback) {
  const GgufValue* value = find(file, key);
  if (!value) return fallback;
  auto number = value->as_int();
  if (!number || *number < 0 || *number > INT32_MAX) return fallback;
  return static_cast<int>(*number);
}

}  // namespace

std::optional<int64_t> GgufValue::as_int() const {
  if (const auto* number = std::get_if<int64_t>(&scalar)) return *number;
  if (const auto* number = std::get_if<uint64_t>(&scalar)) {
    if (*number > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(*number);
  }
  if (!array_ints.empty()) return *std::max_element(array_ints.begin(), array_ints.end());
  return std::nullopt;
}

std::optional<std::string> GgufValue::as_string() const {
  if (const auto* text = std::get_if<std::string>(&scalar)) return *text;
  return std::nullopt;
}

std::string ggml_type_name(uint32_t type) {
  const GgmlType* known = ggml_type(type);
  return known ? known->name : "";
}

ModelInfo GgufFile::info() const {
  ModelInfo info;
  info.source = "gguf";
  const GgufValue* arch = find(*this, "general.architecture");
  info.architecture = arch ? arch->as_string().value_or("") : "";
  const std::string& a = info.architecture;
  info.layers = int_or(*this, a + ".block_count", 0);
  info.hidden_size = int_or(*this, a + ".embedding_length", 0);
  info.heads = int_or(*this, a + ".attention.head_count", 0);
  info.kv_heads = int_or(*this, a + ".attention.head_count_kv", info.heads);
  info.context_length = int_or(*this, a + ".context_length", 0);
  info.experts = int_or(*this, a + ".expert_count", 0);
  int head_dim = info.heads > 0 ? info.hidden_size / info.heads : 0;
  info.head_dim = int_or(*this, a + ".attention.key_length", head_dim);
  if (const GgufValue* tokens = find(*this, "tokenizer.ggml.tokens")) {
    info.vocab_size = static_cast<int64_t>(tokens->array_length);
  }
  info.vocab_size = int_or(*this, a + ".vocab_size", static_cast<int>(info.vocab_size));
  for (const auto& tensor : tensors) {
    info.parameters += tensor.elements;
    info.weight_bytes += tensor.bytes;
    info.bytes_by_dtype[ggml_type_name(tensor.type)] += tensor.bytes;
  }
  info.tensor_count = static_cast<int64_t>(tensors.size());
  int64_t most = -1;
  for (const auto& [dtype, bytes] : info.bytes_by_dtype) {
    if (bytes > most) {
      most = bytes;
      info.dtype = dtype == "F16" ? "fp16" : dtype == "BF16" ? "bf16" : dtype == "F32" ? "fp32" : dtype;
    }
  }
  if (const GgufValue* file_type = find(*this, "general.file_type")) {
    std::string name = file_type_name(file_type->as_int().value_or(-1));
    if (name != "F32" && name != "F16" && name != "BF16") info.quantization = name;
  } else if (!info.dtype.empty() && info.dtype.front() != 'f' && info.dtype.front() != 'b') {
    info.quantization = info.dtype;
  }
  return info;
}

Result<GgufFile> parse_gguf(std::string_view bytes) {
  MemorySource source(bytes);
  return parse_with(source);
}

Result<GgufFile> read_gguf(const std::string& path) {
  auto source = FileSource::open(path);
  if (!source) return source.error();
  auto file = parse_with(**source);
  if (!file) return make_error(file.error().code, path + ": " + file.error().message);
  return file;
}

}  // namespace nebula::models
