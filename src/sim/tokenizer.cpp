#include "sim/tokenizer.h"

namespace nebula::sim {
namespace {
bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
}  // namespace

std::vector<std::string_view> split_words(std::string_view text) {
  std::vector<std::string_view> words;
  size_t position = 0;
  while (position < text.size()) {
    while (position < text.size() && is_space(text[position])) ++position;
    size_t start = position;
    while (position < text.size() && !is_space(text[position])) ++position;
    if (position > start) words.push_back(text.substr(start, position - start));
  }
  return words;
}

int count_tokens(std::string_view text) {
  return static_cast<int>(split_words(text).size());
}

uint32_t token_id(std::string_view word) {
  uint64_t hash = 0xcbf29ce484222325ULL;  // FNV-1a
  for (unsigned char c : word) {
    hash ^= c;
    hash *= 0x100000001b3ULL;
  }
  return static_cast<uint32_t>((hash ^ (hash >> 31)) & 0x7fffffffU);
}

std::vector<uint32_t> tokenize(std::string_view text) {
  std::vector<uint32_t> ids;
  for (std::string_view word : split_words(text)) ids.push_back(token_id(word));
  return ids;
}

std::string token_text(std::string_view word, size_t index) {
  if (index == 0) return std::string(word);
  std::string text = " ";
  text += word;
  return text;
}

}  // namespace nebula::sim
