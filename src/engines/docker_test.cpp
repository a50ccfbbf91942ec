#include "engines/docker.h"

#include "engines/fake_docker.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <filesystem>
#include <functional>
#include <mutex>
#include <thread>

namespace nebula::engines {
namespace {

using namespace std::chrono_literals;
namespace beast_http = boost::beast::http;
using Local = boost::asio::local::stream_protocol;
namespace fs = std::filesystem;

using testing::Answer;
using testing::docker_log_frame;
using testing::FakeDocker;
using testing::Seen;

Answer engine_api(const Seen& request) {
  if (request.method == "GET" && request.target == "/version")
    return {200, R"({"Version":"24.0.7","ApiVersion":"1.43"})"};
  if (request.method == "POST" && request.target == "/containers/create?name=chat-0") {
    return {201, R"({"Id":"abc123","Warnings":[]})"};
  }
  if (request.method == "POST" && request.target == "/containers/create?name=taken") {
    return {409, R"({"message":"Conflict. The container name \"/taken\" is already in use"})"};
  }
  if (request.method == "POST" && request.target == "/containers/abc123/start") return {204, ""};
  if (request.method == "GET" && request.target == "/containers/abc123/json") {
    return {200, R"({"Id":"abc123","State":{"Status":"running","Running":true,"ExitCode":0,"Pid":4242,"Error":""}})"};
  }
  if (request.method == "POST" && request.target == "/containers/abc123/stop?t=10") return {204, ""};
  if (request.method == "POST" && request.target == "/containers/gone/stop?t=1") return {304, ""};
  if (request.method == "DELETE" && request.target == "/containers/abc123?force=true") return {204, ""};
  if (request.method == "GET" && request.target == "/containers/abc123/logs?stdout=1&stderr=1&tail=50") {
    return {200, docker_log_frame(1, "hello\n") + docker_log_frame(2, "warn: slow\n") + docker_log_frame(1, "world\n")};
  }
  if (request.method == "POST" && request.target == "/images/create?fromImage=vllm/vllm-openai:v0.8.5") {
    return {200, "{\"status\":\"Pulling from vllm/vllm-openai\"}\n{\"status\":\"Download complete\"}\n", true};
  }
  if (request.method == "POST" && request.target == "/images/create?fromImage=private/image") {
    return {200, "{\"status\":\"Pulling\"}\n{\"error\":\"pull access denied\"}\n", true};
  }
  return {404, R"({"message":"No such container: nope"})"};
}

class DockerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("nebula-docker-" + std::to_string(::getpid()));
    fs::create_directories(dir_ / "allowed" / "llama");
    fs::create_directories(dir_ / "secret");
    fs::create_directories(dir_ / "allowed2");
    fs::create_symlink(dir_ / "secret", dir_ / "allowed" / "escape");
  }
  void TearDown() override { fs::remove_all(dir_); }

  LaunchContext context(std::vector<std::string> engine_args) {
    LaunchContext context;
    context.replica = "chat-0";
    context.served_name = "chat";
    context.model = "/models/llama";
    context.gpus = {1, 3};
    context.port = 8123;
    context.max_context = 4096;
    context.engine_args = std::move(engine_args);
    context.config.allowed_mounts = {(dir_ / "allowed").string()};
    return context;
  }

  Result<ContainerSpec> container(std::vector<std::string> engine_args) {
    return find_driver("docker")->container(context(std::move(engine_args)));
  }

  fs::path dir_;
};

