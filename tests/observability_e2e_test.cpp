// Observability against real processes: every /metrics of ours (server and gateway, agent,
// engine-sim in each dialect) through `promtool check metrics`; a real Prometheus scraping
// `nebula up` with deploy/prometheus's config and rules; the Grafana dashboard's and the rules'
// metric names against what is exported; docs/observability.md against the live exposition.
// The checks are functions returning what is wrong, each also fed bad input, so none of them
// passes by reading nothing.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>

#include "common/json.h"
#include "nebula_fixture.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using testing::bearer;
using testing::Child;
using testing::eventually;
using testing::free_port;
using testing::run_command;
using testing::TempDir;

const std::string kSource = NEBULA_SOURCE_DIR;

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

// ---- The exposition format, as far as these checks need it ----

struct Family {
  std::string type;
  std::string help;
  std::set<std::string> labels;   // label names seen on its samples, `le` aside
  std::set<std::string> samples;  // sample names: the family's, or its _bucket/_sum/_count
};
using Exposition = std::map<std::string, Family>;

// Label names of a sample line's {...}; values may hold escaped quotes, commas and braces.
std::set<std::string> label_names(std::string_view braces) {
  std::set<std::string> names;
  size_t at = 0;
  while (at < braces.size()) {
    size_t equals = braces.find('=', at);
    if (equals == std::string_view::npos) break;
    std::string name(braces.substr(at, equals - at));
    name.erase(0, name.find_first_not_of(", "));
    if (name != "le" && name != "quantile") names.insert(name);
    at = equals + 2;  // past ="
    while (at < braces.size() && braces[at] != '"') at += braces[at] == '\\' ? 2 : 1;
    at += 1;
  }
  return names;
}

Exposition parse_exposition(const std::string& text) {
  Exposition families;
  for (const auto& line : split_lines(text)) {
    if (line.empty()) continue;
    std::istringstream words(line);
    if (line.rfind("# ", 0) == 0) {
      std::string hash, kind, name, rest;
      words >> hash >> kind >> name;
      std::getline(words, rest);
      if (!rest.empty() && rest[0] == ' ') rest.erase(0, 1);
      if (kind == "TYPE") families[name].type = rest;
      if (kind == "HELP") families[name].help = rest;
      continue;
    }
    size_t end = line.find_first_of("{ ");
    std::string sample = line.substr(0, end);
    std::string family = sample;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      std::string_view s(suffix);
      if (!families.count(family) && sample.size() > s.size() && sample.ends_with(s)) {
        family = sample.substr(0, sample.size() - s.size());
      }
    }
    if (!families.count(family)) family = sample;
    families[family].samples.insert(sample);
    if (end != std::string::npos && line[end] == '{') {
      size_t close = line.rfind('}');
      auto names = label_names(std::string_view(line).substr(end + 1, close - end - 1));
      families[family].labels.insert(names.begin(), names.end());
    }
  }
  return families;
}

// Every name a query may use for the families: the family, and a histogram's series.
std::set<std::string> exported_names(const Exposition& families) {
  std::set<std::string> names;
  for (const auto& [name, family] : families) {
    names.insert(name);
    names.insert(family.samples.begin(), family.samples.end());
    if (family.type == "histogram" || family.type == "summary") {
      for (const char* suffix : {"_bucket", "_sum", "_count"}) names.insert(name + suffix);
    }
  }
  return names;
}

// ---- promtool check metrics, with the engines' own names allowed where they break its rules ----

struct Lint {
  std::string name;
  std::string problem;
};

// Runs promtool over an exposition. exit_code: 0 clean, 3 lint problems, 1 unparseable.
std::vector<Lint> promtool_lint(const std::string& text, int& exit_code) {
  TempDir temp;
  write_file(temp.path() + "/metrics.txt", text);
  auto result = run_command({"/bin/sh", "-c", "promtool check metrics < " + temp.path() + "/metrics.txt"});
  exit_code = result.exit_code;
  std::vector<Lint> problems;
  for (const auto& line : split_lines(result.out)) {
    size_t space = line.find(' ');
    if (line.empty() || space == std::string::npos) continue;
    problems.push_back({line.substr(0, space), line.substr(space + 1)});
  }
  return problems;
}

struct Allowed {
  const char* prefix;
  const char* problem;
  const char* reason;
};
// What the engines export under their own names, which clients and our drivers read as the
// engines write them: renaming them here would make the simulator a worse stand-in.
const Allowed kEngineNames[] = {
    {"vllm:", "metric names should not contain ':'", "vLLM's names: the colon is vLLM's"},
    {"sglang:", "metric names should not contain ':'", "SGLang's names"},
    {"llamacpp:", "metric names should not contain ':'", "llama.cpp's names"},
    {"tgi_request_count", "counter metrics should have \"_total\" suffix",
     "TGI's name: its exporter writes counters without _total"},
    {"tgi_request_count", "non-histogram and non-summary metrics should not have \"_count\" suffix",
     "TGI's name, as above"},
    {"tgi_request_success", "counter metrics should have \"_total\" suffix", "TGI's name, as above"},
};

