#include "sim/generator.h"

#include <algorithm>
#include <cctype>
#include <string_view>

#include "sim/tokenizer.h"

namespace nebula::sim {
namespace {

constexpr std::string_view kLoremText =
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore "
    "magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea commodo "
    "consequat duis aute irure in reprehenderit voluptate velit esse cillum eu fugiat nulla pariatur excepteur "
    "sint occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim id est laborum vitae";

const std::vector<std::string_view>& lorem_words() {
  static const std::vector<std::string_view> words = split_words(kLoremText);
  return words;
}

// splitmix64: a tiny generator whose output is the same on every platform and standard library.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t bound) { return next() % bound; }

 private:
  uint64_t state_;
};

uint64_t fnv1a(std::string_view text) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

// Produces lorem-ipsum words in sentences of 6 to 14 words: capitalised first word, final period.
class LoremSource {
 public:
  explicit LoremSource(uint64_t seed) : rng_(seed) {}
  std::string next_word() {
    if (sentence_left_ == 0) sentence_left_ = 6 + static_cast<int>(rng_.below(9));
    std::string word(lorem_words()[rng_.below(lorem_words().size())]);
    if (at_sentence_start_) word[0] = static_cast<char>(word[0] - 'a' + 'A');
    --sentence_left_;
    at_sentence_start_ = sentence_left_ == 0;
    if (at_sentence_start_) word += '.';
    return word;
  }

 private:
  SplitMix64 rng_;
  int sentence_left_ = 0;
  bool at_sentence_start_ = true;
};

// The earliest position where a stop string occurs in text at or after search_from.
std::optional<std::pair<size_t, const std::string*>> find_stop(const std::string& text, size_t search_from,
                                                               const std::vector<std::string>& stops) {
  std::optional<std::pair<size_t, const std::string*>> earliest;
  for (const std::string& stop : stops) {
    if (stop.empty()) continue;
    size_t from = search_from >= stop.size() - 1 ? search_from - (stop.size() - 1) : 0;
    size_t position = text.find(stop, from);
    if (position != std::string::npos && (!earliest || position < earliest->first)) earliest.emplace(position, &stop);
  }
  return earliest;
}

// Shortens the tokens so that together they are exactly the first `length` bytes of their text.
void truncate_tokens(std::vector<std::string>& tokens, size_t length) {
  size_t offset = 0;
  for (std::string& token : tokens) {
    if (offset >= length) {
      token.clear();
    } else if (offset + token.size() > length) {
      size_t keep = length - offset;
      offset += token.size();
      token.resize(keep);
      continue;
    }
    offset += token.size();
  }
}

// A deterministic log-probability for `token` at `position` with `alternatives` - 1 other tokens
// after it, each less likely than the one before.
TokenLogprob token_logprob(const std::string& token, size_t position, int alternatives, uint64_t seed) {
  SplitMix64 rng(seed ^ fnv1a(token) ^ (static_cast<uint64_t>(position) * 0xd1b54a32d192ed03ULL));
  auto uniform = [&rng] { return static_cast<double>(rng.next() >> 11) * 0x1.0p-53; };
  TokenLogprob result;
  double draw = uniform();
  result.logprob = -(draw * draw * 2.5) - 1e-4;
  result.top.emplace_back(token, result.logprob);
  bool spaced = !token.empty() && token[0] == ' ';
  double logprob = result.logprob;
  while (static_cast<int>(result.top.size()) < alternatives) {
    std::string candidate(spaced ? " " : "");
    candidate += lorem_words()[rng.below(lorem_words().size())];
    if (rng.below(4) == 0) candidate[spaced ? 1 : 0] = static_cast<char>(candidate[spaced ? 1 : 0] - 'a' + 'A');
    bool taken = std::any_of(result.top.begin(), result.top.end(),
                             [&candidate](const auto& entry) { return entry.first == candidate; });
    if (taken) continue;
    logprob -= 0.2 + 2.0 * uniform();
    result.top.emplace_back(std::move(candidate), logprob);
  }
  return result;
}

// The prompt as tokens that join into it: each word with the whitespace before it; whitespace at
// the end goes with the last word.
std::vector<std::string> prompt_pieces(std::string_view prompt) {
  std::vector<std::string> pieces;
  size_t start = 0;
  for (std::string_view word : split_words(prompt)) {
    size_t end = static_cast<size_t>(word.data() - prompt.data()) + word.size();
    pieces.emplace_back(prompt.substr(start, end - start));
    start = end;
  }
  if (start < prompt.size()) {
    if (pieces.empty()) {
      pieces.emplace_back(prompt.substr(start));
    } else {
      pieces.back() += prompt.substr(start);
    }
  }
  return pieces;
}

void add_logprobs(Generation& generation, const GenerationInput& input, uint64_t seed) {
  if (!input.top_logprobs) return;
  int alternatives = std::max(1, *input.top_logprobs);
  for (size_t index = 0; index < generation.tokens.size(); ++index) {
    generation.logprobs.push_back(token_logprob(generation.tokens[index], index, alternatives, seed));
  }
  for (size_t index = 1; index < generation.echo_tokens.size(); ++index) {
    generation.echo_logprobs.push_back(token_logprob(generation.echo_tokens[index], index, alternatives, ~seed));
  }
}

// Emits `token` into the generation; true when a stop string ended it.
bool emit(Generation& generation, std::string& text, std::string token, const std::vector<std::string>& stops) {
  size_t previous_length = text.size();
  text += token;
  generation.tokens.push_back(std::move(token));
  if (auto stop = find_stop(text, previous_length, stops)) {
    truncate_tokens(generation.tokens, stop->first);
    generation.finish_reason = FinishReason::Stop;
    generation.stop_reason = *stop->second;
    return true;
  }
  return false;
}

Generation generate_text(GenerationMode mode, const GenerationInput& input, uint64_t seed) {
  Generation generation;
  std::vector<std::string_view> echo_words;
  if (mode == GenerationMode::Echo) echo_words = split_words(input.echo_text);
  LoremSource lorem(seed);
  std::string text;
  for (int index = 0; index < input.max_tokens; ++index) {
    bool past_echo = static_cast<size_t>(index) >= echo_words.size();
    if (mode == GenerationMode::Echo && past_echo && !input.ignore_eos) {
      generation.tokens.emplace_back();  // the EOS token: generated and counted, without text
      generation.finish_reason = FinishReason::Stop;
      return generation;
    }
    std::string word;
    if (mode == GenerationMode::Lorem || echo_words.empty()) {
      word = lorem.next_word();
    } else {
      word = std::string(echo_words[static_cast<size_t>(index) % echo_words.size()]);
    }
    if (emit(generation, text, token_text(word, static_cast<size_t>(index)), input.stop)) return generation;
  }
  generation.finish_reason = FinishReason::Length;
  return generation;
}

// response_format: the JSON is written whole, then emitted token by token; its end is the EOS.
Generation generate_json_text(const GenerationInput& input, uint64_t seed) {
  Generation generation;
  std::string text;
  // Text enough for max_tokens tokens of any usual length; a schema that asks for more is cut by
  // max_tokens anyway (and when the budget cuts it first, the answer still ends with "length").
  size_t budget = static_cast<size_t>(input.max_tokens) * 64 + 1024;
  GeneratedJson json = generate_json(input.schema, seed, budget);
  std::vector<std::string> tokens = json_tokens(json.text);
  for (size_t index = 0; index < tokens.size(); ++index) {
    if (static_cast<int>(index) == input.max_tokens) {
      generation.finish_reason = FinishReason::Length;
      return generation;
    }
    if (emit(generation, text, std::move(tokens[index]), input.stop)) return generation;
  }
  // The EOS after the JSON, when max_tokens leaves room for it.
  bool room = static_cast<int>(generation.tokens.size()) < input.max_tokens;
  if (json.complete && room) generation.tokens.emplace_back();
  generation.finish_reason = json.complete && room ? FinishReason::Stop : FinishReason::Length;
  return generation;
}

}  // namespace

