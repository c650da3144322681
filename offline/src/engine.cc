// The offline engine (engine.h): a replay over a private scratch segment.
// Threading: the caller's thread.
#include "larder/offline/engine.h"

#include <fmt/format.h>
#include <stdlib.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>

#include "decode/event_time.h"
#include "larder/layout/error.h"
#include "larder/layout/table_view.h"

namespace larder::offline {

namespace {

// Nanoseconds of the writer's clock fit int64 up to 2262-04-11.
constexpr int64_t kMaxClockMs = INT64_MAX / 1'000'000;

// The scratch writer's tombstone retention: about 31 years of arrival time,
// forever for a replay (and retention plus any arrival before 2230 fits the
// writer's int64 nanoseconds).
constexpr int64_t kKeepTombstonesMs = 1'000'000'000'000;

// With refresh_all_keys, events between two refreshes at the replay's clock
// (Replay::flush): the writer's heap of due keys holds at most about this
// many stale entries.
constexpr uint64_t kRefreshEvery = 1 << 16;

// The decoder's clock when a message has no arrival time of its own: its
// arrival is its own newest event time, so no event of it is in the future.
constexpr int64_t kNoFutureMs = sidecar::kMaxEventTimeMs;

int64_t clock_ns(int64_t ms) {
  if (ms <= 0 || ms > kMaxClockMs) {
    throw std::invalid_argument(
        fmt::format("time {} ms is outside the replay clock's range (1 .. {} ms, 1970 to 2262)", ms, kMaxClockMs));
  }
  return ms * 1'000'000;
}

}  // namespace

uint32_t partition_of(std::string_view key, uint32_t partitions) noexcept {
  if (partitions <= 1) return 0;
  const uint64_t h = layout::hash_key(key, 0);
  __extension__ using u128 = unsigned __int128;  // the high half of a 64 x 32-bit product
  return static_cast<uint32_t>((static_cast<u128>(h) * partitions) >> 64);
}

std::unique_ptr<Engine> Engine::open(const std::string& config_path, const EngineOptions& options) {
  sidecar::ConfigLoad load;
  load.require_secrets = false;  // sources are not used: their secrets need not be readable
  load.sources = false;          // nor their settings valid: only the tables make the features
  std::ifstream in(config_path, std::ios::binary);
  if (!in) {
    throw std::runtime_error(
        fmt::format("cannot read {}: {}", config_path, std::error_code(errno, std::system_category()).message()));
  }
  std::ostringstream text;
  text << in.rdbuf();
  std::string yaml = text.str();
  // A config of tables alone is enough here; the sidecar's parser wants a
  // segment, so one that is never used stands in for it (appended: the
  // file's line numbers in messages stay right).
  try {
    const YAML::Node root = YAML::Load(yaml);
    if (root.IsMap() && !root["segment"]) yaml += "\nsegment: {name: larder-offline}\n";
  } catch (const YAML::Exception&) {
    // The parser below reports it, with its position.
  }
  try {
    return std::make_unique<Engine>(sidecar::parse_config(yaml, config_path, load), options);
  } catch (const sidecar::ConfigError& e) {
    throw std::runtime_error(e.what());
  }
}

Engine::Engine(sidecar::Config config, const EngineOptions& options)
    : config_(std::move(config)),
      schema_(config_.schema()),
      decode_options_(config_.decode_options()),
      options_(options) {
  if (options_.partitions == 0 || options_.partition >= options_.partitions) {
    throw std::invalid_argument(
        fmt::format("partition {} of {}: need 0 <= partition < partitions", options_.partition, options_.partitions));
  }
}

Engine::~Engine() = default;

int Engine::table_index(std::string_view name) const noexcept {
  for (size_t t = 0; t < schema_.tables.size(); ++t) {
    if (schema_.tables[t].name == name) return static_cast<int>(t);
  }
  return -1;
}

std::unique_ptr<Replay> Engine::start(std::span<const uint64_t> min_capacity) const {
  layout::Schema schema = schema_;
  for (size_t t = 0; t < schema.tables.size() && t < min_capacity.size(); ++t) {
    layout::TableSpec& spec = schema.tables[t];
    if (min_capacity[t] <= spec.capacity) continue;
    // The dedup set's default follows the capacity; keep the configured
    // one, so duplicates are recognised over the same horizon as online.
    if (!spec.aggregates.empty() && spec.dedup_capacity == 0) spec.dedup_capacity = spec.dedup_ids();
    spec.capacity = min_capacity[t];
  }
  return std::unique_ptr<Replay>(new Replay(*this, schema));
}

Replay::Replay(const Engine& engine, const layout::Schema& schema) : engine_(engine) {
  std::string base = engine.options().scratch_dir;
  if (base.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    base = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  }
  std::string templ = base + "/larder-offline-XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) {
    throw std::runtime_error(fmt::format("cannot make a scratch directory under {}: {}", base,
                                         std::error_code(errno, std::system_category()).message()));
  }
  dir_ = templ;
  name_ = "offline";
  try {
    WriterOptions options;
    options.dir = dir_;
    options.allow_non_tmpfs = true;
    options.mode = 0600;
    // Each read refreshes its own key: a queue of due keys would only grow.
    options.refresh_queue = engine.options().refresh_all_keys;
    // Each update's clock is its own arrival: in arrival order that is the
    // newest anyway, and key by key (begin_key) no key moves another's.
    options.clock_per_update = !engine.options().refresh_all_keys;
    // Tombstones are kept: an expired one would be reclaimed by whichever
    // other key probes through it first, so a key's answers would depend on
    // the other keys and on the order of the replay (docs/backfill.md).
    options.tombstone_retention_ms = kKeepTombstonesMs;
    // The scratch segment is removed with the replay and never reopened
    // after a crash: the undo copies and journal entries that only a
    // restart reads are not written (measured in docs/backfill.md).
    options.crash_safety = false;
    writer_ = Writer::open(name_, schema, options);
    ClientOptions client;
    client.dir = dir_;
    segment_ = Segment::open(name_, client);
    for (const layout::TableSpec& spec : schema.tables) tables_.push_back(segment_.table(spec.name));
    decoder_ = std::make_unique<sidecar::Decoder>(schema, engine.decode_options());
    builder_ = std::make_unique<sidecar::UpdateBuilder>(schema, engine.decode_options());
  } catch (...) {
    tables_.clear();
    segment_ = Segment();
    writer_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    throw;
  }
  table_enabled_.assign(schema.tables.size(), 1);
  queue_.resize(kQueue);
  queue_arrival_.resize(kQueue);
  run_.reserve(kQueue * 4);
}

