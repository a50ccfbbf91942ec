#include "agent/gpu_probe.h"

#include <dlfcn.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace nebula::agent {
namespace {

namespace fs = std::filesystem;

TEST(GpuNvml, ReadsTheFakeLibrary) {
  auto probe = NvmlProbe::load(NEBULA_FAKE_NVML);
  ASSERT_TRUE(probe) << probe.error().message;
  EXPECT_EQ((*probe)->name(), "nvml");
  auto gpus = (*probe)->probe();
  ASSERT_TRUE(gpus) << gpus.error().message;
  ASSERT_EQ(gpus->size(), 2u);
  const GpuInfo& h100 = (*gpus)[0];
  EXPECT_EQ(h100.index, 0);
  EXPECT_EQ(h100.name, "NVIDIA H100 80GB HBM3");
  EXPECT_EQ(h100.uuid, "GPU-fake-0000");
  EXPECT_EQ(h100.memory_total_mb, 81559);
  EXPECT_EQ(h100.memory_used_mb, 1024);
  EXPECT_DOUBLE_EQ(h100.utilization, 37);
  EXPECT_DOUBLE_EQ(h100.temperature_c, 45);
  EXPECT_DOUBLE_EQ(h100.power_w, 123.456);
  EXPECT_EQ(h100.driver_version, "550.54.15");
  const GpuInfo& a10 = (*gpus)[1];
  EXPECT_EQ(a10.index, 1);
  EXPECT_EQ(a10.name, "NVIDIA A10");
  EXPECT_EQ(a10.memory_total_mb, 23028);
  EXPECT_EQ(a10.memory_used_mb, 0);
  EXPECT_DOUBLE_EQ(a10.power_w, 0);  // the fake answers "not supported" for this card's power

  auto api_gpus = to_api_gpus(*gpus);
  ASSERT_EQ(api_gpus.size(), 2u);
  EXPECT_EQ(api_gpus[0].uuid, "GPU-fake-0000");
  EXPECT_EQ(api_gpus[0].memory_total_mb, 81559);
  EXPECT_DOUBLE_EQ(api_gpus[0].temperature_c, 45);
}

TEST(GpuNvml, ShutsDownOnDestruction) {
  // The fake counts nvmlInit_v2 calls not yet matched by nvmlShutdown; dlopen of the same path
  // shares the probe's copy of the library.
  void* fake = dlopen(NEBULA_FAKE_NVML, RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(fake, nullptr) << dlerror();
  auto init_count = reinterpret_cast<int (*)()>(dlsym(fake, "fake_nvml_init_count"));
  ASSERT_NE(init_count, nullptr);
  int before = init_count();
  {
    auto probe = NvmlProbe::load(NEBULA_FAKE_NVML);
    ASSERT_TRUE(probe) << probe.error().message;
    EXPECT_EQ(init_count(), before + 1);
    EXPECT_TRUE((*probe)->probe());
  }
  EXPECT_EQ(init_count(), before);
  dlclose(fake);
}

TEST(GpuNvml, MissingLibraryIsAClearError) {
  auto probe = NvmlProbe::load("/nonexistent/libnvidia-ml.so.1");
  ASSERT_FALSE(probe);
  EXPECT_EQ(probe.error().code, ErrorCode::Unavailable);
  EXPECT_NE(probe.error().message.find("cannot load NVML"), std::string::npos) << probe.error().message;
  EXPECT_NE(probe.error().message.find("/nonexistent/libnvidia-ml.so.1"), std::string::npos);
}

TEST(GpuNvml, LibraryWithoutNvmlIsAClearError) {
  // Any shared library that is not NVML: libm is always there.
  auto probe = NvmlProbe::load("libm.so.6");
  ASSERT_FALSE(probe);
  EXPECT_NE(probe.error().message.find("lacks NVML functions"), std::string::npos) << probe.error().message;
}

TEST(GpuNvml, FailedInitIsAClearError) {
  setenv("FAKE_NVML_INIT_ERROR", "9", 1);
  auto probe = NvmlProbe::load(NEBULA_FAKE_NVML);
  unsetenv("FAKE_NVML_INIT_ERROR");
  ASSERT_FALSE(probe);
  EXPECT_NE(probe.error().message.find("Driver Not Loaded"), std::string::npos) << probe.error().message;
}

TEST(GpuSmi, ParsesCsvWithUnavailableValues) {
  auto gpus = NvidiaSmiProbe::parse(
      "0, GPU-aaaa, NVIDIA H100 80GB HBM3, 81559, 1024, 37, 45, 123.45, 550.54.15\n"
      "1, GPU-bbbb, NVIDIA A10, 23028, 0, [N/A], [Not Supported], [N/A], 550.54.15\r\n"
      "\n");
  ASSERT_TRUE(gpus) << gpus.error().message;
  ASSERT_EQ(gpus->size(), 2u);
  EXPECT_EQ((*gpus)[0].name, "NVIDIA H100 80GB HBM3");
  EXPECT_EQ((*gpus)[0].memory_total_mb, 81559);
  EXPECT_DOUBLE_EQ((*gpus)[0].power_w, 123.45);
  EXPECT_EQ((*gpus)[1].index, 1);
  EXPECT_EQ((*gpus)[1].uuid, "GPU-bbbb");
  EXPECT_DOUBLE_EQ((*gpus)[1].utilization, 0);
  EXPECT_DOUBLE_EQ((*gpus)[1].temperature_c, 0);
  EXPECT_DOUBLE_EQ((*gpus)[1].power_w, 0);
}

TEST(GpuSmi, RejectsMalformedLines) {
  auto too_few = NvidiaSmiProbe::parse("0, GPU-aaaa, NVIDIA H100, 81559\n");
  ASSERT_FALSE(too_few);
  EXPECT_NE(too_few.error().message.find("line 1"), std::string::npos) << too_few.error().message;
  auto not_a_number = NvidiaSmiProbe::parse(
      "0, GPU-aaaa, NVIDIA H100, 81559, 1024, 37, 45, 100, 550\n"
      "1, GPU-bbbb, NVIDIA H100, lots, 1024, 37, 45, 100, 550\n");
  ASSERT_FALSE(not_a_number);
  EXPECT_NE(not_a_number.error().message.find("memory.total"), std::string::npos) << not_a_number.error().message;
  EXPECT_NE(not_a_number.error().message.find("line 2"), std::string::npos);
  EXPECT_FALSE(NvidiaSmiProbe::parse("[N/A], GPU-a, X, 1, 1, 1, 1, 1, 1\n"));
  EXPECT_FALSE(NvidiaSmiProbe::parse("0.5, GPU-a, X, 1, 1, 1, 1, 1, 1\n"));
  auto empty = NvidiaSmiProbe::parse("");
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->empty());
}

// A fake `nvidia-smi` script in a temporary directory put first on PATH for the test.
class GpuSmiScript : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = fs::temp_directory_path() / ("nebula-gpu-test-" + std::to_string(getpid()));
    fs::create_directories(directory_);
    const char* path = std::getenv("PATH");
    saved_path_ = path ? path : "";
    setenv("PATH", (directory_.string() + ":" + saved_path_).c_str(), 1);
  }
  void TearDown() override {
    setenv("PATH", saved_path_.c_str(), 1);
    fs::remove_all(directory_);
  }
  void write_script(const std::string& body) {
    auto script = directory_ / "nvidia-smi";
    std::ofstream(script) << "#!/bin/sh\n" << body;
    fs::permissions(script, fs::perms::owner_all);
  }
  fs::path directory_;
  std::string saved_path_;
};

