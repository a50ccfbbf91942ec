#pragma once
// The state of `nebula top`, apart from drawing: what the server reported (built from API
// documents and gateway metrics), the panes, sorting, selection, the open dialog and what each
// key does. Keys produce Commands, requests the Feed carries out; their outcomes come back here.
// Single-threaded: the UI thread owns it (the Feed hands updates over, see feed.h).
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "api/api.h"
#include "api/modes.h"
#include "tui/metrics.h"

namespace nebula::tui {

// Keys as the model knows them: printable characters as themselves, the rest below. The screen
// translates the terminal's codes.
namespace keys {
inline constexpr int kTab = '\t';
inline constexpr int kEnter = '\n';
inline constexpr int kEscape = 27;
inline constexpr int kBackspace = 127;
inline constexpr int kUp = 0x10001;
inline constexpr int kDown = 0x10002;
inline constexpr int kPageUp = 0x10003;
inline constexpr int kPageDown = 0x10004;
inline constexpr int kHome = 0x10005;
inline constexpr int kEnd = 0x10006;
inline constexpr int kBackTab = 0x10007;
}  // namespace keys

enum class Pane { Nodes, Deployments, Events };
// The state of the link to the server. Refused: it answers, but with an error (a missing or
// wrong API key, a listing that is not one).
enum class Link { Connecting, Connected, Unreachable, Refused };
enum class SortKey { Name, Ready, RequestRate, Ttft, TokenRate, Queue };
const char* to_string(SortKey key);

// What is open over the panes; at most one thing at a time.
enum class Dialog {
  None,
  Help,
  ScaleInput,       // typing a replica count
  Confirm,          // a destructive command waits for y
  ModeList,         // choosing a mode to switch to
  ModePlanWaiting,  // the server is asked for the switch's dry run
};

// A request for the server that a key made.
struct Command {
  enum class Kind { Scale, Restart, Sleep, Wake, ModeDryRun, ModeSwitch, FollowLogs, StopLogs };
  Kind kind = Kind::Scale;
  std::string target;   // the deployment, or the mode
  int replicas = 0;     // Scale
  uint64_t stream = 0;  // FollowLogs / StopLogs: which log view
};

// What a mode switch (or its dry run) does: the server's answer.
struct SwitchPlan {
  std::vector<std::string> started, stopped, slept, woken;
  int64_t duration_ms = 0;
  bool rolled_back = false;
};

struct CommandOutcome {
  Command command;
  bool ok = false;
  std::string error;  // why it failed, when it did
  SwitchPlan plan;    // ModeDryRun and ModeSwitch
};

struct GpuRow {
  std::string node;        // "" on the node's second and later GPUs
  std::string node_state;  // "Ready", "NotReady", "Ready,Draining"; only with `node`
  bool has_gpu = true;     // false: a node that reported no GPU
  int index = 0;
  std::string name;
  int64_t total_mb = 0;
  int64_t used_mb = 0;
  double utilization = 0;  // percent
  double temperature_c = 0;
  std::vector<std::string> replicas;  // placed on this GPU
};

struct DeploymentRow {
  std::string name;
  std::string model;
  std::string engine;
  std::string phase;
  std::string message;
  int ready = 0;
  int desired = 0;
  std::optional<DeploymentFigures> figures;  // none until the gateway's metrics were read
};

struct EventRow {
  int64_t time_ms = 0;
  std::string type;
  std::string object;
  std::string reason;
  std::string message;
};

struct ModeRow {
  std::string name;
  std::vector<std::string> deployments;
  bool active = false;
  std::string switch_phase;  // of the last switch to it; "" none
};

struct LogView {
  uint64_t stream = 0;
  std::string deployment;
  std::deque<std::string> lines;  // printable; the newest last
  std::string partial;            // a line not ended yet
  std::string state;              // "following", or why it ended
};

struct KeyResult {
  bool quit = false;
  std::optional<Command> command;
};

class Model {
 public:
  static constexpr size_t kMaxEvents = 500;
  static constexpr size_t kMaxLogLines = 1000;
  static constexpr int kMaxReplicas = 1000;
  static constexpr std::chrono::seconds kRateWindow{5};

  explicit Model(std::string server);

