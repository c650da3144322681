#include "lmdb_baseline.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#if defined(LARDER_BENCH_HAVE_LMDB)
#include <lmdb.h>
#endif

namespace larder::bench {

#if defined(LARDER_BENCH_HAVE_LMDB)

LmdbBaseline::LmdbBaseline(uint64_t keys, size_t value_bytes) {
  char tmpl[] = "/dev/shm/larder-bench-lmdb-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    skip_reason_ = std::string("mkdtemp /dev/shm: ") + std::strerror(errno);
    return;
  }
  dir_ = tmpl;
  // Leaf pages hold key + value + 8 bytes of node header; B-tree pages are at
  // most half empty after appends, so 3x the payload plus slack is plenty.
  const size_t map_bytes = static_cast<size_t>(keys) * (value_bytes + 16 + 8) * 3 + (64u << 20);
  int rc = mdb_env_create(&env_);
  if (rc == 0) rc = mdb_env_set_mapsize(env_, map_bytes);
  if (rc == 0) rc = mdb_env_open(env_, dir_.c_str(), MDB_NOSYNC | MDB_NOMETASYNC | MDB_NOTLS, 0600);
  if (rc != 0) {
    skip_reason_ = std::string("mdb_env_open: ") + mdb_strerror(rc);
    if (env_ != nullptr) mdb_env_close(env_);
    env_ = nullptr;
  }
}

LmdbBaseline::~LmdbBaseline() {
  if (read_txn_ != nullptr) mdb_txn_abort(read_txn_);
  if (env_ != nullptr) mdb_env_close(env_);
  if (!dir_.empty()) {
    ::unlink((dir_ + "/data.mdb").c_str());
    ::unlink((dir_ + "/lock.mdb").c_str());
    ::rmdir(dir_.c_str());
  }
}

void LmdbBaseline::begin_load() {
  mdb_txn_begin(env_, nullptr, 0, &write_txn_);
  MDB_dbi dbi;
  mdb_dbi_open(write_txn_, nullptr, 0, &dbi);
  dbi_ = dbi;
  mdb_cursor_open(write_txn_, dbi, &cursor_);
}

void LmdbBaseline::append(std::string_view key, const void* value, size_t bytes) {
  MDB_val k{key.size(), const_cast<char*>(key.data())};
  MDB_val v{bytes, const_cast<void*>(value)};
  if (int rc = mdb_cursor_put(cursor_, &k, &v, MDB_APPEND); rc != 0 && skip_reason_.empty()) {
    skip_reason_ = std::string("mdb_cursor_put: ") + mdb_strerror(rc);
  }
}

void LmdbBaseline::end_load() {
  mdb_cursor_close(cursor_);
  mdb_txn_commit(write_txn_);
  mdb_txn_begin(env_, nullptr, MDB_RDONLY, &read_txn_);
  mdb_txn_reset(read_txn_);
}

bool LmdbBaseline::get(std::string_view key, void* out, size_t bytes) {
  mdb_txn_renew(read_txn_);
  MDB_val k{key.size(), const_cast<char*>(key.data())};
  MDB_val v;
  const bool found = mdb_get(read_txn_, dbi_, &k, &v) == 0;
  if (found) std::memcpy(out, v.mv_data, std::min(bytes, v.mv_size));
  mdb_txn_reset(read_txn_);
  return found;
}

#else

LmdbBaseline::LmdbBaseline(uint64_t, size_t) { skip_reason_ = "built without LMDB (apt-get install liblmdb-dev)"; }
LmdbBaseline::~LmdbBaseline() = default;
void LmdbBaseline::begin_load() {}
void LmdbBaseline::append(std::string_view, const void*, size_t) {}
void LmdbBaseline::end_load() {}
bool LmdbBaseline::get(std::string_view, void*, size_t) { return false; }

#endif

}  // namespace larder::bench
