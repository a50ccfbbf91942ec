#pragma once
// A real etcd cluster for tests: `members` etcd processes on free loopback ports, in a temp dir,
// killed (SIGKILL) and removed by the destructor. Tests skip when etcd is not installed.
#include <memory>
#include <string>
#include <vector>

#include "process_helpers.h"

namespace nebula::testing {

// Client TLS for the members: their certificate is signed by `ca` and names 127.0.0.1; clients
// must present a certificate signed by the same CA (--client-cert-auth). Made with openssl.
struct EtcdTls {
  std::string ca;           // CA certificate (PEM)
  std::string server_cert;  // the members'
  std::string server_key;
  std::string client_cert;  // for clients
  std::string client_key;
  // Writes a fresh CA and certificates into dir; throws when openssl fails.
  static EtcdTls make(const std::string& dir);
};

class EtcdCluster {
 public:
  // Starts the members and waits until the cluster has a leader; throws when it does not come up.
  // With tls, clients reach the members over https only.
  explicit EtcdCluster(int members = 1, const EtcdTls* tls = nullptr);
  ~EtcdCluster();
  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;

  // True when `etcd` is on PATH.
  static bool available();
  // "etcd://127.0.0.1:P1,127.0.0.1:P2,..." for store::open and --store.
  std::string url() const;
  // "http://127.0.0.1:P" of one member; all of them.
  std::string endpoint(int member) const;
  std::vector<std::string> endpoints() const;
  int size() const { return static_cast<int>(members_.size()); }
  // SIGKILL, as a crash would.
  void kill(int member);
  // SIGSTOP and SIGCONT: a member that hangs with its connections open, as a partition looks.
  void pause(int member);
  void resume(int member);
  // True when the member answers /health with a leader.
  bool healthy(int member) const;
  std::string log(int member) const;

 private:
  struct Member {
    std::string name;
    int client_port = 0;
    int peer_port = 0;
    std::unique_ptr<Child> process;
  };
  TempDir dir_;
  std::string scheme_ = "http";
  const EtcdTls* tls_ = nullptr;
  std::vector<Member> members_;
};

}  // namespace nebula::testing
