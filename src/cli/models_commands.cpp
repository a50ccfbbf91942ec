// nebula models inspect FILE|ID: a model's shape and the VRAM a replica of it needs, computed
// locally (no server). Also the printer of dry-run plans for `nebula deploy --dry-run`.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>

#include "api/spec_check.h"
#include "cli/cli.h"
#include "common/config.h"
#include "models/models.h"

namespace nebula::cli {

namespace {

std::string gib_bytes(int64_t bytes) {
  if (bytes < models::kGiB / 10) return fmt::format("{:.2f} MiB", static_cast<double>(bytes) / models::kMiB);
  return fmt::format("{:.2f} GiB", static_cast<double>(bytes) / static_cast<double>(models::kGiB));
}

std::string gib_mb(int64_t mb) {
  return fmt::format("{:.1f}", static_cast<double>(mb) / 1024.0);
}

json info_json(const models::ModelInfo& info) {
  return json{{"id", info.id},
              {"source", info.source},
              {"architecture", info.architecture},
              {"parameters", info.parameters},
              {"layers", info.layers},
              {"heads", info.heads},
              {"kv_heads", info.kv_heads},
              {"head_dim", info.head_dim},
              {"hidden_size", info.hidden_size},
              {"context_length", info.context_length},
              {"experts", info.experts},
              {"vocab_size", info.vocab_size},
              {"dtype", info.dtype},
              {"quantization", info.quantization},
              {"weight_bytes", info.weight_bytes},
              {"bytes_by_dtype", info.bytes_by_dtype},
              {"tensor_count", info.tensor_count}};
}

void print_inspection(const models::ModelInfo& info, const models::Estimate& e,
                      const std::vector<models::QuantizedVariant>& variants, const models::CatalogEntry* entry) {
  std::cout << "Model:         " << info.id << "\n";
  std::cout << "Source:        " << e.source << "\n";
  std::string shape = fmt::format("{}", info.architecture.empty() ? "unknown architecture" : info.architecture);
  if (info.parameters >= 100'000'000) {
    shape += fmt::format(", {:.2f} B parameters", static_cast<double>(info.parameters) / 1e9);
  } else if (info.parameters > 0) {
    shape += fmt::format(", {:.2f} M parameters", static_cast<double>(info.parameters) / 1e6);
  }
  if (info.layers > 0) {
    shape += fmt::format(", {} layers, {} heads, {} KV heads, head dim {}", info.layers, info.heads, info.kv_heads,
                         info.head_dim);
  }
  if (info.experts > 0) shape += fmt::format(", {} experts", info.experts);
  if (info.context_length > 0) shape += fmt::format(", context {}", info.context_length);
  std::cout << "Shape:         " << shape << "\n";
  if (info.tensor_count > 0) {
    std::string by_dtype;
    for (const auto& [dtype, bytes] : info.bytes_by_dtype) {
      by_dtype += fmt::format("{}{} {} bytes", by_dtype.empty() ? "" : ", ", dtype, bytes);
    }
    std::cout << "Tensors:       " << info.tensor_count << " (" << by_dtype << ")\n";
  }
  std::cout << "Weights:       " << gib_bytes(e.weights_bytes) << " (" << e.weights_dtype
            << (e.quantization.empty() || e.quantization == e.weights_dtype ? "" : ", " + e.quantization) << ")\n";
  std::cout << "KV per token:  " << fmt::format("{:.1f} KiB", static_cast<double>(e.kv_bytes_per_token) / 1024.0)
            << fmt::format(" (2 × {} layers × {} KV heads × {} head dim × {})", e.layers, e.kv_heads, e.head_dim,
                           e.kv_cache_dtype)
            << "\n";
  std::cout << "KV cache:      " << gib_bytes(e.kv_cache_bytes)
            << fmt::format(" ({} tokens × {} sequences)", e.context, e.sequences) << "\n";
  std::cout << "Overhead:      " << gib_bytes(e.overhead_bytes) << " (" << e.engine << ")\n";
  std::cout << "Total:         " << gib_bytes(e.total_bytes) << " per replica\n";
  std::cout << "Per GPU:       " << gib_bytes(e.per_gpu_bytes) << " × " << e.tensor_parallel
            << " GPU(s) (tensor parallel)\n";
  if (e.gpu_memory_utilization > 0) {
    std::cout << "Claims:        " << fmt::format("{:.2f}", e.gpu_memory_utilization)
              << " of each card (gpu_memory_utilization), whatever the model needs\n";
  }
  if (!variants.empty() && entry) {
    std::cout << "Quantised:\n";
    for (const auto& variant : variants) {
      std::cout << "  " << variant.id << " (" << variant.quantization << ", weights "
                << gib_bytes(models::quantized_weight_bytes(*entry, variant.bits)) << ")\n";
    }
  }
  for (const auto& note : e.notes) std::cout << "Note:          " << note << "\n";
}

// [###+++......]: used before (#), added by the plan (+), free (.).
std::string bar(int64_t before, int64_t after, int64_t total, int width = 20) {
  if (total <= 0) return "[" + std::string(width, '?') + "]";
  auto cells = [&](int64_t mb) {
    return static_cast<int>(std::clamp<int64_t>((mb * width + total / 2) / total, 0, width));
  };
  int used = cells(before);
  int added = std::max(0, cells(after) - used);
  if (after > before && added == 0 && used < width) added = 1;  // show a small addition
  return "[" + std::string(used, '#') + std::string(added, '+') + std::string(width - used - added, '.') + "]";
}

// Why a local file could not be read as a model: a file that is neither GGUF nor safetensors is
// said to be so, rather than reported as a malformed safetensors header.
std::string unreadable_model_file(const std::string& path, const std::string& reason) {
  std::error_code ec;
  std::string expanded = expand_home(path);
  if (!std::filesystem::is_regular_file(expanded, ec)) return reason;
  if (std::filesystem::path(expanded).extension() == ".gguf") return reason;
  std::ifstream in(expanded, std::ios::binary);
  unsigned char head[9] = {};
  in.read(reinterpret_cast<char*>(head), sizeof head);
  if (in.gcount() >= 4 && std::string_view(reinterpret_cast<char*>(head), 4) == "GGUF") return reason;
  // safetensors: an 8-byte little-endian header length, then JSON starting with '{'.
  if (in.gcount() == sizeof head && head[8] == '{') return reason;
  return fmt::format("{} is neither a GGUF nor a safetensors file", path);
}

}  // namespace

int print_plan(const json& plan, const std::string& output) {
  bool fits = plan.value("fits", false);
  if (output != "table") {
    print_as(output, plan, [] {});
    return fits ? 0 : 1;
  }
  const json& e = plan["estimate"];
  int replicas = plan.value("replicas", 0);
  std::cout << fmt::format("Plan for {}: {} on {}, {} replica(s) × {} GPU(s), {} GiB each ({})\n",
                           plan.value("deployment", ""), e.value("model", ""), e.value("engine", ""), replicas,
                           e.value("tensor_parallel", 1), gib_mb(e.value("vram_mb", int64_t{0})),
                           e.value("source", ""));
  if (e.value("kv_bytes_per_token", int64_t{0}) > 0) {
    std::cout << fmt::format("  weights {} + KV cache {} ({} tokens × {} seqs) + overhead {}\n",
                             gib_bytes(e.value("weights_bytes", int64_t{0})),
                             gib_bytes(e.value("kv_cache_bytes", int64_t{0})), e.value("context", 0),
                             e.value("sequences", 0), gib_bytes(e.value("overhead_bytes", int64_t{0})));
  }
  if (e.value("gpu_memory_utilization", 0.0) > 0) {
    std::cout << fmt::format("  {} claims {:.2f} of each card it lands on\n", e.value("engine", ""),
                             e.value("gpu_memory_utilization", 0.0));
  }
  std::cout << "\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& gpu : plan["gpus"]) {
    int64_t total = gpu.value("total_mb", int64_t{0});
    int64_t before = gpu.value("used_before_mb", int64_t{0});
    int64_t after = gpu.value("used_after_mb", int64_t{0});
    std::string replicas_here;
    for (const auto& name : gpu["replicas"])
      replicas_here += (replicas_here.empty() ? "" : ",") + name.get<std::string>();
    std::string reserved = gpu.value("reserved_mb", int64_t{0}) > 0
                               ? " (" + gib_mb(gpu.value("reserved_mb", int64_t{0})) + " reserved)"
                               : "";
    rows.push_back({gpu.value("node", ""), fmt::format("gpu{}", gpu.value("index", 0)), gpu.value("name", ""),
                    bar(before, after, total),
                    fmt::format("{} → {} / {} GiB{}", gib_mb(before), gib_mb(after), gib_mb(total), reserved),
                    replicas_here});
  }
  if (rows.empty()) std::cout << "no GPUs in the cluster\n";
  print_table(rows);
  std::cout << "\n";
  if (fits) {
    std::cout << "fits: " << replicas << " replica(s) placed\n";
    return 0;
  }
  std::cout << "does not fit: " << plan.value("reason", "") << "\n";
  if (plan["alternatives"].empty()) {
    std::cout << "no alternative found\n";
  } else {
    std::cout << "alternatives:\n";
    for (const auto& alternative : plan["alternatives"]) {
      std::cout << "  - " << alternative.value("summary", "");
      int64_t saves = alternative.value("saves_mb", int64_t{0});
      if (saves > 0) {
        std::cout << (alternative.value("kind", "") == "stop" ? "" : fmt::format(": saves {} GiB", gib_mb(saves)));
      }
      std::cout << "\n";
    }
  }
  return 1;
}

