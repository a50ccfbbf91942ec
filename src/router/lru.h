#pragma once
// A map that keeps at most `capacity` entries, dropping the least recently put one first.
#include <cstddef>
#include <list>
#include <unordered_map>
#include <utility>

namespace nebula::router {

template <typename Key, typename Value>
class Lru {
 public:
  explicit Lru(size_t capacity) : capacity_(capacity) {}

  // The value, without making it recent; nullptr when absent.
  const Value* find(const Key& key) const {
    auto it = index_.find(key);
    return it == index_.end() ? nullptr : &it->second->second;
  }
  bool contains(const Key& key) const { return index_.count(key) > 0; }

  // Inserts or replaces, making the entry the most recent; evicts beyond the capacity.
  void put(const Key& key, Value value) {
    if (auto it = index_.find(key); it != index_.end()) {
      it->second->second = std::move(value);
      order_.splice(order_.begin(), order_, it->second);
    } else {
      order_.emplace_front(key, std::move(value));
      index_.emplace(key, order_.begin());
    }
    trim();
  }

  void set_capacity(size_t capacity) {
    capacity_ = capacity;
    trim();
  }
  size_t capacity() const { return capacity_; }
  size_t size() const { return index_.size(); }

  template <typename Predicate>
  void erase_if(Predicate predicate) {
    for (auto it = order_.begin(); it != order_.end();) {
      if (predicate(it->first, it->second)) {
        index_.erase(it->first);
        it = order_.erase(it);
      } else {
        ++it;
      }
    }
  }

 private:
  void trim() {
    while (index_.size() > capacity_) {
      index_.erase(order_.back().first);
      order_.pop_back();
    }
  }

  size_t capacity_;
  std::list<std::pair<Key, Value>> order_;  // most recent first
  std::unordered_map<Key, typename std::list<std::pair<Key, Value>>::iterator> index_;
};

}  // namespace nebula::router
