#include "gguf_fixtures.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <stdexcept>
#include <vector>

namespace nebula::testing {
namespace {

// GGUF metadata value types and the two ggml tensor types used here.
enum class GgufType : uint32_t { U32 = 4, I32 = 5, F32 = 6, Bool = 7, String = 8, Array = 9 };
constexpr uint32_t kGgmlF32 = 0;
constexpr uint32_t kGgmlF16 = 1;
constexpr uint64_t kAlignment = 32;

// Little-endian GGUF bytes: the header, metadata and tensor infos, then the aligned data.
class Writer {
 public:
  template <typename T>
  void little(T value) {
    uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    for (size_t i = 0; i < sizeof(T); ++i) out_.push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
  }
  void string(std::string_view text) {
    little<uint64_t>(text.size());
    out_.append(text);
  }
  void key(std::string_view name, GgufType type) {
    string(name);
    little(static_cast<uint32_t>(type));
  }
  void u32(std::string_view name, uint32_t value) {
    key(name, GgufType::U32);
    little(value);
  }
  void f32(std::string_view name, float value) {
    key(name, GgufType::F32);
    little(value);
  }
  void boolean(std::string_view name, bool value) {
    key(name, GgufType::Bool);
    out_.push_back(value ? 1 : 0);
  }
  void text(std::string_view name, std::string_view value) {
    key(name, GgufType::String);
    string(value);
  }
  void array_header(std::string_view name, GgufType element, uint64_t count) {
    key(name, GgufType::Array);
    little(static_cast<uint32_t>(element));
    little(count);
  }
  void strings(std::string_view name, const std::vector<std::string>& values) {
    array_header(name, GgufType::String, values.size());
    for (const auto& value : values) string(value);
  }
  void tensor_info(std::string_view name, const std::vector<uint64_t>& dims, uint32_t type, uint64_t offset) {
    string(name);
    little(static_cast<uint32_t>(dims.size()));
    for (uint64_t dim : dims) little(dim);
    little(type);
    little(offset);
  }
  void pad() {
    while (out_.size() % kAlignment) out_.push_back('\0');
  }
  std::string& bytes() { return out_; }

 private:
  std::string out_;
};

// The SentencePiece layout llama.cpp expects: <unk>, <s>, </s>, the 256 byte-fallback tokens
// <0x00>..<0xFF> (it looks up <0x0A> for the newline), then unique made-up pieces.
struct Vocabulary {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;  // 1 normal, 2 unknown, 3 control, 6 byte
};

std::string letters(uint64_t number) {
  std::string word;
  do {
    word.push_back(static_cast<char>('a' + number % 26));
    number /= 26;
  } while (number);
  return word;
}

Vocabulary spm_vocabulary(size_t size) {
  Vocabulary vocabulary;
  auto add = [&](std::string token, int32_t type) {
    vocabulary.scores.push_back(-static_cast<float>(vocabulary.tokens.size()));
    vocabulary.tokens.push_back(std::move(token));
    vocabulary.types.push_back(type);
  };
  add("<unk>", 2);
  add("<s>", 3);
  add("</s>", 3);
  for (int byte = 0; byte < 256; ++byte) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", byte);
    add(name, 6);
  }
  // Pieces alternate between word starts ("▁" + letters) and word continuations (letters).
  for (uint64_t piece = 0; vocabulary.tokens.size() < size; ++piece) {
    add((piece % 2 ? "" : "\xE2\x96\x81") + letters(piece / 2), 1);
  }
  return vocabulary;
}

void write_vocabulary(Writer& out, const Vocabulary& vocabulary) {
  out.strings("tokenizer.ggml.tokens", vocabulary.tokens);
  out.array_header("tokenizer.ggml.scores", GgufType::F32, vocabulary.scores.size());
  for (float score : vocabulary.scores) out.little(score);
  out.array_header("tokenizer.ggml.token_type", GgufType::I32, vocabulary.types.size());
  for (int32_t type : vocabulary.types) out.little(type);
}

struct Tensor {
  std::string name;
  std::vector<uint64_t> dims;  // ggml order: the row length first
  uint32_t type;
  uint64_t elements() const {
    uint64_t count = 1;
    for (uint64_t dim : dims) count *= dim;
    return count;
  }
  uint64_t bytes() const { return elements() * (type == kGgmlF16 ? 2 : 4); }
};

}  // namespace

