#pragma once
// The node's model directory. ModelCache turns a model reference into a local path: a local
// file or directory is used where it is; a Hugging Face repository (or one file of it) is
// downloaded from an HF-compatible hub into the directory, resuming cut downloads from their
// `.part` files, verifying size and sha256 when the hub lists them, and keeping the directory
// under a size limit by deleting the least recently used models that are not in use.
//
// Layout: DIR/hf/ORG/NAME/REVISION/<repository files>, and DIR/.nebula-cache.json holding when
// each model was last used. Nothing else in DIR is ever touched.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

struct evp_md_ctx_st;  // OpenSSL's EVP_MD_CTX

namespace nebula::agent {

// What a model reference names.
struct ModelRef {
  std::string local_path;  // set for a local file or directory (absolute): used where it is
  std::string repo_id;     // "org/name"
  std::string revision;    // a branch, tag or commit; "main" unless given
  std::string file;        // one file of the repository ("model-Q4_K_M.gguf"); "" for the repository

  bool is_local() const { return !local_path.empty(); }
  // Local: an absolute path, one starting with ./ or ../, or a relative path that exists; a
  // local path that does not exist is NotFound. Otherwise a Hugging Face reference:
  // [hf://|hf.co/|huggingface.co/]ORG/NAME[@REVISION][/PATH/IN/REPO].
  static Result<ModelRef> parse(const std::string& reference);
  // "org/name@revision[/file]"
  std::string to_string() const;
};

struct ModelCacheOptions {
  std::string directory;  // the node's model directory; created when missing
  // An HF-compatible hub, http:// or https://. HTTPS servers (the hub and where it redirects)
  // are verified against the system CA store and ca_file.
  std::string endpoint = "https://huggingface.co";
  std::string ca_file;    // a PEM file of extra CA certificates (a private mirror's); "" for none
  std::string token;      // sent as `Authorization: Bearer` to the endpoint, never to redirect targets elsewhere
  int64_t max_bytes = 0;  // size limit of the whole cache; 0 = none
  int attempts = 5;       // per file; each attempt resumes where the previous one stopped
  std::chrono::milliseconds retry_delay{1000};  // before the second attempt; doubles after each
  // A response that sends nothing for this long fails (and is retried). Also bounds how long a
  // cancellation waits on a stalled connection.
  std::chrono::milliseconds idle_timeout{30'000};
};

struct DownloadProgress {
  int64_t done_bytes = 0;   // of the model, counting what was already on disk
  int64_t total_bytes = 0;  // 0 while unknown (a hub that does not list sizes)
  std::string file;         // the repository file being downloaded
};

struct FetchOptions {
  // Which repository files to download: fnmatch patterns, '*' matching '/' too. Empty: config,
  // tokenizer and chat-template files plus *.safetensors weights (*.bin when a repository has
  // no safetensors; its only .gguf when it has nothing else). Unused when the reference names a file.
  std::vector<std::string> include;
  // Called on the fetching thread at the start, at most every 200 ms while downloading, and once
  // when all files are in.
  std::function<void(const DownloadProgress&)> on_progress;
  // Set to abandon the fetch; it is checked between received pieces, so a stalled connection
  // delays it up to idle_timeout. Partial files stay for the next fetch to resume.
  const std::atomic<bool>* cancel = nullptr;
  // Paths of models in use (as fetch returned them): never deleted to make room.
  std::set<std::string> pinned;
};

struct CachedModel {
  std::string path;       // the directory of one repository revision
  std::string reference;  // "org/name@revision"
  int64_t bytes = 0;      // including partial files
  int64_t last_used = 0;  // ordering key: larger is more recent (milliseconds since the epoch)
  bool complete = false;  // a fetch of it has finished
};

// SHA-256, incrementally (OpenSSL's EVP digest).
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(std::string_view data);
  std::string hex_digest();  // finishes the hash; call once
  void reset();              // starts over, as new
  uint64_t bytes() const { return length_; }
  static std::string hex(std::string_view data);

 private:
  ::evp_md_ctx_st* context_;
  uint64_t length_ = 0;
};

// Thread-safe; blocking (run fetch on a worker thread). Fetches of different models run in
// parallel; a second fetch of the same repository revision waits for the first.
class ModelCache {
 public:
  explicit ModelCache(ModelCacheOptions options);
  ~ModelCache();
  ModelCache(const ModelCache&) = delete;
  ModelCache& operator=(const ModelCache&) = delete;

  // The local path of `reference`: a local path as it is; for a repository the directory of its
  // revision; for one file of a repository that file's path. Downloads what is missing and marks
  // the model used. When the hub is unreachable, a model fetched completely before is used as it is.
  Result<std::string> fetch(const std::string& reference, const FetchOptions& options = {});

  // Marks the cached model holding `path` as used now (the agent calls it on engine start).
  void touch(const std::string& path);
  std::vector<CachedModel> list() const;
  int64_t total_bytes() const;
  // Deletes least recently used models until the cache holds at most max_bytes - room_bytes,
  // skipping pinned ones (a pinned path inside a model pins it) and ones being fetched. Returns
  // the bytes freed. Does nothing without a limit.
  int64_t evict(const std::set<std::string>& pinned, int64_t room_bytes = 0);

  const std::string& directory() const { return options_.directory; }

 private:
  struct Impl;
  ModelCacheOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nebula::agent
