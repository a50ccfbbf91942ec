// libFuzzer target for the model-file readers: any bytes must give a value or a clear error,
// never a crash, an out-of-bounds read or a huge allocation. Build with clang and
// -DNEBULA_FUZZ=ON; run as `nebula_models_fuzz -rss_limit_mb=512 -malloc_limit_mb=256 CORPUS`.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "models/models.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto gguf = nebula::models::parse_gguf(bytes);
  if (gguf) (void)gguf->info();
  // The same bytes as a safetensors header, once as a whole file and once as the start of a
  // larger one (data beyond the header not read).
  (void)nebula::models::parse_safetensors(bytes, size);
  (void)nebula::models::parse_safetensors(bytes, uint64_t{1} << 40);
  (void)nebula::models::info_from_config_json(bytes);
  return 0;
}