// promtool's findings on text that the allowlist does not excuse, as "name problem" lines.
std::vector<std::string> unexcused_lint(const std::string& text, bool allow_engine_names) {
  int exit_code = -1;
  auto problems = promtool_lint(text, exit_code);
  std::vector<std::string> left;
  if (exit_code != 0 && exit_code != 3) left.push_back("promtool exit " + std::to_string(exit_code));
  for (const auto& lint : problems) {
    bool excused = false;
    for (const auto& allowed : kEngineNames) {
      excused |= allow_engine_names && lint.name.rfind(allowed.prefix, 0) == 0 && lint.problem == allowed.problem;
    }
    if (!excused) left.push_back(lint.name + " " + lint.problem);
  }
  if (exit_code == 3 && problems.empty()) left.push_back("promtool exit 3 without a finding");
  return left;
}

// ---- Metric names in PromQL ----

// The metric names a PromQL expression selects: what is left once label matchers, ranges,
// grouping lists, strings, numbers, functions and keywords are taken out. Grafana's variables
// ($model, $__rate_interval) are dropped.
std::set<std::string> promql_metric_names(const std::string& expr) {
  static const std::set<std::string> kKeywords = {"by", "without",  "and", "or",  "unless",     "bool",        "offset",
                                                  "on", "ignoring", "inf", "nan", "group_left", "group_right", "atan2"};
  std::string text;
  for (size_t i = 0; i < expr.size(); ++i) {
    char c = expr[i];
    if (c == '"' || c == '\'') {  // a string: skipped with its escapes
      for (++i; i < expr.size() && expr[i] != c; ++i) i += expr[i] == '\\';
      text += ' ';
    } else if (c == '{' || c == '[') {
      char close = c == '{' ? '}' : ']';
      for (; i < expr.size() && expr[i] != close; ++i) {
        if (expr[i] == '"') {
          for (++i; i < expr.size() && expr[i] != '"'; ++i) i += expr[i] == '\\';
        }
      }
      text += ' ';
    } else if (c == '$') {
      for (++i; i < expr.size() && (std::isalnum(static_cast<unsigned char>(expr[i])) || expr[i] == '_'); ++i) {
      }
      --i;
      text += ' ';
    } else {
      text += c;
    }
  }
  // Grouping lists: by (...), without (...), on (...), ignoring (...), group_left (...).
  static const std::regex kGrouping(R"(\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\))");
  text = std::regex_replace(text, kGrouping, " ");
  std::set<std::string> names;
  static const std::regex kToken(R"([0-9][0-9a-zA-Z.]*|[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?)");
  for (std::sregex_iterator it(text.begin(), text.end(), kToken), end; it != end; ++it) {
    std::string token = it->str();
    if (std::isdigit(static_cast<unsigned char>(token[0])) || token.back() == '(') continue;
    if (kKeywords.count(token)) continue;
    names.insert(token);
  }
  return names;
}

// Every PromQL expression of the Grafana dashboard with its legend: its panels' targets and the
// metric of each label_values() variable (the label it lists as the legend).
std::vector<std::pair<std::string, std::string>> dashboard_queries(const json& dashboard) {
  std::vector<std::pair<std::string, std::string>> queries;
  std::function<void(const json&)> walk = [&](const json& panels) {
    for (const auto& panel : panels) {
      if (panel.contains("panels")) walk(panel["panels"]);
      for (const auto& target : panel.value("targets", json::array())) {
        if (target.contains("expr")) queries.emplace_back(target["expr"], target.value("legendFormat", ""));
      }
    }
  };
  walk(dashboard.value("panels", json::array()));
  static const std::regex kLabelValues(R"(label_values\(\s*([^,]+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\))");
  for (const auto& variable : dashboard["templating"].value("list", json::array())) {
    if (variable.value("type", "") != "query") continue;
    std::string query =
        variable["query"].is_object() ? variable["query"].value("query", "") : variable["query"].get<std::string>();
    std::smatch match;
    if (std::regex_search(query, match, kLabelValues)) queries.emplace_back(match[1], "{{" + match[2].str() + "}}");
  }
  return queries;
}

struct Rule {
  std::string name;  // the recorded series or the alert
  bool recording = false;
  std::string expr;
  std::string annotations;  // an alert's, concatenated: they may name labels as {{ $labels.x }}
};

std::vector<Rule> read_rules(const std::string& path) {
  std::vector<Rule> rules;
  auto parsed = yaml_to_json(slurp(path));
  if (!parsed) return rules;
  for (const auto& group : (*parsed).value("groups", json::array())) {
    for (const auto& item : group.value("rules", json::array())) {
      Rule rule;
      rule.recording = item.contains("record");
      rule.name = rule.recording ? item["record"].get<std::string>() : item.value("alert", "");
      rule.expr = item.value("expr", "");
      const json* annotations = item.contains("annotations") ? &item["annotations"] : nullptr;
      if (annotations && annotations->is_object()) {
        for (const auto& text : *annotations) rule.annotations += text.get<std::string>() + "\n";
      }
      rules.push_back(rule);
    }
  }
  return rules;
}

