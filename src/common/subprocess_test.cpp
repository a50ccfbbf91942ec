#include "common/subprocess.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace nebula {
namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

int wait_for(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

class SpawnTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/nebula-spawn-XXXXXX";
    ASSERT_TRUE(::mkdtemp(pattern));
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(SpawnTest, TheChildHoldsItsStdioAndNothingElseOfOurs) {
  // An inheritable descriptor, as a library might leave one.
  int leaked = ::open("/dev/null", O_RDONLY);
  ASSERT_GE(leaked, 3);
  SpawnOptions options;
  options.argv = {"/bin/sh", "-c", "ls /proc/$$/fd"};
  options.out = Stdio::file(dir_ + "/out");
  options.err = Stdio::same_as_stdout();
  auto pid = spawn(options);
  ::close(leaked);
  ASSERT_TRUE(pid) << pid.error().message;
  EXPECT_EQ(wait_for(*pid), 0);
  std::istringstream listing(read_file(dir_ + "/out"));
  std::set<std::string> descriptors;
  for (std::string fd; listing >> fd;) descriptors.insert(fd);
  EXPECT_EQ(descriptors, (std::set<std::string>{"0", "1", "2"})) << read_file(dir_ + "/out");
}

TEST_F(SpawnTest, EnvironmentOverridesAndFileModes) {
  ::setenv("NEBULA_SPAWN_TEST", "parent", 1);
  SpawnOptions options;
  options.argv = {"sh", "-c", "echo $NEBULA_SPAWN_TEST $NEBULA_SPAWN_EXTRA"};  // found on PATH
  options.env = {{"NEBULA_SPAWN_TEST", "child"}, {"NEBULA_SPAWN_EXTRA", "extra"}};
  options.out = Stdio::file(dir_ + "/log", /*append=*/true, 0600);
  auto pid = spawn(options);
  ASSERT_TRUE(pid) << pid.error().message;
  EXPECT_EQ(wait_for(*pid), 0);
  EXPECT_EQ(read_file(dir_ + "/log"), "child extra\n");
  struct stat info {};
  ASSERT_EQ(::stat((dir_ + "/log").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  ::unsetenv("NEBULA_SPAWN_TEST");
}

TEST_F(SpawnTest, AMissingProgramIsAClearError) {
  SpawnOptions options;
  options.argv = {"/nonexistent/engine"};
  auto pid = spawn(options);
  ASSERT_FALSE(pid);
  EXPECT_NE(pid.error().message.find("cannot start /nonexistent/engine"), std::string::npos) << pid.error().message;
}

TEST(DescriptorLimit, RaisingReachesTheHardLimit) {
  auto limit = raise_descriptor_limit(0);
  EXPECT_EQ(limit.soft, limit.hard);
  EXPECT_GT(open_descriptor_count(), 2);
}

}  // namespace
}  // namespace nebula
