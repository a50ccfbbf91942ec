#include "tui/model.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>

#include "tui/text.h"

namespace nebula::tui {

const char* to_string(SortKey key) {
  switch (key) {
    case SortKey::Name: return "name";
    case SortKey::Ready: return "ready";
    case SortKey::RequestRate: return "req/s";
    case SortKey::Ttft: return "TTFT";
    case SortKey::TokenRate: return "tok/s";
    case SortKey::Queue: return "queue";
  }
  return "name";
}

namespace {

std::string joined(const std::vector<std::string>& names) {
  if (names.empty()) return "-";
  std::string text;
  for (const auto& name : names) text += (text.empty() ? "" : ", ") + printable(name);
  return text;
}

}  // namespace

Model::Model(std::string server) : server_(std::move(server)) {}

void Model::set_nodes(std::vector<api::Node> nodes) {
  nodes_.clear();
  for (auto& node : nodes) put_node(std::move(node));
}

void Model::put_node(api::Node node) {
  std::string name = node.metadata.name;
  nodes_[name] = std::move(node);
}

void Model::remove_node(const std::string& name) {
  nodes_.erase(name);
}

void Model::set_deployments(std::vector<api::Deployment> deployments) {
  deployments_.clear();
  for (auto& deployment : deployments) put_deployment(std::move(deployment));
}

void Model::put_deployment(api::Deployment deployment) {
  std::string name = deployment.metadata.name;
  deployments_[name] = std::move(deployment);
}

void Model::remove_deployment(const std::string& name) {
  deployments_.erase(name);
}

void Model::set_replicas(std::vector<api::Replica> replicas) {
  replicas_.clear();
  for (auto& replica : replicas) put_replica(std::move(replica));
}

void Model::put_replica(api::Replica replica) {
  std::string name = replica.metadata.name;
  replicas_[name] = std::move(replica);
}

void Model::remove_replica(const std::string& name) {
  replicas_.erase(name);
}

void Model::set_events(std::vector<api::Event> events) {
  events_.clear();
  for (auto& event : events) put_event(std::move(event));
}

void Model::put_event(api::Event event) {
  std::string name = event.metadata.name;
  events_[name] = std::move(event);
  while (events_.size() > kMaxEvents) {
    auto oldest = std::min_element(events_.begin(), events_.end(),
                                   [](const auto& a, const auto& b) { return a.second.time_ms < b.second.time_ms; });
    events_.erase(oldest);
  }
}

void Model::set_modes(std::vector<api::Mode> modes) {
  modes_ = std::move(modes);
  std::sort(modes_.begin(), modes_.end(),
            [](const api::Mode& a, const api::Mode& b) { return a.metadata.name < b.metadata.name; });
  if (mode_selection_ >= modes_.size()) mode_selection_ = modes_.empty() ? 0 : modes_.size() - 1;
}

void Model::set_metrics(std::map<std::string, GatewayCounters> counters, std::chrono::steady_clock::time_point at) {
  scrapes_.emplace_back(at, std::move(counters));
  while (scrapes_.size() > 2 && scrapes_[1].first <= at - kRateWindow) scrapes_.pop_front();
  const auto& [base_at, base] = scrapes_.front();
  const auto& now = scrapes_.back().second;
  bool has_base = scrapes_.size() > 1;
  double seconds = std::chrono::duration<double>(at - base_at).count();
  figures_.clear();
  for (const auto& [model, series] : now) {
    auto before = base.find(model);
    // A deployment the base scrape did not have yet started from zero.
    GatewayCounters zero;
    figures_[model] = figures(has_base ? (before != base.end() ? &before->second : &zero) : nullptr, series, seconds);
  }
}

void Model::set_link(Link link, const std::string& error) {
  link_ = link;
  connection_error_ = link == Link::Connected ? "" : printable(error);
}

void Model::say(std::string text, bool error) {
  message_ = printable(text);
  message_is_error_ = error;
}

void Model::ask(std::string question, std::vector<std::string> details, Command command) {
  dialog_ = Dialog::Confirm;
  confirm_question_ = std::move(question);
  confirm_details_ = std::move(details);
  pending_ = std::move(command);
}

void Model::command_finished(const CommandOutcome& outcome) {
  const Command& command = outcome.command;
  std::string target = printable(command.target);
  if (command.kind == Command::Kind::ModeDryRun) {
    if (dialog_ != Dialog::ModePlanWaiting) return;  // closed meanwhile
    dialog_ = Dialog::None;
    if (!outcome.ok) {
      say(fmt::format("cannot switch to {}: {}", target, outcome.error), true);
      return;
    }
    ask(fmt::format("Switch to mode {}?", target),
        {"stop:  " + joined(outcome.plan.stopped), "start: " + joined(outcome.plan.started),
         "sleep: " + joined(outcome.plan.slept), "wake:  " + joined(outcome.plan.woken)},
        Command{Command::Kind::ModeSwitch, command.target});
    return;
  }
  if (command.kind == Command::Kind::ModeSwitch) switching_to_.clear();
  if (!outcome.ok) {
    std::string what = command.kind == Command::Kind::Scale        ? "scale " + target
                       : command.kind == Command::Kind::Restart    ? "restart " + target
                       : command.kind == Command::Kind::Sleep      ? "sleep " + target
                       : command.kind == Command::Kind::Wake       ? "wake " + target
                       : command.kind == Command::Kind::ModeSwitch ? "switch to " + target
                                                                   : target;
    say(fmt::format("{} failed: {}{}", what, outcome.error, outcome.plan.rolled_back ? " (rolled back)" : ""), true);
    return;
  }
  switch (command.kind) {
    case Command::Kind::Scale: say(fmt::format("{} scaled to {}", target, command.replicas)); break;
    case Command::Kind::Restart: say(fmt::format("{}: rolling restart started", target)); break;
    case Command::Kind::Sleep: say(fmt::format("{}: going to sleep (a request or z wakes it)", target)); break;
    case Command::Kind::Wake: say(fmt::format("{}: waking", target)); break;
    case Command::Kind::ModeSwitch:
      say(fmt::format("switched to {} in {:.1f}s: started {}; stopped {}", target, outcome.plan.duration_ms / 1000.0,
                      joined(outcome.plan.started), joined(outcome.plan.stopped)));
      break;
    default: break;
  }
}

void Model::append_log(uint64_t stream, std::string_view text) {
  if (!logs_ || logs_->stream != stream) return;
  logs_->partial += text;
  size_t start = 0;
  while (true) {
    size_t end = logs_->partial.find('\n', start);
    if (end == std::string::npos) break;
    std::string_view line(logs_->partial.data() + start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    logs_->lines.push_back(printable(line));
    start = end + 1;
  }
  logs_->partial.erase(0, start);
  // A line that never ends is shown in pieces rather than growing without bound.
  if (logs_->partial.size() > 4096) {
    logs_->lines.push_back(printable(logs_->partial));
    logs_->partial.clear();
  }
  while (logs_->lines.size() > kMaxLogLines) logs_->lines.pop_front();
}

void Model::log_ended(uint64_t stream, const std::string& why) {
  if (!logs_ || logs_->stream != stream) return;
  logs_->state = printable(why);
}

std::string Model::progress() const {
  if (switching_to_.empty()) return "";
  for (const auto& mode : modes_) {
    if (mode.metadata.name == switching_to_ && !mode.switching.phase.empty() && mode.switching.phase != "Done" &&
        mode.switching.phase != "Failed") {
      return fmt::format("switching to {}: {}", printable(switching_to_), printable(mode.switching.phase));
    }
  }
  return fmt::format("switching to {}...", printable(switching_to_));
}

const api::Deployment* Model::find_deployment(const std::string& name) const {
  auto it = deployments_.find(name);
  return it == deployments_.end() ? nullptr : &it->second;
}

std::vector<GpuRow> Model::gpu_rows() const {
  std::vector<GpuRow> rows;
  for (const auto& [name, node] : nodes_) {
    std::string state = node.status.ready ? "Ready" : "NotReady";
    if (node.spec.drain) state += ",Draining";
    std::vector<api::Gpu> gpus = node.status.gpus;
    std::sort(gpus.begin(), gpus.end(), [](const api::Gpu& a, const api::Gpu& b) { return a.index < b.index; });
    if (gpus.empty()) {
      GpuRow row;
      row.node = printable(name);
      row.node_state = state;
      row.has_gpu = false;
      rows.push_back(std::move(row));
      continue;
    }
    bool first = true;
    for (const auto& gpu : gpus) {
      GpuRow row;
      if (first) {
        row.node = printable(name);
        row.node_state = state;
      }
      first = false;
      row.index = gpu.index;
      row.name = printable(gpu.name);
      row.total_mb = gpu.memory_total_mb;
      row.used_mb = gpu.memory_used_mb;
      row.utilization = gpu.utilization;
      row.temperature_c = gpu.temperature_c;
      for (const auto& [replica_name, replica] : replicas_) {
        if (replica.spec.node != name || replica.spec.stop) continue;
        if (std::find(replica.spec.gpus.begin(), replica.spec.gpus.end(), gpu.index) == replica.spec.gpus.end()) {
          continue;
        }
        row.replicas.push_back(printable(replica_name));
      }
      rows.push_back(std::move(row));
    }
  }
  return rows;
}

std::vector<DeploymentRow> Model::deployment_rows() const {
  std::vector<DeploymentRow> rows;
  for (const auto& [name, deployment] : deployments_) {
    DeploymentRow row;
    row.name = printable(name);
    row.model = printable(deployment.spec.model);
    row.engine = printable(deployment.spec.engine);
    row.phase = printable(deployment.status.phase);
    row.message = printable(deployment.status.message);
    row.ready = deployment.status.ready_replicas;
    row.desired = deployment.spec.replicas;
    if (!scrapes_.empty()) {
      auto it = figures_.find(name);
      row.figures = it != figures_.end() ? it->second : DeploymentFigures{};
    }
    rows.push_back(std::move(row));
  }
  auto key = [this](const DeploymentRow& row) -> double {
    const auto& figures = row.figures;
    switch (sort_key_) {
      case SortKey::Name: return 0;
      case SortKey::Ready: return row.desired > 0 ? static_cast<double>(row.ready) / row.desired : 1.0;
      case SortKey::RequestRate: return figures ? figures->requests_per_s : -1;
      case SortKey::Ttft: return figures && figures->ttft_p50_s ? *figures->ttft_p50_s : -1;
      case SortKey::TokenRate: return figures ? figures->tokens_per_s : -1;
      case SortKey::Queue: return figures ? figures->queue_depth : -1;
    }
    return 0;
  };
  // Ties (and the name sort) go by name, so rows do not jump around between refreshes.
  std::stable_sort(rows.begin(), rows.end(), [&](const DeploymentRow& a, const DeploymentRow& b) {
    double ka = key(a), kb = key(b);
    if (ka != kb) return sort_descending_ ? ka > kb : ka < kb;
    return sort_descending_ && sort_key_ == SortKey::Name ? a.name > b.name : a.name < b.name;
  });
  return rows;
}

std::vector<EventRow> Model::event_rows() const {
  std::vector<EventRow> rows;
  for (const auto& [name, event] : events_) {
    rows.push_back({event.time_ms, printable(event.type), printable(event.object), printable(event.reason),
                    printable(event.message)});
  }
  std::stable_sort(rows.begin(), rows.end(),
                   [](const EventRow& a, const EventRow& b) { return a.time_ms > b.time_ms; });
  return rows;
}

std::vector<ModeRow> Model::mode_rows() const {
  std::vector<ModeRow> rows;
  for (const auto& mode : modes_) {
    ModeRow row{printable(mode.metadata.name), {}, mode.active, printable(mode.switching.phase)};
    for (const auto& deployment : mode.deployments) row.deployments.push_back(printable(deployment));
    rows.push_back(std::move(row));
  }
  return rows;
}

std::string Model::selected_deployment() const {
  if (deployments_.count(selected_)) return selected_;
  auto rows = deployment_rows();
  return rows.empty() ? "" : rows.front().name;
}

KeyResult Model::move(int key) {
  if (focus_ == Pane::Deployments) {
    auto rows = deployment_rows();
    if (rows.empty()) return {};
    std::string current = selected_deployment();
    size_t at = 0;
    while (at < rows.size() && rows[at].name != current) ++at;
    if (at == rows.size()) at = 0;
    if (key == keys::kUp || key == 'k') at = at > 0 ? at - 1 : 0;
    if (key == keys::kDown || key == 'j') at = std::min(at + 1, rows.size() - 1);
    if (key == keys::kPageUp) at = at > 10 ? at - 10 : 0;
    if (key == keys::kPageDown) at = std::min(at + 10, rows.size() - 1);
    if (key == keys::kHome) at = 0;
    if (key == keys::kEnd) at = rows.size() - 1;
    selected_ = rows[at].name;
    return {};
  }
  // The nodes and events panes scroll; the drawing clamps what is past the end. With logs open,
  // the events pane shows them and scrolls up from the newest line.
  size_t& scroll = focus_ == Pane::Nodes ? nodes_scroll_ : events_scroll_;
  bool from_end = focus_ == Pane::Events && logs_.has_value();
  size_t limit = focus_ == Pane::Nodes ? gpu_rows().size() : from_end ? logs_->lines.size() : events_.size();
  bool towards_start = key == keys::kUp || key == 'k' || key == keys::kPageUp || key == keys::kHome;
  if (from_end) towards_start = !towards_start;
  size_t step = key == keys::kPageUp || key == keys::kPageDown ? 10 : 1;
  if (key == keys::kHome || key == keys::kEnd) step = limit;
  scroll = towards_start ? (scroll > step ? scroll - step : 0) : std::min(scroll + step, limit > 0 ? limit - 1 : 0);
  return {};
}

KeyResult Model::handle_dialog_key(int key) {
  switch (dialog_) {
    case Dialog::None: return {};
    case Dialog::Help: dialog_ = Dialog::None; return {key == 'q', std::nullopt};
    case Dialog::ScaleInput: {
      if (key == keys::kEscape) {
        dialog_ = Dialog::None;
        say("scale cancelled");
      } else if (key == keys::kBackspace) {
        if (!input_.empty()) input_.pop_back();
      } else if (key >= '0' && key <= '9') {
        if (input_.size() < 4) input_.push_back(static_cast<char>(key));
      } else if (key == keys::kEnter) {
        if (input_.empty()) {
          dialog_ = Dialog::None;
          say("scale cancelled");
          return {};
        }
        int replicas = 0;
        std::from_chars(input_.data(), input_.data() + input_.size(), replicas);
        if (replicas > kMaxReplicas) {
          say(fmt::format("{} is too many replicas (at most {})", replicas, kMaxReplicas), true);
          return {};
        }
        dialog_ = Dialog::None;
        const api::Deployment* deployment = find_deployment(scale_target_);
        if (!deployment) {
          say(fmt::format("{} is gone", scale_target_), true);
          return {};
        }
        Command command{Command::Kind::Scale, scale_target_, replicas};
        if (replicas < deployment->spec.replicas) {
          ask(fmt::format("Scale {} down from {} to {} replica{}?", scale_target_, deployment->spec.replicas, replicas,
                          replicas == 1 ? "" : "s"),
              {replicas == 0 ? "Every replica stops; requests wait until it is scaled up again."
                             : "Requests in flight on the replicas that stop are drained first."},
              std::move(command));
          return {};
        }
        say(fmt::format("scaling {} to {}...", scale_target_, replicas));
        return {false, std::move(command)};
      }
      return {};
    }
    case Dialog::Confirm: {
      dialog_ = Dialog::None;
      auto command = std::move(pending_);
      pending_.reset();
      if (!command) return {};
      if (key != 'y' && key != 'Y') {
        say(confirm_question_.substr(0, confirm_question_.size() - 1) + ": cancelled");
        return {};
      }
      if (command->kind == Command::Kind::ModeSwitch) {
        switching_to_ = command->target;
        say("");
      } else if (command->kind == Command::Kind::Restart) {
        say(fmt::format("restarting {}...", command->target));
      } else if (command->kind == Command::Kind::Sleep) {
        say(fmt::format("putting {} to sleep...", command->target));
      } else if (command->kind == Command::Kind::Scale) {
        say(fmt::format("scaling {} to {}...", command->target, command->replicas));
      }
      return {false, std::move(command)};
    }
    case Dialog::ModeList: {
      if (key == keys::kEscape || key == 'm') {
        dialog_ = Dialog::None;
      } else if (key == 'q') {
        return {true, std::nullopt};
      } else if (key == keys::kUp || key == 'k') {
        if (mode_selection_ > 0) --mode_selection_;
      } else if (key == keys::kDown || key == 'j') {
        if (mode_selection_ + 1 < modes_.size()) ++mode_selection_;
      } else if (key == keys::kEnter && mode_selection_ < modes_.size()) {
        dialog_ = Dialog::ModePlanWaiting;
        return {false, Command{Command::Kind::ModeDryRun, modes_[mode_selection_].metadata.name}};
      }
      return {};
    }
    case Dialog::ModePlanWaiting:
      if (key == keys::kEscape) dialog_ = Dialog::None;
      return {key == 'q', std::nullopt};
  }
  return {};
}

KeyResult Model::handle_key(int key) {
  if (dialog_ != Dialog::None) return handle_dialog_key(key);
  switch (key) {
    case 'q':
    case 'Q': return {true, std::nullopt};
    case '?':
    case 'h': dialog_ = Dialog::Help; return {};
    case keys::kTab:
      focus_ = focus_ == Pane::Nodes ? Pane::Deployments : focus_ == Pane::Deployments ? Pane::Events : Pane::Nodes;
      return {};
    case keys::kBackTab:
      focus_ = focus_ == Pane::Nodes ? Pane::Events : focus_ == Pane::Deployments ? Pane::Nodes : Pane::Deployments;
      return {};
    case 'o': sort_key_ = static_cast<SortKey>((static_cast<int>(sort_key_) + 1) % 6); return {};
    case 'O': sort_descending_ = !sort_descending_; return {};
    case keys::kUp:
    case keys::kDown:
    case keys::kPageUp:
    case keys::kPageDown:
    case keys::kHome:
    case keys::kEnd:
    case 'j':
    case 'k': return move(key);
    case keys::kEscape:
      if (logs_) {
        Command stop{Command::Kind::StopLogs, logs_->deployment, 0, logs_->stream};
        logs_.reset();
        events_scroll_ = 0;
        return {false, std::move(stop)};
      }
      message_.clear();
      return {};
    case 'm':
      if (modes_.empty()) {
        say("no modes: create one with `nebula mode create NAME --deployments a,b`");
        return {};
      }
      mode_selection_ = 0;
      for (size_t i = 0; i < modes_.size(); ++i) {
        if (!modes_[i].active) continue;
        mode_selection_ = i;
      }
      dialog_ = Dialog::ModeList;
      return {};
    default: break;
  }
  std::string target = selected_deployment();
  if (key != 's' && key != 'r' && key != 'z' && key != 'l') return {};
  if (target.empty()) {
    say("no deployment selected", true);
    return {};
  }
  const api::Deployment* deployment = find_deployment(target);
  if (key == 's') {
    dialog_ = Dialog::ScaleInput;
    scale_target_ = target;
    input_.clear();
    return {};
  }
  if (key == 'r') {
    ask(fmt::format("Restart {}?", target),
        {fmt::format("Its {} replica{} are replaced one by one (a rolling restart).", deployment->spec.replicas,
                     deployment->spec.replicas == 1 ? "" : "s")},
        Command{Command::Kind::Restart, target});
    return {};
  }
  // 'z': an awake deployment is put to sleep (after a confirmation: requests then wait for its
  // wake); one asleep, stopped or going to sleep is woken at once.
  if (key == 'z') {
    std::string state = api::sleep_state(*deployment);
    if (state != "awake" && state != "wake-requested") {
      say(fmt::format("waking {}...", target));
      return {false, Command{Command::Kind::Wake, target}};
    }
    const auto& spec = deployment->spec;
    std::string what = spec.on_idle == "stop"
                           ? "Its replicas stop and free their GPUs (on_idle: stop)."
                           : fmt::format("Its replicas sleep ({}) and free their GPU memory.", spec.on_idle);
    ask(fmt::format("Sleep {}?", target), {what, "The next request for it, or z again, wakes it."},
        Command{Command::Kind::Sleep, target});
    return {};
  }
  // 'l': the logs of the selected deployment's first replica, in place of the events; again to close.
  if (logs_ && logs_->deployment == target) {
    Command stop{Command::Kind::StopLogs, logs_->deployment, 0, logs_->stream};
    logs_.reset();
    events_scroll_ = 0;
    return {false, std::move(stop)};
  }
  LogView view;
  view.stream = next_stream_++;
  view.deployment = target;
  view.state = "following";
  logs_ = std::move(view);
  events_scroll_ = 0;
  // Another deployment's stream, if one was open, ends: the Feed follows one log at a time.
  return {false, Command{Command::Kind::FollowLogs, target, 0, logs_->stream}};
}

}  // namespace nebula::tui