// Label names an expression (or a legend, or an annotation) refers to: in label matchers,
// grouping lists, Grafana's {{label}} and Prometheus templates' $labels.label.
std::set<std::string> referenced_labels(const std::string& text) {
  static const std::regex kMatcher(R"(([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*")");
  static const std::regex kGrouping(R"(\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\))");
  static const std::regex kLegend(R"(\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\})");
  static const std::regex kTemplate(R"(\$labels\.([a-zA-Z_][a-zA-Z0-9_]*))");
  static const std::regex kName(R"([a-zA-Z_][a-zA-Z0-9_]*)");
  std::set<std::string> labels;
  for (const auto* pattern : {&kMatcher, &kLegend, &kTemplate}) {
    for (std::sregex_iterator it(text.begin(), text.end(), *pattern), end; it != end; ++it) labels.insert((*it)[1]);
  }
  for (std::sregex_iterator it(text.begin(), text.end(), kGrouping), end; it != end; ++it) {
    std::string list = (*it)[2];
    for (std::sregex_iterator name(list.begin(), list.end(), kName), stop; name != stop; ++name) {
      labels.insert(name->str());
    }
  }
  return labels;
}

// Labels Prometheus adds to every series of a target in deploy/prometheus/prometheus.yml: its
// own, the agent job's `node` and the engines' file_sd labels.
const std::set<std::string> kTargetLabels = {"job", "instance", "node", "deployment", "replica", "engine", "le"};

// What each series name carries: the live families' labels by family and sample name, and then
// each recording rule's, in file order (its grouping list, else the labels of what it reads).
// A family that showed no sample is left out: its labels are unknown.
std::map<std::string, std::set<std::string>> series_labels(const Exposition& live, const std::vector<Rule>& rules) {
  std::map<std::string, std::set<std::string>> labels = {{"up", {}}};
  for (const auto& [name, family] : live) {
    if (family.samples.empty()) continue;
    labels[name] = family.labels;
    for (const auto& sample : family.samples) labels[sample] = family.labels;
  }
  static const std::regex kGroupedBy(R"(\bby\s*\(([^)]*)\))");
  for (const auto& rule : rules) {
    if (!rule.recording) continue;
    std::smatch by;
    std::set<std::string>& recorded = labels[rule.name];
    if (std::regex_search(rule.expr, by, kGroupedBy)) {
      recorded = referenced_labels("by (" + by[1].str() + ")");
      continue;
    }
    for (const auto& name : promql_metric_names(rule.expr)) {
      auto known = labels.find(name);
      if (known != labels.end()) recorded.insert(known->second.begin(), known->second.end());
    }
  }
  return labels;
}

// The labels `text` refers to that no series of `expr` carries, as "label (in text)"; nothing
// when a series' labels are unknown.
std::vector<std::string> unknown_labels(const std::string& expr, const std::string& text,
                                        const std::map<std::string, std::set<std::string>>& labels) {
  std::set<std::string> allowed = kTargetLabels;
  for (const auto& name : promql_metric_names(expr)) {
    auto known = labels.find(name);
    if (known == labels.end()) return {};
    allowed.insert(known->second.begin(), known->second.end());
  }
  std::vector<std::string> unknown;
  for (const auto& label : referenced_labels(text)) {
    if (!allowed.count(label)) unknown.push_back(label + " (in " + text + ")");
  }
  return unknown;
}

// The names expressions use that are neither exported nor recorded, as "name (in expr)".
std::vector<std::string> unknown_names(const std::vector<std::string>& expressions,
                                       const std::set<std::string>& known) {
  std::vector<std::string> unknown;
  for (const auto& expr : expressions) {
    for (const auto& name : promql_metric_names(expr)) {
      if (!known.count(name)) unknown.push_back(name + " (in " + expr + ")");
    }
  }
  return unknown;
}

// ---- docs/observability.md's reference tables ----

struct DocRow {
  std::string type;
  std::set<std::string> labels;
};

// Rows `| \`name\` | type | \`label\`, ... or - | unit | meaning |` of every table.
std::map<std::string, DocRow> documented_metrics(const std::string& markdown) {
  std::map<std::string, DocRow> rows;
  static const std::regex kRow(R"(^\| `([a-zA-Z_:][a-zA-Z0-9_:]*)` \| (counter|gauge|histogram|summary) \| ([^|]*)\|)");
  static const std::regex kLabel("`([a-zA-Z_][a-zA-Z0-9_]*)`");
  for (const auto& line : split_lines(markdown)) {
    std::smatch match;
    if (!std::regex_search(line, match, kRow)) continue;
    DocRow row{match[2], {}};
    std::string labels = match[3];
    for (std::sregex_iterator it(labels.begin(), labels.end(), kLabel), end; it != end; ++it) {
      row.labels.insert((*it)[1]);
    }
    rows[match[1]] = row;
  }
  return rows;
}

// What the docs get wrong about the live families (ours only: nebula_*), and the documented
// metrics that no live exposition has.
std::vector<std::string> doc_mismatches(const std::map<std::string, DocRow>& documented, const Exposition& live) {
  std::vector<std::string> wrong;
  for (const auto& [name, family] : live) {
    if (name.rfind("nebula_", 0) != 0) continue;
    auto row = documented.find(name);
    if (row == documented.end()) {
      wrong.push_back(name + ": not documented");
      continue;
    }
    if (row->second.type != family.type)
      wrong.push_back(name + ": documented as " + row->second.type + ", is " + family.type);
    // Labels are judged where samples show them (a family without samples shows none).
    if (!family.samples.empty() && row->second.labels != family.labels) {
      std::string seen;
      for (const auto& label : family.labels) seen += label + " ";
      wrong.push_back(name + ": documented labels differ from the live ones: " + seen);
    }
  }
  for (const auto& [name, row] : documented) {
    if (!live.count(name)) wrong.push_back(name + ": documented but not exported");
  }
  return wrong;
}

