// The README's "A 5-minute tour", run as written: every `$ command` of the tour's code blocks runs
// against a real `nebula up --sim-gpus 1xH100-80GB` (the README's `localhost:8080` pointing at it),
// in order, and its output must be what the README shows once what changes from run to run
// (ages, ids, ports, times, generated text, secrets) is normalised on both sides.
//
// How a block is read: a line starting with "$ " is a command (a trailing "\" continues it; " ; "
// separates commands run one after the other; a "# ..." comment is dropped, and "# the last
// lines" compares only the last lines of the output). The lines after it, up to the next command,
// are its expected output; blank lines are ignored. A "..." line elides the middle of an output:
// the lines before it must open the output and the lines after it must close it. `curl -i`
// output lists the head's lines that matter (the rest of the head may differ), in order. Events
// recorded in the same millisecond come out in no particular order, so `nebula events` is
// compared as a set of lines. Commands that only read (ls, get, nodes, gpus, events, logs, usage)
// are run again until they match, for up to 15 s (a node reports its VRAM within a heartbeat).
// A `nebula up ...` command starts a second server as written (on a free port and a fresh data
// dir in place of the README's); the commands after it talk to that one.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <thread>

#include "common/json.h"
#include "http/http.h"
#include "process_helpers.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using testing::Child;
using testing::eventually;

struct Step {
  std::string command;
  std::vector<std::string> expected;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

// The commands of the tour section's code blocks with their expected output.
std::vector<Step> tour_steps(const std::string& readme) {
  size_t begin = readme.find("## A 5-minute tour");
  size_t end = readme.find("\n## ", begin + 1);
  std::vector<Step> steps;
  if (begin == std::string::npos) return steps;
  bool in_block = false;
  for (std::string line : split_lines(readme.substr(begin, end - begin))) {
    if (line.rfind("```", 0) == 0) {
      in_block = !in_block;
      continue;
    }
    if (!in_block) continue;
    if (!steps.empty() && !steps.back().command.empty() && steps.back().command.back() == '\\') {
      steps.back().command.pop_back();
      steps.back().command += line;
      continue;
    }
    if (line.rfind("$ ", 0) == 0) {
      steps.push_back({line.substr(2), {}});
    } else if (!steps.empty()) {
      steps.back().expected.push_back(line);
    }
  }
  return steps;
}

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); !from.empty() && at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
  return text;
}