TEST_F(GpuSmiScript, RunsTheCommandOnPath) {
  // The script checks it is asked for the fields the parser expects, in that order.
  write_script(std::string("[ \"$1\" = \"--query-gpu=") + NvidiaSmiProbe::query_fields() +
               "\" ] || { echo \"bad arguments: $*\" >&2; exit 2; }\n"
               "[ \"$2\" = \"--format=csv,noheader,nounits\" ] || exit 2\n"
               "echo '0, GPU-aaaa, NVIDIA L4, 23034, 0, 0, 31, [N/A], 550.54.15'\n"
               "echo '1, GPU-bbbb, NVIDIA L4, 23034, 512, 12, 40, 72.10, 550.54.15'\n");
  NvidiaSmiProbe probe;
  auto gpus = probe.probe();
  ASSERT_TRUE(gpus) << gpus.error().message;
  ASSERT_EQ(gpus->size(), 2u);
  EXPECT_EQ((*gpus)[0].name, "NVIDIA L4");
  EXPECT_DOUBLE_EQ((*gpus)[0].power_w, 0);
  EXPECT_EQ((*gpus)[1].memory_used_mb, 512);
  EXPECT_DOUBLE_EQ((*gpus)[1].power_w, 72.1);
}

TEST_F(GpuSmiScript, MalformedOutputIsAnError) {
  write_script("echo '0, GPU-aaaa, NVIDIA L4, 23034, 0, 0, 31, 20, 550'\necho 'Failed to initialize NVML'\n");
  auto gpus = NvidiaSmiProbe().probe();
  ASSERT_FALSE(gpus);
  EXPECT_NE(gpus.error().message.find("Failed to initialize NVML"), std::string::npos) << gpus.error().message;
}

