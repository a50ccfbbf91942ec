#include "agent/model_cache.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "http/http.h"
#include "http/test_server.h"
#include "http/tls_test.h"

namespace nebula::agent {
namespace {

namespace fs = std::filesystem;

std::string random_bytes(size_t size, unsigned seed) {
  std::mt19937 generator(seed);
  std::string bytes(size, '\0');
  for (auto& byte : bytes) byte = static_cast<char>(generator() & 0xff);
  return bytes;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(ModelCacheSha256, KnownVectors) {
  EXPECT_EQ(Sha256::hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256::hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256::hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256::hex(std::string(1'000'000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Fed in uneven pieces, the digest is the same.
  std::string data = random_bytes(10'000, 1);
  Sha256 pieces;
  for (size_t start = 0, step = 1; start < data.size(); start += step, step = step * 3 % 197 + 1) {
    pieces.update(std::string_view(data).substr(start, step));
  }
  EXPECT_EQ(pieces.bytes(), data.size());
  EXPECT_EQ(pieces.hex_digest(), Sha256::hex(data));
}

TEST(ModelCacheRef, ParsesHubReferences) {
  auto plain = ModelRef::parse("Qwen/Qwen2.5-7B-Instruct");
  ASSERT_TRUE(plain) << plain.error().message;
  EXPECT_FALSE(plain->is_local());
  EXPECT_EQ(plain->repo_id, "Qwen/Qwen2.5-7B-Instruct");
  EXPECT_EQ(plain->revision, "main");
  EXPECT_EQ(plain->file, "");

  auto pinned = ModelRef::parse("hf://org/name@v1.0/sub/model-Q4_K_M.gguf");
  ASSERT_TRUE(pinned) << pinned.error().message;
  EXPECT_EQ(pinned->repo_id, "org/name");
  EXPECT_EQ(pinned->revision, "v1.0");
  EXPECT_EQ(pinned->file, "sub/model-Q4_K_M.gguf");
  EXPECT_EQ(pinned->to_string(), "org/name@v1.0/sub/model-Q4_K_M.gguf");
  EXPECT_EQ(ModelRef::parse("https://huggingface.co/org/name")->repo_id, "org/name");

  for (const char* bad : {"llama3", "org/../x", "org/name/../../etc/passwd", "org/name//x", "org/.hidden", "org/name@",
                          "org/name@a b", "/"}) {
    auto parsed = ModelRef::parse(bad);
    EXPECT_FALSE(parsed && !parsed->is_local()) << bad;
  }
}

TEST(ModelCacheRef, LocalPathsPassThrough) {
  fs::path directory = fs::temp_directory_path() / ("nebula-local-model-" + std::to_string(getpid()));
  fs::create_directories(directory / "org" / "name");
  std::ofstream(directory / "model.gguf") << "GGUF";
  ModelCacheOptions options;
  options.directory = (directory / "cache").string();
  options.endpoint = "http://127.0.0.1:1";
  ModelCache cache(options);

  auto absolute = cache.fetch((directory / "model.gguf").string());
  ASSERT_TRUE(absolute) << absolute.error().message;
  EXPECT_EQ(*absolute, (directory / "model.gguf").string());

  // A relative path that exists wins over a hub reference of the same spelling, and is not copied.
  auto previous = fs::current_path();
  fs::current_path(directory);
  auto relative = cache.fetch("org/name");
  auto dotted = cache.fetch("./model.gguf");
  auto missing = cache.fetch("./nope.gguf");
  fs::current_path(previous);
  ASSERT_TRUE(relative) << relative.error().message;
  EXPECT_EQ(*relative, (directory / "org" / "name").string());
  ASSERT_TRUE(dotted) << dotted.error().message;
  EXPECT_EQ(*dotted, (directory / "model.gguf").string());
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::NotFound);
  EXPECT_FALSE(fs::exists(directory / "cache" / "hf"));

  auto absent = cache.fetch((directory / "absent").string());
  ASSERT_FALSE(absent);
  EXPECT_EQ(absent.error().code, ErrorCode::NotFound);
  fs::remove_all(directory);
}

// ---------------------------------------------------------------------------------------------
// A fake Hugging Face hub on a loopback port: the listing API and resolve with Range support.

struct HubFile {
  std::string content;
  bool lfs = true;            // listed with lfs {sha256, size}
  std::string listed_sha256;  // "" = the content's real sha256
  bool redirect = false;      // resolve answers 302 to /cdn/ on another origin (localhost)
};

// A file stored in LFS (listed with its sha256), optionally listed with a wrong sha256 or served
// through a redirect.
HubFile lfs_file(std::string content, std::string listed_sha256 = "", bool redirect = false) {
  HubFile file;
  file.content = std::move(content);
  file.listed_sha256 = std::move(listed_sha256);
  file.redirect = redirect;
  return file;
}

// A small file kept in git: listed with its size only.
HubFile git_file(std::string content) {
  HubFile file;
  file.content = std::move(content);
  file.lfs = false;
  return file;
}

struct Seen {
  std::string path;
  std::string range;
  std::string authorization;
  int status = 0;
};

class FakeHub {
 public:
  FakeHub() {
    http::Router router;
    router.add("GET", "/api/models/{org}/{name}/revision/{revision}",
               [this](http::Request& request, http::ResponseWriter& writer) -> awaitable<void> {
                 co_await writer.send(listing(request));
               });
    router.add("GET", "/{org}/{name}/resolve/{revision}/*",
               [this](http::Request& request, http::ResponseWriter& writer) -> awaitable<void> {
                 auto plan = resolve(request);
                 if (plan.cut_after > 0) {
                   // Half the body, then the connection drops.
                   co_await writer.start_stream(200, plan.response.headers);
                   co_await writer.write(std::string_view(plan.response.body).substr(0, plan.cut_after));
                   writer.abort();
                   co_return;
                 }
                 co_await writer.send(std::move(plan.response));
               });
    router.add("GET", "/cdn/{org}/{name}/*",
               [this](http::Request& request, http::ResponseWriter& writer) -> awaitable<void> {
                 auto plan = resolve(request);
                 co_await writer.send(std::move(plan.response));
               });
    auto port = server_.start(std::move(router));
    EXPECT_TRUE(port) << port.error().message;
    port_ = port ? *port : 0;
  }
  ~FakeHub() { server_.stop(); }  // before the state its handlers use goes

  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  uint16_t port() const { return port_; }

  void add(const std::string& repo, const std::string& name, HubFile file) {
    std::lock_guard lock(mutex_);
    repos_[repo][name] = std::move(file);
  }
  void set_status(const std::string& repo, int status) {
    std::lock_guard lock(mutex_);
    repo_status_[repo] = status;
  }
  void cut_next(int count) {
    std::lock_guard lock(mutex_);
    cuts_ = count;
  }
  void ignore_ranges() {
    std::lock_guard lock(mutex_);
    ranges_ = false;
  }
  std::vector<Seen> seen() {
    std::lock_guard lock(mutex_);
    return seen_;
  }
  std::vector<Seen> downloads() {
    std::vector<Seen> out;
    for (auto& request : seen()) {
      if (request.path.find("/api/") != 0) out.push_back(request);
    }
    return out;
  }
  void forget() {
    std::lock_guard lock(mutex_);
    seen_.clear();
  }

 private:
  struct Plan {
    http::Response response;
    size_t cut_after = 0;
  };

  http::Response listing(const http::Request& request) {
    std::lock_guard lock(mutex_);
    std::string repo = request.params.at("org") + "/" + request.params.at("name");
    seen_.push_back({request.path, "", request.header("authorization"), 0});
    auto status = repo_status_.find(repo);
    if (status != repo_status_.end()) {
      seen_.back().status = status->second;
      return http::Response::json_body(status->second, json{{"error", "Access to model " + repo + " is restricted"}});
    }
    auto found = repos_.find(repo);
    if (found == repos_.end() || request.query_or("blobs") != "true") {
      seen_.back().status = 404;
      return http::Response::json_body(404, json{{"error", "Repository not found"}});
    }
    json siblings = json::array();
    for (const auto& [name, file] : found->second) {
      json sibling = {
          {"rfilename", name}, {"size", file.content.size()}, {"blobId", Sha256::hex(file.content).substr(0, 40)}};
      if (file.lfs) {
        std::string sha = file.listed_sha256.empty() ? Sha256::hex(file.content) : file.listed_sha256;
        sibling["lfs"] = {{"sha256", sha}, {"size", file.content.size()}, {"pointerSize", 134}};
      }
      siblings.push_back(sibling);
    }
    seen_.back().status = 200;
    return http::Response::json_body(200, json{{"id", repo}, {"sha", "0123abcd"}, {"siblings", siblings}});
  }

  Plan resolve(const http::Request& request) {
    std::lock_guard lock(mutex_);
    std::string repo = request.params.at("org") + "/" + request.params.at("name");
    std::string name = request.params.at("*");
    seen_.push_back({request.path, request.header("range"), request.header("authorization"), 0});
    Seen& seen = seen_.back();
    Plan plan;
    auto found = repos_.find(repo);
    if (found == repos_.end() || !found->second.count(name)) {
      seen.status = 404;
      plan.response = http::Response::json_body(404, json{{"error", "Entry not found"}});
      return plan;
    }
    const HubFile& file = found->second.at(name);
    if (file.redirect && request.path.find("/cdn/") != 0) {
      seen.status = 302;
      plan.response.status = 302;
      plan.response.headers.push_back(
          {"Location", "http://localhost:" + std::to_string(port_) + "/cdn/" + repo + "/" + name});
      return plan;
    }
    size_t start = 0;
    std::string range = request.header("range");
    if (ranges_ && range.rfind("bytes=", 0) == 0) start = std::stoul(range.substr(6));
    if (start > 0 && start >= file.content.size()) {
      seen.status = 416;
      plan.response = http::Response::text(416, "");
      return plan;
    }
    plan.response.headers.push_back({"Content-Type", "application/octet-stream"});
    if (start > 0) {
      seen.status = 206;
      plan.response.status = 206;
      plan.response.headers.push_back({"Content-Range", "bytes " + std::to_string(start) + "-" +
                                                            std::to_string(file.content.size() - 1) + "/" +
                                                            std::to_string(file.content.size())});
      plan.response.body = file.content.substr(start);
      return plan;
    }
    seen.status = 200;
    plan.response.body = file.content;
    if (cuts_ > 0) {
      --cuts_;
      plan.cut_after = file.content.size() / 2;
    }
    return plan;
  }

  http::testing::ServerThread server_;
  uint16_t port_ = 0;
  std::mutex mutex_;
  std::map<std::string, std::map<std::string, HubFile>> repos_;
  std::map<std::string, int> repo_status_;
  int cuts_ = 0;
  bool ranges_ = true;
  std::vector<Seen> seen_;
};

class ModelCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = fs::temp_directory_path() / ("nebula-model-cache-" + std::to_string(getpid()) + "-" +
                                              ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(directory_);
  }
  void TearDown() override { fs::remove_all(directory_); }

  ModelCacheOptions options() const {
    ModelCacheOptions options;
    options.directory = directory_.string();
    options.endpoint = hub_.endpoint();
    options.token = "secret-token";
    options.retry_delay = std::chrono::milliseconds(10);
    options.idle_timeout = std::chrono::seconds(5);
    return options;
  }

  FakeHub hub_;
  fs::path directory_;
};

TEST_F(ModelCacheTest, DownloadsARepository) {
  std::string weights = random_bytes(300'000, 7);
  std::string config = R"({"architectures": ["LlamaForCausalLM"]})";
  std::string tokenizer = R"({"model": {}})";
  hub_.add("org/model", "config.json", git_file(config));
  hub_.add("org/model", "tokenizer.json", git_file(tokenizer));
  hub_.add("org/model", "model.safetensors", lfs_file(weights));
  hub_.add("org/model", "pytorch_model.bin", lfs_file(random_bytes(1000, 8)));
  hub_.add("org/model", "README.md", git_file("# model"));
  ModelCache cache(options());
  std::vector<DownloadProgress> reports;
  FetchOptions fetch;
  fetch.on_progress = [&](const DownloadProgress& progress) { reports.push_back(progress); };

  auto path = cache.fetch("org/model", fetch);
  ASSERT_TRUE(path) << path.error().message;
  EXPECT_EQ(*path, (directory_ / "hf" / "org" / "model" / "main").string());
  EXPECT_EQ(read_file(fs::path(*path) / "model.safetensors"), weights);
  EXPECT_EQ(Sha256::hex(read_file(fs::path(*path) / "model.safetensors")), Sha256::hex(weights));
  EXPECT_EQ(read_file(fs::path(*path) / "config.json"), config);
  EXPECT_TRUE(fs::exists(fs::path(*path) / "tokenizer.json"));
  // Not needed by an engine: the README, and .bin weights when safetensors exist.
  EXPECT_FALSE(fs::exists(fs::path(*path) / "README.md"));
  EXPECT_FALSE(fs::exists(fs::path(*path) / "pytorch_model.bin"));
  EXPECT_FALSE(fs::exists(fs::path(*path) / "model.safetensors.part"));

  ASSERT_GE(reports.size(), 2u);
  auto total = static_cast<int64_t>(weights.size() + config.size() + tokenizer.size());
  EXPECT_EQ(reports.front().done_bytes, 0);
  EXPECT_EQ(reports.back().total_bytes, total);
  EXPECT_EQ(reports.back().done_bytes, total);

  auto seen = hub_.seen();
  ASSERT_EQ(seen.size(), 4u);  // the listing, then three files
  for (const auto& request : seen) EXPECT_EQ(request.authorization, "Bearer secret-token") << request.path;
  EXPECT_EQ(seen[0].path, "/api/models/org/model/revision/main");

  // A second fetch lists again but downloads nothing.
  hub_.forget();
  auto again = cache.fetch("org/model");
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_EQ(*again, *path);
  EXPECT_TRUE(hub_.downloads().empty());
  ASSERT_EQ(cache.list().size(), 1u);
  EXPECT_EQ(cache.list()[0].reference, "org/model@main");
  EXPECT_TRUE(cache.list()[0].complete);
}

TEST_F(ModelCacheTest, ResumesAfterACutConnection) {
  std::string weights = random_bytes(400'000, 11);
  hub_.add("org/model", "model.safetensors", lfs_file(weights));
  hub_.cut_next(1);
  ModelCache cache(options());
  auto path = cache.fetch("org/model");
  ASSERT_TRUE(path) << path.error().message;
  EXPECT_EQ(read_file(fs::path(*path) / "model.safetensors"), weights);

  auto downloads = hub_.downloads();
  ASSERT_EQ(downloads.size(), 2u);
  EXPECT_EQ(downloads[0].range, "");
  EXPECT_EQ(downloads[0].status, 200);
  // The second attempt asked for the rest only, and got it as a 206.
  ASSERT_EQ(downloads[1].range.rfind("bytes=", 0), 0u) << downloads[1].range;
  size_t resumed_at = std::stoul(downloads[1].range.substr(6));
  EXPECT_GT(resumed_at, 0u);
  EXPECT_LE(resumed_at, weights.size() / 2);
  EXPECT_EQ(downloads[1].status, 206);
}

TEST_F(ModelCacheTest, StartsOverWhenTheHubIgnoresRange) {
  std::string weights = random_bytes(400'000, 13);
  hub_.add("org/model", "model.safetensors", lfs_file(weights));
  hub_.cut_next(1);
  hub_.ignore_ranges();
  ModelCache cache(options());
  auto path = cache.fetch("org/model");
  ASSERT_TRUE(path) << path.error().message;
  EXPECT_EQ(read_file(fs::path(*path) / "model.safetensors"), weights);
  auto downloads = hub_.downloads();
  ASSERT_EQ(downloads.size(), 2u);
  EXPECT_NE(downloads[1].range, "");
  EXPECT_EQ(downloads[1].status, 200);  // the whole file again, written from the start
}

TEST_F(ModelCacheTest, ResumesInALaterFetch) {
  std::string weights = random_bytes(400'000, 12);
  hub_.add("org/model", "model.safetensors", lfs_file(weights));
  hub_.cut_next(1);
  auto single_attempt = options();
  single_attempt.attempts = 1;
  fs::path final_path = directory_ / "hf" / "org" / "model" / "main" / "model.safetensors";
  {
    ModelCache cache(single_attempt);
    auto failed = cache.fetch("org/model");
    ASSERT_FALSE(failed);
    EXPECT_EQ(failed.error().code, ErrorCode::Unavailable);
    EXPECT_FALSE(fs::exists(final_path));
    ASSERT_TRUE(fs::exists(final_path.string() + ".part"));
    EXPECT_GT(fs::file_size(final_path.string() + ".part"), 0u);
  }
  ModelCache cache(single_attempt);  // a new process, as after an agent restart
  auto path = cache.fetch("org/model");
  ASSERT_TRUE(path) << path.error().message;
  EXPECT_EQ(read_file(final_path), weights);
  auto downloads = hub_.downloads();
  ASSERT_EQ(downloads.size(), 2u);
  EXPECT_EQ(downloads[1].status, 206);
}

TEST_F(ModelCacheTest, AFileChangedUpstreamIsFetchedAgain) {
  hub_.add("org/model", "config.json", git_file(R"({"version": 1})"));
  hub_.add("org/model", "model.safetensors", lfs_file(random_bytes(20'000, 21)));
  ModelCache cache(options());
  auto path = cache.fetch("org/model");
  ASSERT_TRUE(path) << path.error().message;

  // "main" moved: same size, new content, so a new blob id in the listing.
  hub_.add("org/model", "config.json", git_file(R"({"version": 2})"));
  hub_.forget();
  auto again = cache.fetch("org/model");
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_EQ(read_file(fs::path(*again) / "config.json"), R"({"version": 2})");
  auto downloads = hub_.downloads();
  ASSERT_EQ(downloads.size(), 1u);
  EXPECT_EQ(downloads[0].path, "/org/model/resolve/main/config.json");
}

TEST_F(ModelCacheTest, ConcurrentFetchesOfOneModelDownloadItOnce) {
  std::string weights = random_bytes(300'000, 22);
  hub_.add("org/model", "model.safetensors", lfs_file(weights));
  ModelCache cache(options());
  std::vector<Result<std::string>> results(3);
  std::vector<std::thread> threads;
  for (auto& result : results) {
    threads.emplace_back([&cache, &result] { result = cache.fetch("org/model"); });
  }
  for (auto& thread : threads) thread.join();
  for (auto& result : results) {
    ASSERT_TRUE(result) << result.error().message;
    EXPECT_EQ(read_file(fs::path(*result) / "model.safetensors"), weights);
  }
  EXPECT_EQ(hub_.downloads().size(), 1u);
}

TEST_F(ModelCacheTest, Sha256MismatchFailsAndLeavesNothing) {
  hub_.add("org/model", "model.safetensors", lfs_file(random_bytes(50'000, 3), std::string(64, 'a')));
  ModelCache cache(options());
  auto path = cache.fetch("org/model");
  ASSERT_FALSE(path);
  EXPECT_NE(path.error().message.find("sha256 mismatch"), std::string::npos) << path.error().message;
  fs::path final_path = directory_ / "hf" / "org" / "model" / "main" / "model.safetensors";
  EXPECT_FALSE(fs::exists(final_path));
  EXPECT_FALSE(fs::exists(final_path.string() + ".part"));
  EXPECT_EQ(hub_.downloads().size(), 1u);  // a corrupt file is not fetched again and again
}

TEST_F(ModelCacheTest, OneFileOfARepositoryThroughARedirect) {
  std::string q4 = random_bytes(80'000, 4);
  hub_.add("org/gguf", "model-Q4_K_M.gguf", lfs_file(q4, "", true));
  hub_.add("org/gguf", "model-Q8_0.gguf", lfs_file(random_bytes(90'000, 5)));
  ModelCache cache(options());

  auto ambiguous = cache.fetch("org/gguf");
  ASSERT_FALSE(ambiguous);
  EXPECT_NE(ambiguous.error().message.find("name one"), std::string::npos) << ambiguous.error().message;

  auto path = cache.fetch("org/gguf/model-Q4_K_M.gguf");
  ASSERT_TRUE(path) << path.error().message;
  EXPECT_EQ(*path, (directory_ / "hf" / "org" / "gguf" / "main" / "model-Q4_K_M.gguf").string());
  EXPECT_EQ(read_file(*path), q4);
  EXPECT_FALSE(fs::exists(directory_ / "hf" / "org" / "gguf" / "main" / "model-Q8_0.gguf"));
  auto downloads = hub_.downloads();
  ASSERT_EQ(downloads.size(), 2u);
  EXPECT_EQ(downloads[0].status, 302);
  EXPECT_EQ(downloads[0].authorization, "Bearer secret-token");
  EXPECT_EQ(downloads[1].path.rfind("/cdn/", 0), 0u);
  EXPECT_EQ(downloads[1].authorization, "") << "the token must not follow a redirect to another origin";

  auto missing = cache.fetch("org/gguf/model-Q2.gguf");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::NotFound);
}

TEST_F(ModelCacheTest, HubErrorsAreClear) {
  hub_.set_status("org/gated", 403);
  ModelCache cache(options());
  auto gated = cache.fetch("org/gated");
  ASSERT_FALSE(gated);
  EXPECT_EQ(gated.error().code, ErrorCode::PermissionDenied);
  EXPECT_NE(gated.error().message.find("is restricted"), std::string::npos) << gated.error().message;
  auto missing = cache.fetch("org/absent");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::NotFound);
  EXPECT_NE(missing.error().message.find("Repository not found"), std::string::npos) << missing.error().message;
}

TEST_F(ModelCacheTest, DownloadsOverHttps) {
  std::string weights = random_bytes(300'000, 21);
  hub_.add("org/model", "config.json", git_file("{}"));
  hub_.add("org/model", "model.safetensors", lfs_file(weights, "", true));  // redirected to plain http
  http::testing::TlsProxy tls(hub_.port());
  auto https = options();
  https.endpoint = "https://localhost:" + std::to_string(tls.port());

  // Without the test CA the hub's certificate does not verify: a clear error, nothing downloaded.
  https.attempts = 1;
  auto untrusted = ModelCache(https).fetch("org/model");
  ASSERT_FALSE(untrusted);
  EXPECT_NE(untrusted.error().message.find("certificate verify failed"), std::string::npos)
      << untrusted.error().message;
  EXPECT_TRUE(hub_.seen().empty());

  https.ca_file = tls.ca_file();
  auto path = ModelCache(https).fetch("org/model");
  ASSERT_TRUE(path) << path.error().message;
  EXPECT_EQ(read_file(fs::path(*path) / "model.safetensors"), weights);
  auto seen = hub_.seen();
  ASSERT_EQ(seen.size(), 4u);  // the listing, config.json, the weights' redirect, the weights
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(seen[i].authorization, "Bearer secret-token") << seen[i].path;
  EXPECT_EQ(seen[2].status, 302);
  EXPECT_EQ(seen[3].path.rfind("/cdn/", 0), 0u);
  EXPECT_EQ(seen[3].authorization, "") << "the token must not follow a redirect to another origin";
}

TEST_F(ModelCacheTest, CancelStopsTheFetch) {
  hub_.add("org/model", "model.safetensors", lfs_file(random_bytes(200'000, 6)));
  ModelCache cache(options());
  std::atomic<bool> cancel{false};
  FetchOptions fetch;
  fetch.cancel = &cancel;
  fetch.on_progress = [&](const DownloadProgress&) { cancel = true; };
  auto path = cache.fetch("org/model", fetch);
  ASSERT_FALSE(path);
  EXPECT_NE(path.error().message.find("cancelled"), std::string::npos) << path.error().message;
  EXPECT_FALSE(fs::exists(directory_ / "hf" / "org" / "model" / "main" / "model.safetensors"));
  EXPECT_TRUE(hub_.downloads().empty());
}

TEST_F(ModelCacheTest, OfflineUsesACompleteCachedModel) {
  hub_.add("org/model", "model.safetensors", lfs_file(random_bytes(10'000, 9)));
  auto path = ModelCache(options()).fetch("org/model");
  ASSERT_TRUE(path) << path.error().message;

  auto offline = options();
  offline.endpoint = "http://127.0.0.1:1";  // nothing listens there
  offline.attempts = 1;
  auto cached = ModelCache(offline).fetch("org/model");
  ASSERT_TRUE(cached) << cached.error().message;
  EXPECT_EQ(*cached, *path);
  auto never_fetched = ModelCache(offline).fetch("org/other");
  ASSERT_FALSE(never_fetched);
  EXPECT_EQ(never_fetched.error().code, ErrorCode::Unavailable);
}

TEST_F(ModelCacheTest, EvictsLeastRecentlyUsedButNeverPinned) {
  for (const char* name : {"a", "b", "c", "d"}) {
    hub_.add(std::string("org/") + name, "model.safetensors", lfs_file(random_bytes(100'000, name[0])));
  }
  auto limited = options();
  limited.max_bytes = 250'000;  // room for two models
  ModelCache cache(limited);
  auto a = cache.fetch("org/a");
  auto b = cache.fetch("org/b");
  ASSERT_TRUE(a && b);
  cache.touch(*a + "/model.safetensors");  // a is now used more recently than b

  auto c = cache.fetch("org/c");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_TRUE(fs::exists(*a));
  EXPECT_FALSE(fs::exists(*b)) << "b was the least recently used";
  EXPECT_TRUE(fs::exists(*c));

  // a is now the least recently used, but it is in use: c goes instead.
  FetchOptions fetch;
  fetch.pinned = {*a};
  auto d = cache.fetch("org/d", fetch);
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_TRUE(fs::exists(*a));
  EXPECT_FALSE(fs::exists(*c));
  EXPECT_TRUE(fs::exists(*d));
  EXPECT_LE(cache.total_bytes(), 250'000);
  auto models = cache.list();
  ASSERT_EQ(models.size(), 2u);
  EXPECT_EQ(models[0].reference, "org/d@main");  // most recent first
  EXPECT_EQ(models[1].reference, "org/a@main");
  EXPECT_FALSE(fs::exists(directory_ / "hf" / "org" / "b")) << "empty folders go too";

  // The order survives a restart: the index on disk says a was used before d.
  ModelCache reopened(limited);
  EXPECT_EQ(reopened.evict({}, 150'000), 100'000);
  EXPECT_FALSE(fs::exists(*a));
  EXPECT_TRUE(fs::exists(*d));
}

}  // namespace
}  // namespace nebula::agent
