#include "auth/auth.h"

#include <gtest/gtest.h>

#include "api/api.h"
#include "common/clock.h"
#include "common/ids.h"
#include "http/test_server.h"
#include "store/memory_store.h"

namespace nebula::auth {
namespace {

TEST(Keys, AuthenticateKnowsRevokedAndExpired) {
  FakeClock clock;
  store::MemoryStore store(clock);
  KeyRing ring;
  ASSERT_TRUE(ring.start(store));
  api::ApiKey key;
  key.display_name = "alice";
  auto created = create_key(store, key, 1000);
  ASSERT_TRUE(created);
  EXPECT_EQ(created->secret.rfind("nb-" + created->key.metadata.name + "_", 0), 0u);
  EXPECT_EQ(created->key.hash, sha256_hex(created->secret));
  EXPECT_TRUE(ring.authenticate(created->secret, 2000));
  EXPECT_EQ(ring.authenticate("nb-wrong", 2000).error().code, ErrorCode::Unauthenticated);
  EXPECT_FALSE(ring.authenticate("", 2000));

  api::ApiKey expiring;
  expiring.display_name = "bob";
  expiring.expires_ms = 5000;
  auto short_lived = create_key(store, expiring, 1000);
  ASSERT_TRUE(short_lived);
  EXPECT_TRUE(ring.authenticate(short_lived->secret, 4999));
  EXPECT_NE(ring.authenticate(short_lived->secret, 5000).error().message.find("expired"), std::string::npos);

  ASSERT_TRUE(revoke_key(store, created->key.metadata.name));
  EXPECT_NE(ring.authenticate(created->secret, 2000).error().message.find("revoked"), std::string::npos);
  // The stored document never holds the secret.
  auto stored = store.get(std::string(api::kKeyRoot) + "apikeys/" + created->key.metadata.name);
  EXPECT_EQ((*stored)->value.find(created->secret), std::string::npos);
}

// A key revoked by this process is refused at once, before the watch brings the revocation, and
// an event the watch delivers afterwards with the key not yet revoked (an older write, or one
// racing the revocation) does not undo it.
TEST(KeyRing, AKeyRevokedHereIsRefusedAtOnceAndStaysRefused) {
  store::MemoryStore store;
  KeyRing ring;
  ASSERT_TRUE(ring.start(store));
  api::ApiKey key;
  key.display_name = "carol";
  auto created = create_key(store, key, 1000);
  ASSERT_TRUE(created);
  const std::string id = created->key.metadata.name;
  ASSERT_TRUE(ring.authenticate(created->secret, 2000));

  ring.revoked_here(id);  // the store still holds it unrevoked
  auto refused = ring.authenticate(created->secret, 2000);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("revoked"), std::string::npos);

  ASSERT_TRUE(record_last_use(store, {{id, 3000}}));  // rewrites the document, revoked: false
  EXPECT_FALSE(ring.authenticate(created->secret, 4000));
  ring.revoked_here("nosuchkey");  // unknown ids are harmless
  EXPECT_EQ(ring.size(), 1u);
}

http::Request request_with(const std::string& method, const std::string& path, const std::string& secret) {
  http::Request request;
  request.method = method;
  request.path = path;
  request.target = path;
  if (!secret.empty()) request.headers.push_back({"Authorization", "Bearer " + secret});
  return request;
}

std::string secret_of(store::Store& store, const std::string& scope) {
  api::ApiKey key;
  key.display_name = scope + "-key";
  key.scope = scope;
  auto created = create_key(store, key, to_unix_ms(std::chrono::system_clock::now()));
  return created ? created->secret : "";
}

TEST(Guard, WithoutRequiredKeysEverythingPasses) {
  store::MemoryStore store;
  Guard guard(store, false);
  ASSERT_TRUE(guard.start());
  std::shared_ptr<const api::ApiKey> key;
  EXPECT_FALSE(guard.inference_refusal(request_with("POST", "/v1/chat/completions", ""), key));
  EXPECT_EQ(key, nullptr);
  EXPECT_FALSE(guard.management_refusal(request_with("DELETE", "/api/v1/deployments/x", "nb-garbage")));
}

TEST(Guard, InferenceNeedsAValidKeyAndNoNodeKey) {
  store::MemoryStore store;
  Guard guard(store, true);
  ASSERT_TRUE(guard.start());
  std::string inference = secret_of(store, api::scope::kInference);
  std::shared_ptr<const api::ApiKey> key;
  auto missing = guard.inference_refusal(request_with("POST", "/v1/chat/completions", ""), key);
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 401);
  EXPECT_NE(missing->body.find("invalid_api_key"), std::string::npos);
  auto wrong = guard.inference_refusal(request_with("POST", "/v1/chat/completions", "nb-x_00"), key);
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 401);
  EXPECT_FALSE(guard.inference_refusal(request_with("POST", "/v1/chat/completions", inference), key));
  ASSERT_NE(key, nullptr);
  EXPECT_EQ(key->scope, api::scope::kInference);

  auto node_secret = guard.issue_node_key("gpu-1");
  ASSERT_TRUE(node_secret);
  std::shared_ptr<const api::ApiKey> node_key;
  auto node = guard.inference_refusal(request_with("POST", "/v1/chat/completions", *node_secret), node_key);
  ASSERT_TRUE(node);
  EXPECT_EQ(node->status, 403);
  EXPECT_EQ(node_key, nullptr);
  // Listing models takes any valid key, a node's included.
  EXPECT_FALSE(guard.listing_refusal(request_with("GET", "/v1/models", *node_secret), node_key));
  EXPECT_EQ(guard.listing_refusal(request_with("GET", "/v1/models", ""), node_key)->status, 401);
}