std::string joined(const std::vector<std::string>& lines) {
  std::string text;
  for (const auto& line : lines) text += line + "\n";
  return text;
}

// ---- The checks fed bad input ----

TEST(ObservabilityChecks, PromtoolLintCatchesBrokenExpositions) {
  // A counter without _total, a family without help, a colon in our own name.
  auto bad = unexcused_lint(
      "# TYPE nebula_x counter\nnebula_x 1\n# HELP nebula_sim:y y\n# TYPE nebula_sim:y gauge\n"
      "nebula_sim:y 1\n",
      true);
  EXPECT_GE(bad.size(), 3u) << joined(bad);
  // Text that is not the exposition format at all.
  EXPECT_FALSE(unexcused_lint("garbage{ 1\n", true).empty());
  // An engine's own name is excused only where the allowlist says, and only for engines.
  const std::string vllm = "# HELP vllm:a_total a.\n# TYPE vllm:a_total counter\nvllm:a_total 1\n";
  EXPECT_TRUE(unexcused_lint(vllm, true).empty()) << joined(unexcused_lint(vllm, true));
  EXPECT_FALSE(unexcused_lint(vllm, false).empty());
  EXPECT_FALSE(unexcused_lint("# HELP vllm:a a.\n# TYPE vllm:a counter\nvllm:a 1\n", true).empty());
}

TEST(ObservabilityChecks, PromqlNamesLeaveOutLabelsFunctionsAndVariables) {
  EXPECT_EQ(
      promql_metric_names(
          R"(histogram_quantile(0.9, sum by (le, model) (rate(a_bucket{model=~"$model",x="}b{"}[$__rate_interval]))))"),
      (std::set<std::string>{"a_bucket"}));
  EXPECT_EQ(promql_metric_names("x:y:rate5m > 0.05 and on (model) z_total offset 5m or vector(1)"),
            (std::set<std::string>{"x:y:rate5m", "z_total"}));
  EXPECT_EQ(promql_metric_names("1e-3 * sum without (gpu) (w) / ignoring(a) q"), (std::set<std::string>{"w", "q"}));
  // A name that is not exported is reported with the expression it is in.
  auto unknown = unknown_names({"rate(nebula_requests_total[5m]) / nebula_made_up"}, {"nebula_requests_total"});
  ASSERT_EQ(unknown.size(), 1u);
  EXPECT_EQ(unknown[0].rfind("nebula_made_up (in ", 0), 0u);
}

TEST(ObservabilityChecks, LabelsAreCheckedAgainstTheSeriesOfTheExpression) {
  Exposition live = parse_exposition(
      "# HELP a_total a.\n# TYPE a_total counter\na_total{model=\"m\",status=\"200\"} 1\n"
      "# HELP b b.\n# TYPE b gauge\nb{gpu=\"0\"} 1\n# HELP c_total c.\n# TYPE c_total counter\n");
  std::vector<Rule> rules = {{"model:a:rate5m", true, "sum by (model) (rate(a_total[5m]))", ""},
                             {"x:b:ratio", true, "b / 2", ""}};
  auto labels = series_labels(live, rules);
  EXPECT_EQ(labels["model:a:rate5m"], (std::set<std::string>{"model"}));
  EXPECT_EQ(labels["x:b:ratio"], (std::set<std::string>{"gpu"}));
  EXPECT_TRUE(
      unknown_labels(R"(sum by (status) (a_total{model=~"$m"}))", "{{model}} {{status}} {{instance}}", labels).empty());
  // A label the series do not carry: in a matcher, a grouping list, a legend, an annotation.
  EXPECT_EQ(unknown_labels(R"(a_total{gpu="0"})", R"(a_total{gpu="0"})", labels).size(), 1u);
  EXPECT_EQ(unknown_labels("sum by (gpu) (model:a:rate5m)", "sum by (gpu) (model:a:rate5m)", labels).size(), 1u);
  EXPECT_EQ(unknown_labels("x:b:ratio", "{{model}}", labels).size(), 1u);
  EXPECT_EQ(unknown_labels("x:b:ratio > 1", "GPU {{ $labels.gpu }} of {{ $labels.model }}", labels).size(), 1u);
  // A family with no sample has unknown labels: nothing is judged.
  EXPECT_TRUE(unknown_labels("sum by (anything) (c_total)", "sum by (anything) (c_total)", labels).empty());
}

TEST(ObservabilityChecks, DocsCheckFindsMissingWrongAndStaleRows) {
  Exposition live = parse_exposition(
      "# HELP nebula_a_total a.\n# TYPE nebula_a_total counter\nnebula_a_total{model=\"m\",key=\"k\"} 1\n"
      "# HELP nebula_b b.\n# TYPE nebula_b gauge\nnebula_b 1\n"
      "# HELP nebula_c_seconds c.\n# TYPE nebula_c_seconds histogram\n"
      "nebula_c_seconds_bucket{model=\"x\\\",y\",le=\"+Inf\"} 1\nnebula_c_seconds_sum{model=\"x\\\",y\"} 1\n"
      "nebula_c_seconds_count{model=\"x\\\",y\"} 1\n");
  EXPECT_EQ(live["nebula_c_seconds"].labels, (std::set<std::string>{"model"}));
  EXPECT_EQ(live["nebula_c_seconds"].samples.size(), 3u);
  auto documented = documented_metrics(
      "| `nebula_a_total` | counter | `model`, `key` | requests | ... |\n"
      "| `nebula_b` | counter | - | - | ... |\n"
      "| `nebula_c_seconds` | histogram | `model`, `status` | seconds | ... |\n"
      "| `nebula_gone` | gauge | - | - | ... |\n");
  ASSERT_EQ(documented.size(), 4u);
  auto wrong = doc_mismatches(documented, live);
  EXPECT_EQ(wrong.size(), 3u) << joined(wrong);  // b's type, c's labels, gone
  documented.erase("nebula_b");
  EXPECT_NE(joined(doc_mismatches(documented, live)).find("nebula_b: not documented"), std::string::npos);
}

