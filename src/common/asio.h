#pragma once
// The one place Boost.Asio enters the tree. Boost 1.74's Asio needs <utility> first under C++20.
#include <utility>

#include <boost/asio/awaitable.hpp>

namespace nebula {
namespace asio = boost::asio;
template <typename T = void>
using awaitable = boost::asio::awaitable<T>;
}  // namespace nebula