TEST(Guard, ManagementTakesAdminsAndANodeForItsOwnNodeOnly) {
  store::MemoryStore store;
  Guard guard(store, true);
  ASSERT_TRUE(guard.start());
  std::string admin = secret_of(store, api::scope::kAdmin);
  std::string inference = secret_of(store, api::scope::kInference);
  auto node = guard.issue_node_key("gpu-1");
  ASSERT_TRUE(node);
  api::Replica replica;
  replica.metadata.name = "r1";
  replica.spec.node = "gpu-1";
  ASSERT_TRUE(store.put(api::store_key("replicas", "r1"), api::to_json(replica).dump()));
  replica.metadata.name = "r2";
  replica.spec.node = "gpu-2";
  ASSERT_TRUE(store.put(api::store_key("replicas", "r2"), api::to_json(replica).dump()));

  auto status = [&](const std::string& method, const std::string& path, const std::string& secret) {
    auto refusal = guard.management_refusal(request_with(method, path, secret));
    return refusal ? refusal->status : 0;
  };
  EXPECT_EQ(status("GET", "/api/v1/deployments", admin), 0);
  EXPECT_EQ(status("GET", "/metrics", admin), 0);
  EXPECT_EQ(status("GET", "/metrics", ""), 401);
  EXPECT_EQ(status("GET", "/api/v1/deployments", inference), 403);
  EXPECT_EQ(status("POST", "/api/v1/nodes/join", ""), 0) << "joining carries its own token";
  EXPECT_EQ(status("GET", "/v1/models", ""), 0) << "not the management API";

  EXPECT_EQ(status("GET", "/api/v1/replicas", *node), 0);
  EXPECT_EQ(status("PUT", "/api/v1/nodes/gpu-1/status", *node), 0);
  EXPECT_EQ(status("PUT", "/api/v1/nodes/gpu-2/status", *node), 403);
  EXPECT_EQ(status("PUT", "/api/v1/replicas/r1/status", *node), 0);
  EXPECT_EQ(status("DELETE", "/api/v1/replicas/r1", *node), 0);
  EXPECT_EQ(status("PUT", "/api/v1/replicas/r2/status", *node), 403);
  EXPECT_EQ(status("DELETE", "/api/v1/replicas/r2", *node), 403);
  EXPECT_EQ(status("DELETE", "/api/v1/deployments/x", *node), 403);
  EXPECT_EQ(status("PUT", "/api/v1/replicas/a/b/status", *node), 403) << "a name with a slash is no name";
  EXPECT_EQ(status("PUT", "/api/v1/nodes//status", *node), 403);
  EXPECT_EQ(status("PUT", "/api/v1/replicas/unknown/status", *node), 0) << "left to the handler's 404";

  // A node that joins again gets a new key; the old one stops working.
  auto again = guard.issue_node_key("gpu-1");
  ASSERT_TRUE(again);
  EXPECT_EQ(status("GET", "/api/v1/replicas", *again), 0);
  EXPECT_EQ(status("GET", "/api/v1/replicas", *node), 401);
}

