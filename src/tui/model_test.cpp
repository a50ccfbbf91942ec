#include "tui/model.h"

#include <gtest/gtest.h>

namespace nebula::tui {
namespace {

using namespace std::chrono_literals;

api::Deployment deployment(const std::string& name, int desired, int ready) {
  api::Deployment value;
  value.metadata.name = name;
  value.spec.model = "llama-3.1-8b-instruct";
  value.spec.replicas = desired;
  value.status.ready_replicas = ready;
  value.status.phase = ready == desired ? "Ready" : "Progressing";
  return value;
}

api::Node node(const std::string& name, int gpus) {
  api::Node value;
  value.metadata.name = name;
  value.status.ready = true;
  for (int index = gpus - 1; index >= 0; --index) {
    api::Gpu gpu;
    gpu.index = index;
    gpu.name = "H100-80GB";
    gpu.memory_total_mb = 81920;
    gpu.memory_used_mb = 1024 * (index + 1);
    value.status.gpus.push_back(gpu);
  }
  return value;
}

api::Replica replica(const std::string& name, const std::string& on_node, int gpu) {
  api::Replica value;
  value.metadata.name = name;
  value.spec.node = on_node;
  value.spec.gpus = {gpu};
  return value;
}

api::Mode mode(const std::string& name, bool active) {
  api::Mode value;
  value.metadata.name = name;
  value.deployments = {"a"};
  value.active = active;
  return value;
}

GatewayCounters requests(double count, double tokens) {
  GatewayCounters counters;
  counters.requests = count;
  counters.completion_tokens = tokens;
  return counters;
}

class TuiModel : public ::testing::Test {
 protected:
  void SetUp() override {
    model_.set_deployments({deployment("beta", 2, 2), deployment("alpha", 3, 1), deployment("gamma", 1, 1)});
  }
  KeyResult keys(std::initializer_list<int> pressed) {
    KeyResult last;
    for (int key : pressed) last = model_.handle_key(key);
    return last;
  }
  std::vector<std::string> order() const {
    std::vector<std::string> names;
    for (const auto& row : model_.deployment_rows()) names.push_back(row.name);
    return names;
  }
  Model model_{"http://127.0.0.1:8080"};
};

TEST_F(TuiModel, GpuRowsPerNodeWithTheirReplicas) {
  model_.set_nodes({node("n2", 0), node("n1", 2)});
  model_.put_replica(replica("alpha-1", "n1", 1));
  auto stopping = replica("alpha-2", "n1", 1);
  stopping.spec.stop = true;
  model_.put_replica(stopping);
  auto rows = model_.gpu_rows();
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].node, "n1");
  EXPECT_EQ(rows[0].node_state, "Ready");
  EXPECT_EQ(rows[0].index, 0);  // sorted by index
  EXPECT_TRUE(rows[0].replicas.empty());
  EXPECT_EQ(rows[1].node, "");                                       // the node's name only on its first GPU
  EXPECT_EQ(rows[1].replicas, std::vector<std::string>{"alpha-1"});  // not the one stopping
  EXPECT_EQ(rows[2].node, "n2");
  EXPECT_FALSE(rows[2].has_gpu);
  model_.remove_node("n1");
  EXPECT_EQ(model_.gpu_rows().size(), 1u);
}

TEST_F(TuiModel, WatchChangesReplaceAndRemove) {
  model_.put_deployment(deployment("alpha", 3, 3));
  model_.remove_deployment("gamma");
  auto rows = model_.deployment_rows();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].ready, 3);
  // A fresh listing forgets what it does not have.
  model_.set_deployments({deployment("delta", 1, 0)});
  EXPECT_EQ(order(), std::vector<std::string>{"delta"});
}

