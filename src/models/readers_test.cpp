#include "models/models.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <unistd.h>

#include "../../tests/gguf_fixtures.h"  // test support, outside src/

namespace nebula::models {
namespace {

namespace fs = std::filesystem;

// A GGUF file written by tests/gguf_fixtures.cpp.
std::string testdata(const std::string& file) {
  return nebula::testing::gguf_fixture(file);
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Writes GGUF bytes by hand, including the wrong ones.
class GgufWriter {
 public:
  GgufWriter& raw(std::string_view bytes) {
    out_.append(bytes);
    return *this;
  }
  GgufWriter& u8(uint8_t v) { return little(v); }
  GgufWriter& u32(uint32_t v) { return little(v); }
  GgufWriter& u64(uint64_t v) { return little(v); }
  GgufWriter& str(std::string_view text) {
    u64(text.size());
    return raw(text);
  }
  GgufWriter& header(uint32_t version, uint64_t tensors, uint64_t kvs) {
    raw("GGUF");
    u32(version);
    u64(tensors);
    return u64(kvs);
  }
  GgufWriter& kv_u32(std::string_view key, uint32_t value) {
    str(key);
    u32(4);
    return u32(value);
  }
  GgufWriter& kv_str(std::string_view key, std::string_view value) {
    str(key);
    u32(8);
    return str(value);
  }
  // name, dims, type, offset
  GgufWriter& tensor(std::string_view name, std::vector<uint64_t> dims, uint32_t type, uint64_t offset) {
    str(name);
    u32(static_cast<uint32_t>(dims.size()));
    for (auto d : dims) u64(d);
    u32(type);
    return u64(offset);
  }
  GgufWriter& pad_to(size_t alignment) {
    while (out_.size() % alignment) out_.push_back('\0');
    return *this;
  }
  GgufWriter& zeros(size_t n) {
    out_.append(n, '\0');
    return *this;
  }
  const std::string& bytes() const { return out_; }

 private:
  template <typename T>
  GgufWriter& little(T v) {
    for (size_t i = 0; i < sizeof(T); ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
    return *this;
  }
  std::string out_;
};

std::string error_of(const Result<GgufFile>& result) {
  return result ? "(parsed)" : result.error().message;
}

// A small valid file: llama metadata and one F16 tensor of 32 × 2 elements.
GgufWriter small_gguf() {
  GgufWriter w;
  w.header(3, 1, 3).kv_str("general.architecture", "llama").kv_u32("llama.block_count", 2);
  w.kv_u32("llama.attention.head_count", 4);
  w.tensor("w", {32, 2}, 1, 0).pad_to(32).zeros(128);
  return w;
}

TEST(Gguf, ReadsTheTinyLlamaHeader) {
  auto path = testdata("tiny-llama.gguf");
  auto file = read_gguf(path);
  ASSERT_TRUE(file) << file.error().message;
  // Facts of the file tests/gguf_fixtures.h describes.
  EXPECT_EQ(file->version, 3u);
  EXPECT_EQ(file->tensors.size(), 21u);
  EXPECT_EQ(file->alignment, 32u);
  EXPECT_EQ(file->metadata.at("llama.feed_forward_length").as_int(), 128);
  int64_t f16_values = 0, f16_bytes = 0, f32_values = 0, f32_bytes = 0;
  for (const auto& tensor : file->tensors) {
    if (ggml_type_name(tensor.type) == "F16") f16_values += tensor.elements, f16_bytes += tensor.bytes;
    if (ggml_type_name(tensor.type) == "F32") f32_values += tensor.elements, f32_bytes += tensor.bytes;
  }
  EXPECT_EQ(f16_values, 4'169'728);
  EXPECT_EQ(f16_bytes, 8'339'456);
  EXPECT_EQ(f32_values, 320);
  EXPECT_EQ(f32_bytes, 1'280);

  ModelInfo info = file->info();
  EXPECT_EQ(info.architecture, "llama");
  EXPECT_EQ(info.layers, 2);
  EXPECT_EQ(info.hidden_size, 64);
  EXPECT_EQ(info.heads, 4);
  EXPECT_EQ(info.kv_heads, 2);
  EXPECT_EQ(info.head_dim, 16);
  EXPECT_EQ(info.context_length, 512);
  EXPECT_EQ(info.vocab_size, 32000);
  EXPECT_EQ(info.parameters, 4'169'728 + 320);
  EXPECT_EQ(info.weight_bytes, 8'339'456 + 1'280);
  EXPECT_EQ(info.bytes_by_dtype.at("F16"), 8'339'456);
  EXPECT_EQ(info.dtype, "fp16");
}

TEST(Gguf, ReadsVocabularyOnlyFiles) {
  for (const auto& [file, model] :
       {std::pair{"vocab-llama-spm.gguf", "llama"}, std::pair{"vocab-gpt-2.gguf", "gpt2"}}) {
    auto path = testdata(file);
    auto parsed = read_gguf(path);
    ASSERT_TRUE(parsed) << parsed.error().message;
    EXPECT_TRUE(parsed->tensors.empty());
    EXPECT_EQ(parsed->metadata.at("tokenizer.ggml.model").as_string(), model);
    // Token lists are counted, not kept.
    EXPECT_GT(parsed->metadata.at("tokenizer.ggml.tokens").array_length, 1000u);
    EXPECT_TRUE(parsed->metadata.at("tokenizer.ggml.tokens").array_ints.empty());
  }
}

TEST(Gguf, ParsesAHandWrittenFile) {
  auto file = parse_gguf(small_gguf().bytes());
  ASSERT_TRUE(file) << file.error().message;
  ASSERT_EQ(file->tensors.size(), 1u);
  EXPECT_EQ(file->tensors[0].bytes, 128);
  EXPECT_EQ(file->info().layers, 2);
  EXPECT_EQ(file->info().kv_heads, 4);  // head_count_kv absent: as many as heads
}

TEST(Gguf, RejectsWrongMagicAndVersions) {
  EXPECT_NE(error_of(parse_gguf("GGML\3\0\0\0")).find("bad magic"), std::string::npos);
  EXPECT_NE(error_of(parse_gguf(GgufWriter().header(1, 0, 0).bytes())).find("version 1"), std::string::npos);
  EXPECT_NE(error_of(parse_gguf(GgufWriter().header(7, 0, 0).bytes())).find("unsupported GGUF version 7"),
            std::string::npos);
  EXPECT_NE(error_of(parse_gguf(GgufWriter().raw("GGUF").u32(0x03000000).u64(0).u64(0).bytes())).find("big-endian"),
            std::string::npos);
  EXPECT_NE(error_of(parse_gguf("")).find("truncated"), std::string::npos);
  EXPECT_NE(error_of(read_gguf("/nonexistent/model.gguf")).find("cannot open"), std::string::npos);
}

TEST(Gguf, RefusesCountsAndLengthsTheFileCannotHold) {
  // Each of these would be a multi-exabyte allocation if taken at its word.
  EXPECT_NE(error_of(parse_gguf(GgufWriter().header(3, uint64_t{1} << 62, 0).bytes())).find("tensor count"),
            std::string::npos);
  EXPECT_NE(error_of(parse_gguf(GgufWriter().header(3, 0, uint64_t{1} << 62).bytes())).find("metadata count"),
            std::string::npos);
  auto long_key = GgufWriter().header(3, 0, 1).u64(uint64_t{1} << 40).zeros(16).bytes();
  EXPECT_NE(error_of(parse_gguf(long_key)).find("longer than"), std::string::npos);
  auto long_string = GgufWriter().header(3, 0, 1).str("k").u32(8).u64(~uint64_t{0}).bytes();
  EXPECT_NE(error_of(parse_gguf(long_string)).find("exceeds the file"), std::string::npos);
  auto long_array = GgufWriter().header(3, 0, 1).str("k").u32(9).u32(4).u64(uint64_t{1} << 61).bytes();
  EXPECT_NE(error_of(parse_gguf(long_array)).find("exceeds the file"), std::string::npos);
  auto many_strings = GgufWriter().header(3, 0, 1).str("k").u32(9).u32(8).u64(uint64_t{1} << 61).bytes();
  EXPECT_NE(error_of(parse_gguf(many_strings)).find("exceeds the file"), std::string::npos);
}

TEST(Gguf, RefusesMalformedValuesAndTensors) {
  auto nested = GgufWriter().header(3, 0, 1).str("k");
  nested.u32(9);
  for (int i = 0; i < 6; ++i) nested.u32(9).u64(1);
  nested.zeros(64);
  EXPECT_NE(error_of(parse_gguf(nested.bytes())).find("nested deeper"), std::string::npos);
  EXPECT_NE(
      error_of(parse_gguf(GgufWriter().header(3, 0, 1).str("k").u32(13).zeros(8).bytes())).find("unknown metadata"),
      std::string::npos);
  EXPECT_NE(error_of(parse_gguf(GgufWriter().header(3, 0, 1).str("k").u32(7).u8(2).bytes())).find("bool"),
            std::string::npos);
  auto bad_alignment = GgufWriter().header(3, 0, 1).kv_u32("general.alignment", 24).bytes();
  EXPECT_NE(error_of(parse_gguf(bad_alignment)).find("power of two"), std::string::npos);

  auto tensor_file = [](std::vector<uint64_t> dims, uint32_t type, uint64_t offset) {
    return GgufWriter().header(3, 1, 0).tensor("t", std::move(dims), type, offset).pad_to(32).zeros(256).bytes();
  };
  EXPECT_NE(error_of(parse_gguf(tensor_file({1, 1, 1, 1, 1}, 0, 0))).find("5 dimensions"), std::string::npos);
  EXPECT_NE(error_of(parse_gguf(tensor_file({}, 0, 0))).find("0 dimensions"), std::string::npos);
  EXPECT_NE(error_of(parse_gguf(tensor_file({32}, 99, 0))).find("unknown ggml type 99"), std::string::npos);
  EXPECT_NE(error_of(parse_gguf(tensor_file({33}, 2, 0))).find("block size"), std::string::npos);
  EXPECT_NE(error_of(parse_gguf(tensor_file({uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0))).find("too large"),
            std::string::npos);
  EXPECT_NE(error_of(parse_gguf(tensor_file({4}, 0, 3))).find("not aligned"), std::string::npos);
  EXPECT_NE(error_of(parse_gguf(tensor_file({1024}, 0, 0))).find("extends past the end"), std::string::npos);
  EXPECT_NE(error_of(parse_gguf(tensor_file({4}, 0, uint64_t{1} << 63))).find("extends past the end"),
            std::string::npos);
}

TEST(Gguf, EveryTruncationOfARealFileIsAClearError) {
  auto path = testdata("tiny-llama.gguf");
  std::string bytes = slurp(path);
  ASSERT_TRUE(parse_gguf(bytes));
  auto header = read_gguf(path);
  ASSERT_TRUE(header);
  size_t header_end = header->data_offset;
  // Every cut inside the first KiB, then a spread over the header and the data.
  std::vector<size_t> cuts;
  for (size_t cut = 0; cut < 1024; ++cut) cuts.push_back(cut);
  for (size_t cut = 1024; cut < bytes.size(); cut += bytes.size() / 97) cuts.push_back(cut);
  cuts.push_back(header_end - 1);
  cuts.push_back(header_end);
  cuts.push_back(bytes.size() - 1);
  for (size_t cut : cuts) {
    auto parsed = parse_gguf(std::string_view(bytes).substr(0, cut));
    ASSERT_FALSE(parsed) << "a file cut at " << cut << " parsed";
    const auto& message = parsed.error().message;
    EXPECT_TRUE(message.find("truncated") != std::string::npos || message.find("exceeds the file") != std::string::npos)
        << cut << ": " << message;
  }
}

TEST(Gguf, RandomCorruptionOfTheHeaderNeverCrashes) {
  auto path = testdata("tiny-llama.gguf");
  auto header = read_gguf(path);
  ASSERT_TRUE(header);
  // The first 4 KiB (the start of the metadata) with data enough for a few tensors.
  std::string original = slurp(path).substr(0, 4096);
  std::mt19937 random(42);
  int parsed = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string bytes = original;
    int flips = 1 + static_cast<int>(random() % 8);
    for (int i = 0; i < flips; ++i) bytes[random() % bytes.size()] = static_cast<char>(random());
    if (parse_gguf(bytes)) ++parsed;
  }
  EXPECT_EQ(parsed, 0);  // cut to 4 KiB, no corruption makes the rest of the header appear
}

// ---- safetensors --------------------------------------------------------------------------------

std::string safetensors_bytes(const std::string& header, size_t data_bytes, std::optional<uint64_t> length = {}) {
  std::string out;
  uint64_t n = length.value_or(header.size());
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xFF));
  out += header;
  out.append(data_bytes, '\0');
  return out;
}

std::string st_error(const std::string& bytes) {
  auto parsed = parse_safetensors(bytes, bytes.size());
  return parsed ? "(parsed)" : parsed.error().message;
}

TEST(Safetensors, ReadsDtypesShapesAndSizes) {
  std::string header = R"({"__metadata__":{"format":"pt"},)"
                       R"("embed":{"dtype":"BF16","shape":[16,8],"data_offsets":[0,256]},)"
                       R"("norm":{"dtype":"F32","shape":[8],"data_offsets":[256,288]}})";
  auto file = parse_safetensors(safetensors_bytes(header, 288), 8 + header.size() + 288);
  ASSERT_TRUE(file) << file.error().message;
  ASSERT_EQ(file->tensors.size(), 2u);
  EXPECT_EQ(file->metadata.at("format"), "pt");
  EXPECT_EQ(file->tensors[0].name, "embed");
  EXPECT_EQ(file->tensors[0].elements, 128);
  EXPECT_EQ(file->tensors[0].bytes, 256);
  EXPECT_EQ(file->tensors[1].dtype, "F32");
  EXPECT_EQ(file->tensors[1].shape, std::vector<int64_t>{8});
}

TEST(Safetensors, RefusesHostileHeaders) {
  EXPECT_NE(st_error("1234"), "(parsed)");
  EXPECT_NE(st_error(safetensors_bytes("{}", 0, uint64_t{1} << 62)).find("100 MB"), std::string::npos);
  EXPECT_NE(st_error(safetensors_bytes("{}", 0, 1000)).find("exceeds the file"), std::string::npos);
  EXPECT_NE(st_error(safetensors_bytes("{not json", 0)).find("invalid JSON"), std::string::npos);
  EXPECT_NE(st_error(safetensors_bytes("[1]", 0)).find("JSON object"), std::string::npos);
  EXPECT_NE(st_error(safetensors_bytes(std::string(100000, '[') + std::string(100000, ']'), 0)).find("nested deeper"),
            std::string::npos);
  auto tensor = [](const std::string& body, size_t data) {
    return st_error(safetensors_bytes(R"({"t":)" + body + "}", data));
  };
  EXPECT_NE(tensor(R"({"dtype":"Q9","shape":[1],"data_offsets":[0,1]})", 1).find("unknown dtype"), std::string::npos);
  EXPECT_NE(tensor(R"({"dtype":"F16","shape":[-1],"data_offsets":[0,2]})", 2).find("non-negative"), std::string::npos);
  EXPECT_NE(tensor(R"({"dtype":"F16","shape":[4],"data_offsets":[0,6]})", 8).find("do not hold"), std::string::npos);
  EXPECT_NE(tensor(R"({"dtype":"F16","shape":[4],"data_offsets":[8,0]})", 8).find("do not hold"), std::string::npos);
  EXPECT_NE(tensor(R"({"dtype":"F16","shape":[4],"data_offsets":[0,8]})", 4).find("truncated"), std::string::npos);
  EXPECT_NE(tensor(R"({"dtype":"F16","shape":[4294967296,4294967296],"data_offsets":[0,8]})", 8).find("too large"),
            std::string::npos);
  EXPECT_NE(tensor(R"({"dtype":"F16","shape":[4]})", 8).find("data_offsets"), std::string::npos);
  EXPECT_NE(tensor(R"("x")", 0).find("not an object"), std::string::npos);
  EXPECT_NE(st_error(safetensors_bytes(R"({"__metadata__":[1]})", 0)).find("__metadata__"), std::string::npos);
}

TEST(Safetensors, ReadsACheckpointDirectoryWithConfigJson) {
  fs::path dir = fs::temp_directory_path() / ("nebula-st-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  {
    std::ofstream(dir / "config.json") << R"({"model_type":"llama","num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"hidden_size":64,"max_position_embeddings":512,"torch_dtype":"bfloat16"})";
    std::string h1 = R"({"a":{"dtype":"BF16","shape":[64,64],"data_offsets":[0,8192]}})";
    std::string h2 = R"({"b":{"dtype":"BF16","shape":[64,32],"data_offsets":[0,4096]},)"
                     R"("n":{"dtype":"F32","shape":[64],"data_offsets":[4096,4352]}})";
    std::ofstream(dir / "model-00001-of-00002.safetensors", std::ios::binary) << safetensors_bytes(h1, 8192);
    std::ofstream(dir / "model-00002-of-00002.safetensors", std::ios::binary) << safetensors_bytes(h2, 4352);
  }
  auto info = read_model_path(dir.string());
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(info->source, "safetensors");
  EXPECT_EQ(info->layers, 2);
  EXPECT_EQ(info->kv_heads, 2);
  EXPECT_EQ(info->head_dim, 16);
  EXPECT_EQ(info->context_length, 512);
  EXPECT_EQ(info->tensor_count, 3);
  EXPECT_EQ(info->parameters, 64 * 64 + 64 * 32 + 64);
  EXPECT_EQ(info->weight_bytes, 8192 + 4096 + 256);
  EXPECT_EQ(info->dtype, "bf16");
  // One shard read on its own still finds config.json beside it.
  auto shard = read_model_path((dir / "model-00001-of-00002.safetensors").string());
  ASSERT_TRUE(shard) << shard.error().message;
  EXPECT_EQ(shard->weight_bytes, 8192);
  EXPECT_EQ(shard->layers, 2);
  // A truncated shard names itself.
  fs::resize_file(dir / "model-00002-of-00002.safetensors", 100);
  auto truncated = read_model_path(dir.string());
  ASSERT_FALSE(truncated);
  EXPECT_NE(truncated.error().message.find("model-00002-of-00002"), std::string::npos) << truncated.error().message;
  fs::remove_all(dir);
}

TEST(ConfigJson, ReadsShapesAndQuantisation) {
  auto info = info_from_config_json(R"({"model_type":"qwen2","num_hidden_layers":28,"num_attention_heads":28,
      "num_key_value_heads":4,"hidden_size":3584,"max_position_embeddings":32768,"torch_dtype":"bfloat16",
      "quantization_config":{"quant_method":"awq","bits":4}})");
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(info->head_dim, 128);
  EXPECT_EQ(info->kv_heads, 4);
  EXPECT_EQ(info->quantization, "awq-int4");
  auto multimodal = info_from_config_json(
      R"({"model_type":"mllama","text_config":{"num_hidden_layers":40,"num_attention_heads":32,"hidden_size":4096,
      "num_key_value_heads":8}})");
  ASSERT_TRUE(multimodal);
  EXPECT_EQ(multimodal->layers, 40);
  EXPECT_EQ(multimodal->kv_heads, 8);
  EXPECT_FALSE(info_from_config_json("[]"));
  EXPECT_FALSE(info_from_config_json("{"));
}

}  // namespace
}  // namespace nebula::models