// ---- Against the real binaries ----

const std::string kChat = R"({"model":"chat","max_tokens":6,"messages":[{"role":"user","content":"hello"}]})";
const std::string kStream =
    R"({"model":"chat","max_tokens":6,"stream":true,"messages":[{"role":"user","content":"hello again"}]})";

// `nebula up --auth keys` with one simulated replica of `chat`, and what its three /metrics say.
class ObservabilityE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    up_ = std::make_unique<testing::NebulaUp>(
        std::vector<std::string>{"--auth", "keys", "--load-scrape-interval", "200ms"});
    ASSERT_TRUE(up_->wait_node_ready()) << up_->process().output();
    admin_ = up_->admin_key();
    auto deployed = up_->cli({"deploy", "chat", "--engine", "sim", "--model", "qwen2.5-0.5b",
                              "--engine-arg=--step-base-ms", "--engine-arg=2", "--wait", "--timeout", "60s"});
    ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
    auto endpoints = up_->endpoints_of("chat");
    ASSERT_EQ(endpoints.size(), 1u);
    engine_ = endpoints[0];
    agent_ = up_->get_json("/api/v1/nodes/e2e-node", admin_)["status"].value("agent_url", "");
    ASSERT_FALSE(agent_.empty());
  }

  // Sends `count` chat requests (streamed every other one); each must succeed.
  void chat(int count) {
    http::BlockingClient client;
    for (int i = 0; i < count; ++i) {
      auto answer =
          client.request("POST", up_->server() + "/v1/chat/completions", i % 2 ? kStream : kChat, bearer(admin_));
      ASSERT_TRUE(answer) << answer.error().message;
      ASSERT_EQ(answer->status, 200) << answer->body;
    }
  }

  std::string get(const std::string& url, const http::Headers& headers = {}) {
    auto answer = client_.request("GET", url, "", headers);
    return answer && answer->status == 200 ? answer->body : "";
  }
  std::string server_metrics() { return get(up_->server() + "/metrics", bearer(admin_)); }
  std::string agent_metrics() { return get(agent_ + "/metrics", testing::agent_credential(up_->data_dir())); }
  std::string engine_metrics() { return get(engine_ + "/metrics"); }

  // Requests served, then every exposition once the conditional families are in: the router's
  // figures after its first read of the engine, the agent's engine gauges after its first.
  void serve_and_read() {
    chat(4);
    ASSERT_TRUE(eventually(
        [&] {
          server_text_ = server_metrics();
          return server_text_.find("nebula_router_engine_kv_cache_usage_ratio{") != std::string::npos &&
                 server_text_.find("nebula_inter_token_latency_seconds_bucket{") != std::string::npos;
        },
        15s))
        << server_text_;
    ASSERT_TRUE(eventually(
        [&] {
          agent_text_ = agent_metrics();
          return agent_text_.find("nebula_engine_prefix_cache_hit_ratio{") != std::string::npos;
        },
        15s))
        << agent_text_;
    engine_text_ = engine_metrics();
    ASSERT_NE(engine_text_.find("vllm:num_requests_running"), std::string::npos) << engine_text_;
  }

  std::unique_ptr<testing::NebulaUp> up_;
  std::string admin_, engine_, agent_;
  std::string server_text_, agent_text_, engine_text_;
  http::BlockingClient client_;
};

