// Docker replicas across real processes: a `nebula server`, a `nebula agent` whose docker engine
// talks to a fake Docker Engine API daemon living in this test, on a unix socket. The fake makes
// containers real: starting one runs `nebula engine-sim` on the published host port, so the
// agent's probes, the gateway's requests and the agent's supervision all meet a live engine.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "common/json.h"
#include "engines/fake_docker.h"
#include "http/http.h"
#include "nebula_fixture.h"
#include "process_helpers.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using engines::testing::docker_log_frame;
using testing::Child;
using testing::eventually;
using testing::process_gone;

constexpr const char* kImage = "vllm/vllm-openai:latest";

// A Docker Engine API daemon on a unix socket whose containers are `nebula engine-sim` processes:
// start runs one on the container's published host port (serving the container's
// nebula.served-name label; a FAKE_ENGINE_ARGS=... env var adds engine-sim flags), inspect reports
// that process, stop signals and reaps it. Each connection is served on a thread of its own (a
// stop waits out its grace period without holding the others); every request is recorded in order.
class FakeDockerDaemon {
 public:
  using Request = engines::testing::Seen;
  struct Container {
    std::string id;
    std::string name;
    json create_body;
    std::string served_name;
    std::vector<std::string> engine_args;  // from the container's FAKE_ENGINE_ARGS env, space-separated
    int host_port = 0;
    pid_t pid = 0;  // the engine-sim process while it runs (reaped: 0)
    bool running = false;
    int exit_code = 0;
  };

  // The transport (socket, HTTP, the record of requests) is the unit tests' FakeDocker; this
  // class is the Engine API behind it.
  FakeDockerDaemon(std::string socket_path, std::string log_dir)
      : log_dir_(std::move(log_dir)),
        transport_(std::make_unique<engines::testing::FakeDocker>(
            socket_path, [this](const Request& request) { return answer(request); })) {}
  ~FakeDockerDaemon() {
    transport_.reset();  // no request is being answered past this point
    std::lock_guard lock(mutex_);
    for (auto& [id, container] : containers_) kill_and_reap(container);
    for (auto& container : removed_) kill_and_reap(container);
  }

  const std::string& path() const { return transport_->path(); }
  std::vector<Request> requests() { return transport_->seen(); }
  // "METHOD target" of every request so far, in order.
  std::vector<std::string> targets() { return transport_->targets(); }
  std::vector<Container> containers() {
    std::lock_guard lock(mutex_);
    std::vector<Container> out;
    for (auto& [id, container] : containers_) {
      reap(container);
      out.push_back(container);
    }
    return out;
  }
  std::optional<Container> container(const std::string& id) {
    std::lock_guard lock(mutex_);
    Container* found = lookup(id);
    if (!found) return std::nullopt;
    reap(*found);
    return *found;
  }
  std::vector<pid_t> all_pids() {
    std::lock_guard lock(mutex_);
    return all_pids_;
  }

 private:
  using Answer = engines::testing::Answer;
  static Answer message(int status, const std::string& text) { return {status, json{{"message", text}}.dump()}; }

