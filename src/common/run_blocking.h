#pragma once
// Runs one coroutine to completion on an io_context that nothing else runs, from a plain
// (blocking) function: the bridge the blocking HTTP client and the model downloader use. Include
// it only in .cpp files; it brings Asio's co_spawn templates along.
#include <exception>
#include <optional>

#include "common/asio.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

namespace nebula {

template <typename T>
T run_blocking(asio::io_context& io, awaitable<T> task) {
  std::optional<T> result;
  std::exception_ptr failure;
  asio::co_spawn(io, std::move(task), [&](std::exception_ptr error, T value) {
    failure = error;
    if (!error) result.emplace(std::move(value));
  });
  io.restart();
  io.run();
  if (failure) std::rethrow_exception(failure);
  return std::move(*result);
}

}  // namespace nebula