TEST_F(TuiModel, SortsByEachColumnAndReverses) {
  EXPECT_EQ(order(), (std::vector<std::string>{"alpha", "beta", "gamma"}));
  auto start = std::chrono::steady_clock::time_point{} + 100s;
  model_.set_metrics({{"alpha", requests(0, 0)}, {"beta", requests(0, 0)}, {"gamma", requests(0, 0)}}, start);
  model_.set_metrics({{"alpha", requests(2, 10)}, {"beta", requests(10, 5)}, {"gamma", requests(6, 50)}}, start + 2s);
  keys({'o'});
  EXPECT_EQ(model_.sort_key(), SortKey::Ready);
  EXPECT_EQ(order(), (std::vector<std::string>{"alpha", "beta", "gamma"}));  // 1/3, then ties by name
  keys({'o'});
  EXPECT_EQ(model_.sort_key(), SortKey::RequestRate);
  EXPECT_EQ(order(), (std::vector<std::string>{"alpha", "gamma", "beta"}));
  keys({'O'});
  EXPECT_EQ(order(), (std::vector<std::string>{"beta", "gamma", "alpha"}));
  EXPECT_DOUBLE_EQ(model_.deployment_rows()[0].figures->requests_per_s, 5);
  keys({'o', 'o'});
  EXPECT_EQ(model_.sort_key(), SortKey::TokenRate);
  EXPECT_EQ(order(), (std::vector<std::string>{"gamma", "alpha", "beta"}));
  keys({'o', 'o'});
  EXPECT_EQ(model_.sort_key(), SortKey::Name);
  EXPECT_EQ(order(), (std::vector<std::string>{"gamma", "beta", "alpha"}));
}

TEST_F(TuiModel, RatesAreOverTheLastFiveSeconds) {
  auto start = std::chrono::steady_clock::time_point{} + 100s;
  model_.set_metrics({{"alpha", requests(0, 0)}}, start);
  EXPECT_EQ(model_.deployment_rows()[0].figures->requests_per_s, 0);  // one scrape: no rate yet
  EXPECT_FALSE(model_.deployment_rows()[1].figures->ttft_p50_s);      // no series: zeros, no TTFT
  for (int second = 1; second <= 8; ++second) {
    model_.set_metrics({{"alpha", requests(10.0 * second, 0)}}, start + std::chrono::seconds(second));
  }
  // Against the scrape 5 s back: 50 requests in 5 s.
  EXPECT_DOUBLE_EQ(model_.deployment_rows()[0].figures->requests_per_s, 10);
  // A deployment that appears later counts from zero.
  model_.set_metrics({{"alpha", requests(90, 0)}, {"beta", requests(5, 0)}}, start + 9s);
  EXPECT_DOUBLE_EQ(model_.deployment_rows()[1].figures->requests_per_s, 1);
}

TEST_F(TuiModel, SelectionFollowsTheNameAndStopsAtTheEnds) {
  EXPECT_EQ(model_.selected_deployment(), "alpha");
  keys({keys::kDown, keys::kDown, keys::kDown});
  EXPECT_EQ(model_.selected_deployment(), "gamma");
  keys({keys::kUp});
  EXPECT_EQ(model_.selected_deployment(), "beta");
  keys({'O'});  // reversed: the selection stays on beta
  EXPECT_EQ(model_.selected_deployment(), "beta");
  model_.remove_deployment("beta");  // gone: the first row
  EXPECT_EQ(model_.selected_deployment(), "gamma");
  model_.set_deployments({});
  EXPECT_EQ(model_.selected_deployment(), "");
  EXPECT_FALSE(keys({'r'}).command);
  EXPECT_TRUE(model_.message_is_error());
}

TEST_F(TuiModel, TabMovesBetweenPanes) {
  EXPECT_EQ(model_.focus(), Pane::Deployments);
  keys({keys::kTab});
  EXPECT_EQ(model_.focus(), Pane::Events);
  keys({keys::kTab});
  EXPECT_EQ(model_.focus(), Pane::Nodes);
  keys({keys::kBackTab});
  EXPECT_EQ(model_.focus(), Pane::Events);
  // Up and down scroll a pane that is not the deployments'.
  keys({keys::kDown});
  EXPECT_EQ(model_.selected_deployment(), "alpha");
}