Replay::~Replay() {
  tables_.clear();
  segment_ = Segment();
  writer_.reset();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);  // ours: made by mkdtemp
}

void Replay::only_table(uint32_t table) {
  std::fill(table_enabled_.begin(), table_enabled_.end(), 0);
  table_enabled_.at(table) = 1;
}

void Replay::note_arrival(int64_t arrival_ms) {
  if (arrival_ms < last_arrival_ms_) {
    throw std::invalid_argument(
        fmt::format("arrival time {} ms is before the previous event's {} ms: events must "
                    "come in non-decreasing arrival order",
                    arrival_ms, last_arrival_ms_));
  }
  clock_ns(arrival_ms);  // in range
  last_arrival_ms_ = arrival_ms;
}

void Replay::begin_key() {
  if (engine_.options().refresh_all_keys) {
    throw std::logic_error("Replay::begin_key: a replay with refresh_all_keys goes in arrival order only");
  }
  // What is queued stays queued: each update carries its own clock
  // (WriterOptions::clock_per_update), so runs may span keys.
  last_arrival_ms_ = INT64_MIN;
}

sidecar::DecodedBatch& Replay::next_batch() {
  if (queued_ == kQueue) flush();
  return queue_[queued_];
}

void Replay::commit_batch(int64_t arrival_ms) {
  queue_arrival_[queued_] = arrival_ms;
  ++queued_;
}

