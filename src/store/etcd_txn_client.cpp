#include "store/etcd_txn_client.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "etcd_kv.grpc.pb.h"

namespace nebula::store {

namespace {

Result<std::string> read_pem(const std::string& path, const char* what) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream text;
  if (file) text << file.rdbuf();
  if (!file || text.str().empty()) {
    return make_error(ErrorCode::InvalidArgument, std::string("etcd: cannot read the ") + what + " " + path);
  }
  return text.str();
}

// "http://HOST:PORT" -> ("HOST:PORT", false); "https://..." -> (..., true).
std::pair<std::string, bool> target_of(const std::string& endpoint) {
  constexpr std::string_view kHttps = "https://";
  constexpr std::string_view kHttp = "http://";
  if (endpoint.rfind(kHttps, 0) == 0) return {endpoint.substr(kHttps.size()), true};
  if (endpoint.rfind(kHttp, 0) == 0) return {endpoint.substr(kHttp.size()), false};
  return {endpoint, false};
}

etcdserverpb::TxnRequest txn_of(const std::vector<Put>& puts) {
  etcdserverpb::TxnRequest txn;
  for (const auto& put : puts) {
    if (put.precondition.mod_revision == 0) {
      auto* compare = txn.add_compare();
      compare->set_key(put.key);
      compare->set_target(etcdserverpb::Compare::CREATE);
      compare->set_result(etcdserverpb::Compare::EQUAL);
      compare->set_create_revision(0);
    } else if (put.precondition.mod_revision > 0) {
      auto* compare = txn.add_compare();
      compare->set_key(put.key);
      compare->set_target(etcdserverpb::Compare::MOD);
      compare->set_result(etcdserverpb::Compare::EQUAL);
      compare->set_mod_revision(etcd_revision(put.precondition.mod_revision));
    }
    auto* request = txn.add_success()->mutable_request_put();
    request->set_key(put.key);
    request->set_value(put.value);
  }
  return txn;
}

Error error_of(const grpc::Status& status) {
  std::string message = "etcd (gRPC): " + status.error_message();
  switch (status.error_code()) {
    case grpc::StatusCode::UNAUTHENTICATED: return {ErrorCode::Unauthenticated, message};
    case grpc::StatusCode::PERMISSION_DENIED: return {ErrorCode::PermissionDenied, message};
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE: return {ErrorCode::InvalidArgument, message};
    // The request may have been applied: its answer was lost, or it timed out in etcd.
    default: return {ErrorCode::Unavailable, message + " (the outcome is unknown)"};
  }
}

}  // namespace

// One channel per member, made on first use and kept (gRPC reconnects it by itself).
struct EtcdTxnClient::Channels {
  std::shared_ptr<grpc::ChannelCredentials> tls;
  std::mutex mutex;
  std::map<std::string, std::shared_ptr<grpc::Channel>> open;
  // Members gRPC could not connect to, and until when they are not tried again: one that
  // answers the JSON gateway but not gRPC (a proxy that passes only HTTP/1.1) then costs one
  // failed connect a minute, not one per controller pass.
  std::map<std::string, std::chrono::steady_clock::time_point> resting;

  bool rests(const std::string& endpoint) {
    std::lock_guard lock(mutex);
    auto found = resting.find(endpoint);
    return found != resting.end() && std::chrono::steady_clock::now() < found->second;
  }
  // The channel is dropped too: gRPC would otherwise keep reconnecting it in the background.
  void rest(const std::string& endpoint) {
    std::lock_guard lock(mutex);
    resting[endpoint] = std::chrono::steady_clock::now() + std::chrono::minutes(1);
    open.erase(endpoint);
  }

  std::shared_ptr<grpc::Channel> get(const std::string& endpoint) {
    std::lock_guard lock(mutex);
    auto& channel = open[endpoint];
    if (!channel) {
      auto [target, secure] = target_of(endpoint);
      grpc::ChannelArguments arguments;
      // A member that comes back is tried again within a second, not after gRPC's default
      // backoff of up to two minutes.
      arguments.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
      arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
      channel = grpc::CreateCustomChannel(target, secure ? tls : grpc::InsecureChannelCredentials(), arguments);
    }
    return channel;
  }
};

Result<std::unique_ptr<EtcdTxnClient>> EtcdTxnClient::make(EtcdTxnOptions options) {
  grpc::SslCredentialsOptions ssl;
  if (!options.ca_file.empty()) {
    auto ca = read_pem(options.ca_file, "CA file");
    if (!ca) return ca.error();
    ssl.pem_root_certs = std::move(*ca);
  }
  if (!options.cert_file.empty()) {
    auto cert = read_pem(options.cert_file, "client certificate");
    if (!cert) return cert.error();
    auto key = read_pem(options.key_file, "client key");
    if (!key) return key.error();
    ssl.pem_cert_chain = std::move(*cert);
    ssl.pem_private_key = std::move(*key);
  }
  auto channels = std::make_unique<Channels>();
  channels->tls = grpc::SslCredentials(ssl);
  return std::unique_ptr<EtcdTxnClient>(new EtcdTxnClient(std::move(options), std::move(channels)));
}

EtcdTxnClient::EtcdTxnClient(EtcdTxnOptions options, std::unique_ptr<Channels> channels)
    : options_(std::move(options)), channels_(std::move(channels)) {}

EtcdTxnClient::~EtcdTxnClient() = default;

Result<std::vector<Result<EtcdTxnAnswer>>> EtcdTxnClient::run(const std::string& endpoint, const std::string& token,
                                                              const std::vector<const std::vector<Put>*>& batches,
                                                              size_t in_flight) {
  std::vector<Result<EtcdTxnAnswer>> answers(
      batches.size(), make_error(ErrorCode::Internal, "etcd (gRPC): the transaction was not sent"));
  if (batches.empty()) return answers;
  if (channels_->rests(endpoint)) {
    return make_error(ErrorCode::Unavailable, "etcd (gRPC): " + endpoint + " could not be reached a moment ago");
  }
  auto channel = channels_->get(endpoint);
  // A member whose last connection attempt failed is not waited for: the caller's fallback
  // finds the next one.
  if (channel->GetState(true) == GRPC_CHANNEL_TRANSIENT_FAILURE ||
      !channel->WaitForConnected(std::chrono::system_clock::now() + options_.connect_timeout)) {
    channels_->rest(endpoint);
    return make_error(ErrorCode::Unavailable, "etcd (gRPC): cannot connect to " + endpoint);
  }
  auto kv = etcdserverpb::KV::NewStub(channel);  // gRPC's client of etcd's KV service
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t index; (index = next++) < batches.size();) {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + options_.timeout);
      if (!token.empty()) context.AddMetadata("token", token);
      etcdserverpb::TxnResponse response;
      auto status = kv->Txn(&context, txn_of(*batches[index]), &response);
      if (status.ok()) {
        answers[index] = EtcdTxnAnswer{response.succeeded(), response.header().revision()};
      } else {
        answers[index] = error_of(status);
      }
    }
  };
  size_t workers = std::min(std::max<size_t>(in_flight, 1), batches.size());
  std::vector<std::thread> threads;
  for (size_t worker = 1; worker < workers; ++worker) threads.emplace_back(work);
  work();  // the caller's thread is one of them
  for (auto& thread : threads) thread.join();
  return answers;
}

}  // namespace nebula::store
