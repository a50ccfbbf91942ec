#pragma once
// What routing sees of a request (router::RouteContext), read from the request as admitted.
#include <string>

#include "common/json.h"
#include "gateway/request_json.h"
#include "http/http.h"
#include "router/policy.h"

namespace nebula::gateway {

// The request's routing context, but for the deployment, output estimate, priority and time the
// gateway fills in:
// - session_key: X-Session-Id, else the body's `user`, else `conversation_root` (the first
//   response of the chain a previous_response_id continues, so every turn has one key);
// - prefix_hashes: block hashes of the prompt text: the messages of `translated_chat` when given
//   (a Responses request, as the engine gets it), else the prompt text the request holds;
// - prompt_tokens: the estimate the limits charge, (prompt bytes + prior_bytes) / 4 + 1.
router::RouteContext route_context(const http::Request& request, const RequestFacts& facts, const json* translated_chat,
                                   const std::string& conversation_root, int64_t prior_bytes);

// The contents of a chat body's messages (strings, or the text of content parts) in order, up
// to kPromptTextLimit bytes.
std::string chat_prompt_text(const json& chat);

}  // namespace nebula::gateway
