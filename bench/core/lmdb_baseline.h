// Baseline: LMDB mdb_get from an environment in a temporary directory on
// /dev/shm (so no disk is involved), one read-only transaction renewed per
// lookup, as a server that must see fresh data would do.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

struct MDB_env;
struct MDB_txn;
struct MDB_cursor;

namespace larder::bench {

class LmdbBaseline {
 public:
  // Creates the environment sized for `keys` values of `value_bytes`.
  LmdbBaseline(uint64_t keys, size_t value_bytes);
  ~LmdbBaseline();
  LmdbBaseline(const LmdbBaseline&) = delete;
  LmdbBaseline& operator=(const LmdbBaseline&) = delete;

  bool available() const { return env_ != nullptr; }
  const std::string& skip_reason() const { return skip_reason_; }

  // Loading: begin_load(), append() in bytewise-sorted key order, end_load().
  void begin_load();
  void append(std::string_view key, const void* value, size_t bytes);
  void end_load();
  // mdb_txn_renew, mdb_get, copy up to `bytes`, mdb_txn_reset.
  bool get(std::string_view key, void* out, size_t bytes);

 private:
  ::MDB_env* env_ = nullptr;
  ::MDB_txn* read_txn_ = nullptr;
  ::MDB_txn* write_txn_ = nullptr;
  ::MDB_cursor* cursor_ = nullptr;
  unsigned dbi_ = 0;
  std::string dir_;
  std::string skip_reason_;
};

}  // namespace larder::bench
