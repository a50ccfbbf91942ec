#pragma once
// Drawing `nebula top` with ncurses from a Model: erase(), draw everything, refresh(), so
// ncurses sends the terminal only what changed (no flicker). The layout and the text of every
// row are pure functions, tested without a terminal; only draw() touches ncurses.
#include <cstdint>
#include <string>
#include <vector>

#include "tui/model.h"

namespace nebula::tui {

struct Rect {
  int top = 0;
  int height = 0;
};

// Header line, three panes (each a title line, a column header, rows), footer line, for a
// terminal of `rows` x any width. The nodes and deployments panes take what their rows need, up to
// about a third each; the events pane the rest. A pane may get 0 lines on a tiny terminal.
struct Layout {
  Rect header, nodes, deployments, events, footer;
};
Layout compute_layout(int rows, size_t gpu_rows, size_t deployment_rows);

// Column headers and rows, cut to `width`.
std::string gpu_header(int width);
std::string gpu_line(const GpuRow& row, int width);
std::string deployment_header(int width, SortKey sort, bool descending);
std::string deployment_line(const DeploymentRow& row, int width);
std::string event_header(int width);
std::string event_line(const EventRow& row, int width, int64_t now_ms);
// The help overlay's lines.
const std::vector<std::string>& help_lines();

// Attributes (ncurses attr_t values) for each kind of text; colours only when the terminal has
// them, else bold, reverse and dim.
struct Palette {
  int title = 0;          // a pane's title line
  int title_focused = 0;  // the focused pane's
  int column_header = 0;
  int selected = 0;
  int good = 0;  // Ready
  int warn = 0;  // Pending, warnings
  int bad = 0;   // Failed, errors, disconnected
  int dim = 0;
};
// Call once after the terminal is set up.
Palette make_palette();

// Draws the whole screen for the terminal's current size.
void draw(const Model& model, const Palette& palette, int64_t now_ms);

}  // namespace nebula::tui