// `nebula engine-sim` on its own in a dialect, with one request served.
class EngineSim {
 public:
  EngineSim(const std::string& dialect, std::vector<std::string> extra = {}) {
    port_ = free_port();
    url_ = "http://127.0.0.1:" + std::to_string(port_);
    std::vector<std::string> argv = {NEBULA_BINARY,       "engine-sim", "--port",         std::to_string(port_),
                                     "--dialect",         dialect,      "--model",        "sim-model",
                                     "--startup-seconds", "0",          "--step-base-ms", "1"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    child_ = std::make_unique<Child>(argv, temp_.path() + "/sim.log");
  }
  ~EngineSim() { child_->stop(SIGTERM, 10s); }
  bool serve_one() {
    http::BlockingClient client;
    if (!eventually(
            [&] {
              auto health = client.request("GET", url_ + "/health");
              return health && health->status == 200;
            },
            15s)) {
      return false;
    }
    auto answer = client.request(
        "POST", url_ + "/v1/chat/completions",
        R"({"model":"sim-model","max_tokens":4,"stream":true,"messages":[{"role":"user","content":"hi"}]})");
    return answer && answer->status == 200;
  }
  std::string metrics(const std::string& query = "") {
    http::BlockingClient client;
    auto answer = client.request("GET", url_ + "/metrics" + query);
    return answer && answer->status == 200 ? answer->body : "";
  }
  std::string output() const { return child_->output(); }

 private:
  TempDir temp_;
  int port_ = 0;
  std::string url_;
  std::unique_ptr<Child> child_;
};

TEST_F(ObservabilityE2E, EveryMetricsEndpointPassesPromtool) {
  serve_and_read();
  EXPECT_EQ(joined(unexcused_lint(server_text_, false)), "") << server_text_;
  EXPECT_EQ(joined(unexcused_lint(agent_text_, false)), "") << agent_text_;
  EXPECT_EQ(joined(unexcused_lint(engine_text_, true)), "") << engine_text_;
  // Each family has its help text and a type.
  for (const auto* text : {&server_text_, &agent_text_, &engine_text_}) {
    for (const auto& [name, family] : parse_exposition(*text)) {
      EXPECT_FALSE(family.help.empty()) << name;
      EXPECT_FALSE(family.type.empty()) << name;
    }
  }
}

TEST(ObservabilityEngineSim, EveryDialectPassesPromtoolWithOnlyTheEnginesOwnNamesExcused) {
  for (const std::string dialect : {"vllm", "sglang", "llamacpp", "tgi"}) {
    EngineSim sim(dialect);
    ASSERT_TRUE(sim.serve_one()) << dialect << "\n" << sim.output();
    std::string text = sim.metrics();
    ASSERT_NE(text.find("nebula_sim_steps_total"), std::string::npos) << dialect << "\n" << text;
    EXPECT_EQ(joined(unexcused_lint(text, true)), "") << dialect << "\n" << text;
    // The simulator's own names pass without any excuse.
    std::string own;
    for (const auto& line : split_lines(text)) {
      if (line.find("nebula_sim") != std::string::npos) own += line + "\n";
    }
    EXPECT_EQ(joined(unexcused_lint(own, false)), "") << dialect << "\n" << own;
  }
  // llama-server's router answers /metrics for a model it names.
  EngineSim router("llamacpp", {"--router"});
  ASSERT_TRUE(router.serve_one()) << router.output();
  std::string text = router.metrics("?model=sim-model");
  ASSERT_NE(text.find("llamacpp:requests_processing"), std::string::npos) << text;
  EXPECT_EQ(joined(unexcused_lint(text, true)), "") << text;
}

TEST_F(ObservabilityE2E, DocsListEveryMetricWithItsTypeAndLabels) {
  serve_and_read();
  std::string markdown = slurp(kSource + "/docs/observability.md");
  auto documented = documented_metrics(markdown);
  ASSERT_GT(documented.size(), 20u);
  Exposition live = parse_exposition(server_text_);
  for (const auto& [name, family] : parse_exposition(agent_text_)) live[name] = family;
  for (const auto& [name, family] : parse_exposition(engine_text_)) {
    if (name.rfind("nebula_", 0) == 0) live[name] = family;
  }
  EXPECT_EQ(joined(doc_mismatches(documented, live)), "");
}

TEST_F(ObservabilityE2E, DashboardAndRulesUseExportedNamesAndLabels) {
  serve_and_read();
  Exposition live;
  std::set<std::string> known = {"up"};  // Prometheus' own, per target
  for (const auto* text : {&server_text_, &agent_text_, &engine_text_}) {
    auto families = parse_exposition(*text);
    auto names = exported_names(families);
    known.insert(names.begin(), names.end());
    live.insert(families.begin(), families.end());
  }
  auto rules = read_rules(kSource + "/deploy/prometheus/nebula.rules.yml");
  ASSERT_GE(rules.size(), 10u);
  std::vector<std::string> rule_expressions;
  for (const auto& rule : rules) {
    rule_expressions.push_back(rule.expr);
    if (rule.recording) known.insert(rule.name);
  }
  EXPECT_EQ(joined(unknown_names(rule_expressions, known)), "");
  auto labels = series_labels(live, rules);
  EXPECT_EQ(labels["model:nebula_request_errors:ratio_rate5m"], (std::set<std::string>{"model"}));
  std::vector<std::string> wrong_labels;
  for (const auto& rule : rules) {
    for (const auto& text : {rule.expr, rule.annotations}) {
      auto unknown = unknown_labels(rule.expr, text, labels);
      wrong_labels.insert(wrong_labels.end(), unknown.begin(), unknown.end());
    }
  }

  auto dashboard = parse_json(slurp(kSource + "/deploy/grafana/nebula.json"));
  ASSERT_TRUE(dashboard) << dashboard.error().message;
  auto queries = dashboard_queries(*dashboard);
  ASSERT_GE(queries.size(), 20u);
  std::vector<std::string> expressions;
  for (const auto& [expr, legend] : queries) {
    expressions.push_back(expr);
    for (const auto& text : {expr, legend}) {
      auto unknown = unknown_labels(expr, text, labels);
      wrong_labels.insert(wrong_labels.end(), unknown.begin(), unknown.end());
    }
  }
  EXPECT_EQ(joined(unknown_names(expressions, known)), "");
  EXPECT_EQ(joined(wrong_labels), "");
  // The subjects the dashboard is for, each in some query.
  std::set<std::string> used;
  for (const auto& expr : expressions) {
    auto names = promql_metric_names(expr);
    used.insert(names.begin(), names.end());
  }
  for (const char* name : {"nebula_requests_total", "model:nebula_request_errors:ratio_rate5m",
                           "nebula_time_to_first_token_seconds_bucket", "nebula_inter_token_latency_seconds_bucket",
                           "nebula_completion_tokens_total", "nebula_queue_depth", "nebula_gpu_memory_used_bytes",
                           "nebula_gpu_utilization_ratio", "nebula_engine_kv_cache_usage_ratio"}) {
    EXPECT_TRUE(used.count(name)) << name;
  }
}

// ---- A real Prometheus ----

std::string url_encode(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", c);
      out += hex;
    }
  }
  return out;
}

