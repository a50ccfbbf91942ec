#include "controlplane/resources.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/ids.h"

namespace nebula::controlplane {

std::string Resources::new_uid() {
  return random_id(16);
}

void Resources::record_event(const std::string& object, const std::string& reason, const std::string& message,
                             const std::string& type) {
  api::Event event;
  event.time_ms = to_unix_ms(clock_.wall_now());
  // Zero-padded time first, so events list in time order by key.
  event.metadata.name = fmt::format("{:013d}-{}", event.time_ms, random_id(6));
  event.object = object;
  event.reason = reason;
  event.message = message;
  event.type = type;
  auto created = create(event);
  if (!created) spdlog::warn("cannot record event {} for {}: {}", reason, object, created.error().message);
  if (type == "Warning") {
    spdlog::warn("{} {}: {}", object, reason, message);
  } else {
    spdlog::info("{} {}: {}", object, reason, message);
  }
}

}  // namespace nebula::controlplane