TEST_F(TuiModel, ScaleUpNeedsNoConfirmation) {
  EXPECT_FALSE(keys({'s'}).command);
  EXPECT_EQ(model_.dialog(), Dialog::ScaleInput);
  keys({'x', '5', 'q'});  // only digits are typed; q does not quit here
  EXPECT_EQ(model_.input(), "5");
  auto result = keys({keys::kEnter});
  ASSERT_TRUE(result.command);
  EXPECT_EQ(result.command->kind, Command::Kind::Scale);
  EXPECT_EQ(result.command->target, "alpha");
  EXPECT_EQ(result.command->replicas, 5);
  EXPECT_EQ(model_.dialog(), Dialog::None);
  model_.command_finished({*result.command, true, "", {}});
  EXPECT_EQ(model_.message(), "alpha scaled to 5");
}

TEST_F(TuiModel, ScaleDownAsksAndCanBeRefused) {
  keys({'s', '1', keys::kEnter});
  EXPECT_EQ(model_.dialog(), Dialog::Confirm);
  EXPECT_EQ(model_.confirm_question(), "Scale alpha down from 3 to 1 replica?");
  EXPECT_FALSE(keys({'n'}).command);
  EXPECT_EQ(model_.dialog(), Dialog::None);
  EXPECT_EQ(model_.message(), "Scale alpha down from 3 to 1 replica: cancelled");
  auto accepted = keys({'s', '0', keys::kEnter, 'y'});
  ASSERT_TRUE(accepted.command);
  EXPECT_EQ(accepted.command->replicas, 0);
}

TEST_F(TuiModel, ScaleInputRefusesTooManyAndCancels) {
  keys({'s', '5', '0', '0', '0', '0'});
  EXPECT_EQ(model_.input(), "5000");  // four digits at most
  EXPECT_FALSE(keys({keys::kEnter}).command);
  EXPECT_EQ(model_.dialog(), Dialog::ScaleInput);
  EXPECT_TRUE(model_.message_is_error());
  keys({keys::kBackspace, keys::kBackspace, keys::kBackspace, keys::kBackspace});
  EXPECT_EQ(model_.input(), "");
  EXPECT_FALSE(keys({keys::kEnter}).command);  // empty: cancelled
  EXPECT_EQ(model_.dialog(), Dialog::None);
  keys({'s', '7', keys::kEscape});
  EXPECT_EQ(model_.dialog(), Dialog::None);
  EXPECT_EQ(model_.message(), "scale cancelled");
}

TEST_F(TuiModel, RestartOnlyAfterYes) {
  EXPECT_FALSE(keys({'r'}).command);
  EXPECT_EQ(model_.confirm_question(), "Restart alpha?");
  EXPECT_FALSE(keys({keys::kEnter}).command);  // Enter is not yes
  auto result = keys({'r', 'Y'});
  ASSERT_TRUE(result.command);
  EXPECT_EQ(result.command->kind, Command::Kind::Restart);
  model_.command_finished({*result.command, false, "deployment 'alpha' not found", {}});
  EXPECT_TRUE(model_.message_is_error());
  EXPECT_EQ(model_.message(), "restart alpha failed: deployment 'alpha' not found");
}

