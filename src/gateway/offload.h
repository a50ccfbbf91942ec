#pragma once
// Runs blocking work on a thread pool and resumes the calling coroutine on its own executor with
// the result, so that the gateway's I/O thread never waits on a file or the network. Included by
// the gateway's .cpp files only (it pulls in Asio's thread pool).
#include <type_traits>
#include <utility>

#include "common/asio.h"
#include "gateway/gateway.h"

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace nebula::gateway {

// The coroutine stays suspended (and its frame alive: the completion handler owns it) until
// work() has returned on the pool, so work may refer to the caller's locals.
template <class Work>
awaitable<std::invoke_result_t<Work&>> run_on(asio::thread_pool& pool, Work work) {
  using Value = std::invoke_result_t<Work&>;
  co_return co_await asio::async_initiate<const asio::use_awaitable_t<>, void(Value)>(
      [&pool](auto handler, Work owned) {
        auto home = asio::get_associated_executor(handler);
        asio::post(pool, [handler = std::move(handler), owned = std::move(owned), home]() mutable {
          Value value = owned();
          asio::post(home, [handler = std::move(handler), value = std::move(value)]() mutable {
            std::move(handler)(std::move(value));
          });
        });
      },
      asio::use_awaitable, std::move(work));
}

template <class Work>
awaitable<std::invoke_result_t<Work&>> Gateway::on_responses(Work work) {
  if (!responses_pool_) co_return work();
  co_return co_await run_on(*responses_pool_, std::move(work));
}

}  // namespace nebula::gateway