int run_models(int argc, char** argv) {
  CLI::App app{"Inspect models: their shape and the VRAM a replica needs", "nebula models"};
  app.require_subcommand(1);
  auto* inspect = app.add_subcommand("inspect", "Show a model's shape and VRAM breakdown (a file or a catalog id)");
  std::string target, output = "table";
  api::DeploymentSpec spec;
  spec.engine = "sim";
  inspect->add_option("model", target, "A .gguf file, a .safetensors file or checkpoint directory, or a catalog id")
      ->required();
  inspect->add_option("--engine", spec.engine, "Engine the estimate is for")
      ->check(engine_value())
      ->capture_default_str();
  inspect->add_option("--gpus", spec.gpus_per_replica, "Tensor-parallel GPUs")->check(whole_number(1, 64));
  inspect->add_option("--max-context", spec.max_context, "Context length")
      ->check(whole_number(0, std::numeric_limits<int>::max()));
  inspect->add_option("--max-seqs", spec.max_seqs, "Concurrent sequences")
      ->check(whole_number(0, std::numeric_limits<int>::max()));
  inspect->add_option("--dtype", spec.dtype, "Weights dtype (fp16, bf16, fp8, int8, int4)");
  inspect->add_option("--kv-cache-dtype", spec.kv_cache_dtype, "KV cache dtype (fp16, bf16, fp8, fp32)");
  inspect->add_option("--gpu-memory-utilization", spec.gpu_memory_utilization, "Fraction of each card claimed")
      ->check(CLI::Range(0.0, 1.0));
  inspect->add_option("-o,--output", output, "Output format: table, json or yaml")
      ->check(CLI::IsMember({"table", "json", "yaml"}));
  if (auto exit = parse(app, argc, argv)) return *exit;

  spec.model = target;
  if (auto valid = api::validate(spec); !valid) return usage_error(*inspect, valid.error().message);
  models::ModelInfo info;
  models::Estimate estimate;
  std::vector<models::QuantizedVariant> variants;
  const models::CatalogEntry* entry = nullptr;
  if (auto match = models::find_in_catalog(target)) {
    info = match->info;
    entry = match->entry;
    if (!match->variant) variants = match->entry->variants;
    estimate = models::estimate(spec);
  } else if (models::looks_like_path(target)) {
    auto read = models::read_model_path(target);
    if (!read) return fail(unreadable_model_file(target, read.error().message));
    info = *read;
    estimate = models::estimate_with(spec, info, info.source + ":" + target);
  } else {
    std::vector<std::string> names;
    for (const auto& catalog_entry : models::catalog()) names.push_back(catalog_entry.alias);
    auto close = api::closest_names(target, names, 3);
    return fail(fmt::format("'{}' is neither a file nor a model in the catalog ({})", target,
                            close.empty() ? "ids such as meta-llama/Llama-3.1-8B-Instruct or llama-3.1-8b-instruct"
                                          : fmt::format("did you mean {}?", fmt::join(close, ", "))));
  }
  json variants_json = json::array();
  for (const auto& variant : variants) {
    variants_json.push_back({{"id", variant.id},
                             {"alias", variant.alias},
                             {"quantization", variant.quantization},
                             {"weight_bytes", entry ? models::quantized_weight_bytes(*entry, variant.bits) : 0}});
  }
  json document = {
      {"model", info_json(info)}, {"estimate", models::estimate_to_json(estimate)}, {"variants", variants_json}};
  print_as(output, document, [&] { print_inspection(info, estimate, variants, entry); });
  return 0;
}

}  // namespace nebula::cli