TEST_F(TuiModel, SleepOnlyAfterYesAndWakeAtOnce) {
  // Awake: z asks first; anything but y cancels.
  EXPECT_FALSE(keys({'z'}).command);
  EXPECT_EQ(model_.confirm_question(), "Sleep alpha?");
  EXPECT_FALSE(keys({'n'}).command);
  EXPECT_EQ(model_.message(), "Sleep alpha: cancelled");
  auto result = keys({'z', 'y'});
  ASSERT_TRUE(result.command);
  EXPECT_EQ(result.command->kind, Command::Kind::Sleep);
  EXPECT_EQ(result.command->target, "alpha");
  model_.command_finished({*result.command, true, "", {}});
  EXPECT_EQ(model_.message(), "alpha: going to sleep (a request or z wakes it)");
  model_.command_finished({*result.command, false, "deployment alpha has 0 replicas", {}});
  EXPECT_TRUE(model_.message_is_error());
  EXPECT_EQ(model_.message(), "sleep alpha failed: deployment alpha has 0 replicas");

  // Asleep (as the watch reports it): z wakes it, without asking.
  auto asleep = deployment("alpha", 3, 0);
  asleep.status.idle_since_ms = 1000;
  asleep.status.sleep_requested_ms = 900;
  asleep.status.phase = "Idle";
  model_.set_deployments({deployment("beta", 2, 2), asleep});
  ASSERT_EQ(model_.selected_deployment(), "alpha");
  auto wake = keys({'z'});
  ASSERT_TRUE(wake.command);
  EXPECT_EQ(wake.command->kind, Command::Kind::Wake);
  EXPECT_EQ(model_.dialog(), Dialog::None);
  model_.command_finished({*wake.command, true, "", {}});
  EXPECT_EQ(model_.message(), "alpha: waking");
}

TEST_F(TuiModel, ModeSwitchShowsTheDryRunFirst) {
  EXPECT_EQ(keys({'m'}).command, std::nullopt);
  EXPECT_EQ(model_.dialog(), Dialog::None);  // no modes
  model_.set_modes({mode("night", false), mode("day", true)});
  keys({'m'});
  EXPECT_EQ(model_.dialog(), Dialog::ModeList);
  EXPECT_EQ(model_.mode_selection(), 0u);  // "day", the active one, sorted first
  auto dry_run = keys({keys::kDown, keys::kEnter});
  ASSERT_TRUE(dry_run.command);
  EXPECT_EQ(dry_run.command->kind, Command::Kind::ModeDryRun);
  EXPECT_EQ(dry_run.command->target, "night");
  EXPECT_EQ(model_.dialog(), Dialog::ModePlanWaiting);
  SwitchPlan plan;
  plan.started = {"b"};
  plan.stopped = {"a"};
  model_.command_finished({*dry_run.command, true, "", plan});
  EXPECT_EQ(model_.dialog(), Dialog::Confirm);
  EXPECT_EQ(model_.confirm_question(), "Switch to mode night?");
  EXPECT_EQ(model_.confirm_details()[0], "stop:  a");
  EXPECT_EQ(model_.confirm_details()[1], "start: b");
  auto switched = keys({'y'});
  ASSERT_TRUE(switched.command);
  EXPECT_EQ(switched.command->kind, Command::Kind::ModeSwitch);
  EXPECT_EQ(model_.progress(), "switching to night...");
  auto night = mode("night", false);
  night.switching.phase = "Releasing";
  model_.set_modes({night, mode("day", true)});
  EXPECT_EQ(model_.progress(), "switching to night: Releasing");
  plan.duration_ms = 2500;
  model_.command_finished({*switched.command, true, "", plan});
  EXPECT_EQ(model_.progress(), "");
  EXPECT_EQ(model_.message(), "switched to night in 2.5s: started b; stopped a");
}

TEST_F(TuiModel, ADryRunThatFailsSaysWhy) {
  model_.set_modes({mode("night", false)});
  auto dry_run = keys({'m', keys::kEnter});
  model_.command_finished({*dry_run.command, false, "the incoming set does not fit", {}});
  EXPECT_EQ(model_.dialog(), Dialog::None);
  EXPECT_EQ(model_.message(), "cannot switch to night: the incoming set does not fit");
}

