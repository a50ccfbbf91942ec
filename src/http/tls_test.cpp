#include "http/tls_test.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ssl.hpp>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>

#include "http/beast.h"
#include "http/http.h"
#include "http/sse.h"
#include "http/stream_check.h"
#include "http/test_server.h"

namespace nebula::http::testing {
namespace {
namespace ssl = boost::asio::ssl;

struct KeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
struct CertFree {
  void operator()(X509* cert) const { X509_free(cert); }
};
using Key = std::unique_ptr<EVP_PKEY, KeyFree>;
using Cert = std::unique_ptr<X509, CertFree>;

void add_extension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX context;
  X509V3_set_ctx(&context, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* extension = X509V3_EXT_conf_nid(nullptr, &context, nid, value.c_str());
  if (!extension) throw std::runtime_error("bad certificate extension " + value);
  X509_add_ext(cert, extension, -1);
  X509_EXTENSION_free(extension);
}

// A certificate for key, signed by issuer_key (self-signed when issuer is null).
Cert make_certificate(EVP_PKEY* key, const std::string& common_name, X509* issuer, EVP_PKEY* issuer_key,
                      const std::vector<std::string>& names, long serial) {
  Cert cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 24 * 3600);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* subject = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(common_name.c_str()),
                             -1, -1, 0);
  X509* signer = issuer ? issuer : cert.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
  add_extension(cert.get(), signer, NID_subject_key_identifier, "hash");
  if (!issuer) {
    add_extension(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE");
    add_extension(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add_extension(cert.get(), signer, NID_authority_key_identifier, "keyid:always");
    add_extension(cert.get(), signer, NID_basic_constraints, "critical,CA:FALSE");
    add_extension(cert.get(), signer, NID_key_usage, "critical,digitalSignature,keyEncipherment");
    add_extension(cert.get(), signer, NID_ext_key_usage, "serverAuth");
    std::string alt_names;
    for (const auto& name : names) {
      error_code ec;
      asio::ip::make_address(name, ec);
      alt_names += (alt_names.empty() ? "" : ",") + std::string(ec ? "DNS:" : "IP:") + name;
    }
    add_extension(cert.get(), signer, NID_subject_alt_name, alt_names);
  }
  if (X509_sign(cert.get(), issuer_key ? issuer_key : key, EVP_sha256()) == 0) {
    throw std::runtime_error("cannot sign the test certificate");
  }
  return cert;
}

template <typename Write>
std::string to_pem(Write write) {
  BIO* bio = BIO_new(BIO_s_mem());
  write(bio);
  char* data = nullptr;
  long size = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(size));
  BIO_free(bio);
  return pem;
}

// Copies bytes one way until either side fails, then closes both.
template <typename From, typename To>
awaitable<void> relay(From& from, To& to, std::shared_ptr<void> keep_alive, std::function<void()> close_both) {
  char buffer[16384];
  while (true) {
    error_code ec;
    size_t n = co_await from.async_read_some(asio::buffer(buffer), asio::redirect_error(asio::use_awaitable, ec));
    if (ec) break;
    co_await asio::async_write(to, asio::buffer(buffer, n), asio::redirect_error(asio::use_awaitable, ec));
    if (ec) break;
  }
  close_both();
}
}  // namespace

struct TlsProxy::Impl {
  ssl::context context{ssl::context::tls_server};  // before io: outlives the sessions' streams
  asio::io_context io;
  tcp::acceptor acceptor{io};
  uint16_t backend_port = 0;
  std::string ca_file;
  std::atomic<int> handshakes{0};
  mutable std::mutex mutex;
  std::string server_name;
  std::thread thread;

  struct Session {
    Session(asio::io_context& io, tcp::socket socket, ssl::context& context)
        : client(std::move(socket), context), backend(io) {}
    ssl::stream<tcp::socket> client;
    tcp::socket backend;
    void close() {
      error_code ignored;
      client.lowest_layer().close(ignored);
      backend.close(ignored);
    }
  };

