#pragma once
// Test only (defined in http_test.cpp, used by it and tls_test.cpp): one streaming route and the
// client-side check of it, so plain HTTP and HTTPS are held to the same expectation.
#include <string>

#include "common/asio.h"

#include <boost/asio/io_context.hpp>

#include "http/http.h"

namespace nebula::http::testing {

// GET handler: an event stream of five SSE events "0".."4", 5 ms apart, timed on io.
Handler five_events_route(asio::io_context& io);

// Streams url (a five_events_route) with client: status 200, the five events in order, and in
// more than one piece (the chunks were relayed as written, not buffered into one read).
void expect_five_events(BlockingClient& client, const std::string& url);

}  // namespace nebula::http::testing