TEST_F(DockerTest, ContainerSpecFromEngineArgs) {
  std::string models = (dir_ / "allowed" / "llama").string();
  auto spec = container({"--image",
                         "vllm/vllm-openai:v0.8.5",
                         "--mount",
                         models + ":/models:ro",
                         "-e",
                         "HF_TOKEN=x",
                         "--shm-size=16g",
                         "--container-port",
                         "9000",
                         "--",
                         "--model",
                         "/models",
                         "--port",
                         "{port}",
                         "--host",
                         "{host}",
                         "--served-model-name",
                         "{served_name}",
                         "--tensor-parallel-size",
                         "{num_gpus}",
                         "--devices={gpus}"});
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_EQ(spec->name, "chat-0");
  EXPECT_EQ(spec->image, "vllm/vllm-openai:v0.8.5");
  EXPECT_EQ(spec->cmd,
            (std::vector<std::string>{"--model", "/models", "--port", "9000", "--host", "0.0.0.0",
                                      "--served-model-name", "chat", "--tensor-parallel-size", "2", "--devices=0,1"}));
  EXPECT_EQ(spec->container_port, 9000);
  EXPECT_EQ(spec->host_port, 8123);
  EXPECT_EQ(spec->gpus, (std::vector<int>{1, 3}));
  EXPECT_EQ(spec->env.at("HF_TOKEN"), "x");
  EXPECT_EQ(spec->shm_size_bytes, int64_t{16} << 30);
  ASSERT_EQ(spec->mounts.size(), 1u);
  EXPECT_TRUE(spec->mounts[0].read_only);

  // The image from the node's configuration, the command from its template, type=bind mounts.
  LaunchContext from_node = context({"--mount", "type=bind,source=" + models + ",target=/m,readonly"});
  from_node.config.binary = "ghcr.io/org/engine:1";
  from_node.config.command_template = {"serve", "{model}", "--port={port}"};
  auto node_spec = find_driver("docker")->container(from_node);
  ASSERT_TRUE(node_spec) << node_spec.error().message;
  EXPECT_EQ(node_spec->image, "ghcr.io/org/engine:1");
  EXPECT_EQ(node_spec->cmd, (std::vector<std::string>{"serve", "/models/llama", "--port=8000"}));
  EXPECT_EQ(node_spec->mounts[0].target, "/m");
  from_node.config.command_template.clear();
  EXPECT_TRUE(find_driver("docker")->container(from_node)->cmd.empty()) << "the image's own command";
}

TEST_F(DockerTest, RefusesPrivilegeHostNamespacesAndForeignMounts) {
  std::string allowed = (dir_ / "allowed").string();
  struct Case {
    std::vector<std::string> args;
    ErrorCode code;
  };
  std::vector<Case> cases{
      {{"--image", "i", "--privileged"}, ErrorCode::PermissionDenied},
      {{"--image", "i", "--privileged=true"}, ErrorCode::PermissionDenied},
      {{"--image", "i", "--network", "host"}, ErrorCode::PermissionDenied},
      {{"--image", "i", "--net=host"}, ErrorCode::PermissionDenied},
      {{"--image", "i", "--network", "container:other"}, ErrorCode::PermissionDenied},
      {{"--image", "i", "--ipc", "host"}, ErrorCode::PermissionDenied},
      {{"--image", "i", "--cap-add", "SYS_ADMIN"}, ErrorCode::PermissionDenied},
      {{"--image", "i", "--device", "/dev/mem"}, ErrorCode::PermissionDenied},
      {{"--image", "i", "-p", "80:80"}, ErrorCode::PermissionDenied},
      {{"--image", "i", "--mount", "/etc:/etc"}, ErrorCode::PermissionDenied},
      {{"--image", "i", "-v", "/:/host"}, ErrorCode::PermissionDenied},
      {{"--image", "i", "-v", (dir_ / "allowed2").string() + ":/x"}, ErrorCode::PermissionDenied},
      {{"--image", "i", "-v", allowed + "/../secret:/x"}, ErrorCode::PermissionDenied},
      {{"--image", "i", "-v", allowed + "/escape:/x"}, ErrorCode::PermissionDenied},
      {{"--image", "i", "-v", allowed + "/escape/deeper:/x"}, ErrorCode::PermissionDenied},
      {{"--image", "i", "-v", "named-volume:/x"}, ErrorCode::InvalidArgument},
      {{"--image", "i", "-v", allowed + ":relative"}, ErrorCode::InvalidArgument},
      {{"--image", "i", "--mount", "type=volume,source=v,target=/x"}, ErrorCode::InvalidArgument},
      {{"--image", "i", "--gpu-memory-utilization", "0.9"}, ErrorCode::InvalidArgument},
      {{"--image", "i", "--shm-size", "lots"}, ErrorCode::InvalidArgument},
      {{"--image"}, ErrorCode::InvalidArgument},
      {{"--", "serve"}, ErrorCode::InvalidArgument},  // no image anywhere
  };
  for (const Case& bad : cases) {
    auto spec = container(bad.args);
    std::string shown;
    for (const auto& arg : bad.args) shown += arg + " ";
    ASSERT_FALSE(spec) << shown;
    EXPECT_EQ(spec.error().code, bad.code) << shown << ": " << spec.error().message;
  }
  EXPECT_TRUE(container({"--image", "i", "-v", allowed + ":/a", "-v", allowed + "/not-yet/made:/b:rw"}));
  EXPECT_TRUE(container({"--image", "i", "--network", "nebula-net", "--ipc=private"}));

  LaunchContext no_allowlist = context({"--image", "i", "-v", allowed + ":/a"});
  no_allowlist.config.allowed_mounts.clear();
  auto none = find_driver("docker")->container(no_allowlist);
  ASSERT_FALSE(none);
  EXPECT_NE(none.error().message.find("none configured"), std::string::npos) << none.error().message;
}