  Answer answer(const Request& request) {
    const std::string& target = request.target;
    std::string path = target.substr(0, target.find('?'));
    std::string query = target.find('?') == std::string::npos ? "" : target.substr(target.find('?') + 1);
    auto starts = [&](const std::string& prefix) { return path.rfind(prefix, 0) == 0; };
    auto ends = [&](const std::string& suffix) {
      return path.size() >= suffix.size() && path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    // /containers/{id}/{action} -> id (the middle part may not hold a '/').
    auto container_of = [&](const std::string& action) -> std::optional<std::string> {
      std::string prefix = "/containers/";
      std::string suffix = action.empty() ? "" : "/" + action;
      if (!starts(prefix) || !ends(suffix) || path.size() <= prefix.size() + suffix.size()) return std::nullopt;
      std::string id = path.substr(prefix.size(), path.size() - prefix.size() - suffix.size());
      if (id.find('/') != std::string::npos) return std::nullopt;
      return id;
    };

    if (request.method == "GET" && path == "/version") {
      return {200, R"({"Version":"24.0.7","ApiVersion":"1.43","Os":"linux","Arch":"amd64"})"};
    }
    if (request.method == "GET" && starts("/images/") && ends("/json")) {
      std::string image = path.substr(8, path.size() - 8 - 5);
      std::lock_guard lock(mutex_);
      if (images_.count(image)) return {200, json{{"Id", "sha256:" + std::string(64, 'a')}}.dump()};
      return message(404, "No such image: " + image);
    }
    if (request.method == "POST" && path == "/images/create" && query.rfind("fromImage=", 0) == 0) {
      std::string image =
          query.substr(10, query.find('&') == std::string::npos ? std::string::npos : query.find('&') - 10);
      std::this_thread::sleep_for(100ms);  // a pull takes a moment
      std::lock_guard lock(mutex_);
      images_.insert(image);
      return {200,
              "{\"status\":\"Pulling from " + image +
                  "\"}\n{\"status\":\"Download complete\"}\n{\"status\":\"Status: Downloaded newer image\"}\n",
              true};
    }
    if (request.method == "POST" && path == "/containers/create") {
      std::string name = query.rfind("name=", 0) == 0 ? query.substr(5) : "";
      auto body = parse_json(request.body);
      if (!body || !body->is_object()) return message(400, "bad create body");
      Container container;
      container.name = name;
      container.create_body = *body;
      try {
        const json& bindings = (*body)["HostConfig"]["PortBindings"];
        if (!bindings.is_object() || bindings.size() != 1) return message(400, "expected one port binding");
        container.host_port = std::stoi(bindings.begin().value()[0]["HostPort"].get<std::string>());
        container.served_name = (*body)["Labels"].value("nebula.served-name", "");
        for (const auto& item : body->value("Env", json::array())) {
          std::string env = item.get<std::string>();
          if (env.rfind("FAKE_ENGINE_ARGS=", 0) != 0) continue;
          std::istringstream words(env.substr(17));
          for (std::string word; words >> word;) container.engine_args.push_back(word);
        }
      } catch (const std::exception& error) {
        return message(400, std::string("bad create body: ") + error.what());
      }
      std::lock_guard lock(mutex_);
      if (!name.empty() && lookup(name)) {
        return message(409, "Conflict. The container name \"/" + name + "\" is already in use");
      }
      if (!images_.count((*body).value("Image", ""))) return message(404, "No such image: " + body->value("Image", ""));
      container.id = fmt::format("c0ffee{:058x}", ++created_);
      if (container.name.empty()) container.name = container.id.substr(0, 12);
      std::string id = container.id;
      containers_[id] = std::move(container);
      return {201, json{{"Id", id}, {"Warnings", json::array()}}.dump()};
    }
    if (request.method == "POST") {
      if (auto id = container_of("start")) {
        std::lock_guard lock(mutex_);
        Container* container = lookup(*id);
        if (!container) return message(404, "No such container: " + *id);
        reap(*container);
        if (container->running) return {304, ""};
        if (container->served_name.empty()) return message(500, "the fake needs a nebula.served-name label");
        auto pid = spawn_engine(*container);
        if (!pid) return message(500, "cannot start engine-sim");
        container->pid = *pid;
        container->running = true;
        container->exit_code = 0;
        all_pids_.push_back(*pid);
        return {204, ""};
      }
      if (auto id = container_of("stop")) {
        int grace = query.rfind("t=", 0) == 0 ? std::stoi(query.substr(2)) : 10;
        return stop(*id, std::chrono::seconds(grace));
      }
    }
    if (request.method == "GET") {
      if (auto id = container_of("json")) {
        std::lock_guard lock(mutex_);
        Container* container = lookup(*id);
        if (!container) return message(404, "No such container: " + *id);
        reap(*container);
        json state = {{"Status", container->running ? "running" : "exited"},
                      {"Running", container->running},
                      {"Paused", false},
                      {"Restarting", false},
                      {"OOMKilled", false},
                      {"Dead", false},
                      {"Pid", container->running ? container->pid : 0},
                      {"ExitCode", container->exit_code},
                      {"Error", ""}};
        return {200, json{{"Id", container->id}, {"Name", "/" + container->name}, {"State", state}}.dump()};
      }
      if (auto id = container_of("logs")) {
        std::lock_guard lock(mutex_);
        Container* container = lookup(*id);
        if (!container) return message(404, "No such container: " + *id);
        return {200, docker_log_frame(1, "fake container " + container->name + "\n") +
                         docker_log_frame(2, "engine-sim serving " + container->served_name + "\n")};
      }
    }
    if (request.method == "DELETE") {
      if (auto id = container_of("")) {
        bool force = query.find("force=true") != std::string::npos || query.find("force=1") != std::string::npos;
        std::lock_guard lock(mutex_);
        Container* container = lookup(*id);
        if (!container) return message(404, "No such container: " + *id);
        reap(*container);
        if (container->running && !force) {
          return message(409, "You cannot remove a running container " + container->id + ". Stop it first");
        }
        kill_and_reap(*container);
        removed_.push_back(*container);
        containers_.erase(container->id);
        return {204, ""};
      }
    }
    return message(404, "page not found: " + request.method + " " + target);
  }

  // SIGTERM, SIGKILL after the grace, reaped; without the lock while waiting.
  Answer stop(const std::string& id, std::chrono::seconds grace) {
    {
      std::lock_guard lock(mutex_);
      Container* container = lookup(id);
      if (!container) return message(404, "No such container: " + id);
      reap(*container);
      if (!container->running) return {304, ""};
      ::kill(container->pid, SIGTERM);
    }
    auto deadline = std::chrono::steady_clock::now() + grace;
    bool killed = false;
    while (true) {
      {
        std::lock_guard lock(mutex_);
        Container* container = lookup(id);
        if (!container) return {204, ""};
        reap(*container);
        if (!container->running) return {204, ""};
        if (!killed && std::chrono::steady_clock::now() >= deadline) {
          ::kill(container->pid, SIGKILL);
          killed = true;
        }
      }
      std::this_thread::sleep_for(20ms);
    }
  }

  // By id, or by name (with or without Docker's leading '/').
  Container* lookup(const std::string& key) {
    if (auto found = containers_.find(key); found != containers_.end()) return &found->second;
    std::string name = !key.empty() && key[0] == '/' ? key.substr(1) : key;
    for (auto& [id, container] : containers_) {
      if (container.name == name) return &container;
    }
    return nullptr;
  }
  // Under the lock: notices the engine's exit (the only waitpid on that pid).
  static void reap(Container& container) {
    if (!container.running || container.pid <= 0) return;
    int status = 0;
    if (::waitpid(container.pid, &status, WNOHANG) == container.pid) {
      container.running = false;
      container.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      container.pid = 0;
    }
  }
  static void kill_and_reap(Container& container) {
    if (!container.running || container.pid <= 0) return;
    ::kill(container.pid, SIGKILL);
    int status = 0;
    ::waitpid(container.pid, &status, 0);
    container.running = false;
    container.exit_code = 137;
    container.pid = 0;
  }

  std::optional<pid_t> spawn_engine(const Container& container) {
    std::vector<std::string> argv = {
        NEBULA_BINARY, "engine-sim",         "--host", "127.0.0.1", "--port", std::to_string(container.host_port),
        "--model",     container.served_name};
    for (const auto& arg : container.engine_args) argv.push_back(arg);
    std::string log = log_dir_ + "/container-" + container.name + "-" + std::to_string(all_pids_.size()) + ".log";
    try {
      return testing::spawn_logged(argv, {}, log);
    } catch (const std::runtime_error&) {
      return std::nullopt;
    }
  }

  std::string log_dir_;
  std::mutex mutex_;
  std::set<std::string> images_;
  std::map<std::string, Container> containers_;  // by id
  std::vector<Container> removed_;
  std::vector<pid_t> all_pids_;
  uint64_t created_ = 0;
  std::unique_ptr<engines::testing::FakeDocker> transport_;  // last: it calls answer() until reset
};

int index_of(const std::vector<std::string>& targets, const std::string& target, int from = 0) {
  auto found = std::find(targets.begin() + std::min<size_t>(from, targets.size()), targets.end(), target);
  return found == targets.end() ? -1 : static_cast<int>(found - targets.begin());
}
int count_prefix(const std::vector<std::string>& targets, const std::string& prefix) {
  return static_cast<int>(
      std::count_if(targets.begin(), targets.end(), [&](const std::string& t) { return t.rfind(prefix, 0) == 0; }));
}

class DockerCluster : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_ = std::make_unique<FakeDockerDaemon>(temp_.path() + "/docker.sock", temp_.path());
    nebula_ = std::make_unique<testing::NebulaServer>(temp_.path() + "/server", temp_.path() + "/server.log");
    ASSERT_TRUE(nebula_->start());
    server_ = nebula_->url();
    token_ = nebula_->token();
    config_path_ = temp_.path() + "/agent.yaml";
    std::ofstream(config_path_) << "engines:\n"
                                << "  docker:\n"
                                << "    image: \"" << kImage << "\"\n"
                                << "    docker_socket: \"" << daemon_->path() << "\"\n";
  }

  void TearDown() override {
    nebula_->remove_deployments();
    if (agent_ && agent_->running()) {
      eventually([&] { return get_json("/api/v1/replicas")["items"].empty(); }, 15s);
      agent_->stop(SIGTERM, 20s);
    }
    nebula_->process().stop(SIGTERM, 20s);
    if (HasFailure()) {
      std::cerr << "---- server ----\n" << nebula_->process().output() << "\n";
      for (const auto& log : agent_logs_) {
        std::ifstream in(log);
        std::cerr << "---- " << log << " ----\n" << in.rdbuf() << "\n";
      }
      std::cerr << "---- docker requests ----\n";
      for (const auto& target : daemon_->targets()) std::cerr << target << "\n";
    }
    agent_.reset();
    daemon_.reset();  // kills and reaps whatever container process is left
  }

  // The same name and data dir every time, so a restarted agent finds its agent.db.
  void start_agent() {
    std::string log = temp_.path() + "/agent-" + std::to_string(agent_logs_.size() + 1) + ".log";
    agent_logs_.push_back(log);
    agent_ = std::make_unique<Child>(
        testing::agent_argv(server_, token_, "gpu1", "1xH100-80GB", temp_.path() + "/agent",
                            {"--config", config_path_, "--restart-backoff", "1s", "--stop-grace", "3s"}),
        log);
  }

  json get_json(const std::string& path) { return nebula_->get_json(path); }
  bool node_ready(const std::string& name) { return nebula_->node_ready(name); }
  std::vector<json> replicas_of(const std::string& deployment) { return nebula_->replicas_of(deployment); }
  std::vector<json> ready_replicas(const std::string& deployment) { return nebula_->ready_replicas(deployment); }
  testing::CommandResult cli(std::vector<std::string> args) { return nebula_->cli(std::move(args)); }
  int chat(const std::string& model) {
    auto response = client_.request(
        "POST", server_ + "/v1/chat/completions",
        json{
            {"model", model}, {"messages", json::array({json{{"role", "user"}, {"content", "hi"}}})}, {"max_tokens", 4}}
            .dump(),
        {{"Content-Type", "application/json"}}, 10s);
    return response ? response->status : -1;
  }
  std::string agent_output() const { return agent_ ? agent_->output() : ""; }

  testing::TempDir temp_;
  std::unique_ptr<FakeDockerDaemon> daemon_;
  std::unique_ptr<testing::NebulaServer> nebula_;
  std::string server_;
  std::string token_;
  std::string config_path_;
  std::unique_ptr<Child> agent_;
  std::vector<std::string> agent_logs_;
  http::BlockingClient client_;
};

