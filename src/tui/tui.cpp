#include "tui/tui.h"

#include <curses.h>
#include <signal.h>
#include <term.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <iostream>

#include "tui/screen.h"

namespace nebula::tui {

namespace {

volatile sig_atomic_t stop_requested = 0;

void request_stop(int) {
  stop_requested = 1;
}

// The terminal's key codes as the model's.
int translate(int key) {
  switch (key) {
    case KEY_UP: return keys::kUp;
    case KEY_DOWN: return keys::kDown;
    case KEY_PPAGE: return keys::kPageUp;
    case KEY_NPAGE: return keys::kPageDown;
    case KEY_HOME: return keys::kHome;
    case KEY_END: return keys::kEnd;
    case KEY_BTAB: return keys::kBackTab;
    case KEY_ENTER:
    case '\r': return keys::kEnter;
    case KEY_BACKSPACE:
    case KEY_DC:
    case 8: return keys::kBackspace;
    default: return key;
  }
}

int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

std::string terminal_problem() {
  if (!isatty(STDOUT_FILENO)) return "stdout is not a terminal";
  if (!isatty(STDIN_FILENO)) return "stdin is not a terminal";
  const char* term = std::getenv("TERM");
  if (!term || !*term) return "TERM is not set";
  int error = 0;
  if (setupterm(term, STDOUT_FILENO, &error) != OK) {
    return "terminal type '" + std::string(term) + "' is unknown to this system's terminfo";
  }
  // Full-screen needs cursor addressing; `dumb` and printing terminals have none.
  char* move_cursor = tigetstr(const_cast<char*>("cup"));
  char* clear = tigetstr(const_cast<char*>("clear"));
  bool capable =
      move_cursor && move_cursor != reinterpret_cast<char*>(-1) && clear && clear != reinterpret_cast<char*>(-1);
  del_curterm(cur_term);
  if (!capable) return "terminal '" + std::string(term) + "' cannot move the cursor";
  return "";
}

int run(const Connection& connection) {
  if (std::string problem = terminal_problem(); !problem.empty()) {
    std::cerr << "error: nebula top needs a full-screen terminal: " << problem << "\n"
              << "(without one, `nebula ls`, `nebula gpus` and `nebula events` show the same)\n";
    return 1;
  }
  SCREEN* screen = newterm(nullptr, stdout, stdin);
  if (!screen) {
    std::cerr << "error: nebula top cannot set up the terminal\n";
    return 1;
  }
  set_term(screen);
  cbreak();
  noecho();
  nonl();
  keypad(stdscr, TRUE);
  curs_set(0);
  set_escdelay(25);
  timeout(100);  // getch waits at most this long, so updates show without a key press
  Palette palette = make_palette();

  struct sigaction action {};
  action.sa_handler = request_stop;
  sigemptyset(&action.sa_mask);
  for (int signal_number : {SIGINT, SIGTERM, SIGHUP}) sigaction(signal_number, &action, nullptr);

  {
    Inbox inbox;
    Model model(connection.server);
    Feed feed(connection, inbox);
    bool dirty = true;
    auto drawn = std::chrono::steady_clock::now();
    while (!stop_requested) {
      if (inbox.apply(model)) dirty = true;
      auto now = std::chrono::steady_clock::now();
      // Ages and the clock move every second even when nothing else does.
      if (dirty || now - drawn >= std::chrono::seconds(1)) {
        draw(model, palette, wall_ms());
        drawn = now;
        dirty = false;
      }
      int key = getch();
      if (key == ERR) continue;
      dirty = true;
      if (key == KEY_RESIZE) continue;  // ncurses has the new size; the next draw uses it
      KeyResult result = model.handle_key(translate(key));
      if (result.command) feed.submit(std::move(*result.command));
      if (result.quit) break;
    }
  }
  endwin();
  delscreen(screen);
  return 0;
}

}  // namespace nebula::tui
