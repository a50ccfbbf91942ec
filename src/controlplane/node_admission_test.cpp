#include "controlplane/node_admission.h"

#include <gtest/gtest.h>

#include "common/ids.h"
#include "store/forwarding_store.h"
#include "store/memory_store.h"

namespace nebula::controlplane {
namespace {

api::Gpu gpu(int index, int64_t total_mb) {
  api::Gpu value;
  value.index = index;
  value.uuid = "GPU-" + std::to_string(index);
  value.name = "H100";
  value.memory_total_mb = total_mb;
  return value;
}

TEST(NodeAdmission, ANodeIsLiveWhileReadyAndRecentlyHeard) {
  api::Node node;
  node.status.ready = true;
  node.status.heartbeat_ms = 100'000;
  EXPECT_TRUE(node_live(node, 110'000, std::chrono::seconds(30)));
  EXPECT_FALSE(node_live(node, 140'001, std::chrono::seconds(30)));
  node.status.ready = false;
  EXPECT_FALSE(node_live(node, 100'000, std::chrono::seconds(30)));
}

TEST(NodeAdmission, GpuReportsMustBePlausible) {
  EXPECT_TRUE(check_gpus({gpu(0, 81920), gpu(1, 196608)}).ok());
  EXPECT_TRUE(check_gpus({}).ok());
  EXPECT_FALSE(check_gpus({gpu(0, 976LL << 30)}).ok());
  EXPECT_FALSE(check_gpus({gpu(0, 81920), gpu(0, 81920)}).ok());
  EXPECT_FALSE(check_gpus({gpu(-1, 81920)}).ok());
  std::vector<api::Gpu> many;
  for (int i = 0; i < 65; ++i) many.push_back(gpu(i, 81920));
  EXPECT_FALSE(check_gpus(many).ok());
  auto hot = gpu(0, 81920);
  hot.utilization = 250;
  EXPECT_FALSE(check_gpus({hot}).ok());
}

TEST(NodeAdmission, AChangedGpuSetIsDescribed) {
  EXPECT_EQ(gpu_change({gpu(0, 81920), gpu(1, 81920)}, {gpu(1, 81920), gpu(0, 81920)}), "");
  auto used = gpu(0, 81920);
  used.memory_used_mb = 4000;
  EXPECT_EQ(gpu_change({gpu(0, 81920)}, {used}), "");
  EXPECT_NE(gpu_change({gpu(0, 81920)}, {gpu(0, 976LL << 20)}).find("GPUs changed"), std::string::npos);
}

TEST(NodeAdmission, EndpointsMustBeOnTheReportingNode) {
  EXPECT_TRUE(check_endpoint("http://127.0.0.1:8000", "127.0.0.1").ok());
  EXPECT_TRUE(check_endpoint("http://localhost:8000", "::1").ok());
  EXPECT_TRUE(check_endpoint("http://10.0.0.5:8000", "10.0.0.5").ok());
  EXPECT_TRUE(check_endpoint("http://10.0.0.5:8000", "::ffff:10.0.0.5").ok());
  EXPECT_TRUE(check_endpoint("", "10.0.0.5").ok());
  EXPECT_EQ(check_endpoint("http://127.0.0.1:6379", "10.0.0.5").error().code, ErrorCode::PermissionDenied);
  EXPECT_EQ(check_endpoint("http://10.0.0.6:8000", "10.0.0.5").error().code, ErrorCode::PermissionDenied);
  EXPECT_EQ(check_endpoint("gopher://10.0.0.5:70", "10.0.0.5").error().code, ErrorCode::InvalidArgument);
}

TEST(NodeAdmission, LoaderEnvironmentNeedsKeys) {
  for (const std::string key : {"LD_PRELOAD", "LD_LIBRARY_PATH", "DYLD_INSERT_LIBRARIES", "PYTHONPATH", "PATH",
                                "NODE_OPTIONS", "GLIBC_TUNABLES", "BASH_ENV"}) {
    EXPECT_TRUE(loader_env_key(key)) << key;
    auto refused = check_engine_env({{key, "x"}}, false);
    ASSERT_FALSE(refused.ok()) << key;
    EXPECT_NE(refused.error().message.find(key), std::string::npos);
    EXPECT_TRUE(check_engine_env({{key, "x"}}, true).ok()) << key;
  }
  for (const std::string key :
       {"PYTHONUNBUFFERED", "VLLM_LOGGING_LEVEL", "CUDA_LAUNCH_BLOCKING", "HF_HOME", "ld_preload"}) {
    EXPECT_FALSE(loader_env_key(key)) << key;
  }
}

TEST(NodeAdmission, NodeKeysAreFoundCheckedAndRevoked) {
  store::MemoryStore store;
  auto put_key = [&](const std::string& id, const std::string& secret, const std::string& node, bool revoked) {
    api::ApiKey key;
    key.metadata.name = id;
    key.display_name = "node/" + node;
    key.scope = api::scope::kNode;
    key.hash = sha256_hex(secret);
    key.revoked = revoked;
    ASSERT_TRUE(store
                    .put(std::string(api::kKeyRoot) + "apikeys/" + id, api::to_stored_json(key).dump(),
                         store::Precondition::none())
                    .ok());
  };
  put_key("old", "nb-old_secret", "n1", true);
  put_key("cur", "nb-cur_secret", "n1", false);
  put_key("other", "nb-other_secret", "n2", false);
  EXPECT_TRUE(is_node_key(store, "n1", "nb-cur_secret", 0));
  EXPECT_FALSE(is_node_key(store, "n1", "nb-old_secret", 0));
  EXPECT_FALSE(is_node_key(store, "n1", "nb-other_secret", 0));
  EXPECT_FALSE(is_node_key(store, "n1", "", 0));
  EXPECT_EQ(agent_credential(store, "n1", 0), sha256_hex("nb-cur_secret"));
  // The callback hears of the live key revoked, neither the one already revoked nor another node's.
  std::vector<std::string> told;
  auto revoked = revoke_node_keys(store, "n1", [&told](const std::string& id) { told.push_back(id); });
  ASSERT_TRUE(revoked.ok());
  EXPECT_EQ(*revoked, std::vector<std::string>{"cur"});
  EXPECT_EQ(told, std::vector<std::string>{"cur"});
  EXPECT_FALSE(is_node_key(store, "n1", "nb-cur_secret", 0));
  EXPECT_EQ(agent_credential(store, "n1", 0), "");
  EXPECT_TRUE(is_node_key(store, "n2", "nb-other_secret", 0));
  // Nothing left to revoke: no call; without a callback the ids are still returned.
  told.clear();
  revoked = revoke_node_keys(store, "n1", [&told](const std::string& id) { told.push_back(id); });
  ASSERT_TRUE(revoked.ok());
  EXPECT_TRUE(revoked->empty());
  EXPECT_TRUE(told.empty());
  revoked = revoke_node_keys(store, "n2");
  ASSERT_TRUE(revoked.ok());
  EXPECT_EQ(*revoked, std::vector<std::string>{"other"});
  revoked = revoke_node_keys(store, "nosuchnode");
  ASSERT_TRUE(revoked.ok());
  EXPECT_TRUE(revoked->empty());
}

// A store that accepts the first `allowed` writes and refuses the rest.
class RefusingStore : public store::ForwardingStore {
 public:
  RefusingStore(store::Store& inner, int allowed) : ForwardingStore(inner), allowed_(allowed) {}
  Result<int64_t> put(const std::string& key, const std::string& value,
                      store::Precondition precondition = store::Precondition::none(), int64_t lease = 0) override {
    if (allowed_-- <= 0) return make_error(ErrorCode::Unavailable, "store away");
    return ForwardingStore::put(key, value, precondition, lease);
  }

 private:
  int allowed_;
};

TEST(NodeAdmission, AFailedRevocationStillReportsTheKeysItRevoked) {
  store::MemoryStore memory;
  for (const std::string id : {"k1", "k2", "k3"}) {
    api::ApiKey key;
    key.metadata.name = id;
    key.display_name = "node/n1";
    key.scope = api::scope::kNode;
    key.hash = sha256_hex("nb-" + id + "_secret");
    ASSERT_TRUE(memory
                    .put(std::string(api::kKeyRoot) + "apikeys/" + id, api::to_stored_json(key).dump(),
                         store::Precondition::none())
                    .ok());
  }
  RefusingStore store(memory, 1);
  std::vector<std::string> told;
  auto revoked = revoke_node_keys(store, "n1", [&told](const std::string& id) { told.push_back(id); });
  ASSERT_FALSE(revoked.ok());
  EXPECT_EQ(revoked.error().code, ErrorCode::Unavailable);
  // The one key whose revocation was stored is reported; the others, still live, are not.
  ASSERT_EQ(told.size(), 1u);
  auto stored = memory.get(std::string(api::kKeyRoot) + "apikeys/" + told[0]);
  ASSERT_TRUE(stored.ok() && stored->has_value());
  EXPECT_TRUE(api::api_key_from_json(*parse_json((*stored)->value))->revoked);
  int live = 0;
  for (const std::string id : {"k1", "k2", "k3"}) {
    auto kv = memory.get(std::string(api::kKeyRoot) + "apikeys/" + id);
    ASSERT_TRUE(kv.ok() && kv->has_value());
    if (!api::api_key_from_json(*parse_json((*kv)->value))->revoked) ++live;
  }
  EXPECT_EQ(live, 2);
}

}  // namespace
}  // namespace nebula::controlplane
