#pragma once
// GGUF files for tests, written by this code at test time so a clone of the repository runs every
// test on its own. Shared by the unit tests (src/**/*_test.cpp) and the cross-process tests.
#include <string>
#include <string_view>

namespace nebula::testing {

// "tiny-llama.gguf": a complete Llama-architecture model that llama.cpp's llama-server loads and
// runs on a CPU in milliseconds (meaningless text). GGUF version 3, alignment 32, 21 tensors:
// 2 layers, 64 wide, feed-forward 128, 4 heads (2 KV heads, head dim 16), context 512, a
// 32,000-token SentencePiece-style vocabulary (<unk>, <s>, </s>, the 256 byte tokens, then
// made-up pieces), random F16 weights (4,169,728 values, 8,339,456 bytes) and F32 norms of ones
// (320 values, 1,280 bytes). About 9 MB. Its metadata keys, tensor names and shapes are those of
// a file written by llama.cpp's own GGUF writer that llama-server ran.
std::string tiny_llama_gguf();

// A vocabulary-only GGUF (metadata, no tensors) with tokenizer.ggml.model = tokenizer_model:
// "llama" (SentencePiece: tokens, scores, token types) or "gpt2" (BPE: tokens, token types,
// merges); 2,000 tokens.
std::string vocab_only_gguf(std::string_view tokenizer_model);

// The path of fixture `name` ("tiny-llama.gguf", "vocab-llama-spm.gguf" or "vocab-gpt-2.gguf"),
// written on first use in this process (atomically: write, then rename) to a directory of its own
// under /tmp shared by every test process of this user. Throws on an unknown name.
std::string gguf_fixture(const std::string& name);

}  // namespace nebula::testing