TEST_F(DockerCluster, ContainersRunCrashRestartAreReadoptedRefusedAndRemoved) {
  // 1. The node finds Docker through the socket of its agent.yaml.
  start_agent();
  ASSERT_TRUE(eventually([&] { return node_ready("gpu1"); }, 20s)) << agent_output();
  json node = get_json("/api/v1/nodes/gpu1");
  const json& engines = node["status"]["engines"];
  EXPECT_NE(std::find(engines.begin(), engines.end(), "docker"), engines.end()) << node.dump();
  EXPECT_EQ(node["status"]["engine_versions"].value("docker", ""), "24.0.7") << node.dump();
  EXPECT_GE(index_of(daemon_->targets(), "GET /version"), 0);

  // 2. A docker deployment: the image is pulled, the container created with its port and GPU,
  // started (engine-sim on the published port), probed Ready; the gateway reaches it.
  auto deployed =
      cli({"deploy", "dock", "--engine", "docker", "--model", "m", "--vram", "10GB", "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  auto ready = ready_replicas("dock");
  ASSERT_EQ(ready.size(), 1u);
  std::string replica = ready[0]["metadata"]["name"];
  int port = ready[0]["status"]["port"];
  EXPECT_EQ(chat("dock"), 200);

  auto containers = daemon_->containers();
  ASSERT_EQ(containers.size(), 1u);
  FakeDockerDaemon::Container first = containers[0];
  EXPECT_EQ(first.name, replica);
  EXPECT_TRUE(first.running);
  EXPECT_EQ(first.host_port, port);
  const json& body = first.create_body;
  EXPECT_EQ(body.value("Image", ""), kImage) << body.dump();
  EXPECT_EQ(body["Labels"].value("nebula.served-name", ""), "dock") << body.dump();
  EXPECT_EQ(body["HostConfig"]["PortBindings"],
            (json{{"8000/tcp", json::array({json{{"HostIp", "127.0.0.1"}, {"HostPort", std::to_string(port)}}})}}))
      << body.dump();
  const json& devices = body["HostConfig"]["DeviceRequests"];
  ASSERT_TRUE(devices.is_array() && devices.size() == 1u) << body.dump();
  EXPECT_EQ(devices[0].value("Driver", ""), "nvidia");
  EXPECT_EQ(devices[0]["DeviceIDs"], json::array({"0"}));
  EXPECT_EQ(devices[0]["Capabilities"], json::array({json::array({"gpu"})}));
  EXPECT_FALSE(body["HostConfig"].value("Privileged", false)) << body.dump();
  EXPECT_FALSE(body["HostConfig"].contains("NetworkMode") && body["HostConfig"]["NetworkMode"] == "host");

  auto targets = daemon_->targets();
  int inspect_image = index_of(targets, std::string("GET /images/") + kImage + "/json");
  int pull = index_of(targets, std::string("POST /images/create?fromImage=") + kImage);
  int create = index_of(targets, "POST /containers/create?name=" + replica);
  int start = index_of(targets, "POST /containers/" + first.id + "/start");
  ASSERT_GE(inspect_image, 0);
  ASSERT_GE(pull, 0) << "the image was missing: it must be pulled";
  EXPECT_LT(inspect_image, pull);
  EXPECT_LT(pull, create);
  EXPECT_LT(create, start);
  EXPECT_EQ(count_prefix(targets, "POST /images/create"), 1);

  // The agent serves the container's log from Docker, demultiplexed.
  std::string agent_url = get_json("/api/v1/nodes/gpu1")["status"]["agent_url"];
  auto logs =
      client_.request("GET", agent_url + "/logs/" + replica, "", testing::agent_credential(temp_.path() + "/agent"));
  ASSERT_TRUE(logs);
  EXPECT_EQ(logs->status, 200) << logs->body;
  EXPECT_NE(logs->body.find("fake container " + replica + "\nengine-sim serving dock\n"), std::string::npos)
      << logs->body;
  EXPECT_EQ(logs->body.find('\x01'), std::string::npos) << "Docker's frame headers leaked into the log";
  EXPECT_NE(index_of(daemon_->targets(), "GET /containers/" + first.id + "/logs?stdout=1&stderr=1&tail=1000"), -1);

  // 3. The container's process dies: the agent sees the container exited, the replica fails with
  // one restart, a new container (after the old one is removed by name) brings it back.
  ASSERT_EQ(::kill(first.pid, SIGKILL), 0);
  bool failed = eventually(
      [&] {
        auto replicas = replicas_of("dock");
        return replicas.size() == 1 && replicas[0]["status"]["phase"] == "Failed" &&
               replicas[0]["status"]["restarts"] == 1;
      },
      10s, 50ms);
  EXPECT_TRUE(failed) << get_json("/api/v1/replicas").dump(2);
  bool healed = eventually(
      [&] {
        auto now_ready = ready_replicas("dock");
        return now_ready.size() == 1 && now_ready[0]["status"]["restarts"] == 1;
      },
      20s);
  ASSERT_TRUE(healed) << get_json("/api/v1/replicas").dump(2);
  EXPECT_NE(replicas_of("dock")[0]["status"].value("last_error", "").find("137"), std::string::npos)
      << replicas_of("dock")[0].dump();
  EXPECT_EQ(chat("dock"), 200);
  containers = daemon_->containers();
  ASSERT_EQ(containers.size(), 1u) << "the exited container was removed before the new one was created";
  FakeDockerDaemon::Container second = containers[0];
  EXPECT_NE(second.id, first.id);
  EXPECT_TRUE(second.running);
  EXPECT_EQ(second.name, replica);
  targets = daemon_->targets();
  EXPECT_EQ(count_prefix(targets, "POST /containers/create"), 2);
  EXPECT_EQ(count_prefix(targets, "POST /images/create"), 1) << "the image was there the second time";
  int removed_old = index_of(targets, "DELETE /containers/" + replica + "?force=true", start);
  ASSERT_GE(removed_old, 0);
  EXPECT_LT(removed_old, index_of(targets, "POST /containers/create?name=" + replica, create + 1));

  // 4. The agent is killed and comes back: it re-adopts the container recorded in agent.db.
  ASSERT_EQ(agent_->stop(SIGKILL, 10s), 128 + SIGKILL);
  size_t before_restart = daemon_->targets().size();
  start_agent();
  EXPECT_TRUE(
      eventually([&] { return agent_output().find("re-adopting container " + second.id) != std::string::npos; }, 10s))
      << agent_output();
  EXPECT_TRUE(eventually(
      [&] {
        auto now = daemon_->targets();
        return index_of(now, "GET /containers/" + second.id + "/json", static_cast<int>(before_restart)) >= 0;
      },
      10s));
  ASSERT_TRUE(nebula_->wait_heartbeats("gpu1", 3, 10s));  // status reports, a refresh or two
  ready = ready_replicas("dock");
  ASSERT_EQ(ready.size(), 1u) << get_json("/api/v1/replicas").dump(2);
  EXPECT_EQ(ready[0]["status"]["restarts"], 1);
  EXPECT_EQ(ready[0]["metadata"]["name"], replica);
  EXPECT_EQ(ready[0]["status"]["port"], second.host_port);
  EXPECT_EQ(chat("dock"), 200);
  targets = daemon_->targets();
  EXPECT_EQ(count_prefix(targets, "POST /containers/create"), 2) << "re-adopting creates nothing";
  for (size_t i = before_restart; i < targets.size(); ++i) {
    EXPECT_EQ(targets[i].rfind("DELETE ", 0), std::string::npos) << targets[i];
    EXPECT_EQ(targets[i].find("/stop"), std::string::npos) << targets[i];
  }
  auto still = daemon_->container(second.id);
  ASSERT_TRUE(still);
  EXPECT_TRUE(still->running);
  EXPECT_EQ(still->pid, second.pid);

  // 5. --privileged is refused before Docker hears of it.
  auto privileged =
      cli({"deploy", "priv", "--engine", "docker", "--model", "m", "--vram", "10GB", "--engine-arg=--privileged"});
  ASSERT_EQ(privileged.exit_code, 0) << privileged.out;
  bool refused = eventually(
      [&] {
        auto replicas = replicas_of("priv");
        return replicas.size() == 1 &&
               replicas[0]["status"].value("last_error", "").find("privileged containers are refused") !=
                   std::string::npos;
      },
      15s);
  EXPECT_TRUE(refused) << get_json("/api/v1/replicas").dump(2);
  auto priv = replicas_of("priv");
  if (!priv.empty()) {
    EXPECT_EQ(priv[0]["status"]["phase"], "Failed");
  }
  targets = daemon_->targets();
  EXPECT_EQ(count_prefix(targets, "POST /containers/create"), 2) << "no create for the refused container";
  EXPECT_EQ(count_prefix(targets, "POST /containers/create?name=priv"), 0);
  ASSERT_EQ(cli({"rm", "priv"}).exit_code, 0);

  // 5b. A container that exits while starting: the replica's error carries its last log lines,
  // read from Docker when the runtime saw it exit (the engine rejects an unknown flag).
  auto dies = cli({"deploy", "dies", "--engine", "docker", "--model", "m", "--vram", "10GB", "--engine-arg=-e",
                   "--engine-arg=FAKE_ENGINE_ARGS=--no-such-flag"});
  ASSERT_EQ(dies.exit_code, 0) << dies.out;
  bool explained = eventually(
      [&] {
        auto replicas = replicas_of("dies");
        if (replicas.size() != 1) return false;
        std::string error = replicas[0]["status"].value("last_error", "");
        return error.find("while starting; last log lines:") != std::string::npos &&
               error.find("fake container dies-") != std::string::npos;
      },
      20s);
  EXPECT_TRUE(explained) << get_json("/api/v1/replicas").dump(2);
  ASSERT_EQ(cli({"rm", "dies"}).exit_code, 0);

  // 6. nebula rm: docker stop (SIGTERM to the engine), then the container is removed.
  size_t before_rm = daemon_->targets().size();
  auto removed = cli({"rm", "dock"});
  ASSERT_EQ(removed.exit_code, 0) << removed.out;
  EXPECT_TRUE(eventually(
      [&] { return replicas_of("dock").empty() && replicas_of("priv").empty() && replicas_of("dies").empty(); }, 15s))
      << get_json("/api/v1/replicas").dump(2);
  EXPECT_TRUE(eventually([&] { return daemon_->containers().empty(); }, 10s));
  targets = daemon_->targets();
  int stop = -1;
  for (size_t i = before_rm; i < targets.size(); ++i) {
    if (targets[i].rfind("POST /containers/" + second.id + "/stop?t=", 0) == 0) {
      stop = static_cast<int>(i);
      break;
    }
  }
  ASSERT_GE(stop, 0) << "no docker stop";
  int deleted = index_of(targets, "DELETE /containers/" + second.id + "?force=true", stop);
  EXPECT_GT(deleted, stop) << "no delete after the stop";
  EXPECT_TRUE(process_gone(second.pid));
  EXPECT_EQ(chat("dock"), 404);
}

}  // namespace
}  // namespace nebula
