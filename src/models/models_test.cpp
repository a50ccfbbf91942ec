#include "models/models.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "../../tests/gguf_fixtures.h"  // test support, outside src/

namespace nebula::models {
namespace {

constexpr double kGB = 1e9;

api::DeploymentSpec spec_for(const std::string& model, const std::string& engine = "sim") {
  api::DeploymentSpec spec;
  spec.model = model;
  spec.engine = engine;
  return spec;
}

TEST(Catalog, FindsModelsByIdAliasAndBaseName) {
  for (const char* name : {"meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b-instruct", "LLAMA-3.1-8B-INSTRUCT",
                           "meta-llama/Llama-3.1-8B", "llama-3.1-8b"}) {
    auto match = find_in_catalog(name);
    ASSERT_TRUE(match) << name;
    EXPECT_EQ(match->entry->id, "meta-llama/Llama-3.1-8B-Instruct") << name;
    EXPECT_EQ(match->variant, nullptr);
  }
  EXPECT_EQ(find_in_catalog("qwen2.5-0.5b")->entry->id, "Qwen/Qwen2.5-0.5B-Instruct");
  EXPECT_EQ(find_in_catalog("gemma-2-9b")->entry->id, "google/gemma-2-9b-it");
  EXPECT_EQ(find_in_catalog("mixtral-8x7b-instruct-v0.1")->entry->experts, 8);
  EXPECT_FALSE(find_in_catalog("my-model"));
  EXPECT_FALSE(find_in_catalog("llama-3.1-9b"));
  // Every alias is the lowercase last segment of its id, and unique.
  std::set<std::string> aliases;
  for (const auto& entry : catalog()) {
    EXPECT_TRUE(aliases.insert(entry.alias).second) << entry.alias;
    EXPECT_EQ(entry.head_dim * entry.heads > 0, true) << entry.id;
    EXPECT_EQ(find_in_catalog(entry.alias)->entry, &entry) << entry.alias;
  }
}

TEST(Catalog, QuantisedVariantsCarryTheirWeightBytes) {
  auto awq = find_in_catalog("hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4");
  ASSERT_TRUE(awq);
  ASSERT_NE(awq->variant, nullptr);
  EXPECT_EQ(awq->variant->quantization, "awq-int4");
  // Published: the AWQ INT4 checkpoint is 5.73 GB (embeddings and lm_head stay 16-bit).
  EXPECT_NEAR(awq->info.weight_bytes / kGB, 5.73, 0.05);
  // Published: neuralmagic's FP8 checkpoint is 9.08 GB.
  EXPECT_NEAR(find_in_catalog("meta-llama-3.1-8b-instruct-fp8")->info.weight_bytes / kGB, 9.08, 0.05);
  EXPECT_EQ(find_in_catalog("Qwen/Qwen2.5-7B-Instruct-AWQ")->entry->id, "Qwen/Qwen2.5-7B-Instruct");
}

TEST(Estimate, Llama31_8B_MatchesPublishedFigures) {
  auto spec = spec_for("meta-llama/Llama-3.1-8B-Instruct");
  spec.max_context = 8192;
  auto e = estimate(spec);
  EXPECT_EQ(e.source, "catalog:meta-llama/Llama-3.1-8B-Instruct");
  // 8,030,261,248 parameters × 2 bytes (BF16) = 16.06 GB, as on the model card.
  EXPECT_EQ(e.parameters, 8'030'261'248);
  EXPECT_EQ(e.weights_bytes, 16'060'522'496);
  // KV per token = 2 × 32 layers × 8 KV heads × 128 head dim × 2 bytes = 128 KiB.
  EXPECT_EQ(e.kv_bytes_per_token, 131'072);
  EXPECT_EQ(e.kv_cache_bytes, kGiB);  // 8,192 tokens × 128 KiB
  EXPECT_EQ(e.overhead_bytes, kGiB);  // sim: 1 GiB per GPU
  EXPECT_EQ(e.total_bytes, 16'060'522'496 + 2 * kGiB);
  EXPECT_EQ(e.vram_mb, (16'060'522'496 + 2 * kGiB + kMiB - 1) / kMiB);
  EXPECT_EQ(e.gpu_memory_utilization, 0);
  // The full 128k context for one sequence: 16 GiB of KV cache.
  spec.max_context = 131072;
  EXPECT_EQ(estimate(spec).kv_cache_bytes, 16 * kGiB);
  // Unset context: the model's 131,072, capped to 8,192.
  spec.max_context = 0;
  EXPECT_EQ(estimate(spec).context, kDefaultContextCap);
}

TEST(Estimate, Llama31_70B_SplitsAcrossTensorParallelGpus) {
  auto spec = spec_for("llama-3.1-70b-instruct", "vllm");
  spec.gpus_per_replica = 2;
  spec.max_context = 4096;
  spec.max_seqs = 8;
  auto e = estimate(spec);
  // 70.55 B parameters: ≈ 141 GB in BF16.
  EXPECT_NEAR(e.weights_bytes / kGB, 141.1, 0.05);
  // 2 × 80 layers × 8 KV heads × 128 × 2 bytes = 320 KiB per token.
  EXPECT_EQ(e.kv_bytes_per_token, 327'680);
  EXPECT_EQ(e.kv_cache_bytes, 327'680LL * 4096 * 8);  // 10 GiB
  EXPECT_EQ(e.overhead_bytes, 2 * 2 * kGiB);          // vLLM: 2 GiB on each of the 2 GPUs
  EXPECT_EQ(e.tensor_parallel, 2);
  EXPECT_EQ(e.per_gpu_bytes, (e.total_bytes + 1) / 2);
  EXPECT_EQ(e.vram_mb, e.per_gpu_mb * 2);
  EXPECT_DOUBLE_EQ(e.gpu_memory_utilization, 0.9);  // vLLM claims 90% of each card by default
  spec.gpu_memory_utilization = 0.5;
  EXPECT_DOUBLE_EQ(estimate(spec).gpu_memory_utilization, 0.5);
}

TEST(Estimate, KvPerTokenOfOtherKnownModels) {
  // Qwen2.5-7B: 2 × 28 × 4 × 128 × 2 = 56 KiB; Qwen2.5-0.5B: 2 × 24 × 2 × 64 × 2 = 12 KiB;
  // Gemma-2-9B: 2 × 42 × 8 × 256 × 2 = 336 KiB; Mistral-7B: 2 × 32 × 8 × 128 × 2 = 128 KiB.
  EXPECT_EQ(estimate(spec_for("qwen2.5-7b-instruct")).kv_bytes_per_token, 56 * 1024);
  EXPECT_EQ(estimate(spec_for("qwen2.5-0.5b-instruct")).kv_bytes_per_token, 12 * 1024);
  EXPECT_EQ(estimate(spec_for("google/gemma-2-9b-it")).kv_bytes_per_token, 336 * 1024);
  EXPECT_EQ(estimate(spec_for("mistral-7b-instruct-v0.3")).kv_bytes_per_token, 128 * 1024);
  // Qwen2.5-7B: 7.62 B parameters, 15.23 GB in BF16. Mixtral-8x7B: 46.7 B, 93.4 GB.
  EXPECT_NEAR(estimate(spec_for("qwen2.5-7b-instruct")).weights_bytes / kGB, 15.23, 0.01);
  EXPECT_NEAR(estimate(spec_for("mixtral-8x7b-instruct-v0.1")).weights_bytes / kGB, 93.4, 0.05);
}

TEST(Estimate, EveryValueCanBeOverridden) {
  auto spec = spec_for("llama-3.1-8b-instruct");
  spec.max_context = 8192;
  spec.max_seqs = 4;
  EXPECT_EQ(estimate(spec).kv_cache_bytes, 4 * kGiB);
  spec.kv_cache_dtype = "fp8";
  EXPECT_EQ(estimate(spec).kv_bytes_per_token, 65'536);
  spec.dtype = "fp8";  // vLLM --quantization fp8: one byte per parameter
  EXPECT_EQ(estimate(spec).weights_bytes, 8'030'261'248);
  spec.shape.weights_mb = 1000;
  spec.shape.layers = 1;
  spec.shape.kv_heads = 1;
  spec.shape.head_dim = 64;
  spec.shape.overhead_mb = 10;
  auto e = estimate(spec);
  EXPECT_EQ(e.weights_bytes, 1000 * kMiB);
  EXPECT_EQ(e.kv_bytes_per_token, 2 * 1 * 1 * 64 * 1);
  EXPECT_EQ(e.overhead_bytes, 10 * kMiB);
  spec.vram_mb = 1234;
  EXPECT_EQ(estimate(spec).vram_mb, 1234);
  EXPECT_EQ(estimate(spec).source, "spec.vram_mb");
}

TEST(Estimate, QuantisedVariantKeepsA16BitKvCache) {
  auto e = estimate(spec_for("hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"));
  EXPECT_EQ(e.quantization, "awq-int4");
  EXPECT_EQ(e.kv_cache_dtype, "fp16");
  EXPECT_EQ(e.kv_bytes_per_token, 131'072);
}

TEST(Estimate, ReadsALocalGgufFile) {
  std::filesystem::path path = nebula::testing::gguf_fixture("tiny-llama.gguf");
  auto spec = spec_for(path.string(), "llamacpp");
  auto e = estimate(spec);
  EXPECT_EQ(e.source, "gguf:" + path.string());
  EXPECT_EQ(e.weights_bytes, 8'339'456 + 1'280);
  // 2 × 2 layers × 2 KV heads × 16 head dim × 2 bytes = 256 bytes per token, × 512 context.
  EXPECT_EQ(e.kv_bytes_per_token, 256);
  EXPECT_EQ(e.context, 512);
  EXPECT_EQ(e.kv_cache_bytes, 131'072);
  EXPECT_EQ(e.overhead_bytes, 512 * kMiB);
}

TEST(Estimate, FallsBackToTheNameThenToADefault) {
  auto spec = spec_for("my-org/custom-13b-chat");
  auto e = estimate(spec);
  EXPECT_EQ(e.source, "name:13B");
  // 13e9 × 2 bytes × 1.2 + 2 GiB = 33,347,483,648 bytes = 31,803 MiB (GPUStack's rule of thumb).
  EXPECT_EQ(e.vram_mb, 31'803);
  spec.model = "my-model";
  EXPECT_EQ(estimate(spec).source, "default");
  EXPECT_EQ(estimate(spec).vram_mb, 8 * 1024);
  spec.model = "/nonexistent/model.gguf";
  auto missing = estimate(spec);
  EXPECT_EQ(missing.source, "default");
  ASSERT_FALSE(missing.notes.empty());
  EXPECT_NE(missing.notes.front().find("cannot read the model file"), std::string::npos);
  spec.gpus_per_replica = 0;
  EXPECT_EQ(estimate(spec).vram_mb, 0);
}

}  // namespace
}  // namespace nebula::models
