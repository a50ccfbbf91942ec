#pragma once
// Docker replicas: a small blocking client for the Docker Engine API over its unix socket, and
// the rules a container must pass before Nebula creates it.
//
// A docker deployment's engine args are docker options, then `--`, then the container's command:
//   --image IMAGE            the image (default: the node's engines.docker binary setting)
//   --container-port N       where the engine listens inside the container (default 8000)
//   -v|--volume|--mount SRC:DST[:ro|rw]   a bind mount (also --mount type=bind,source=..,target=..[,readonly]);
//                            SRC must lie inside one of the node's allowed_mounts
//   -e|--env NAME=VALUE      an environment variable
//   --shm-size SIZE          /dev/shm size: bytes or with a b/k/m/g suffix (tensor parallelism needs it)
//   --network|--net NAME     a network; `host` and `container:...` are refused
//   --ipc MODE               `host` is refused (use --shm-size)
//   --privileged             always refused
// Options may also be written --name=value. Anything else before `--` is an error, so an engine
// flag put in the wrong place is reported rather than dropped. After `--` come the container's
// command arguments, with the {port} {model} {served_name} {max_context} {max_seqs} {gpus}
// {num_gpus} {host} placeholders substituted ({port} is the container port, {host} 0.0.0.0,
// {gpus} the GPUs as numbered inside the container). No `--`: the node's command template, if any,
// else the image's own command.
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/json.h"
#include "common/result.h"
#include "engines/driver.h"

namespace nebula::engines {

// Builds a replica's container from its launch context and the docker options in its engine args.
Result<ContainerSpec> parse_container_spec(const LaunchContext& context);

// Refuses privileged mode, host (or another container's) network or IPC namespace, and bind
// mounts of host paths outside allowed_mounts (symlinks and `..` resolved before comparing).
Status validate_container_spec(const ContainerSpec& spec, const std::vector<std::string>& allowed_mounts);

// The body of POST /containers/create for a validated spec.
json container_create_body(const ContainerSpec& spec);

struct DockerResponse {
  int status = 0;
  std::string body;
};

struct ContainerState {
  std::string status;  // "created", "running", "exited", ...
  bool running = false;
  int exit_code = 0;
  int pid = 0;        // on the host; 0 when not running
  std::string error;  // Docker's State.Error, e.g. why it could not start
};

// One connection per call, each bounded by the timeout. Not thread-safe; cheap to create.
class DockerClient {
 public:
  explicit DockerClient(std::string socket_path = "/var/run/docker.sock",
                        std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // The daemon's version ("24.0.7"): proof that the socket answers.
  Result<std::string> version();
  // POST /images/create?fromImage=IMAGE (the tag is part of IMAGE, default latest); waits for the pull.
  // `abandoned`, when given, is asked every 100 ms; once it says so the connection is closed
  // (which makes Docker cancel the pull) and the pull fails.
  Status pull(const std::string& image, std::chrono::milliseconds timeout = std::chrono::hours(2),
              const std::function<bool()>& abandoned = {});
  // Validates the spec against allowed_mounts, then creates the container; returns its id.
  Result<std::string> create(const ContainerSpec& spec, const std::vector<std::string>& allowed_mounts);
  Status start(const std::string& id);
  Result<ContainerState> inspect(const std::string& id);
  // SIGTERM, then SIGKILL after grace. Stopping a stopped container is not an error.
  Status stop(const std::string& id, std::chrono::seconds grace);
  Status remove(const std::string& id, bool force = false);
  // The last lines of the container's stdout and stderr, demultiplexed.
  Result<std::string> logs(const std::string& id, int tail_lines);

  Result<DockerResponse> request(const std::string& method, const std::string& target, const std::string& body = {},
                                 std::optional<std::chrono::milliseconds> timeout = std::nullopt,
                                 const std::function<bool()>& abandoned = {});

 private:
  std::string socket_path_;
  std::chrono::milliseconds timeout_;
};

// An image name or id made safe for a request path ("/images/{name}/json") or query.
std::string docker_escape(const std::string& text);

// Docker's log stream framing (8-byte headers per frame when the container has no TTY) removed.
std::string demultiplex_docker_logs(const std::string& raw);

}  // namespace nebula::engines
