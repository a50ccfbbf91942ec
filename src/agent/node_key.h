#pragma once
// The node key an agent is given when it joins (docs/security.md). Kept in <data-dir>/node.key,
// readable by its owner only, so a restarted agent proves that a live node's name is its own; and
// the server proves itself to the agent's listener with the key's hex SHA-256 (the server stores
// only that hash), so engine logs and metrics are served to the server alone.
#include <string>

#include "common/result.h"
#include "http/http.h"

namespace nebula::agent {

// The saved key, "" when there is none.
std::string load_node_key(const std::string& data_dir);
Status save_node_key(const std::string& data_dir, const std::string& key);

// True when the request carries "Authorization: Bearer <hex SHA-256 of node_key>". Always false
// before the agent has a key.
bool server_authorized(const http::Request& request, const std::string& node_key);

}  // namespace nebula::agent
