#pragma once
// Helpers the drivers share: argv/env building, finding and asking a binary for its version,
// and the small HTTP exchanges every engine has (a health probe, fetching /metrics).
#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/asio.h"
#include "common/result.h"
#include "engines/driver.h"
#include "engines/prometheus.h"

namespace nebula::engines {

// "0,1,3"; "" for no GPUs (which hides every GPU from a CUDA process).
std::string gpu_list(const std::vector<int>& gpus);
// A number as an engine flag wants it: "0.85", "1".
std::string flag_number(double value);

// The environment every process-based engine gets: the node's engine env, the deployment's env,
// then CUDA_VISIBLE_DEVICES from the GPUs (last, so pinning always follows the placement).
std::map<std::string, std::string> base_env(const LaunchContext& context);
// Appends the node's extra args, then the deployment's engine args.
void append_user_args(std::vector<std::string>& argv, const LaunchContext& context);

// Replaces {port} {host} {model} {served_name} {max_context} {max_seqs} {gpus} {num_gpus} anywhere
// in the argument with the values given.
std::string substitute(std::string_view text, const std::map<std::string, std::string>& values);
std::map<std::string, std::string> placeholder_values(const LaunchContext& context);

// The path of an executable: `name` itself when it contains '/', else the first match on PATH.
std::optional<std::string> find_executable(const std::string& name);

struct ProcessOutput {
  int exit_code = -1;  // -1 when killed or timed out
  bool timed_out = false;
  std::string output;  // stdout then stderr interleaved as written, at most 64 KiB
};
// Runs argv (argv[0] looked up on PATH) with stdin from /dev/null and captures its output; kills
// its process group when it takes longer than timeout.
Result<ProcessOutput> run_captured(const std::vector<std::string>& argv, std::chrono::milliseconds timeout);

// The version in what `X --version` printed: "0.8.5" from "0.8.5", "4520 (a1b2c3d)" from
// "version: 4520 (a1b2c3d)", "0.5.7" from "ollama version is 0.5.7".
std::string version_from_output(std::string_view output);

// detect() for a binary: found on PATH and answering `binary version_args...` within a few seconds.
Availability detect_binary(const std::string& binary, const std::vector<std::string>& version_args);

// GET endpoint + path: 200 = Ready, any other answer = Loading, no answer = Down.
awaitable<Readiness> probe_path(http::Client& client, std::string url);
// GET endpoint/metrics parsed. A status other than 200 is an Unavailable error carrying the status.
awaitable<Result<Metrics>> fetch_metrics(http::Client& client, std::string endpoint);
// POST url with an optional JSON body; an error unless the status is 2xx.
awaitable<Status> post_expect_ok(http::Client& client, std::string url, std::string body,
                                 std::chrono::milliseconds timeout);

Error unsupported(const std::string& what);

}  // namespace nebula::engines