TEST_F(GpuSmiScript, FailureCarriesTheCommandsMessage) {
  write_script("echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'\nexit 9\n");
  auto gpus = NvidiaSmiProbe().probe();
  ASSERT_FALSE(gpus);
  EXPECT_NE(gpus.error().message.find("exited with 9"), std::string::npos) << gpus.error().message;
  EXPECT_NE(gpus.error().message.find("could not communicate"), std::string::npos) << gpus.error().message;
}

TEST_F(GpuSmiScript, NoDevicesIsNoGpus) {
  write_script("echo 'No devices were found'\nexit 6\n");
  auto gpus = NvidiaSmiProbe().probe();
  ASSERT_TRUE(gpus) << gpus.error().message;
  EXPECT_TRUE(gpus->empty());
}

TEST_F(GpuSmiScript, HangingCommandIsKilled) {
  write_script("sleep 30\n");
  auto started = std::chrono::steady_clock::now();
  auto gpus = NvidiaSmiProbe("nvidia-smi", std::chrono::milliseconds(200)).probe();
  auto took = std::chrono::steady_clock::now() - started;
  ASSERT_FALSE(gpus);
  EXPECT_EQ(gpus.error().code, ErrorCode::Timeout);
  EXPECT_LT(took, std::chrono::seconds(5));
}

TEST_F(GpuSmiScript, FactoryPrefersNvmlThenSmiThenNothing) {
  GpuProbeOptions options;
  options.nvml_library = NEBULA_FAKE_NVML;
  auto nvml = make_gpu_probe(options);
  ASSERT_TRUE(nvml) << nvml.error().message;
  EXPECT_EQ((*nvml)->name(), "nvml");

  write_script("echo '0, GPU-aaaa, NVIDIA L4, 23034, 0, 0, 31, 20, 550'\n");
  options.nvml_library = "/nonexistent/libnvidia-ml.so.1";
  auto smi = make_gpu_probe(options);
  ASSERT_TRUE(smi) << smi.error().message;
  EXPECT_EQ((*smi)->name(), "nvidia-smi");
  auto gpus = (*smi)->probe();
  ASSERT_TRUE(gpus) << gpus.error().message;
  EXPECT_EQ(gpus->size(), 1u);

  options.nvidia_smi = "nebula-no-such-nvidia-smi";
  auto none = make_gpu_probe(options);
  ASSERT_TRUE(none) << none.error().message;
  EXPECT_EQ((*none)->name(), "none");
  auto no_gpus = (*none)->probe();
  ASSERT_TRUE(no_gpus);
  EXPECT_TRUE(no_gpus->empty());
}

TEST(GpuSim, FromSpec) {
  auto probe = make_gpu_probe("1xH100-80GB,2x24GB", "node-a");
  ASSERT_TRUE(probe) << probe.error().message;
  EXPECT_EQ((*probe)->name(), "sim");
  auto gpus = (*probe)->probe();
  ASSERT_TRUE(gpus);
  ASSERT_EQ(gpus->size(), 3u);
  EXPECT_EQ((*gpus)[0].name, "H100-80GB");
  EXPECT_EQ((*gpus)[0].memory_total_mb, 80 * 1024);
  EXPECT_EQ((*gpus)[2].index, 2);
  EXPECT_EQ((*gpus)[2].uuid, "GPU-sim-node-a-2");
  EXPECT_FALSE(make_gpu_probe("banana", "node-a"));
}

}  // namespace
}  // namespace nebula::agent
