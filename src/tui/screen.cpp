#include "tui/screen.h"

#include <curses.h>
#include <fmt/format.h>

#include <algorithm>
#include <ctime>

#include "tui/text.h"

namespace nebula::tui {

namespace {

constexpr int kMinPane = 3;  // title, column header, one row

// Left-aligned in `width` columns with at least one space after it, cut when longer.
std::string column(std::string_view text, size_t width) {
  std::string cut = fit(text, width > 0 ? width - 1 : 0);
  cut.resize(width, ' ');
  return cut;
}

std::string right(std::string_view text, size_t width) {
  std::string cut = fit(text, width);
  return std::string(width - cut.size(), ' ') + cut;
}

std::string clip(std::string line, int width) {
  if (width <= 0) return "";
  if (line.size() > static_cast<size_t>(width)) line.resize(static_cast<size_t>(width));
  return line;
}

// The VRAM bar's width for a terminal `width` wide: what is left beside the other columns.
int bar_width(int width) {
  return std::clamp(width - 86, 10, 30);
}

}  // namespace

Layout compute_layout(int rows, size_t gpu_rows, size_t deployment_rows) {
  Layout layout;
  layout.header = {0, rows > 0 ? 1 : 0};
  layout.footer = {std::max(rows - 1, 0), rows > 1 ? 1 : 0};
  int body = std::max(rows - 2, 0);
  int share = std::max(kMinPane, body * 35 / 100);
  int nodes = std::clamp(static_cast<int>(std::max<size_t>(gpu_rows, 1)) + 2, kMinPane, share);
  int deployments = std::clamp(static_cast<int>(std::max<size_t>(deployment_rows, 1)) + 2, kMinPane, share);
  int events = body - nodes - deployments;
  // A small terminal: the events pane keeps its minimum, then everything shrinks from the bottom.
  if (events < kMinPane) {
    int missing = kMinPane - events;
    int from_deployments = std::min(missing, deployments - kMinPane);
    deployments -= from_deployments;
    int from_nodes = std::min(missing - from_deployments, nodes - kMinPane);
    nodes -= from_nodes;
    events = body - nodes - deployments;
    if (events < 0) {
      events = 0;
      deployments = std::max(0, body - nodes);
      nodes = std::min(nodes, body);
    }
  }
  layout.nodes = {1, nodes};
  layout.deployments = {1 + nodes, deployments};
  layout.events = {1 + nodes + deployments, events};
  return layout;
}

std::string gpu_header(int width) {
  std::string line = column("NODE", 14) + column("STATUS", 10) + right("GPU", 3) + " " + column("NAME", 14) +
                     column("VRAM", static_cast<size_t>(bar_width(width)) + 1) + right("USED/TOTAL GiB", 14) + " " +
                     right("UTIL", 5) + " " + right("TEMP", 5) + "  REPLICAS";
  return clip(line, width);
}

std::string gpu_line(const GpuRow& row, int width) {
  std::string line = column(row.node, 14) + column(row.node_state, 10);
  if (!row.has_gpu) return clip(line + "  - (no GPU reported)", width);
  std::string replicas;
  for (const auto& name : row.replicas) replicas += (replicas.empty() ? "" : ",") + name;
  line += right(std::to_string(row.index), 3) + " " + column(row.name, 14) +
          column(bar(static_cast<double>(row.used_mb), static_cast<double>(row.total_mb), bar_width(width)),
                 static_cast<size_t>(bar_width(width)) + 1) +
          right(format_gib(row.used_mb) + "/" + format_gib(row.total_mb), 14) + " " +
          right(fmt::format("{:.0f}%", row.utilization), 5) + " " +
          right(row.temperature_c > 0 ? fmt::format("{:.0f}C", row.temperature_c) : "-", 5) + "  " +
          (replicas.empty() ? "-" : replicas);
  return clip(line, width);
}

std::string deployment_header(int width, SortKey sort, bool descending) {
  auto label = [&](const char* text, SortKey key) {
    return key == sort ? std::string(text) + (descending ? "v" : "^") : std::string(text);
  };
  std::string line = column(label("NAME", SortKey::Name), 18) + right(label("READY", SortKey::Ready), 7) + "  " +
                     column("PHASE", 12) + right(label("REQ/S", SortKey::RequestRate), 7) + " " +
                     right(label("TTFT p50", SortKey::Ttft), 9) + " " + right(label("TOK/S", SortKey::TokenRate), 7) +
                     " " + right(label("QUEUE", SortKey::Queue), 6) + "  " + column("ENGINE", 9) + "MODEL";
  return clip(line, width);
}

std::string deployment_line(const DeploymentRow& row, int width) {
  const auto& figures = row.figures;
  std::string phase = row.phase.empty() ? "-" : row.phase;
  std::string line =
      column(row.name, 18) + right(fmt::format("{}/{}", row.ready, row.desired), 7) + "  " + column(phase, 12) +
      right(format_rate(figures ? std::optional(figures->requests_per_s) : std::nullopt), 7) + " " +
      right(format_seconds(figures ? figures->ttft_p50_s : std::nullopt), 9) + " " +
      right(format_rate(figures ? std::optional(figures->tokens_per_s) : std::nullopt), 7) + " " +
      right(figures ? fmt::format("{:.0f}", figures->queue_depth) : "-", 6) + "  " + column(row.engine, 9) + row.model;
  return clip(line, width);
}

std::string event_header(int width) {
  return clip(column("AGE", 6) + column("TYPE", 8) + column("OBJECT", 28) + column("REASON", 18) + "MESSAGE", width);
}

std::string event_line(const EventRow& row, int width, int64_t now_ms) {
  return clip(column(age(row.time_ms, now_ms), 6) + column(row.type, 8) + column(row.object, 28) +
                  column(row.reason, 18) + row.message,
              width);
}

const std::vector<std::string>& help_lines() {
  static const std::vector<std::string> lines = {
      "Tab / Shift-Tab   next / previous pane",
      "Up Down  j k      select a deployment, or scroll the pane",
      "PgUp PgDn Home End",
      "o / O             sort deployments by the next column / reverse",
      "s                 scale the selected deployment (asks for a count;",
      "                  scaling down asks to confirm)",
      "r                 rolling restart of the selected deployment (confirm)",
      "z                 sleep the selected deployment (confirm), or wake it",
      "                  when it sleeps; a request wakes it too",
      "l                 follow its logs in place of the events (l/Esc closes)",
      "m                 switch mode: pick one, see its dry run, confirm",
      "?                 this help (any key closes it)",
      "q                 quit",
  };
  return lines;
}

Palette make_palette() {
  Palette palette;
  palette.title = A_BOLD;
  palette.title_focused = A_REVERSE | A_BOLD;
  palette.column_header = A_UNDERLINE;
  palette.selected = A_REVERSE;
  palette.good = A_NORMAL;
  palette.warn = A_BOLD;
  palette.bad = A_BOLD;
  palette.dim = A_DIM;
  if (!has_colors()) return palette;
  start_color();
  // The terminal's own background where it allows it (use_default_colors), else black.
  short background = use_default_colors() == OK ? -1 : COLOR_BLACK;
  init_pair(1, COLOR_GREEN, background);
  init_pair(2, COLOR_YELLOW, background);
  init_pair(3, COLOR_RED, background);
  init_pair(4, COLOR_CYAN, background);
  init_pair(5, COLOR_BLACK, COLOR_CYAN);
  palette.good = COLOR_PAIR(1);
  palette.warn = COLOR_PAIR(2) | A_BOLD;
  palette.bad = COLOR_PAIR(3) | A_BOLD;
  palette.title = COLOR_PAIR(4) | A_BOLD;
  palette.title_focused = COLOR_PAIR(5) | A_BOLD;
  return palette;
}

namespace {

void put(int y, int x, const std::string& text, int attributes = 0) {
  int rows = 0, cols = 0;
  getmaxyx(stdscr, rows, cols);
  if (y < 0 || y >= rows || x >= cols) return;
  // The bottom-right cell is left alone: writing it would scroll some terminals.
  int room = cols - x - (y == rows - 1 ? 1 : 0);
  if (room <= 0) return;
  attrset(attributes);
  mvaddnstr(y, x, text.c_str(), std::min(room, static_cast<int>(text.size())));
  attrset(A_NORMAL);
}

// A title line across the screen: reversed (or coloured) for the focused pane.
void title(int y, int width, const std::string& text, bool focused, const Palette& palette) {
  std::string line = clip(" " + text, width);
  line.resize(static_cast<size_t>(std::max(width, 0)), focused ? ' ' : '-');
  put(y, 0, line, focused ? palette.title_focused : palette.title);
}

int phase_attributes(const std::string& phase, const Palette& palette) {
  if (phase == "Ready") return palette.good;
  if (phase == "Failed" || phase == "NotReady" || phase == "Unhealthy") return palette.bad;
  if (phase.empty() || phase == "-") return 0;
  return palette.warn;
}

// A box of text lines in the middle of the screen, with an ASCII border (clean over any SSH).
void dialog_box(const std::string& heading, const std::vector<std::string>& lines, int attributes) {
  int rows = 0, cols = 0;
  getmaxyx(stdscr, rows, cols);
  size_t inner = heading.size() + 2;
  for (const auto& line : lines) inner = std::max(inner, line.size());
  int width = std::min(static_cast<int>(inner) + 4, cols);
  int height = std::min(static_cast<int>(lines.size()) + 2, rows);
  int top = std::max((rows - height) / 2, 0);
  int left = std::max((cols - width) / 2, 0);
  if (width < 4 || height < 2) return;
  std::string border = "+" + std::string(static_cast<size_t>(width - 2), '-') + "+";
  std::string top_border = border;
  top_border.replace(2, std::min(heading.size() + 2, static_cast<size_t>(width - 4)),
                     fit(" " + heading + " ", static_cast<size_t>(width - 4)));
  put(top, left, top_border, attributes | A_BOLD);
  for (int i = 0; i + 2 < height; ++i) {
    std::string text = fit(lines[static_cast<size_t>(i)], static_cast<size_t>(width - 4));
    text.resize(static_cast<size_t>(width - 4), ' ');
    std::string line = "| " + text + " |";
    put(top + 1 + i, left, line, attributes);
  }
  put(top + height - 1, left, border, attributes | A_BOLD);
}

void draw_dialog(const Model& model, const Palette& palette) {
  switch (model.dialog()) {
    case Dialog::None: return;
    case Dialog::Help: dialog_box("Help: nebula top", help_lines(), A_NORMAL); return;
    case Dialog::ScaleInput:
      dialog_box("Scale " + model.selected_deployment(),
                 {"Replicas: " + model.input() + "_", "", "Enter applies, Esc cancels (0..1000)"}, A_NORMAL);
      return;
    case Dialog::Confirm: {
      std::vector<std::string> lines = {model.confirm_question(), ""};
      for (const auto& detail : model.confirm_details()) lines.push_back(detail);
      lines.push_back("");
      lines.push_back("Press y to confirm, any other key to cancel [y/N]");
      dialog_box("Confirm", lines, palette.warn);
      return;
    }
    case Dialog::ModeList: {
      std::vector<std::string> lines;
      auto modes = model.mode_rows();
      for (size_t i = 0; i < modes.size(); ++i) {
        std::string deployments;
        for (const auto& name : modes[i].deployments) deployments += (deployments.empty() ? "" : ",") + name;
        lines.push_back(fmt::format("{} {:<16} {:<8} {}", i == model.mode_selection() ? ">" : " ", modes[i].name,
                                    modes[i].active ? "active" : "", deployments));
      }
      lines.push_back("");
      lines.push_back("Enter shows what the switch would do; Esc closes");
      dialog_box("Switch mode", lines, A_NORMAL);
      return;
    }
    case Dialog::ModePlanWaiting:
      dialog_box("Switch mode", {"Asking the server for the switch's dry run...", "", "Esc closes"}, A_NORMAL);
      return;
  }
}

std::string clock_text(int64_t now_ms) {
  std::time_t seconds = static_cast<std::time_t>(now_ms / 1000);
  std::tm local{};
  localtime_r(&seconds, &local);
  char text[16];
  std::strftime(text, sizeof text, "%H:%M:%S", &local);
  return text;
}

}  // namespace

void draw(const Model& model, const Palette& palette, int64_t now_ms) {
  int rows = 0, cols = 0;
  getmaxyx(stdscr, rows, cols);
  erase();
  auto gpus = model.gpu_rows();
  auto deployments = model.deployment_rows();
  Layout layout = compute_layout(rows, gpus.size(), deployments.size());

  // Header: where, whether connected, counts, the time.
  size_t gpu_count = std::count_if(gpus.begin(), gpus.end(), [](const GpuRow& row) { return row.has_gpu; });
  std::string counts =
      fmt::format("{} node{}  {} GPU{}  {} deployment{}", model.node_count(), model.node_count() == 1 ? "" : "s",
                  gpu_count, gpu_count == 1 ? "" : "s", deployments.size(), deployments.size() == 1 ? "" : "s");
  std::string head = " nebula top  " + printable(model.server()) + "  ";
  put(0, 0, head, A_BOLD);
  int x = static_cast<int>(head.size());
  std::string clock = clock_text(now_ms);
  int room = cols - x - static_cast<int>(clock.size()) - 2;
  std::string state = "connected";
  switch (model.link()) {
    case Link::Connecting: state = "connecting..."; break;
    case Link::Connected: break;
    case Link::Unreachable: state = "disconnected, retrying: " + model.connection_error(); break;
    case Link::Refused: state = "refused, retrying: " + model.connection_error(); break;
  }
  state = fit(state, static_cast<size_t>(std::max(room, 0)));
  put(0, x, state, model.connected() ? palette.good : palette.bad);
  x += static_cast<int>(state.size()) + 2;
  if (x + static_cast<int>(counts.size()) + static_cast<int>(clock.size()) + 2 < cols) put(0, x, counts);
  put(0, cols - static_cast<int>(clock.size()) - 1, clock);

  // Nodes and GPUs.
  if (layout.nodes.height > 0) {
    title(layout.nodes.top, cols, "NODES & GPUS", model.focus() == Pane::Nodes, palette);
    if (layout.nodes.height > 1) put(layout.nodes.top + 1, 0, gpu_header(cols), palette.column_header);
    size_t visible = static_cast<size_t>(std::max(layout.nodes.height - 2, 0));
    size_t first = std::min(model.nodes_scroll(), gpus.size() > visible ? gpus.size() - visible : 0);
    if (gpus.empty() && visible > 0) put(layout.nodes.top + 2, 1, "no node has joined yet", palette.dim);
    for (size_t i = 0; i < visible && first + i < gpus.size(); ++i) {
      const GpuRow& row = gpus[first + i];
      int y = layout.nodes.top + 2 + static_cast<int>(i);
      put(y, 0, gpu_line(row, cols));
      if (!row.node.empty())
        put(y, 14, column(row.node_state, 9),
            phase_attributes(row.node_state.substr(0, row.node_state.find(',')), palette));
    }
  }

  // Deployments.
  if (layout.deployments.height > 0) {
    title(layout.deployments.top, cols, "DEPLOYMENTS  (sorted by " + std::string(to_string(model.sort_key())) + ")",
          model.focus() == Pane::Deployments, palette);
    if (layout.deployments.height > 1) {
      put(layout.deployments.top + 1, 0, deployment_header(cols, model.sort_key(), model.sort_descending()),
          palette.column_header);
    }
    size_t visible = static_cast<size_t>(std::max(layout.deployments.height - 2, 0));
    std::string selected = model.selected_deployment();
    size_t at = 0;
    while (at < deployments.size() && deployments[at].name != selected) ++at;
    size_t first = at < deployments.size() && at >= visible ? at - visible + 1 : 0;
    if (deployments.empty() && visible > 0) {
      put(layout.deployments.top + 2, 1, "no deployments: `nebula deploy NAME --model M --engine E`", palette.dim);
    }
    for (size_t i = 0; i < visible && first + i < deployments.size(); ++i) {
      const DeploymentRow& row = deployments[first + i];
      int y = layout.deployments.top + 2 + static_cast<int>(i);
      if (row.name == selected) {
        std::string line = deployment_line(row, cols);
        line.resize(static_cast<size_t>(cols), ' ');
        put(y, 0, line, model.focus() == Pane::Deployments ? palette.selected : A_BOLD);
      } else {
        put(y, 0, deployment_line(row, cols));
        put(y, 27, column(row.phase.empty() ? "-" : row.phase, 12), phase_attributes(row.phase, palette));
      }
    }
  }

  // Events, or the logs being followed.
  if (layout.events.height > 0) {
    bool focused = model.focus() == Pane::Events;
    size_t visible = static_cast<size_t>(std::max(layout.events.height - 1, 0));
    if (const auto& logs = model.logs()) {
      title(layout.events.top, cols,
            fmt::format("LOGS {} (replica 0)  {}  [l or Esc closes]", printable(logs->deployment), logs->state),
            focused, palette);
      size_t total = logs->lines.size();
      size_t back = std::min(model.events_scroll(), total > visible ? total - visible : 0);
      size_t end = total - back;
      size_t begin = end > visible ? end - visible : 0;
      for (size_t i = begin; i < end; ++i) {
        put(layout.events.top + 1 + static_cast<int>(i - begin), 0, clip(logs->lines[i], cols));
      }
    } else {
      auto events = model.event_rows();
      title(layout.events.top, cols, "EVENTS", focused, palette);
      if (visible > 0) put(layout.events.top + 1, 0, event_header(cols), palette.column_header);
      size_t rows_shown = visible > 0 ? visible - 1 : 0;
      size_t first = std::min(model.events_scroll(), events.size() > rows_shown ? events.size() - rows_shown : 0);
      for (size_t i = 0; i < rows_shown && first + i < events.size(); ++i) {
        const EventRow& row = events[first + i];
        put(layout.events.top + 2 + static_cast<int>(i), 0, event_line(row, cols, now_ms),
            row.type == "Warning" ? palette.warn : 0);
      }
    }
  }

  // Footer: a message, a switch in progress, or the keys.
  if (layout.footer.height > 0) {
    std::string progress = model.progress();
    if (!model.message().empty()) {
      put(layout.footer.top, 0, " " + model.message(), model.message_is_error() ? palette.bad : palette.good);
    } else if (!progress.empty()) {
      put(layout.footer.top, 0, " " + progress, palette.warn);
    } else {
      put(layout.footer.top, 0, " Tab pane  j/k select  s scale  r restart  z sleep  l logs  m modes  ? help  q quit",
          palette.dim);
    }
  }
  draw_dialog(model, palette);
  refresh();
}

}  // namespace nebula::tui
