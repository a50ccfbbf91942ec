// Ollama's model management API for engine-sim's ollama dialect: models are "pulled" instantly
// into a per-server list and "loaded" by name. Text still comes from the OpenAI endpoints, which
// every dialect serves.
#include <fmt/format.h>

#include <chrono>
#include <map>
#include <memory>
#include <set>

#include "sim/formats.h"
#include "sim/sim.h"

namespace nebula::sim {
namespace {

// Lives on the server's one I/O thread, like the engine.
struct OllamaState {
  std::map<std::string, std::string> pulled;  // normalized name -> digest
  std::set<std::string> loaded;
};

std::string normalized(const std::string& name) {
  return name.find(':') == std::string::npos ? name + ":latest" : name;
}

std::string now_text() {
  auto seconds =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::time_t time = static_cast<std::time_t>(seconds);
  std::tm utc{};
  gmtime_r(&time, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

http::Response json_answer(int status, const json& body) {
  return http::Response{status, {{"Content-Type", "application/json; charset=utf-8"}}, body.dump()};
}

http::Response error_answer(int status, const std::string& message) {
  return json_answer(status, json{{"error", message}});
}

awaitable<void> send(http::ResponseWriter& writer, http::Response response) {
  co_await writer.send(std::move(response));
}

// The request body as an object with a string "model" (or the older "name"), or an error answer.
Result<json> model_request(const std::string& body, std::string& model) {
  auto parsed = parse_json(body);
  if (!parsed || !parsed->is_object()) return Error{ErrorCode::InvalidArgument, "the body must be a JSON object"};
  for (const char* field : {"model", "name"}) {
    if (parsed->contains(field) && (*parsed)[field].is_string()) model = (*parsed)[field].get<std::string>();
  }
  if (model.empty()) return Error{ErrorCode::InvalidArgument, "model is required"};
  return parsed;
}

json model_entry(const std::string& name, const std::string& digest) {
  return json{
      {"name", name},
      {"model", name},
      {"modified_at", now_text()},
      {"size", 4'000'000'000},
      {"digest", digest},
      {"details", {{"format", "gguf"}, {"family", "sim"}, {"parameter_size", "8B"}, {"quantization_level", "Q4_K_M"}}}};
}

// keep_alive 0 (a number, or a duration like "0" / "0s" / "0m") unloads.
bool unloads(const json& body) {
  auto keep_alive = body.find("keep_alive");
  if (keep_alive == body.end()) return false;
  if (keep_alive->is_number()) return keep_alive->get<double>() == 0;
  if (!keep_alive->is_string()) return false;
  std::string text = keep_alive->get<std::string>();
  return !text.empty() && std::strtod(text.c_str(), nullptr) == 0 && text[0] >= '0' && text[0] <= '9';
}

http::Response tags(const OllamaState& state) {
  json models = json::array();
  for (const auto& [name, digest] : state.pulled) models.push_back(model_entry(name, digest));
  return json_answer(200, json{{"models", models}});
}

http::Response running(const OllamaState& state) {
  json models = json::array();
  for (const std::string& name : state.loaded) {
    json entry = model_entry(name, state.pulled.at(name));
    entry["size_vram"] = entry["size"];
    entry["expires_at"] = "2318-01-01T00:00:00Z";  // keep_alive -1: until unloaded
    models.push_back(entry);
  }
  return json_answer(200, json{{"models", models}});
}

http::Response pull(OllamaState& state, const std::string& body) {
  std::string model;
  auto parsed = model_request(body, model);
  if (!parsed) return error_answer(400, parsed.error().message);
  std::string name = normalized(model);
  state.pulled[name] = fmt::format("sha256:{:016x}{:048x}", std::hash<std::string>{}(name), 0);
  bool stream = parsed->value("stream", true);
  if (!stream) return json_answer(200, json{{"status", "success"}});
  std::string lines;
  for (const char* status : {"pulling manifest", "verifying sha256 digest", "writing manifest", "success"}) {
    lines += json{{"status", status}}.dump() + "\n";
  }
  return http::Response{200, {{"Content-Type", "application/x-ndjson"}}, lines};
}

http::Response copy(OllamaState& state, const std::string& body) {
  auto parsed = parse_json(body);
  if (!parsed || !parsed->is_object() || !parsed->contains("source") || !parsed->contains("destination") ||
      !(*parsed)["source"].is_string() || !(*parsed)["destination"].is_string()) {
    return error_answer(400, "source and destination are required");
  }
  auto source = state.pulled.find(normalized((*parsed)["source"].get<std::string>()));
  if (source == state.pulled.end()) {
    return error_answer(404, fmt::format("model '{}' not found", (*parsed)["source"].get<std::string>()));
  }
  state.pulled[normalized((*parsed)["destination"].get<std::string>())] = source->second;
  return http::Response{200, {}, ""};
}

http::Response remove(OllamaState& state, const std::string& body) {
  std::string model;
  auto parsed = model_request(body, model);
  if (!parsed) return error_answer(400, parsed.error().message);
  if (state.pulled.erase(normalized(model)) == 0) return error_answer(404, fmt::format("model '{}' not found", model));
  state.loaded.erase(normalized(model));
  return http::Response{200, {}, ""};
}

// Without a prompt, /api/generate loads the model (or unloads it with keep_alive 0).
http::Response generate(OllamaState& state, const std::string& body) {
  std::string model;
  auto parsed = model_request(body, model);
  if (!parsed) return error_answer(400, parsed.error().message);
  std::string name = normalized(model);
  if (!state.pulled.count(name))
    return error_answer(404, fmt::format("model '{}' not found, try pulling it first", model));
  if (parsed->contains("prompt") && (*parsed)["prompt"].is_string() &&
      !(*parsed)["prompt"].get<std::string>().empty()) {
    return error_answer(400,
                        "engine-sim's ollama dialect generates text on /v1/chat/completions; /api/generate "
                        "only loads and unloads models");
  }
  bool unload = unloads(*parsed);
  if (unload) {
    state.loaded.erase(name);
  } else {
    state.loaded.insert(name);
  }
  return json_answer(200, json{{"model", model},
                               {"created_at", now_text()},
                               {"response", ""},
                               {"done", true},
                               {"done_reason", unload ? "unload" : "load"}});
}

}  // namespace

void add_ollama_routes(http::Router& router, std::function<DialectContext()>) {
  auto state = std::make_shared<OllamaState>();
  router.add("GET", "/", [](http::Request&, http::ResponseWriter& writer) {
    return send(writer, http::Response::text(200, "Ollama is running"));
  });
  router.add("GET", "/api/version", [](http::Request&, http::ResponseWriter& writer) {
    return send(writer, json_answer(200, json{{"version", "0.0.0-nebula-sim"}}));
  });
  router.add("GET", "/api/tags",
             [state](http::Request&, http::ResponseWriter& writer) { return send(writer, tags(*state)); });
  router.add("GET", "/api/ps",
             [state](http::Request&, http::ResponseWriter& writer) { return send(writer, running(*state)); });
  router.add("POST", "/api/pull", [state](http::Request& request, http::ResponseWriter& writer) {
    return send(writer, pull(*state, request.body));
  });
  router.add("POST", "/api/copy", [state](http::Request& request, http::ResponseWriter& writer) {
    return send(writer, copy(*state, request.body));
  });
  router.add("DELETE", "/api/delete", [state](http::Request& request, http::ResponseWriter& writer) {
    return send(writer, remove(*state, request.body));
  });
  router.add("POST", "/api/generate", [state](http::Request& request, http::ResponseWriter& writer) {
    return send(writer, generate(*state, request.body));
  });
}

}  // namespace nebula::sim