TEST(Guard, TheBootstrapAdminKeyIsMadeOnce) {
  store::MemoryStore store;
  Guard guard(store, true);
  ASSERT_TRUE(guard.start());
  auto first = guard.bootstrap_admin_key();
  ASSERT_TRUE(first);
  EXPECT_FALSE(first->empty());
  EXPECT_EQ(guard.management_refusal(request_with("GET", "/api/v1/keys", *first)), std::nullopt);
  auto second = guard.bootstrap_admin_key();
  ASSERT_TRUE(second);
  EXPECT_TRUE(second->empty());
}

// /api/v1/keys over a real socket, with bad requests among the good.
TEST(Guard, KeyRoutesCreateListAndRevoke) {
  store::MemoryStore store;
  Guard guard(store, true);
  ASSERT_TRUE(guard.start());
  http::testing::ServerThread server;
  http::Router router;
  guard.add_routes(router);
  ASSERT_TRUE(server.start(std::move(router)));
  http::BlockingClient client;
  auto post = [&](const std::string& body) { return client.request("POST", server.url() + "/api/v1/keys", body); };

  for (const char* bad : {"", "{not json", "[1]", R"({"scope":"inference"})", R"({"name":"n","scope":"node"})",
                          R"({"name":"n","scope":"root"})", R"({"name":"n","rpm":"lots"})", R"({"name":"n","rpm":-1})",
                          R"({"name":"n","expires":"soon"})", R"({"name":["n"]})"}) {
    auto refused = post(bad);
    ASSERT_TRUE(refused) << bad;
    EXPECT_EQ(refused->status, 400) << bad << ": " << refused->body;
    EXPECT_NE(refused->body.find("invalid_request"), std::string::npos) << bad;
  }
  EXPECT_EQ(client.request("GET", server.url() + "/api/v1/keys")->body, R"({"items":[]})") << "nothing was stored";

  auto created = post(R"({"name":"alice","models":["chat"],"rpm":5,"expires":"1h"})");
  ASSERT_TRUE(created);
  ASSERT_EQ(created->status, 201) << created->body;
  json answer = json::parse(created->body);
  EXPECT_EQ(answer["enforced"], true);
  std::string secret = answer["secret"];
  std::string id = answer["key"]["metadata"]["name"];
  EXPECT_GT(answer["key"]["expires_ms"].get<int64_t>(), 0);
  std::shared_ptr<const api::ApiKey> key;
  EXPECT_FALSE(guard.inference_refusal(request_with("POST", "/v1/chat/completions", secret), key));

  auto listed = client.request("GET", server.url() + "/api/v1/keys");
  ASSERT_TRUE(listed);
  EXPECT_NE(listed->body.find(id), std::string::npos);
  EXPECT_EQ(listed->body.find(secret), std::string::npos) << "a secret is shown once";
  EXPECT_EQ(listed->body.find(sha256_hex(secret)), std::string::npos) << "nor its hash";

  EXPECT_EQ(client.request("DELETE", server.url() + "/api/v1/keys/nope")->status, 404);
  auto revoked = client.request("DELETE", server.url() + "/api/v1/keys/" + id);
  ASSERT_TRUE(revoked);
  EXPECT_EQ(revoked->status, 200);
  EXPECT_EQ(json::parse(revoked->body)["revoked"], true);
  auto refusal = guard.inference_refusal(request_with("POST", "/v1/chat/completions", secret), key);
  ASSERT_TRUE(refusal);
  EXPECT_EQ(refusal->status, 401);
  server.stop();
}