const char* to_string(FinishReason reason) {
  return reason == FinishReason::Stop ? "stop" : "length";
}

std::optional<GenerationMode> parse_generation_mode(const std::string& text) {
  if (text == "lorem") return GenerationMode::Lorem;
  if (text == "echo") return GenerationMode::Echo;
  return std::nullopt;
}

std::string Generation::text() const {
  std::string text;
  for (const std::string& token : tokens) text += token;
  return text;
}

Generation generate(GenerationMode mode, const GenerationInput& input) {
  uint64_t seed = input.seed ^ fnv1a(input.prompt_text);
  Generation generation =
      input.format == OutputFormat::Text ? generate_text(mode, input, seed) : generate_json_text(input, seed);
  if (input.echo) {
    generation.echo_tokens = prompt_pieces(input.echo_text);
    // The completion continues the prompt: its first word is a word of its own.
    bool joined = !input.echo_text.empty() && !std::isspace(static_cast<unsigned char>(input.echo_text.back()));
    if (joined && !generation.tokens.empty() && !generation.tokens[0].empty() && generation.tokens[0][0] != ' ') {
      generation.tokens[0] = " " + generation.tokens[0];
    }
  }
  add_logprobs(generation, input, seed);
  return generation;
}

std::string Generation::echo_text() const {
  std::string text;
  for (const std::string& token : echo_tokens) text += token;
  return text;
}

}  // namespace nebula::sim