  // What the server reported. set_* replaces everything of that kind (a fresh listing); put_*
  // adds or replaces one document; remove_* deletes one by name.
  void set_nodes(std::vector<api::Node> nodes);
  void put_node(api::Node node);
  void remove_node(const std::string& name);
  void set_deployments(std::vector<api::Deployment> deployments);
  void put_deployment(api::Deployment deployment);
  void remove_deployment(const std::string& name);
  void set_replicas(std::vector<api::Replica> replicas);
  void put_replica(api::Replica replica);
  void remove_replica(const std::string& name);
  void set_events(std::vector<api::Event> events);
  void put_event(api::Event event);
  void set_modes(std::vector<api::Mode> modes);
  // A scrape of the gateway's /metrics. Rates and TTFT are over the last kRateWindow: against
  // the newest scrape at least that old, or the oldest there is.
  void set_metrics(std::map<std::string, GatewayCounters> counters, std::chrono::steady_clock::time_point at);
  // How the last exchange with the server went; `error` says why it failed.
  void set_link(Link link, const std::string& error = "");
  void command_finished(const CommandOutcome& outcome);
  void append_log(uint64_t stream, std::string_view text);
  void log_ended(uint64_t stream, const std::string& why);

  // A key press: what changes here, and what to ask the server.
  KeyResult handle_key(int key);

  // Views for drawing.
  std::vector<GpuRow> gpu_rows() const;
  std::vector<DeploymentRow> deployment_rows() const;  // in the chosen order
  std::vector<EventRow> event_rows() const;            // newest first
  std::vector<ModeRow> mode_rows() const;              // by name
  size_t node_count() const { return nodes_.size(); }

  const std::string& server() const { return server_; }
  Link link() const { return link_; }
  bool connected() const { return link_ == Link::Connected; }
  const std::string& connection_error() const { return connection_error_; }
  Pane focus() const { return focus_; }
  SortKey sort_key() const { return sort_key_; }
  bool sort_descending() const { return sort_descending_; }
  // The deployment actions apply to; "" when there is none.
  std::string selected_deployment() const;
  Dialog dialog() const { return dialog_; }
  const std::string& input() const { return input_; }
  const std::string& confirm_question() const { return confirm_question_; }
  const std::vector<std::string>& confirm_details() const { return confirm_details_; }
  size_t mode_selection() const { return mode_selection_; }
  const std::string& message() const { return message_; }
  bool message_is_error() const { return message_is_error_; }
  // "switching to NAME: PHASE" while a switch runs; "".
  std::string progress() const;
  const std::optional<LogView>& logs() const { return logs_; }
  // Rows scrolled past at the top of the nodes and events panes (lines up from the end for logs).
  size_t nodes_scroll() const { return nodes_scroll_; }
  size_t events_scroll() const { return events_scroll_; }

 private:
  KeyResult handle_dialog_key(int key);
  KeyResult move(int key);
  void say(std::string text, bool error = false);
  void ask(std::string question, std::vector<std::string> details, Command command);
  const api::Deployment* find_deployment(const std::string& name) const;

  std::string server_;
  std::map<std::string, api::Node> nodes_;
  std::map<std::string, api::Deployment> deployments_;
  std::map<std::string, api::Replica> replicas_;
  std::map<std::string, api::Event> events_;
  std::vector<api::Mode> modes_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, std::map<std::string, GatewayCounters>>> scrapes_;
  std::map<std::string, DeploymentFigures> figures_;
  Link link_ = Link::Connecting;
  std::string connection_error_;

  Pane focus_ = Pane::Deployments;
  SortKey sort_key_ = SortKey::Name;
  bool sort_descending_ = false;
  std::string selected_;
  size_t nodes_scroll_ = 0;
  size_t events_scroll_ = 0;

  Dialog dialog_ = Dialog::None;
  std::string input_;
  std::string scale_target_;
  std::string confirm_question_;
  std::vector<std::string> confirm_details_;
  std::optional<Command> pending_;
  size_t mode_selection_ = 0;
  std::string switching_to_;

  std::string message_;
  bool message_is_error_ = false;
  std::optional<LogView> logs_;
  uint64_t next_stream_ = 1;
};

}  // namespace nebula::tui
