// The offline engine: replays a log of events through the sidecar's own
// decoder (message format v1, or typed values through its UpdateBuilder),
// transforms, aggregates and writer into a private scratch segment, and reads
// rows back through the client's read path as a reader would have read them
// at given instants (docs/backfill.md).
//
// One engine, two clocks: online the writer's aggregate clock is the wall
// clock; here it is each event's arrival time (Upsert::apply_unix_ns), and a
// read of a key at `at_ms` first brings that key's windows to at_ms
// (Writer::refresh_key), so windows end at the read instant as they end at
// "now" online. Nothing here computes a feature: every value comes from
// larder::Writer.
//
//   Engine   the config (schema, decode options) and the partition; cheap to
//            keep, starts Replays
//   Replay   one pass: a fresh scratch segment (a directory of its own,
//            removed with it), the writer, a client Table per table
//
// Threading: an Engine and its Replays on one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "decode/decoder.h"
#include "decode/update_builder.h"
#include "larder/client.h"
#include "larder/layout/schema.h"
#include "larder/writer/writer.h"

namespace larder::offline {

struct EngineOptions {
  // Where each Replay makes its scratch directory. "": $TMPDIR, else /tmp.
  // A tmpfs (/dev/shm) is fastest; any file system works (the segment's
  // pages are written back to disk there).
  std::string scratch_dir;
  // Only keys whose partition_of(key, partitions) is `partition` are read
  // and applied; 0 of 1 takes every key.
  uint32_t partition = 0;
  uint32_t partitions = 1;
  // How a read brings the aggregates to its instant. false: only the key
  // read (Writer::refresh_key), and the writer keeps no refresh queue
  // (WriterOptions::refresh_queue). true: every key due (Writer::refresh),
  // as the sidecar's refresh pass does, which costs a refresh of keys no
  // read asks for. The answers are the same (docs/backfill.md, "Refresh");
  // true is the reference the per-key path is tested against.
  bool refresh_all_keys = false;
};

// The partition of a key among n: XXH3-64 of the key (seed 0; the hash the
// segment uses, hash_key(), with a fixed seed, since a segment's own seed is
// drawn at creation) times n, high 64 bits. The same split in every process.
uint32_t partition_of(std::string_view key, uint32_t partitions) noexcept;

// What a replay did with the events it was given (all tables).
struct ReplayCounters {
  uint64_t events = 0;      // updates applied to the writer (in the partition)
  uint64_t applied = 0;     // ApplyResult::kApplied
  uint64_t stale = 0;       // kStale: older than the row
  uint64_t duplicates = 0;  // kDuplicate
  uint64_t late = 0;        // kLate
  uint64_t refused = 0;     // kTableFull, kArenaFull, kInvalid: the sidecar dead-letters these
  uint64_t rejected = 0;    // messages or events the decoder refused (nothing applied)
  uint64_t skipped = 0;     // updates outside the partition
};

class Replay;

class Engine {
 public:
  // Reads a larder-sidecar config (its tables, fields, transforms and
  // aggregates; sources are not used). Throws std::runtime_error with the
  // config's own message.
  static std::unique_ptr<Engine> open(const std::string& config_path, const EngineOptions& options = {});
  Engine(sidecar::Config config, const EngineOptions& options);
  ~Engine();

  const layout::Schema& schema() const noexcept { return schema_; }
  const sidecar::Config& config() const noexcept { return config_; }
  const std::vector<sidecar::TableDecodeOptions>& decode_options() const noexcept { return decode_options_; }
  const EngineOptions& options() const noexcept { return options_; }
  // -1 when the config has no such table.
  int table_index(std::string_view name) const noexcept;
  bool in_partition(std::string_view key) const noexcept {
    return options_.partitions <= 1 || partition_of(key, options_.partitions) == options_.partition;
  }

  // A fresh replay. `min_capacity[t]` (when given and larger than the
  // config's) raises table t's capacity so that many keys fit (the dedup set
  // keeps its configured size). Throws larder::Error or std::runtime_error.
  std::unique_ptr<Replay> start(std::span<const uint64_t> min_capacity = {}) const;

 private:
  sidecar::Config config_;
  layout::Schema schema_;
  std::vector<sidecar::TableDecodeOptions> decode_options_;
  EngineOptions options_;
};

class Replay {
 public:
  ~Replay();  // closes the segment and removes the scratch directory
  Replay(const Replay&) = delete;
  Replay& operator=(const Replay&) = delete;

  // Only updates of the tables marked here are applied (all by default);
  // the others are dropped before the writer, uncounted.
  void only_table(uint32_t table);

  // --- Feeding events, in non-decreasing arrival order (ties in call
  // order). Each is held in a small queue and applied in runs through
  // Writer::upsert_many (deletes and unpins one by one, through
  // Writer::remove / unpin), as the sidecar's apply_batch does.

  // A message body of format v1 (one update or a batch). arrival_ms < 0:
  // the newest event time of its updates. The decoder checks event-time
  // bounds against the arrival time, as the sidecar checks them against its
  // clock when the message comes in. A refused message is counted
  // (rejected) and its result returned; nothing of it is applied.
  sidecar::DecodeResult apply_json(std::string_view body, int64_t arrival_ms);