TEST_F(TuiModel, LogsFollowTheSelectedDeploymentAndClose) {
  auto opened = keys({'l'});
  ASSERT_TRUE(opened.command);
  EXPECT_EQ(opened.command->kind, Command::Kind::FollowLogs);
  uint64_t stream = opened.command->stream;
  model_.append_log(stream, "first line\nsecond ");
  model_.append_log(stream, "half\r\n\x1b[31mred\x1b[0m\n");
  model_.append_log(stream + 99, "another stream's text\n");
  ASSERT_TRUE(model_.logs());
  EXPECT_EQ(model_.logs()->lines, (std::deque<std::string>{"first line", "second half", "?[31mred?[0m"}));
  // Another deployment's logs replace them.
  auto other = keys({keys::kDown, 'l'});
  ASSERT_TRUE(other.command);
  EXPECT_EQ(other.command->target, "beta");
  EXPECT_NE(other.command->stream, stream);
  model_.append_log(stream, "late text of the old stream\n");
  EXPECT_TRUE(model_.logs()->lines.empty());
  auto closed = keys({keys::kEscape});
  ASSERT_TRUE(closed.command);
  EXPECT_EQ(closed.command->kind, Command::Kind::StopLogs);
  EXPECT_FALSE(model_.logs());
}

TEST_F(TuiModel, LogLinesAreBounded) {
  uint64_t stream = keys({'l'}).command->stream;
  std::string many;
  for (size_t i = 0; i < Model::kMaxLogLines + 50; ++i) many += "line " + std::to_string(i) + "\n";
  model_.append_log(stream, many);
  EXPECT_EQ(model_.logs()->lines.size(), Model::kMaxLogLines);
  EXPECT_EQ(model_.logs()->lines.back(), "line " + std::to_string(Model::kMaxLogLines + 49));
  model_.append_log(stream, std::string(10000, 'x'));  // a line that never ends
  EXPECT_EQ(model_.logs()->lines.back().size(), 10000u);
  EXPECT_TRUE(model_.logs()->partial.empty());
}

TEST_F(TuiModel, EventsNewestFirstAndBounded) {
  for (int i = 0; i < static_cast<int>(Model::kMaxEvents) + 10; ++i) {
    api::Event event;
    event.metadata.name = "e" + std::to_string(i);
    event.time_ms = 1000 + i;
    event.message = "\x1b]0;title\x07";
    model_.put_event(event);
  }
  auto rows = model_.event_rows();
  ASSERT_EQ(rows.size(), Model::kMaxEvents);
  EXPECT_EQ(rows.front().time_ms, 1000 + static_cast<int>(Model::kMaxEvents) + 9);
  EXPECT_EQ(rows.back().time_ms, 1010);  // the oldest went
  EXPECT_EQ(rows.front().message, "?]0;title?");
}

TEST_F(TuiModel, HelpAndQuit) {
  keys({'?'});
  EXPECT_EQ(model_.dialog(), Dialog::Help);
  EXPECT_FALSE(keys({'x'}).quit);  // any key closes help
  EXPECT_EQ(model_.dialog(), Dialog::None);
  EXPECT_TRUE(keys({'q'}).quit);
}

TEST_F(TuiModel, ConnectionState) {
  EXPECT_EQ(model_.link(), Link::Connecting);
  model_.set_link(Link::Connected, "ignored");
  EXPECT_TRUE(model_.connected());
  EXPECT_EQ(model_.connection_error(), "");
  model_.set_link(Link::Unreachable, "cannot reach http://127.0.0.1:8080: connection refused");
  EXPECT_FALSE(model_.connected());
  EXPECT_EQ(model_.connection_error(), "cannot reach http://127.0.0.1:8080: connection refused");
  model_.set_link(Link::Refused, "Incorrect API key provided.\x1b[2J");
  EXPECT_EQ(model_.link(), Link::Refused);
  EXPECT_EQ(model_.connection_error(), "Incorrect API key provided.?[2J");
}

}  // namespace
}  // namespace nebula::tui
