#pragma once
// `nebula top`: a full-screen terminal UI over the management API and the gateway's metrics.
// model.h is its state and keys, feed.h its network side, screen.h its drawing.
#include <string>

#include "tui/feed.h"
#include "tui/model.h"

namespace nebula::tui {

// Why this terminal cannot run the UI ("stdout is not a terminal", "terminal 'dumb' cannot
// move the cursor"), or "" when it can. Looks at the file descriptors and TERM only.
std::string terminal_problem();

// Runs the UI until `q` (or SIGINT, SIGTERM, SIGHUP) and returns the exit code: 0, or 1 with a
// message on stderr when the terminal cannot do full-screen.
int run(const Connection& connection);

}  // namespace nebula::tui