sidecar::DecodeResult Replay::decode_json(std::string_view body, int64_t* arrival_ms, sidecar::DecodedBatch& batch) {
  sidecar::DecodeResult r = decoder_->decode(body, batch, *arrival_ms >= 0 ? *arrival_ms : kNoFutureMs);
  if (!r.ok) {
    ++counters_.rejected;
    return r;
  }
  if (*arrival_ms < 0) {
    int64_t newest = 0;
    bool unpin = false;
    for (size_t i = 0; i < batch.size(); ++i) {
      newest = std::max(newest, batch.update(i).event_time_ms);
      unpin |= batch.update(i).op == sidecar::UpdateOp::kUnpin;
    }
    *arrival_ms = newest;
    // An unpin's bound is the decoder's clock plus max_future_skew: decode
    // it again with the clock at its arrival.
    if (unpin) r = decoder_->decode(body, batch, newest);
  }
  return r;
}

sidecar::DecodeResult Replay::decode_built(int64_t now_ms, void (*walk)(void* ctx), void* ctx,
                                           sidecar::DecodedBatch& batch) {
  sidecar::DecodeResult r = builder_->run(batch, now_ms, sidecar::RejectReason::kInternal, walk, ctx);
  if (!r.ok) ++counters_.rejected;
  return r;
}

sidecar::DecodeResult Replay::apply_json(std::string_view body, int64_t arrival_ms) {
  sidecar::DecodedBatch& batch = next_batch();
  sidecar::DecodeResult r = decode_json(body, &arrival_ms, batch);
  if (!r.ok) return r;
  note_arrival(arrival_ms);
  commit_batch(arrival_ms);
  return r;
}

sidecar::DecodeResult Replay::apply_built(int64_t arrival_ms, int64_t now_ms, void (*walk)(void* ctx), void* ctx) {
  sidecar::DecodedBatch& batch = next_batch();
  sidecar::DecodeResult r = decode_built(now_ms, walk, ctx, batch);
  if (!r.ok) return r;
  note_arrival(arrival_ms);
  commit_batch(arrival_ms);
  return r;
}

void Replay::apply_decoded(const DecodedEvent& e) {
  if (queued_ > 0) flush();  // in order: what was queued first
  note_arrival(e.arrival_ms);
  if (!table_enabled_.at(e.table)) return;
  ++counters_.events;
  const int64_t ns = clock_ns(e.arrival_ms);
  if (e.op == sidecar::UpdateOp::kUpsert) {
    Upsert up;
    up.table = e.table;
    up.key = e.key;
    up.event_time_ms = e.event_time_ms;
    up.values = e.values;
    up.sources = e.sources;
    up.event_id = e.event_id;
    up.apply_unix_ns = ns;
    run_.push_back(up);
    if (run_.size() >= kQueue * 4) drain_run();  // as a flush of a full queue would
    return;
  }
  drain_run();  // in order: the upserts before this delete
  if (e.op == sidecar::UpdateOp::kDelete) {
    tally(writer_->remove(e.table, e.key, e.event_time_ms, ns));
  } else {
    tally(writer_->unpin(e.table, e.key, e.event_time_ms, e.pinned_after_ms, ns));
  }
}

void Replay::tally(ApplyResult r) noexcept {
  switch (r) {
    case ApplyResult::kApplied: ++counters_.applied; break;
    case ApplyResult::kStale: ++counters_.stale; break;
    case ApplyResult::kDuplicate: ++counters_.duplicates; break;
    case ApplyResult::kLate: ++counters_.late; break;
    case ApplyResult::kTableFull:
    case ApplyResult::kArenaFull:
    case ApplyResult::kInvalid: ++counters_.refused; break;
  }
}