// A key made an instant ago elsewhere is looked up in the store; a flood of random well-formed
// secrets is not a flood of store reads.
TEST(Keys, UnknownSecretsAreLookedUpWithinABudget) {
  FakeClock clock;
  store::MemoryStore store(clock);
  KeyRing ring;
  ASSERT_TRUE(ring.start(store));
  auto started = std::chrono::steady_clock::now();
  for (int i = 0; i < 2000; ++i) {
    std::string secret = "nb-" + random_id(8) + "_" + random_id(32);
    EXPECT_FALSE(ring.authenticate(secret, 2000));
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_GE(ring.store_lookups(), 50u);
  EXPECT_LE(ring.store_lookups(), 51u + static_cast<uint64_t>(seconds * 50)) << seconds << " s";
  // Malformed secrets never reach the store.
  uint64_t before = ring.store_lookups();
  for (const std::string& bad :
       std::vector<std::string>{"nb-", "nb-_x", "nb-ABC_x", "sk-abc_def", std::string(300, 'n'), "nb-a/b_c"}) {
    EXPECT_FALSE(ring.authenticate(bad, 2000));
  }
  EXPECT_EQ(ring.store_lookups(), before);
}

TEST(Keys, LastUseIsNotedOnSuccessOnlyAndWrittenWithoutGoingBack) {
  FakeClock clock;
  store::MemoryStore store(clock);
  KeyRing ring;
  ASSERT_TRUE(ring.start(store));
  api::ApiKey key;
  key.display_name = "alice";
  auto created = create_key(store, key, 1000);
  ASSERT_TRUE(created);
  const std::string id = created->key.metadata.name;
  const std::string path = std::string(api::kKeyRoot) + "apikeys/" + id;
  auto stored_last_use = [&] {
    auto stored = store.get(path);
    return api::api_key_from_json(*parse_json((*stored)->value))->last_used_ms;
  };
  EXPECT_EQ(ring.last_use(id), 0);
  EXPECT_TRUE(ring.take_unrecorded_uses().empty());
  // A wrong secret is no use of any key.
  EXPECT_FALSE(ring.authenticate("nb-" + id + "_00000000000000000000000000000000", 2000));
  EXPECT_TRUE(ring.take_unrecorded_uses().empty());

  ASSERT_TRUE(ring.authenticate(created->secret, 3000));
  ASSERT_TRUE(ring.authenticate(created->secret, 2500));  // an older clock reading keeps the newer
  EXPECT_EQ(ring.last_use(id), 3000);
  auto uses = ring.take_unrecorded_uses();
  ASSERT_EQ(uses.size(), 1u);
  EXPECT_EQ(uses[id], 3000);
  EXPECT_TRUE(ring.take_unrecorded_uses().empty());
  ASSERT_TRUE(record_last_use(store, uses));
  EXPECT_EQ(stored_last_use(), 3000);
  // An older time never overwrites a newer one, and a key deleted meanwhile is not recreated.
  ASSERT_TRUE(record_last_use(store, {{id, 2000}}));
  EXPECT_EQ(stored_last_use(), 3000);
  ASSERT_TRUE(record_last_use(store, {{"gone1234", 5000}}));
  EXPECT_FALSE(*store.get(std::string(api::kKeyRoot) + "apikeys/gone1234"));
  // Revoking keeps the last use, and a revoked key's attempts are not uses.
  ASSERT_TRUE(revoke_key(store, id));
  EXPECT_EQ(stored_last_use(), 3000);
  EXPECT_FALSE(ring.authenticate(created->secret, 9000));
  EXPECT_TRUE(ring.take_unrecorded_uses().empty());
}

TEST(Guard, WritesTheLastUseOfKeysAndListsTheNewestAtOnce) {
  store::MemoryStore store;
  auto guard = std::make_unique<Guard>(store, true, std::chrono::hours(1));
  ASSERT_TRUE(guard->start());
  auto admin = guard->bootstrap_admin_key();
  ASSERT_TRUE(admin);
  EXPECT_EQ(guard->management_refusal(request_with("GET", "/api/v1/keys", *admin)), std::nullopt);
  std::string id = admin->substr(3, 8);
  std::string path = std::string(api::kKeyRoot) + "apikeys/" + id;
  EXPECT_GT(guard->keys().last_use(id), 0);
  // Not written yet (the interval is an hour): the destructor writes what is left.
  EXPECT_EQ(api::api_key_from_json(*parse_json((*store.get(path))->value))->last_used_ms, 0);
  int64_t noted = guard->keys().last_use(id);
  guard.reset();
  EXPECT_EQ(api::api_key_from_json(*parse_json((*store.get(path))->value))->last_used_ms, noted);
}

}  // namespace
}  // namespace nebula::auth
