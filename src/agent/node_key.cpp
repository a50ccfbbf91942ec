#include "agent/node_key.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "common/ids.h"

namespace nebula::agent {

namespace {
std::string key_path(const std::string& data_dir) {
  return data_dir + "/node.key";
}

// Compares without an early exit, so the time taken says nothing about where they differ.
bool equal_in_constant_time(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char difference = 0;
  for (size_t i = 0; i < a.size(); ++i) difference |= static_cast<unsigned char>(a[i] ^ b[i]);
  return difference == 0;
}
}  // namespace

std::string load_node_key(const std::string& data_dir) {
  std::ifstream in(key_path(data_dir));
  std::string key;
  std::getline(in, key);
  return key;
}

Status save_node_key(const std::string& data_dir, const std::string& key) {
  // Written beside and renamed over, so a crash never leaves half a key; 0600 from the first byte.
  std::string path = key_path(data_dir);
  std::string temporary = path + ".tmp";
  int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return make_error(ErrorCode::Internal, "cannot write " + temporary + ": " + std::strerror(errno));
  ::fchmod(fd, 0600);
  std::string line = key + "\n";
  bool written = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  written = ::fsync(fd) == 0 && written;
  ::close(fd);
  if (!written || ::rename(temporary.c_str(), path.c_str()) != 0) {
    ::unlink(temporary.c_str());
    return make_error(ErrorCode::Internal, "cannot write " + path + ": " + std::strerror(errno));
  }
  return {};
}

bool server_authorized(const http::Request& request, const std::string& node_key) {
  if (node_key.empty()) return false;
  std::string authorization = request.header("authorization");
  if (authorization.size() <= 7 || (authorization.rfind("Bearer ", 0) != 0 && authorization.rfind("bearer ", 0) != 0)) {
    return false;
  }
  return equal_in_constant_time(authorization.substr(7), sha256_hex(node_key));
}

}  // namespace nebula::agent