  awaitable<void> serve(tcp::socket socket) {
    auto session = std::make_shared<Session>(io, std::move(socket), context);
    error_code ec;
    co_await session->client.async_handshake(ssl::stream_base::server, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;  // e.g. the client did not trust the certificate
    ++handshakes;
    {
      const char* name = SSL_get_servername(session->client.native_handle(), TLSEXT_NAMETYPE_host_name);
      std::lock_guard lock(mutex);
      server_name = name ? name : "";
    }
    tcp::endpoint backend(asio::ip::make_address("127.0.0.1"), backend_port);
    co_await session->backend.async_connect(backend, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
    auto close = [session] { session->close(); };
    asio::co_spawn(io, relay(session->client, session->backend, session, close), asio::detached);
    asio::co_spawn(io, relay(session->backend, session->client, session, close), asio::detached);
  }

  awaitable<void> accept_loop() {
    while (true) {
      error_code ec;
      tcp::socket socket(io);
      co_await acceptor.async_accept(socket, asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return;
      asio::co_spawn(io, serve(std::move(socket)), asio::detached);
    }
  }
};

TlsProxy::TlsProxy(uint16_t backend_port, std::vector<std::string> names) : impl_(std::make_unique<Impl>()) {
  impl_->backend_port = backend_port;
  Key ca_key(EVP_EC_gen("P-256"));
  Key server_key(EVP_EC_gen("P-256"));
  Cert ca = make_certificate(ca_key.get(), "nebula test CA", nullptr, nullptr, {}, 1);
  Cert server = make_certificate(server_key.get(), "nebula test server", ca.get(), ca_key.get(), names, 2);

  static std::atomic<int> counter{0};
  impl_->ca_file = (std::filesystem::temp_directory_path() /
                    ("nebula-test-ca-" + std::to_string(getpid()) + "-" + std::to_string(counter++) + ".pem"))
                       .string();
  std::ofstream(impl_->ca_file) << to_pem([&](BIO* bio) { PEM_write_bio_X509(bio, ca.get()); });
  std::string cert_pem = to_pem([&](BIO* bio) { PEM_write_bio_X509(bio, server.get()); });
  std::string key_pem =
      to_pem([&](BIO* bio) { PEM_write_bio_PrivateKey(bio, server_key.get(), nullptr, nullptr, 0, nullptr, nullptr); });
  impl_->context.use_certificate(asio::buffer(cert_pem), ssl::context::pem);
  impl_->context.use_private_key(asio::buffer(key_pem), ssl::context::pem);

  tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), 0);
  impl_->acceptor.open(endpoint.protocol());
  impl_->acceptor.set_option(tcp::acceptor::reuse_address(true));
  impl_->acceptor.bind(endpoint);
  impl_->acceptor.listen();
  asio::co_spawn(impl_->io, impl_->accept_loop(), asio::detached);
  impl_->thread = std::thread([impl = impl_.get()] { impl->io.run(); });
}

TlsProxy::~TlsProxy() {
  impl_->io.stop();
  impl_->thread.join();
  std::filesystem::remove(impl_->ca_file);
}

uint16_t TlsProxy::port() const {
  return impl_->acceptor.local_endpoint().port();
}
const std::string& TlsProxy::ca_file() const {
  return impl_->ca_file;
}
int TlsProxy::handshakes() const {
  return impl_->handshakes;
}
std::string TlsProxy::last_server_name() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->server_name;
}

namespace {

// A plain HTTP server with a few routes, and HTTPS in front of it.
class HttpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Router router;
    router.add("GET", "/hello/{name}", [](Request& request, ResponseWriter& writer) -> awaitable<void> {
      co_await writer.send(Response::text(200, "hello " + request.params["name"] + " via " + request.header("host")));
    });
    router.add("GET", "/stream", testing::five_events_route(server_.io()));
    auto port = server_.start(std::move(router));
    ASSERT_TRUE(port) << port.error().message;
    port_ = *port;
  }
  void TearDown() override { server_.stop(); }
  static ClientOptions trusting(const TlsProxy& proxy) {
    ClientOptions options;
    options.ca_file = proxy.ca_file();
    return options;
  }

  testing::ServerThread server_;
  uint16_t port_ = 0;
};

TEST(Url, ParsesHttps) {
  auto url = Url::parse("https://huggingface.co/api/models");
  ASSERT_TRUE(url) << url.error().message;
  EXPECT_EQ(url->scheme, "https");
  EXPECT_EQ(url->port, 443);
  EXPECT_EQ(url->origin(), "https://huggingface.co:443");
  EXPECT_EQ(Url::parse("https://127.0.0.1:8443/")->port, 8443);
  EXPECT_NE(Url::parse("https://x")->origin(), Url::parse("http://x:443")->origin());
}

