#pragma once
// The simulator's tokenizer: one token per whitespace-separated word. Crude, but it makes token
// counts predictable in tests and it is all the pacing model needs.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace nebula::sim {

// The words of text, split on ASCII whitespace. The views point into text.
std::vector<std::string_view> split_words(std::string_view text);
int count_tokens(std::string_view text);
// A word's token id: a 31-bit hash of its bytes, the same on every run and platform, so equal
// prompts give equal ids (and equal prefix-cache block hashes).
uint32_t token_id(std::string_view word);
// The token ids of text: one per word.
std::vector<uint32_t> tokenize(std::string_view text);
// The text of output token number `index` (0-based): words after the first carry a leading space,
// so concatenating the tokens of a completion gives its text.
std::string token_text(std::string_view word, size_t index);

}  // namespace nebula::sim