// What changes from run to run, made the same on both sides; blank lines dropped, runs of spaces
// made one (table columns are as wide as their widest cell).
std::vector<std::string> normalise(const std::vector<std::string>& lines) {
  static const std::vector<std::pair<std::regex, std::string>> rules = {
      {std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})"), "<time>"},
      {std::regex(R"(\d{4}-\d\d-\d\d)"), "<date>"},
      {std::regex(R"((127\.0\.0\.1|localhost):\d+)"), "$1:<port>"},
      {std::regex(R"(\b(chat|demo|big)-[a-z0-9]{5}\b)"), "$1-<id>"},
      {std::regex(R"(nb-[a-z0-9]{8}_[0-9a-f]{32})"), "<secret>"},
      {std::regex(R"(\bkey [a-z0-9]{8}\b)"), "key <id>"},
      {std::regex(R"("created":\d+)"), R"("created":<n>)"},
      {std::regex(R"(chatcmpl-[a-z0-9]+)"), "chatcmpl-<id>"},
      {std::regex(R"(req-[a-z0-9]+)"), "req-<id>"},
      {std::regex(R"("content":"[^"]+")"), R"("content":"<text>")"},
      {std::regex(R"(\b\d+(\.\d+)?(ms|[smhd])\b)"), "<age>"},
      {std::regex(R"(retry-after: \d+)"), "retry-after: <seconds>"},
      {std::regex(R"(retry-after-ms: \d+)"), "retry-after-ms: <ms>"},
      {std::regex(R"([ \t]+)"), " "},
  };
  std::vector<std::string> out;
  for (std::string line : lines) {
    for (const auto& [pattern, replacement] : rules) line = std::regex_replace(line, pattern, replacement);
    while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.pop_back();  // curl -i: CRLF
    if (!line.empty()) out.push_back(line);
  }
  // `deploy --wait` prints a block per change of its progress (the deployment's line, then a line
  // per replica): only the last block of a run is kept, so how far the replicas happened to be
  // when it looked does not matter.
  static const std::regex progress(R"(^[a-z0-9-]+: \d+/\d+ ready\b.*)");
  static const std::regex replica_line(R"(^ [a-z0-9<>-]+: .*)");  // ids are <id> by now
  std::vector<std::string> collapsed;
  for (size_t i = 0; i < out.size();) {
    if (!std::regex_match(out[i], progress)) {
      collapsed.push_back(out[i++]);
      continue;
    }
    size_t end = i + 1;
    while (end < out.size() && std::regex_match(out[end], replica_line)) ++end;
    bool superseded = end < out.size() && std::regex_match(out[end], progress);
    if (!superseded) collapsed.insert(collapsed.end(), out.begin() + i, out.begin() + end);
    i = end;
  }
  return collapsed;
}

std::string joined(const std::vector<std::string>& lines) {
  std::string text;
  for (const auto& line : lines) text += "  " + line + "\n";
  return text;
}

// A `nebula up` stopped with SIGTERM (so it stops its engines) when the test ends.
struct Server {
  Server(std::vector<std::string> argv, const std::string& log) : process(argv, log) {}
  ~Server() { process.stop(SIGTERM, 30s); }
  Child process;
};

class Tour {
 public:
  Tour() {
    port_ = testing::free_port();
    data_dir_ = temp_.path() + "/data";
    server_ = "http://127.0.0.1:" + std::to_string(port_);
    // The tour's server: `make run` (node named vm, as in the README's capture).
    servers_.push_back(std::make_unique<Server>(
        std::vector<std::string>{NEBULA_BINARY, "up", "--listen", "127.0.0.1:" + std::to_string(port_), "--data-dir",
                                 data_dir_, "--sim-gpus", "1xH100-80GB", "--name", "vm", "--demo",
                                 "llama-3.1-8b-instruct", "--log-level", "warn", "--exit-with-parent"},
        temp_.path() + "/up.log"));
    substitutions_.push_back({"localhost:8080", "127.0.0.1:" + std::to_string(port_)});
  }

  bool demo_ready() {
    return eventually(
        [&] {
          auto answer = client_.request("GET", server_ + "/api/v1/deployments/demo");
          auto parsed = answer && answer->status == 200 ? parse_json(answer->body) : Result<json>(json());
          return parsed && parsed->is_object() && (*parsed)["status"].is_object() &&
                 (*parsed)["status"].value("ready_replicas", 0) == 1;
        },
        60s);
  }

  std::string log() { return slurp(temp_.path() + "/up.log"); }

  void run(const Step& step) {
    std::string command = step.command;
    bool last_lines = false;
    if (size_t comment = command.find("  #"); comment != std::string::npos) {
      last_lines = command.find("last lines", comment) != std::string::npos;
      command.erase(comment);
    }
    command = substitute(command);
    // In a terminal curl shows no progress meter; here its output is a file, so ask for none.
    if (command.rfind("curl ", 0) == 0) command.insert(4, " -sS");
    std::vector<std::string> expected;
    for (const auto& line : step.expected) expected.push_back(substitute(line));
    SCOPED_TRACE("README command: $ " + step.command);

    if (command.rfind("nebula up ", 0) == 0) return start_second_server(command, expected);
    // "Bob's third request within a minute": the README shows the answer to the third.
    if (!expected.empty() && expected.front().rfind("HTTP/1.1 429", 0) == 0) {
      for (int i = 0; i < 2; ++i) shell(command);
    }
    bool reads_only = std::regex_search(command, std::regex(R"(^nebula (ls|get|nodes|gpus|events|logs|usage)\b)"));
    std::vector<std::string> want = normalise(expected), got;
    std::string output, why;
    auto matches = [&] {
      output = shell(command);
      got = normalise(split_lines(output));
      why = compare(command, want, got, last_lines);
      return why.empty();
    };
    bool matched = reads_only ? eventually(matches, 15s, 250ms) : matches();
    if (!matched) {
      ADD_FAILURE() << why << "\nREADME shows (normalised):\n"
                    << joined(want) << "the binary printed (normalised):\n"
                    << joined(got) << "the binary printed:\n"
                    << output;
    }
    learn(command, step.expected, output);
  }

 private:
  // Longest first: a README secret holds the README's key id.
  std::string substitute(std::string text) const {
    auto ordered = substitutions_;
    std::stable_sort(ordered.begin(), ordered.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    for (const auto& [from, to] : ordered) text = replace_all(text, from, to);
    return text;
  }

  // Runs a command line with `nebula` on PATH and the CLI pointed at the current server.
  std::string shell(const std::string& command) {
    std::string bin = std::filesystem::path(NEBULA_BINARY).parent_path().string();
    const char* path = std::getenv("PATH");
    auto result =
        testing::run_command({"/bin/sh", "-c", command}, {"PATH=" + bin + ":" + (path ? path : "/usr/bin:/bin"),
                                                          "NEBULA_SERVER=" + server_, "NEBULA_DATA_DIR=" + data_dir_});
    return result.out;
  }

  // "" when got is what the README shows.
  static std::string compare(const std::string& command, const std::vector<std::string>& want,
                             const std::vector<std::string>& got, bool last_lines) {
    if (auto elided = std::find(want.begin(), want.end(), "..."); elided != want.end()) {
      std::vector<std::string> head(want.begin(), elided), tail(elided + 1, want.end());
      if (got.size() < head.size() + tail.size()) return "shorter than the README's opening and closing lines";
      if (!std::equal(head.begin(), head.end(), got.begin())) return "the opening lines differ";
      if (!std::equal(tail.begin(), tail.end(), got.end() - static_cast<std::ptrdiff_t>(tail.size()))) {
        return "the closing lines differ";
      }
      return "";
    }
    if (command.rfind("curl ", 0) == 0 && command.find(" -i ") != std::string::npos) {
      // The README's lines, in order, among the printed ones (it leaves some headers out).
      auto at = got.begin();
      for (const auto& line : want) {
        at = std::find(at, got.end(), line);
        if (at == got.end()) return "no printed line '" + line + "' (in the README's order)";
      }
      return "";
    }
    if (command.rfind("nebula events", 0) == 0) {
      if (want.empty() || got.empty()) return "no events";
      std::vector<std::string> wanted = want, printed = got;
      if (last_lines) {
        if (printed.size() < wanted.size()) return "fewer events than the README shows";
        printed.erase(printed.begin(), printed.end() - static_cast<std::ptrdiff_t>(wanted.size()));
      } else if (wanted.front() != printed.front()) {
        return "the header differs";
      }
      std::sort(wanted.begin(), wanted.end());
      std::sort(printed.begin(), printed.end());
      return wanted == printed ? "" : "other events (compared as a set: same-millisecond events have no order)";
    }
    return want == got ? "" : "the output differs";
  }

  // Secrets and key ids the README names are the ones this run printed, for the commands after.
  void learn(const std::string& command, const std::vector<std::string>& expected, const std::string& output) {
    static const std::regex id(R"(key ([a-z0-9]{8}) created)"), secret(R"(nb-[a-z0-9]{8}_[0-9a-f]{32})");
    std::smatch readme_match, printed_match;
    std::string readme = joined(expected);
    if (std::regex_search(readme, readme_match, id) && std::regex_search(output, printed_match, id)) {
      substitutions_.push_back({readme_match[1].str(), printed_match[1].str()});
    }
    if (std::regex_search(readme, readme_match, secret) && std::regex_search(output, printed_match, secret)) {
      substitutions_.push_back({readme_match[0].str(), printed_match[0].str()});
    }
  }

  void start_second_server(const std::string& command, const std::vector<std::string>& expected) {
    std::istringstream words(command);
    std::vector<std::string> argv{NEBULA_BINARY};
    std::string word, readme_listen, readme_dir;
    words >> word;  // nebula
    int port = testing::free_port();
    std::string data_dir = temp_.path() + "/second";
    while (words >> word) {
      if (!argv.empty() && argv.back() == "--listen") {
        readme_listen = word;
        word = "127.0.0.1:" + std::to_string(port);
      } else if (!argv.empty() && argv.back() == "--data-dir") {
        readme_dir = word;
        word = data_dir;
      }
      argv.push_back(word);
    }
    ASSERT_FALSE(readme_listen.empty() || readme_dir.empty()) << "the README's second server names a port and a dir";
    argv.push_back("--exit-with-parent");
    std::string readme_port = readme_listen.substr(readme_listen.rfind(':') + 1);
    substitutions_.push_back({"localhost:" + readme_port, "127.0.0.1:" + std::to_string(port)});
    substitutions_.push_back({readme_listen, "127.0.0.1:" + std::to_string(port)});
    substitutions_.push_back({readme_dir, data_dir});
    std::string log = temp_.path() + "/second.log";
    servers_.push_back(std::make_unique<Server>(argv, log));
    server_ = "http://127.0.0.1:" + std::to_string(port);
    data_dir_ = data_dir;
    ASSERT_TRUE(eventually(
        [&] {
          auto health = client_.request("GET", server_ + "/healthz");
          return health && health->status == 200;
        },
        20s));
    // The README shows the first lines of what it prints, then "...".
    std::vector<std::string> want;
    for (const auto& line : expected) {
      if (line == "...") break;
      want.push_back(substitute(line));
    }
    want = normalise(want);
    std::vector<std::string> got;
    bool printed = eventually(
        [&] {
          got = normalise(split_lines(slurp(log)));
          return got.size() >= want.size() && std::equal(want.begin(), want.end(), got.begin());
        },
        10s);
    EXPECT_TRUE(printed) << "README shows:\n" << joined(want) << "the binary printed:\n" << joined(got);
  }

  testing::TempDir temp_;
  int port_ = 0;
  std::string server_;
  std::string data_dir_;
  std::vector<std::unique_ptr<Server>> servers_;
  std::vector<std::pair<std::string, std::string>> substitutions_;
  http::BlockingClient client_;
};

TEST(ReadmeTour, EveryCommandPrintsWhatTheReadmeShows) {
  if (testing::find_on_path("curl").empty()) GTEST_SKIP() << "the tour uses curl; it is not on PATH";
  std::string readme = slurp(std::string(NEBULA_SOURCE_DIR) + "/README.md");
  auto steps = tour_steps(readme);
  ASSERT_GE(steps.size(), 12u) << "the README's tour was not found";
  Tour tour;
  ASSERT_TRUE(tour.demo_ready()) << tour.log();
  for (const auto& step : steps) {
    tour.run(step);
    if (::testing::Test::HasFatalFailure()) break;
  }
  if (::testing::Test::HasFailure()) std::cerr << "---- nebula up ----\n" << tour.log() << "\n";
}

}  // namespace
}  // namespace nebula