TEST_F(DockerTest, ClientTalksToTheEngineApi) {
  FakeDocker docker(dir_ / "docker.sock", engine_api);
  DockerClient client(docker.path(), 5s);
  auto version = client.version();
  ASSERT_TRUE(version) << version.error().message;
  EXPECT_EQ(*version, "24.0.7");

  std::string models = (dir_ / "allowed" / "llama").string();
  auto spec = container({"--image", "vllm/vllm-openai:v0.8.5", "-v", models + ":/models:ro", "-e", "HF_TOKEN=x",
                         "--shm-size", "2g", "--", "--model", "/models", "--port", "{port}"});
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_TRUE(client.pull(spec->image).ok());
  auto id = client.create(*spec, {(dir_ / "allowed").string()});
  ASSERT_TRUE(id) << id.error().message;
  EXPECT_EQ(*id, "abc123");

  auto seen = docker.seen();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[1].target, "/images/create?fromImage=vllm/vllm-openai:v0.8.5");
  EXPECT_EQ(seen[2].method, "POST");
  EXPECT_EQ(seen[2].target, "/containers/create?name=chat-0");
  auto body = parse_json(seen[2].body);
  ASSERT_TRUE(body) << seen[2].body;
  EXPECT_EQ((*body)["Image"], "vllm/vllm-openai:v0.8.5");
  EXPECT_EQ((*body)["Cmd"], json::parse(R"(["--model","/models","--port","8000"])"));
  EXPECT_EQ((*body)["Env"], json::parse(R"(["HF_TOKEN=x"])"));
  EXPECT_EQ((*body)["Labels"]["nebula.replica"], "chat-0");
  EXPECT_TRUE((*body)["ExposedPorts"].contains("8000/tcp"));
  const json& host = (*body)["HostConfig"];
  EXPECT_EQ(host["PortBindings"], json::parse(R"({"8000/tcp":[{"HostIp":"127.0.0.1","HostPort":"8123"}]})"));
  EXPECT_EQ(host["DeviceRequests"],
            json::parse(R"([{"Driver":"nvidia","DeviceIDs":["1","3"],"Capabilities":[["gpu"]]}])"));
  EXPECT_EQ(host["Binds"], json::array({models + ":/models:ro"}));
  EXPECT_EQ(host["ShmSize"], int64_t{2} << 30);
  EXPECT_FALSE(host.contains("Privileged"));
  EXPECT_FALSE(host.contains("NetworkMode"));
  EXPECT_FALSE(host.contains("IpcMode"));

  EXPECT_TRUE(client.start("abc123").ok());
  auto state = client.inspect("abc123");
  ASSERT_TRUE(state) << state.error().message;
  EXPECT_TRUE(state->running);
  EXPECT_EQ(state->status, "running");
  EXPECT_EQ(state->pid, 4242);
  auto logs = client.logs("abc123", 50);
  ASSERT_TRUE(logs) << logs.error().message;
  EXPECT_EQ(*logs, "hello\nwarn: slow\nworld\n");
  EXPECT_TRUE(client.stop("abc123", 10s).ok());
  EXPECT_TRUE(client.stop("gone", 1s).ok()) << "already stopped";
  EXPECT_TRUE(client.remove("abc123", true).ok());

  auto missing = client.inspect("nope");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::NotFound);
  EXPECT_NE(missing.error().message.find("No such container"), std::string::npos);
  ContainerSpec taken = *spec;
  taken.name = "taken";
  auto conflict = client.create(taken, {(dir_ / "allowed").string()});
  ASSERT_FALSE(conflict);
  EXPECT_EQ(conflict.error().code, ErrorCode::AlreadyExists);
  Status denied = client.pull("private/image");
  ASSERT_FALSE(denied.ok());
  EXPECT_NE(denied.error().message.find("pull access denied"), std::string::npos);
}

