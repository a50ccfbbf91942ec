#pragma once
// Test only (compiled into nebula_unit_tests with tls_test.cpp): HTTPS in front of a plain
// loopback HTTP server, with a CA and a server certificate made at start.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace nebula::http::testing {

// Accepts TLS on 127.0.0.1 and relays each connection's decrypted bytes to 127.0.0.1:backend_port.
class TlsProxy {
 public:
  // names: the DNS names and IP addresses the server certificate is valid for.
  explicit TlsProxy(uint16_t backend_port, std::vector<std::string> names = {"localhost", "127.0.0.1"});
  ~TlsProxy();
  TlsProxy(const TlsProxy&) = delete;
  TlsProxy& operator=(const TlsProxy&) = delete;

  uint16_t port() const;
  // A PEM file with the CA certificate that signed the server's: ClientOptions::ca_file.
  const std::string& ca_file() const;
  int handshakes() const;                // TLS connections that completed the handshake
  std::string last_server_name() const;  // the SNI of the last handshake; "" when none was sent

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nebula::http::testing