std::string tiny_llama_gguf() {
  constexpr uint64_t kEmbedding = 64, kFeedForward = 128, kHeads = 4, kKvHeads = 2, kLayers = 2, kVocab = 32000;
  constexpr uint64_t kHeadDim = kEmbedding / kHeads, kKvWidth = kKvHeads * kHeadDim;
  std::vector<Tensor> tensors = {{"token_embd.weight", {kEmbedding, kVocab}, kGgmlF16},
                                 {"output_norm.weight", {kEmbedding}, kGgmlF32},
                                 {"output.weight", {kEmbedding, kVocab}, kGgmlF16}};
  for (uint64_t layer = 0; layer < kLayers; ++layer) {
    std::string block = "blk." + std::to_string(layer) + ".";
    tensors.push_back({block + "attn_norm.weight", {kEmbedding}, kGgmlF32});
    tensors.push_back({block + "attn_q.weight", {kEmbedding, kEmbedding}, kGgmlF16});
    tensors.push_back({block + "attn_k.weight", {kEmbedding, kKvWidth}, kGgmlF16});
    tensors.push_back({block + "attn_v.weight", {kEmbedding, kKvWidth}, kGgmlF16});
    tensors.push_back({block + "attn_output.weight", {kEmbedding, kEmbedding}, kGgmlF16});
    tensors.push_back({block + "ffn_norm.weight", {kEmbedding}, kGgmlF32});
    tensors.push_back({block + "ffn_gate.weight", {kEmbedding, kFeedForward}, kGgmlF16});
    tensors.push_back({block + "ffn_up.weight", {kEmbedding, kFeedForward}, kGgmlF16});
    tensors.push_back({block + "ffn_down.weight", {kFeedForward, kEmbedding}, kGgmlF16});
  }

  Writer out;
  out.bytes().append("GGUF");
  out.little<uint32_t>(3);
  out.little<uint64_t>(tensors.size());
  out.little<uint64_t>(24);  // metadata entries, counted below
  out.text("general.architecture", "llama");
  out.text("general.name", "tiny-llama");
  out.u32("general.alignment", kAlignment);
  out.u32("general.file_type", 1);  // mostly F16
  out.u32("llama.context_length", 512);
  out.u32("llama.embedding_length", kEmbedding);
  out.u32("llama.block_count", kLayers);
  out.u32("llama.feed_forward_length", kFeedForward);
  out.u32("llama.attention.head_count", kHeads);
  out.u32("llama.attention.head_count_kv", kKvHeads);
  out.f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  out.u32("llama.rope.dimension_count", kHeadDim);
  out.f32("llama.rope.freq_base", 10000.0f);
  out.u32("llama.vocab_size", kVocab);
  out.text("tokenizer.ggml.model", "llama");
  out.text("tokenizer.ggml.pre", "default");
  write_vocabulary(out, spm_vocabulary(kVocab));  // 3 entries
  out.u32("tokenizer.ggml.unknown_token_id", 0);
  out.u32("tokenizer.ggml.bos_token_id", 1);
  out.u32("tokenizer.ggml.eos_token_id", 2);
  out.boolean("tokenizer.ggml.add_bos_token", true);
  out.boolean("tokenizer.ggml.add_eos_token", false);

  uint64_t offset = 0;
  for (const auto& tensor : tensors) {
    out.tensor_info(tensor.name, tensor.dims, tensor.type, offset);
    offset += (tensor.bytes() + kAlignment - 1) / kAlignment * kAlignment;
  }
  out.pad();
  // Weights: finite F16 values of magnitude 2^-10 to 2^-4 with random signs, drawn from bit
  // patterns (exponent field 5..11) so no float conversion is needed; norms are 1.0.
  std::mt19937 random(20240613);
  for (const auto& tensor : tensors) {
    for (uint64_t i = 0; i < tensor.elements(); ++i) {
      if (tensor.type == kGgmlF32) {
        out.little(1.0f);
        continue;
      }
      uint32_t bits = static_cast<uint32_t>(random());
      uint16_t sign = (bits & 1) << 15, exponent = static_cast<uint16_t>(5 + (bits >> 1) % 7);
      uint16_t mantissa = static_cast<uint16_t>((bits >> 4) & 0x3FF);
      out.little(static_cast<uint16_t>(sign | (exponent << 10) | mantissa));
    }
    out.pad();
  }
  return std::move(out.bytes());
}

