#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "agent/agent_db.h"
#include "agent/process.h"

namespace nebula::agent {
namespace {

using namespace std::chrono_literals;

class TempDirectory {
 public:
  TempDirectory() {
    char pattern[] = "/tmp/nebula-agent-test-XXXXXX";
    path_ = ::mkdtemp(pattern);
  }
  ~TempDirectory() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return done();
}

TEST(LogRotation, RotatesWhileTheEngineKeepsWriting) {
  TempDirectory dir;
  std::string log = dir.path() + "/engine.log";
  PosixLauncher launcher;
  LaunchSpec spec;
  // A real child appending to its log (O_APPEND), the way engines do.
  spec.argv = {"/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo \"line $i\"; sleep 0.001; done"};
  spec.log_path = log;
  auto pid = launcher.launch(spec);
  ASSERT_TRUE(pid) << pid.error().message;
  ASSERT_TRUE(wait_for([&] { return std::filesystem::exists(log) && std::filesystem::file_size(log) > 2000; }, 5s));

  EXPECT_FALSE(rotate_log_if_larger(log, 1 << 20, 3)) << "below the limit nothing rotates";
  ASSERT_TRUE(rotate_log_if_larger(log, 1000, 3));
  std::string first = read(log + ".1");
  EXPECT_GE(first.size(), 2000u);
  EXPECT_EQ(first.rfind("line 1\n", 0), 0u);
  // The child keeps writing into the truncated file, from its start (no hole of zeros).
  ASSERT_TRUE(wait_for([&] { return std::filesystem::file_size(log) > 1500; }, 5s));
  std::string current = read(log);
  EXPECT_EQ(current.find('\0'), std::string::npos);
  EXPECT_EQ(current.rfind("line ", 0), 0u);

  // Older generations shift: .1 -> .2 -> .3, and nothing beyond `keep`.
  for (int round = 0; round < 4; ++round) {
    ASSERT_TRUE(wait_for([&] { return std::filesystem::file_size(log) > 1500; }, 5s));
    ASSERT_TRUE(rotate_log_if_larger(log, 1000, 3));
  }
  EXPECT_TRUE(std::filesystem::exists(log + ".2"));
  EXPECT_TRUE(std::filesystem::exists(log + ".3"));
  EXPECT_FALSE(std::filesystem::exists(log + ".4"));
  launcher.signal_group(*pid, SIGKILL);
  EXPECT_TRUE(wait_for([&] { return launcher.poll(*pid).has_value(); }, 5s));
}

TEST(LogRotation, TailLines) {
  TempDirectory dir;
  std::string log = dir.path() + "/engine.log";
  std::ofstream(log) << "one\ntwo\nthree\nfour\n";
  EXPECT_EQ(tail_lines(log, 2), "three\nfour");
  EXPECT_EQ(tail_lines(log, 10), "one\ntwo\nthree\nfour");
  EXPECT_EQ(tail_lines(dir.path() + "/missing.log", 3), "");
}

TEST(Processes, StartTimeTellsAProcessFromAReusedPid) {
  auto mine = process_start_time(::getpid());
  ASSERT_TRUE(mine);
  EXPECT_GT(*mine, 0);
  EXPECT_EQ(process_start_time(::getpid()), mine) << "stable for one process";
  EXPECT_FALSE(process_start_time(0));
  EXPECT_FALSE(process_start_time(999999999));

  PosixLauncher launcher;
  LaunchSpec spec;
  spec.argv = {"/bin/sleep", "30"};
  TempDirectory dir;
  spec.log_path = dir.path() + "/sleep.log";
  auto pid = launcher.launch(spec);
  ASSERT_TRUE(pid);
  auto started = launcher.start_time(*pid);
  ASSERT_TRUE(started);
  EXPECT_GE(*started, *mine);
  EXPECT_FALSE(launcher.poll(*pid));
  launcher.signal_group(*pid, SIGTERM);
  ASSERT_TRUE(wait_for([&] { return launcher.poll(*pid).has_value(); }, 5s));
  EXPECT_FALSE(launcher.start_time(*pid)) << "a reaped child has no start time";
}

TEST(Processes, AnAdoptedProcessIsPolledThroughProc) {
  // A process this launcher did not start: the test's own parent stands in for an engine an
  // earlier agent started. It runs, so poll reports nothing.
  PosixLauncher launcher;
  EXPECT_FALSE(launcher.poll(::getppid()).has_value());
  // A pid with no process behind it reads as exited, status unknown.
  auto gone = launcher.poll(999999999);
  ASSERT_TRUE(gone);
  EXPECT_EQ(gone->code, -1);
  EXPECT_NE(gone->describe().find("unknown"), std::string::npos);
}

TEST(AgentDb, EnginesSurviveReopening) {
  TempDirectory dir;
  std::string path = dir.path() + "/agent.db";
  {
    auto db = AgentDb::open(path);
    ASSERT_TRUE(db) << db.error().message;
    EngineRecord record;
    record.replica = "chat-abc12";
    record.engine = "vllm";
    record.pid = 4242;
    record.start_time = 123456;
    record.port = 31000;
    record.endpoint = "http://127.0.0.1:31000";
    record.restarts = 2;
    record.plan_version = 3;
    ASSERT_TRUE((*db)->put(record));
    record.replica = "embed-xyz89";
    ASSERT_TRUE((*db)->put(record));
    ASSERT_TRUE((*db)->remove("embed-xyz89"));
  }
  auto db = AgentDb::open(path);
  ASSERT_TRUE(db);
  auto records = (*db)->all();
  ASSERT_TRUE(records);
  ASSERT_EQ(records->size(), 1u);
  const auto& record = records->front();
  EXPECT_EQ(record.replica, "chat-abc12");
  EXPECT_EQ(record.engine, "vllm");
  EXPECT_EQ(record.pid, 4242);
  EXPECT_EQ(record.start_time, 123456);
  EXPECT_EQ(record.port, 31000);
  EXPECT_EQ(record.endpoint, "http://127.0.0.1:31000");
  EXPECT_EQ(record.restarts, 2);
  EXPECT_EQ(record.plan_version, 3);

  EXPECT_FALSE(AgentDb::open(dir.path() + "/no/such/dir/agent.db"));
}

TEST(LogRetention, LogsOfDeletedReplicasGoPastTheNewestFewOrTheRetention) {
  TempDirectory dir;
  namespace fs = std::filesystem;
  auto write = [&](const std::string& name, fs::file_time_type::duration age) {
    std::ofstream(dir.path() + "/" + name) << "line\n";
    fs::last_write_time(dir.path() + "/" + name, fs::file_time_type::clock::now() - age);
  };
  write("live.log", std::chrono::hours(48));  // a live replica's log stays, however old
  write("gone-old.log", std::chrono::hours(2));
  write("gone-old.log.1", std::chrono::hours(3));
  write("gone-a.log", std::chrono::minutes(3));
  write("gone-b.log", std::chrono::minutes(2));
  write("gone-b.log.1", std::chrono::minutes(2));
  write("gone-c.log", std::chrono::minutes(1));
  write("notes.txt", std::chrono::hours(48));  // not a log
  size_t removed = prune_replica_logs(dir.path(), {"live"}, std::chrono::hours(1), 2);
  EXPECT_EQ(removed, 3u);  // gone-old (past the retention, both files) and gone-a (beyond the newest 2)
  std::set<std::string> left;
  for (const auto& entry : fs::directory_iterator(dir.path())) left.insert(entry.path().filename().string());
  EXPECT_EQ(left, (std::set<std::string>{"live.log", "gone-b.log", "gone-b.log.1", "gone-c.log", "notes.txt"}));
}

TEST(PosixLauncher, TheEngineLogIsItsOwnersAlone) {
  TempDirectory dir;
  std::string log = dir.path() + "/logs/engine.log";
  std::filesystem::create_directories(dir.path() + "/logs");
  std::ofstream(log) << "from an earlier run\n";
  std::filesystem::permissions(log, std::filesystem::perms(0644));
  PosixLauncher launcher;
  LaunchSpec spec;
  spec.argv = {"/bin/sh", "-c", "echo started"};
  spec.log_path = log;
  auto pid = launcher.launch(spec);
  ASSERT_TRUE(pid) << pid.error().message;
  ASSERT_TRUE(wait_for([&] { return launcher.poll(*pid).has_value(); }, 5s));
  EXPECT_EQ(static_cast<int>(std::filesystem::status(log).permissions() & std::filesystem::perms::all), 0600);
  EXPECT_NE(tail_lines(log, 1).find("started"), std::string::npos);
}

}  // namespace
}  // namespace nebula::agent