TEST_F(ObservabilityE2E, PrometheusScrapesNebulaUpWithTheDeployConfigAndRules) {
  if (testing::find_on_path("prometheus").empty()) GTEST_SKIP() << "prometheus is not installed (scripts/install-deps)";
  // deploy/prometheus/ as shipped, with this run's targets, intervals of 1 s and its credentials.
  TempDir temp;
  const std::string dir = temp.path();
  std::filesystem::create_directories(dir + "/nebula");
  std::filesystem::copy_file(kSource + "/deploy/prometheus/nebula.rules.yml", dir + "/nebula.rules.yml");
  write_file(dir + "/nebula/admin.key", admin_ + "\n");
  // The agent's credential made as docs/observability.md says, and it is the one the server uses.
  auto token = run_command(
      {"/bin/sh", "-c",
       "tr -d '\\n' < " + up_->data_dir() + "/node.key | sha256sum | cut -d' ' -f1 > " + dir + "/nebula/gpu-1.token"});
  ASSERT_EQ(token.exit_code, 0) << token.out;
  EXPECT_EQ("Bearer " + slurp(dir + "/nebula/gpu-1.token"),
            testing::agent_credential(up_->data_dir()).at(0).value + "\n");
  auto targets = run_command({kSource + "/scripts/prometheus-targets", up_->server(), dir + "/nebula/engines.json"},
                             {"NEBULA_API_KEY=" + admin_});
  ASSERT_EQ(targets.exit_code, 0) << targets.out;
  auto engines = parse_json(slurp(dir + "/nebula/engines.json"));
  ASSERT_TRUE(engines && engines->size() == 1) << slurp(dir + "/nebula/engines.json");
  EXPECT_EQ((*engines)[0]["labels"]["deployment"], "chat");
  EXPECT_EQ((*engines)[0]["targets"][0], engine_.substr(std::string("http://").size()));

  auto config = yaml_to_json(slurp(kSource + "/deploy/prometheus/prometheus.yml"));
  ASSERT_TRUE(config) << config.error().message;
  (*config)["global"]["scrape_interval"] = "1s";
  (*config)["global"]["evaluation_interval"] = "1s";
  std::set<std::string> jobs;
  for (auto& job : (*config)["scrape_configs"]) {
    std::string name = job["job_name"];
    jobs.insert(name);
    if (name == "nebula") job["static_configs"][0]["targets"][0] = up_->server().substr(std::string("http://").size());
    if (name == "nebula-agent-gpu-1")
      job["static_configs"][0]["targets"][0] = agent_.substr(std::string("http://").size());
    if (job.contains("file_sd_configs")) job["file_sd_configs"][0]["refresh_interval"] = "1s";
  }
  ASSERT_EQ(jobs, (std::set<std::string>{"nebula", "nebula-agent-gpu-1", "nebula-engine"}));
  write_file(dir + "/prometheus.yml", config->dump(2));  // JSON is YAML
  auto checked = run_command({"promtool", "check", "config", dir + "/prometheus.yml"});
  ASSERT_EQ(checked.exit_code, 0) << checked.out;

  int port = free_port();
  const std::string prometheus = "http://127.0.0.1:" + std::to_string(port);
  Child server({testing::find_on_path("prometheus"), "--config.file=" + dir + "/prometheus.yml",
                "--storage.tsdb.path=" + dir + "/data", "--web.listen-address=127.0.0.1:" + std::to_string(port)},
               dir + "/prometheus.log");
  auto api = [&](const std::string& path) -> json {
    auto answer = client_.request("GET", prometheus + path, "", {}, 5s);
    if (!answer || answer->status != 200) return json();
    auto body = parse_json(answer->body);
    return body ? (*body)["data"] : json();
  };
  auto query = [&](const std::string& promql) -> double {
    json data = api("/api/v1/query?query=" + url_encode(promql));
    if (!data.is_object() || data["result"].empty()) return -1;
    return std::stod(data["result"][0]["value"][1].get<std::string>());
  };

  // Every target up: the credentials work.
  json active;
  ASSERT_TRUE(eventually(
      [&] {
        active = api("/api/v1/targets")["activeTargets"];
        if (!active.is_array() || active.size() != 3) return false;
        for (const auto& target : active) {
          if (target["health"] != "up") return false;
        }
        return true;
      },
      60s))
      << active.dump(2) << "\n"
      << server.output();

  // One request the scrapes have seen (a series' first sample is no increase to rate()), then N
  // more: the scraped counters say N more, the gateway's and the engine's own.
  chat(1);
  double before = -1;
  ASSERT_TRUE(eventually(
      [&] { return (before = query(R"(sum(nebula_requests_total{model="chat",status="200"}))")) == 1; }, 30s))
      << before;
  ASSERT_TRUE(eventually([&] { return query(R"(sum(vllm:request_success_total{job="nebula-engine"}))") == 1; }, 30s));
  chat(7);
  double counted = -1, engine_counted = -1;
  EXPECT_TRUE(eventually(
      [&] { return (counted = query(R"(sum(nebula_requests_total{model="chat",status="200"}))")) == before + 7; }, 30s))
      << counted << " after " << before;
  EXPECT_TRUE(eventually(
      [&] {
        return (engine_counted = query(R"(sum(vllm:request_success_total{job="nebula-engine",deployment="chat"}))")) ==
               before + 7;
      },
      30s))
      << engine_counted;
  EXPECT_TRUE(eventually([&] { return query(R"(count(up{job=~"nebula.*"} == 1))") == 3; }, 30s));
  EXPECT_EQ(query(R"(max(nebula_engine_up{job="nebula-agent-gpu-1",deployment="chat",node="gpu-1"}))"), 1);

  // The recording rules evaluate on the scraped data, and every rule is healthy.
  EXPECT_TRUE(eventually([&] { return query(R"(model:nebula_requests:rate5m{model="chat"})") > 0; }, 30s));
  EXPECT_TRUE(eventually([&] { return query(R"(model:nebula_request_errors:ratio_rate5m{model="chat"})") == 0; }, 30s));
  json groups;
  EXPECT_TRUE(eventually(
      [&] {
        groups = api("/api/v1/rules")["groups"];
        if (!groups.is_array() || groups.size() != 2) return false;
        for (const auto& group : groups) {
          for (const auto& rule : group["rules"]) {
            if (rule["health"] != "ok") return false;
          }
        }
        return true;
      },
      30s))
      << groups.dump(2);
  // On a healthy cluster no alert is even pending (an alert is pending from the first evaluation
  // its expression holds), save NebulaTargetDown: on a loaded machine a scrape may miss its 1 s.
  json alerts = api("/api/v1/alerts")["alerts"];
  ASSERT_TRUE(alerts.is_array());
  for (const auto& alert : alerts) EXPECT_EQ(alert["labels"]["alertname"], "NebulaTargetDown") << alert.dump(2);
  EXPECT_EQ(server.stop(SIGTERM, 30s), 0) << server.output();
}