std::string vocab_only_gguf(std::string_view tokenizer_model) {
  constexpr size_t kTokens = 2000;
  Writer out;
  bool gpt2 = tokenizer_model == "gpt2";
  out.bytes().append("GGUF");
  out.little<uint32_t>(3);
  out.little<uint64_t>(0);
  out.little<uint64_t>(gpt2 ? 6 : 7);
  out.text("general.architecture", "llama");
  out.text("general.name", gpt2 ? "vocab-gpt-2" : "vocab-llama-spm");
  out.text("tokenizer.ggml.model", tokenizer_model);
  if (gpt2) {
    // Byte-level BPE: the printable bytes, then pieces each made by one merge.
    std::vector<std::string> tokens, merges;
    std::vector<int32_t> types;
    for (char c = '!'; c <= '~'; ++c) tokens.emplace_back(1, c), types.push_back(1);
    for (size_t i = 0; tokens.size() < kTokens; ++i) {
      std::string left(1, static_cast<char>('a' + i % 26)), right = letters(i / 26);
      merges.push_back(left + " " + right);
      tokens.push_back(left + right);
      types.push_back(1);
    }
    out.strings("tokenizer.ggml.tokens", tokens);
    out.array_header("tokenizer.ggml.token_type", GgufType::I32, types.size());
    for (int32_t type : types) out.little(type);
    out.strings("tokenizer.ggml.merges", merges);
  } else {
    write_vocabulary(out, spm_vocabulary(kTokens));
    out.u32("tokenizer.ggml.bos_token_id", 1);
  }
  return std::move(out.bytes());
}

std::string gguf_fixture(const std::string& name) {
  static std::mutex mutex;
  static std::vector<std::string> written;
  std::lock_guard lock(mutex);
  std::filesystem::path dir = std::filesystem::temp_directory_path() / ("nebula-gguf-" + std::to_string(::getuid()));
  std::filesystem::path path = dir / name;
  for (const auto& done : written) {
    if (done == name) return path.string();
  }
  std::string bytes;
  if (name == "tiny-llama.gguf") {
    bytes = tiny_llama_gguf();
  } else if (name == "vocab-llama-spm.gguf") {
    bytes = vocab_only_gguf("llama");
  } else if (name == "vocab-gpt-2.gguf") {
    bytes = vocab_only_gguf("gpt2");
  } else {
    throw std::invalid_argument("no GGUF fixture named " + name);
  }
  std::filesystem::create_directories(dir);
  // Written each time a process first asks (the generator may have changed since the last run);
  // the rename keeps a reader in another test process from seeing half a file.
  std::filesystem::path partial = dir / (name + "." + std::to_string(::getpid()) + ".partial");
  {
    std::ofstream file(partial, std::ios::binary | std::ios::trunc);
    file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!file) throw std::runtime_error("cannot write " + partial.string());
  }
  std::filesystem::rename(partial, path);
  written.push_back(name);
  return path.string();
}

}  // namespace nebula::testing
