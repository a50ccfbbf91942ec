#pragma once
#include <string>
#include <string_view>

namespace nebula {

// A random lowercase alphanumeric string of `length` characters (from a CSPRNG-seeded generator).
std::string random_id(size_t length);
// A random hex secret of `bytes` bytes read from the OS's random source.
std::string random_secret_hex(size_t bytes);
// SHA-256 of data as lowercase hex (OpenSSL).
std::string sha256_hex(std::string_view data);

}  // namespace nebula
