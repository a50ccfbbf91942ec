#pragma once
// What the simulated model says: the whole completion is decided up front from the request, so a
// streamed answer and a non-streamed one are the same text. Pacing is a separate concern (pacer.h).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sim/structured.h"

namespace nebula::sim {

enum class GenerationMode { Lorem, Echo };
enum class FinishReason { Length, Stop };

const char* to_string(FinishReason reason);
// "lorem" or "echo"; nullopt for anything else.
std::optional<GenerationMode> parse_generation_mode(const std::string& text);

struct GenerationInput {
  std::string prompt_text;  // everything the model was given; lorem output is seeded by it
  std::string echo_text;    // what echo mode repeats
  int max_tokens = 1;
  std::vector<std::string> stop;
  uint64_t seed = 0;
  // Echo mode ends (finish_reason "stop", with the model's EOS: a token without text, counted as
  // vLLM counts it) when the echo text runs out; with
  // ignore_eos it starts over instead, until max_tokens. Lorem mode never ends before max_tokens.
  bool ignore_eos = false;
  // response_format: JSON text instead of words (a schema's when given; `schema` points into the
  // request and must outlive the call). The JSON ends with the model's EOS ("stop") unless
  // max_tokens cuts it first.
  OutputFormat format = OutputFormat::Text;
  const ordered_json* schema = nullptr;
  // Logprobs of each token with this many alternatives (the chosen one first); nullopt = none.
  std::optional<int> top_logprobs;
  // Completions' `echo`: the prompt comes back before the completion (with logprobs when asked).
  bool echo = false;
};

// One token's log-probability and the most likely tokens at its position, best first. The
// chosen token is always the most likely one (the simulator samples greedily), so it leads `top`.
struct TokenLogprob {
  double logprob = 0;
  std::vector<std::pair<std::string, double>> top;
};

struct Generation {
  // One entry per generated token. A stop string cuts the text, so the last entries may be
  // shortened or empty; they still count as generated tokens.
  std::vector<std::string> tokens;
  FinishReason finish_reason = FinishReason::Length;
  std::optional<std::string> stop_reason;  // the stop string that ended the text
  std::vector<TokenLogprob> logprobs;      // one per token when asked for
  // echo: the prompt as tokens (whitespace kept, so they join into the prompt text) and their
  // logprobs (none for the first, which nothing predicts).
  std::vector<std::string> echo_tokens;
  std::vector<TokenLogprob> echo_logprobs;

  int completion_tokens() const { return static_cast<int>(tokens.size()); }
  std::string text() const;
  std::string echo_text() const;
};

Generation generate(GenerationMode mode, const GenerationInput& input);

}  // namespace nebula::sim
