#include "router/breaker.h"

namespace nebula::router {

Breaker::State Breaker::state(TimePoint now) const {
  if (consecutive_failures_ == 0) return State::Closed;
  if (probing_) return State::Probing;
  if (now < open_until_) return State::Open;
  return State::Suspect;
}

bool Breaker::allows(TimePoint now) const {
  State current = state(now);
  return current == State::Closed || current == State::Suspect;
}

void Breaker::sent() {
  if (consecutive_failures_ > 0) probing_ = true;
}

void Breaker::failed(TimePoint now, const BreakerRules& rules) {
  probing_ = false;
  consecutive_failures_ += 1;
  if (consecutive_failures_ >= rules.failures_to_open) open_until_ = now + rules.cooldown;
}

void Breaker::succeeded() {
  consecutive_failures_ = 0;
  probing_ = false;
}

}  // namespace nebula::router