TEST(ObservabilityDeploy, PromtoolChecksTheConfigAndRulesAndRejectsBrokenOnes) {
  TempDir temp;
  const std::string dir = temp.path();
  std::filesystem::copy(kSource + "/deploy/prometheus", dir);
  // The credentials the config names exist on a real install; placeholders here.
  std::filesystem::create_directories(dir + "/nebula");
  write_file(dir + "/nebula/admin.key", "nb-placeholder\n");
  write_file(dir + "/nebula/gpu-1.token", "0\n");
  auto checked = run_command({"promtool", "check", "config", dir + "/prometheus.yml"});
  EXPECT_EQ(checked.exit_code, 0) << checked.out;
  auto rules = run_command({"promtool", "check", "rules", dir + "/nebula.rules.yml"});
  EXPECT_EQ(rules.exit_code, 0) << rules.out;
  auto tested = run_command({"promtool", "test", "rules", dir + "/nebula.rules.test.yml"});
  EXPECT_EQ(tested.exit_code, 0) << tested.out;

  // A rule that does not parse, and alert thresholds moved: the checks and unit tests fail.
  std::string original = slurp(dir + "/nebula.rules.yml");
  write_file(dir + "/nebula.rules.yml", original + "      - alert: Broken\n        expr: sum(rate(x[5m]) by\n");
  EXPECT_NE(run_command({"promtool", "check", "rules", dir + "/nebula.rules.yml"}).exit_code, 0);
  EXPECT_NE(run_command({"promtool", "check", "config", dir + "/prometheus.yml"}).exit_code, 0);
  for (const auto& [from, to] :
       std::vector<std::pair<std::string, std::string>>{{"> 0.95", "> 0.85"},
                                                        {"for: 2m", "for: 1m"},
                                                        {"> 0.05 and", "> 0.5 and"},
                                                        {"nebula_queue_depth >= 5", "nebula_queue_depth >= 50"}}) {
    std::string changed = original;
    size_t at = changed.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    changed.replace(at, from.size(), to);
    write_file(dir + "/nebula.rules.yml", changed);
    EXPECT_NE(run_command({"promtool", "test", "rules", dir + "/nebula.rules.test.yml"}).exit_code, 0) << from;
  }
}

TEST(ObservabilityDeploy, TargetsScriptRefusesBadArgumentsAndAnUnreachableServer) {
  TempDir temp;
  EXPECT_EQ(run_command({kSource + "/scripts/prometheus-targets"}).exit_code, 2);
  auto unreachable = run_command({kSource + "/scripts/prometheus-targets",
                                  "http://127.0.0.1:" + std::to_string(free_port()), temp.path() + "/engines.json"});
  EXPECT_NE(unreachable.exit_code, 0);
  EXPECT_FALSE(std::filesystem::exists(temp.path() + "/engines.json"));  // nothing half-written
  EXPECT_TRUE(std::filesystem::is_empty(temp.path())) << "a temporary file was left behind";
}

}  // namespace
}  // namespace nebula
