#pragma once
// Internal to src/models: bounded little-endian reading over a file or a buffer. A read past the
// end throws ParseError (caught at each reader's entry point and returned as InvalidArgument).
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include "common/result.h"

namespace nebula::models {

struct ParseError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual uint64_t size() const = 0;
  // Copies n bytes at offset into out; false when they are not all there.
  virtual bool read_at(uint64_t offset, char* out, size_t n) = 0;
};

class MemorySource : public ByteSource {
 public:
  explicit MemorySource(std::string_view bytes) : bytes_(bytes) {}
  uint64_t size() const override { return bytes_.size(); }
  bool read_at(uint64_t offset, char* out, size_t n) override {
    if (offset > bytes_.size() || n > bytes_.size() - offset) return false;
    if (n > 0) std::memcpy(out, bytes_.data() + offset, n);
    return true;
  }

 private:
  std::string_view bytes_;
};

// Reads through a 64 KiB window, so the many small reads of a header (32k token strings) cost
// few system calls.
class FileSource : public ByteSource {
 public:
  static Result<std::unique_ptr<FileSource>> open(const std::string& path);
  uint64_t size() const override { return size_; }
  bool read_at(uint64_t offset, char* out, size_t n) override;

 private:
  static constexpr size_t kWindow = 64 * 1024;
  std::ifstream in_;
  uint64_t size_ = 0;
  std::string window_;
  uint64_t window_start_ = 0;
};

class ByteReader {
 public:
  ByteReader(ByteSource& source, std::string format) : source_(source), format_(std::move(format)) {}

  uint64_t position() const { return position_; }
  uint64_t size() const { return source_.size(); }
  uint64_t remaining() const { return position_ < size() ? size() - position_ : 0; }

  [[noreturn]] void fail(const std::string& message) const {
    throw ParseError(format_ + ": " + message + " (at byte " + std::to_string(position_) + ")");
  }

  void read(char* out, size_t n, std::string_view what) {
    if (!source_.read_at(position_, out, n)) {
      fail("truncated while reading " + std::string(what));
    }
    position_ += n;
  }
  void skip(uint64_t n, std::string_view what) {
    if (n > remaining()) fail("truncated while reading " + std::string(what));
    position_ += n;
  }
  uint8_t u8(std::string_view what) { return little<uint8_t>(what); }
  uint16_t u16(std::string_view what) { return little<uint16_t>(what); }
  uint32_t u32(std::string_view what) { return little<uint32_t>(what); }
  uint64_t u64(std::string_view what) { return little<uint64_t>(what); }

  // A string of `length` bytes; the caller has checked length against remaining().
  std::string string_of(uint64_t length, std::string_view what) {
    if (length > remaining()) fail("truncated while reading " + std::string(what));
    std::string text(static_cast<size_t>(length), '\0');
    read(text.data(), text.size(), what);
    return text;
  }
  // A u64 length then that many bytes, refused above `max_bytes`.
  std::string string(uint64_t max_bytes, std::string_view what) {
    uint64_t length = u64(what);
    if (length > max_bytes) {
      fail(std::string(what) + " of " + std::to_string(length) + " bytes is longer than " + std::to_string(max_bytes));
    }
    return string_of(length, what);
  }

 private:
  template <typename T>
  T little(std::string_view what) {
    unsigned char bytes[sizeof(T)];
    read(reinterpret_cast<char*>(bytes), sizeof(T), what);
    T value = 0;
    for (size_t i = 0; i < sizeof(T); ++i) value |= static_cast<T>(static_cast<T>(bytes[i]) << (8 * i));
    return value;
  }

  ByteSource& source_;
  std::string format_;
  uint64_t position_ = 0;
};

}  // namespace nebula::models
