#pragma once
// Result<T>: the value of an operation that can fail in an expected way (bad input, engine down,
// key missing). Unexpected failures (broken invariants) throw or abort instead.
#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace nebula {

enum class ErrorCode {
  InvalidArgument,    // the caller sent something malformed: HTTP 400
  NotFound,           // 404
  AlreadyExists,      // 409
  Conflict,           // a compare-and-swap lost: 409
  Unauthenticated,    // 401
  PermissionDenied,   // 403
  Unavailable,        // nothing can serve this now: 503
  ResourceExhausted,  // no room (VRAM, queue): 503 / 429
  Timeout,            // 504
  Compacted,          // a watch asked for history the store no longer keeps: 410
  TooLarge,           // 413
  Internal,           // 500
};

const char* to_string(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::Internal;
  std::string message;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  // An unset result (an Internal error); exists so Results can be produced by Asio's co_spawn.
  Result() : state_(Error{ErrorCode::Internal, "no result"}) {}
  Result(T value) : state_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : state_(std::move(error)) {}  // NOLINT

  bool ok() const { return state_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & {
    assert(ok());
    return std::get<0>(state_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(state_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(state_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const {
    assert(!ok());
    return std::get<1>(state_);
  }

 private:
  std::variant<T, Error> state_;
};

// Result<void>: success or an error.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)), failed_(true) {}  // NOLINT
  bool ok() const { return !failed_; }
  explicit operator bool() const { return ok(); }
  const Error& error() const {
    assert(failed_);
    return error_;
  }

 private:
  Error error_;
  bool failed_ = false;
};

inline Error make_error(ErrorCode code, std::string message) {
  return Error{code, std::move(message)};
}

}  // namespace nebula
