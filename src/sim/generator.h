#pragma once
// What the simulated model says: the whole completion is decided up front from the request, so a
// streamed answer and a non-streamed one are the same text. Pacing is a separate concern (pacer.h).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

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
  // Echo mode ends (finish_reason "stop", the model's EOS) when the echo text runs out; with
  // ignore_eos it starts over instead, until max_tokens. Lorem mode never ends before max_tokens.
  bool ignore_eos = false;
};

struct Generation {
  // One entry per generated token. A stop string cuts the text, so the last entries may be
  // shortened or empty; they still count as generated tokens.
  std::vector<std::string> tokens;
  FinishReason finish_reason = FinishReason::Length;
  std::optional<std::string> stop_reason;  // the stop string that ended the text

  int completion_tokens() const { return static_cast<int>(tokens.size()); }
  std::string text() const;
};

Generation generate(GenerationMode mode, const GenerationInput& input);

}  // namespace nebula::sim