void Replay::drain_run() {
  if (run_.empty()) return;
  results_.resize(run_.size());
  // Each update carries its own clock; the batch's is the newest, for the
  // prefetches' guesses.
  writer_->upsert_many(run_, results_, run_.back().apply_unix_ns);
  for (ApplyResult r : results_) tally(r);
  run_.clear();
}

void Replay::flush() {
  for (size_t q = 0; q < queued_; ++q) {
    const sidecar::DecodedBatch& batch = queue_[q];
    const int64_t ns = clock_ns(queue_arrival_[q]);
    for (size_t i = 0; i < batch.size(); ++i) {
      const sidecar::DecodedUpdate& u = batch.update(i);
      if (!table_enabled_[u.table]) continue;
      const std::string_view key = batch.key(u);
      if (!engine_.in_partition(key)) {
        ++counters_.skipped;
        continue;
      }
      ++counters_.events;
      if (u.op == sidecar::UpdateOp::kUpsert) {
        Upsert up;
        up.table = u.table;
        up.key = key;
        up.event_time_ms = u.event_time_ms;
        up.values = batch.values(u);
        up.sources = batch.sources(u);
        up.event_id = u.event_id;
        up.apply_unix_ns = ns;
        run_.push_back(up);
        continue;
      }
      drain_run();  // in order: the upserts before this delete
      if (u.op == sidecar::UpdateOp::kDelete) {
        tally(writer_->remove(u.table, key, u.event_time_ms, ns));
      } else {
        tally(writer_->unpin(u.table, key, u.event_time_ms, u.pinned_after_ms, ns));
      }
    }
  }
  drain_run();
  since_refresh_ += queued_;
  if (engine_.options().refresh_all_keys && queued_ > 0 && since_refresh_ >= kRefreshEvery) {
    // A refresh at the replay's clock (the last arrival) every
    // kRefreshEvery events, as the sidecar refreshes every 50 ms at its
    // clock. It changes no value a read sees (a read refreshes to its
    // instant first), but bounds the writer's heap of due keys: each event
    // that moves a key's due time queues an entry, and only a refresh pops
    // them, so without it memory would grow with the number of events. Not
    // more often: a key refreshed now may get an event before the next one,
    // which brings its windows up to date anyway.
    writer_->refresh(clock_ns(queue_arrival_[queued_ - 1]));
    since_refresh_ = 0;
  }
  queued_ = 0;
}

ReadResult Replay::read(uint32_t table, std::string_view key, int64_t at_ms, Row& row) {
  if (at_ms < last_arrival_ms_) {
    throw std::invalid_argument(
        fmt::format("a read at {} ms after an event that arrived at {} ms was applied: "
                    "reads and events must come in time order",
                    at_ms, last_arrival_ms_));
  }
  flush();
  const Table& t = tables_.at(table);
  if (!engine_.options().refresh_all_keys) {
    // The key's windows, if it lost a bucket by at_ms, are rewritten as the
    // sidecar's refresh pass would have by then (it runs every 50 ms; here
    // at the instant itself). No other key's answer depends on it: each
    // key's windows are brought to the clock at its own events and reads.
    writer_->refresh_key(table, key, clock_ns(at_ms));
    ReadResult r = t.get(key, row);
    // The row is current as of at_ms; the segment's refreshed_through_ms,
    // which the client reads this from, never moves without a global refresh.
    if (r.found() && !engine_.schema().tables[table].aggregates.empty()) r.computed_at_ms = at_ms;
    return r;
  }
  if (at_ms > refreshed_to_ms_) {
    // Every key whose windows lost a bucket by at_ms.
    writer_->refresh(clock_ns(at_ms));
    refreshed_to_ms_ = at_ms;
  }
  return t.get(key, row);
}

}  // namespace larder::offline
