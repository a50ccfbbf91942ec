#include "gateway/route_context.h"

namespace nebula::gateway {

namespace {
// The routing session: X-Session-Id, else the body's `user`, else the conversation a
// previous_response_id continues (the id of its first response, the same for every turn).
std::string session_key(const http::Request& request, const RequestFacts& facts, const std::string& conversation_root) {
  std::string header = request.header("x-session-id");
  if (!header.empty()) return header;
  if (!facts.user.empty()) return facts.user;
  return conversation_root;
}
}  // namespace

std::string chat_prompt_text(const json& chat) {
  std::string text;
  auto append = [&text](const json& value) {
    if (!value.is_string() || text.size() >= kPromptTextLimit) return;
    const auto& piece = value.get_ref<const std::string&>();
    text.append(piece, 0, kPromptTextLimit - text.size());
  };
  auto messages = chat.find("messages");
  if (messages == chat.end() || !messages->is_array()) return text;
  for (const auto& message : *messages) {
    if (!message.is_object()) continue;
    auto content = message.find("content");
    if (content == message.end()) continue;
    if (content->is_array()) {
      for (const auto& part : *content) {
        if (part.is_object() && part.contains("text")) append(part["text"]);
      }
    } else {
      append(*content);
    }
  }
  return text;
}

router::RouteContext route_context(const http::Request& request, const RequestFacts& facts, const json* translated_chat,
                                   const std::string& conversation_root, int64_t prior_bytes) {
  router::RouteContext context;
  context.session_key = session_key(request, facts, conversation_root);
  if (translated_chat) {
    context.prefix_hashes = router::block_hashes(chat_prompt_text(*translated_chat));
  } else {
    context.prefix_hashes = router::block_hashes(facts.prompt_text);
  }
  context.prompt_tokens = (facts.prompt_bytes + prior_bytes) / 4 + 1;
  return context;
}

}  // namespace nebula::gateway