  // Typed events through the decoder's UpdateBuilder: `walk(ctx)` makes the
  // builder calls of one message (begin_update ... end_update), as the
  // Protobuf and Avro decoders do. `now_ms`: the decoder's clock for
  // event-time bounds (the arrival time). A refused message is counted and
  // its result returned.
  sidecar::DecodeResult apply_built(int64_t arrival_ms, int64_t now_ms, void (*walk)(void* ctx), void* ctx);
  sidecar::UpdateBuilder& builder() noexcept { return *builder_; }

  // --- Decoding apart from applying: larder-backfill's key-by-key replay
  // decodes each message once, in arrival order, stores its updates in run
  // files, and applies them later, key by key (apply_decoded). As
  // apply_json / apply_built, but into `batch`: nothing is queued or
  // applied; a refused message is counted (rejected). decode_json:
  // *arrival_ms < 0 is set to the newest event time of the updates.
  sidecar::DecodeResult decode_json(std::string_view body, int64_t* arrival_ms, sidecar::DecodedBatch& batch);
  sidecar::DecodeResult decode_built(int64_t now_ms, void (*walk)(void* ctx), void* ctx, sidecar::DecodedBatch& batch);

  // One update decoded before (decode_json, decode_built), in partition.
  struct DecodedEvent {
    int64_t arrival_ms = 0;
    uint32_t table = 0;
    sidecar::UpdateOp op = sidecar::UpdateOp::kUpsert;
    std::string_view key;
    int64_t event_time_ms = 0;
    int64_t pinned_after_ms = 0;  // kUnpin
    uint64_t event_id = 0;
    std::span<const FieldValue> values;
    std::span<const SourceValue> sources;
  };
  // Applies `e` at its arrival as flush() applies a queued update (counted
  // the same way). Upserts are held in a run, applied at the next read(),
  // flush() or delete: the key, values and sources they point to must stay
  // valid until then.
  void apply_decoded(const DecodedEvent& e);
  // An update the caller left out: its key is outside the partition.
  void note_skipped() noexcept { ++counters_.skipped; }

  // --- Key by key. Events of different keys do not interact in the
  // writer (each update's clock is its own arrival, tombstones are kept,
  // the table has room for every key), except through the dedup set, whose
  // buckets are shared, and an arena or table too small for every key. So
  // where neither applies a replay may go key after key: each key's events
  // and reads in their own arrival order, as arrival order would interleave
  // them. begin_key() starts the next key: the order check restarts. Not
  // with refresh_all_keys (a refresh of every key is in arrival order).
  void begin_key();
  // The seed under which layout::hash_key orders table t's keys by slot
  // (Writer::key_hash_seed): keys replayed in that hash order visit the
  // scratch table from its first slot to its last.
  uint64_t key_hash_seed(uint32_t table) const noexcept { return writer_->key_hash_seed(table); }

  // --- Reading. Applies what is queued, brings the key's aggregates to
  // at_ms (at_ms must not be before an event already applied) and reads its
  // row with the client's Table::get into `row`. For a table with
  // aggregates, a found row's computed_at_ms is at_ms.
  ReadResult read(uint32_t table, std::string_view key, int64_t at_ms, Row& row);
  // The client's view of table t (fields, make_row) on the scratch segment.
  const Table& table(uint32_t t) const { return tables_.at(t); }
  // Applies what is queued.
  void flush();

  const ReplayCounters& counters() const noexcept { return counters_; }
  // The newest arrival time applied or queued so far (INT64_MIN: none).
  int64_t last_arrival_ms() const noexcept { return last_arrival_ms_; }
  const std::string& scratch_path() const noexcept { return dir_; }

 private:
  friend class Engine;
  Replay(const Engine& engine, const layout::Schema& schema);
  sidecar::DecodedBatch& next_batch();
  void commit_batch(int64_t arrival_ms);
  void note_arrival(int64_t arrival_ms);
  void tally(ApplyResult r) noexcept;
  void drain_run();

  const Engine& engine_;
  std::string dir_;
  std::string name_;
  std::unique_ptr<Writer> writer_;
  Segment segment_;
  std::vector<Table> tables_;
  std::unique_ptr<sidecar::Decoder> decoder_;
  std::unique_ptr<sidecar::UpdateBuilder> builder_;
  std::vector<uint8_t> table_enabled_;
  // The queue: decoded messages not applied yet, with their arrival times.
  static constexpr size_t kQueue = 64;
  std::vector<sidecar::DecodedBatch> queue_;
  std::vector<int64_t> queue_arrival_;
  size_t queued_ = 0;
  std::vector<Upsert> run_;
  std::vector<ApplyResult> results_;
  int64_t last_arrival_ms_ = INT64_MIN;
  // refresh_all_keys: the last instant every key was brought to, and the
  // events applied since the last refresh (flush()).
  int64_t refreshed_to_ms_ = INT64_MIN;
  uint64_t since_refresh_ = 0;
  ReplayCounters counters_;
};

}  // namespace larder::offline
