#include "store/etcd_store.h"
#include "store/sqlite_store.h"
#include "store/store.h"

namespace nebula::store {

Result<std::unique_ptr<Store>> open(const std::string& url) {
  const std::string sqlite = "sqlite://";
  if (url.rfind(sqlite, 0) == 0) {
    std::string path = url.substr(sqlite.size());
    if (path.empty())
      return make_error(ErrorCode::InvalidArgument, "bad store URL '" + url + "': sqlite://PATH needs a path");
    auto store = SqliteStore::open(path);
    if (!store) return store.error();
    return std::unique_ptr<Store>(std::move(*store));
  }
  if (url.rfind("etcd://", 0) == 0) {
    auto options = parse_etcd_url(url);
    if (!options) return options.error();
    auto store = EtcdStore::open(std::move(*options));
    if (!store) return store.error();
    return std::unique_ptr<Store>(std::move(*store));
  }
  return make_error(ErrorCode::InvalidArgument,
                    "unsupported store URL '" + url + "' (expected sqlite://PATH or etcd://HOST:PORT[,HOST:PORT...])");
}

}  // namespace nebula::store