TEST_F(DockerTest, CreateValidatesBeforeSendingAnything) {
  FakeDocker docker(dir_ / "docker.sock", engine_api);
  DockerClient client(docker.path(), 5s);
  auto spec = container({"--image", "i"});
  ASSERT_TRUE(spec);
  ContainerSpec privileged = *spec;
  privileged.privileged = true;
  ContainerSpec host_network = *spec;
  host_network.network_mode = "host";
  ContainerSpec etc = *spec;
  etc.mounts.push_back(Mount{"/etc", "/etc", true});
  for (const ContainerSpec& bad : {privileged, host_network, etc}) {
    auto id = client.create(bad, {(dir_ / "allowed").string()});
    ASSERT_FALSE(id);
    EXPECT_EQ(id.error().code, ErrorCode::PermissionDenied) << id.error().message;
  }
  EXPECT_TRUE(docker.seen().empty());
}

TEST_F(DockerTest, DetectAsksTheSocket) {
  FakeDocker docker(dir_ / "docker.sock", engine_api);
  EngineConfig config;
  config.docker_socket = docker.path();
  Availability found = find_driver("docker")->detect(config);
  EXPECT_TRUE(found.available) << found.detail;
  EXPECT_EQ(found.version, "24.0.7");
  config.docker_socket = (dir_ / "no.sock").string();
  Availability missing = find_driver("docker")->detect(config);
  EXPECT_FALSE(missing.available);
  EXPECT_NE(missing.detail.find("no.sock"), std::string::npos) << missing.detail;
}

TEST_F(DockerTest, SilentDaemonTimesOut) {
  boost::asio::io_context io;
  std::string path = (dir_ / "silent.sock").string();
  Local::acceptor acceptor(io, Local::endpoint(path));  // connections queue, nothing answers
  DockerClient client(path, 200ms);
  auto started = std::chrono::steady_clock::now();
  auto version = client.version();
  ASSERT_FALSE(version);
  EXPECT_EQ(version.error().code, ErrorCode::Timeout);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 3s);
}

TEST(DockerLogs, Demultiplexing) {
  EXPECT_EQ(demultiplex_docker_logs(docker_log_frame(1, "a") + docker_log_frame(2, "bc")), "abc");
  EXPECT_EQ(demultiplex_docker_logs("plain tty output\n"), "plain tty output\n");
  EXPECT_EQ(demultiplex_docker_logs(""), "");
  std::string truncated = docker_log_frame(1, "abcdef");
  truncated.resize(truncated.size() - 2);
  EXPECT_EQ(demultiplex_docker_logs(truncated), "abcd");
}

}  // namespace
}  // namespace nebula::engines
