#include "etcd_cluster.h"

#include <signal.h>

#include <chrono>
#include <fstream>
#include <stdexcept>
#include <tuple>

#include "common/json.h"
#include "http/http.h"

namespace nebula::testing {

using namespace std::chrono_literals;

bool EtcdCluster::available() {
  return !find_on_path("etcd").empty();
}

EtcdTls EtcdTls::make(const std::string& dir) {
  EtcdTls tls{dir + "/ca.pem", dir + "/server.pem", dir + "/server.key", dir + "/client.pem", dir + "/client.key"};
  std::string ca_key = dir + "/ca.key";
  auto run = [](const std::vector<std::string>& argv) {
    auto result = run_command(argv);
    if (result.exit_code != 0) throw std::runtime_error("openssl failed: " + result.out);
  };
  run({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", tls.ca, "-days", "2",
       "-subj", "/CN=nebula-test-ca"});
  std::string extensions = dir + "/ext.cnf";
  std::ofstream(extensions) << "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n";
  for (auto [cert, key, name] :
       {std::tuple{tls.server_cert, tls.server_key, "member"}, std::tuple{tls.client_cert, tls.client_key, "client"}}) {
    std::string request = dir + "/" + name + ".csr";
    run({"openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj",
         std::string("/CN=") + name});
    run({"openssl", "x509", "-req", "-in", request, "-CA", tls.ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", extensions});
  }
  return tls;
}

EtcdCluster::EtcdCluster(int members, const EtcdTls* tls) : tls_(tls) {
  if (tls_) scheme_ = "https";
  std::string etcd = find_on_path("etcd");
  if (etcd.empty()) throw std::runtime_error("etcd is not on PATH");
  std::string initial_cluster;
  for (int i = 0; i < members; ++i) {
    Member member;
    member.name = "m" + std::to_string(i);
    member.client_port = free_port();
    member.peer_port = free_port();
    initial_cluster += (i ? "," : "") + member.name + "=http://127.0.0.1:" + std::to_string(member.peer_port);
    members_.push_back(std::move(member));
  }
  for (auto& member : members_) {
    std::string client = scheme_ + "://127.0.0.1:" + std::to_string(member.client_port);
    std::string peer = "http://127.0.0.1:" + std::to_string(member.peer_port);
    // Short heartbeats and elections: a killed leader is replaced in about a second.
    std::vector<std::string> argv{etcd, "--name", member.name, "--data-dir", dir_.path() + "/" + member.name};
    for (const auto& flag :
         {"--listen-client-urls=" + client, "--advertise-client-urls=" + client, "--listen-peer-urls=" + peer,
          "--initial-advertise-peer-urls=" + peer, "--initial-cluster=" + initial_cluster,
          std::string("--initial-cluster-state=new"), std::string("--initial-cluster-token=nebula-test"),
          std::string("--heartbeat-interval=50"), std::string("--election-timeout=500")}) {
      argv.push_back(flag);
    }
    if (tls_) {
      for (const auto& flag : {"--cert-file=" + tls_->server_cert, "--key-file=" + tls_->server_key,
                               "--trusted-ca-file=" + tls_->ca, std::string("--client-cert-auth")}) {
        argv.push_back(flag);
      }
    }
    member.process = std::make_unique<Child>(argv, dir_.path() + "/" + member.name + ".log");
  }
  for (int i = 0; i < size(); ++i) {
    if (!eventually([&] { return healthy(i); }, 30s)) {
      throw std::runtime_error("etcd member " + std::to_string(i) + " did not come up: " + log(i));
    }
  }
}

EtcdCluster::~EtcdCluster() {
  for (auto& member : members_) {
    if (member.process && member.process->running()) member.process->stop(SIGKILL, 5s);
  }
}

std::string EtcdCluster::url() const {
  std::string out = "etcd://";
  for (size_t i = 0; i < members_.size(); ++i) {
    out += (i ? "," : "") + std::string("127.0.0.1:") + std::to_string(members_[i].client_port);
  }
  return out;
}

std::string EtcdCluster::endpoint(int member) const {
  return scheme_ + "://127.0.0.1:" + std::to_string(members_.at(member).client_port);
}

std::vector<std::string> EtcdCluster::endpoints() const {
  std::vector<std::string> out;
  for (int i = 0; i < size(); ++i) out.push_back(endpoint(i));
  return out;
}

void EtcdCluster::kill(int member) {
  members_.at(member).process->stop(SIGKILL, 5s);
}

void EtcdCluster::pause(int member) {
  ::kill(members_.at(member).process->pid(), SIGSTOP);
}

void EtcdCluster::resume(int member) {
  ::kill(members_.at(member).process->pid(), SIGCONT);
}

bool EtcdCluster::healthy(int member) const {
  http::ClientOptions options;
  if (tls_) {
    options.ca_file = tls_->ca;
    options.cert_file = tls_->client_cert;
    options.key_file = tls_->client_key;
  }
  http::BlockingClient client(options);
  auto response = client.request("GET", endpoint(member) + "/health", "", {}, 2s);
  if (!response || response->status != 200) return false;
  auto document = parse_json(response->body);
  return document && document->is_object() && document->value("health", "") == "true";
}

std::string EtcdCluster::log(int member) const {
  return members_.at(member).process->output();
}

}  // namespace nebula::testing