TEST_F(HttpsTest, RequestsReuseOneVerifiedConnection) {
  TlsProxy proxy(port_);
  BlockingClient client(trusting(proxy));
  std::string base = "https://localhost:" + std::to_string(proxy.port());
  for (int i = 0; i < 3; ++i) {
    auto response = client.request("GET", base + "/hello/tls");
    ASSERT_TRUE(response) << response.error().message;
    EXPECT_EQ(response->status, 200);
    EXPECT_EQ(response->body, "hello tls via localhost:" + std::to_string(proxy.port()));
  }
  EXPECT_EQ(proxy.handshakes(), 1) << "the pooled TLS connection was not reused";
  EXPECT_EQ(proxy.last_server_name(), "localhost");  // SNI

  // By address: the certificate names 127.0.0.1 too; no SNI is sent for an address.
  auto by_address = client.request("GET", "https://127.0.0.1:" + std::to_string(proxy.port()) + "/hello/ip");
  ASSERT_TRUE(by_address) << by_address.error().message;
  EXPECT_EQ(by_address->status, 200);
  EXPECT_EQ(proxy.handshakes(), 2);
  EXPECT_EQ(proxy.last_server_name(), "");

  // Plain HTTP to the backend still works on the same client, in its own pool.
  auto plain = client.request("GET", "http://localhost:" + std::to_string(port_) + "/hello/plain");
  ASSERT_TRUE(plain) << plain.error().message;
  EXPECT_EQ(plain->body, "hello plain via localhost:" + std::to_string(port_));
  auto again = client.request("GET", base + "/hello/again");
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_EQ(proxy.handshakes(), 2);
}

TEST_F(HttpsTest, StreamsChunksAsTheyAreWritten) {
  TlsProxy proxy(port_);
  BlockingClient client(trusting(proxy));
  std::string url = "https://localhost:" + std::to_string(proxy.port()) + "/stream";
  for (int round = 0; round < 2; ++round) {
    testing::expect_five_events(client, url);
    if (HasFatalFailure()) return;
  }
  EXPECT_EQ(proxy.handshakes(), 1);
}

TEST_F(HttpsTest, OpenAndReadOnTheCallersIoContext) {
  TlsProxy proxy(port_);
  asio::io_context io;
  Client client(io, trusting(proxy));
  std::string url = "https://localhost:" + std::to_string(proxy.port()) + "/stream";
  std::string body;
  std::string failure;
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        auto opened = co_await client.open("GET", url, "", {}, std::chrono::seconds(5));
        if (!opened) {
          failure = opened.error().message;
          co_return;
        }
        auto all = co_await (*opened)->read_all(std::chrono::seconds(5));
        if (!all)
          failure = all.error().message;
        else
          body = *all;
      },
      asio::detached);
  io.run();
  EXPECT_EQ(failure, "");
  EXPECT_EQ(body, format_sse("0") + format_sse("1") + format_sse("2") + format_sse("3") + format_sse("4"));
}

TEST_F(HttpsTest, AnUntrustedCertificateFailsClearly) {
  TlsProxy proxy(port_);
  BlockingClient client;  // the system CA store only
  std::string origin = "localhost:" + std::to_string(proxy.port());
  auto response = client.request("GET", "https://" + origin + "/hello/x", "", {}, std::chrono::seconds(5));
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().code, ErrorCode::Unavailable);
  EXPECT_NE(response.error().message.find("TLS handshake with " + origin + " failed: certificate verify failed"),
            std::string::npos)
      << response.error().message;
  EXPECT_EQ(proxy.handshakes(), 0);
}

TEST_F(HttpsTest, ACertificateForAnotherHostFails) {
  TlsProxy proxy(port_, {"other.example"});
  BlockingClient client(trusting(proxy));
  for (const char* host : {"localhost", "127.0.0.1"}) {
    auto response =
        client.request("GET", std::string("https://") + host + ":" + std::to_string(proxy.port()) + "/hello/x");
    ASSERT_FALSE(response) << host;
    EXPECT_NE(response.error().message.find("certificate verify failed"), std::string::npos)
        << response.error().message;
    EXPECT_NE(response.error().message.find("mismatch"), std::string::npos) << response.error().message;
  }
  EXPECT_EQ(proxy.handshakes(), 0);
}

TEST_F(HttpsTest, AMissingCaFileIsAnError) {
  ClientOptions options;
  options.ca_file = "/nonexistent/ca.pem";
  BlockingClient client(options);
  auto response = client.request("GET", "https://localhost:1/x");
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().code, ErrorCode::InvalidArgument);
  EXPECT_NE(response.error().message.find("/nonexistent/ca.pem"), std::string::npos) << response.error().message;
}

}  // namespace
}  // namespace nebula::http::testing
