// The public face of the writer (writer.h): open, lookups, the dispatch of
// updates, stats and liveness. The work is in the files writer_impl.h lists.
//
// Threading: every function runs on the thread that owns the Writer (the
// sidecar's writer thread). Readers in other processes read concurrently
// through table_view.h.
#include "larder/writer/writer.h"

#include <sys/stat.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <bit>
#include <cmath>

#include "pager.h"
#include "writer_impl.h"

namespace larder {

using namespace layout;  // NOLINT: the writer works on the layout's words

const char* apply_result_name(ApplyResult r) {
  switch (r) {
    case ApplyResult::kApplied: return "applied";
    case ApplyResult::kStale: return "stale";
    case ApplyResult::kTableFull: return "table_full";
    case ApplyResult::kInvalid: return "invalid";
    case ApplyResult::kDuplicate: return "duplicate";
    case ApplyResult::kLate: return "late";
    case ApplyResult::kArenaFull: return "arena_full";
  }
  return "unknown";
}

uint64_t event_id_hash(std::string_view id) noexcept {
  const uint64_t h = XXH3_64bits(id.data(), id.size());
  return h == 0 ? 1 : h;
}

uint64_t distinct_hash_string(std::string_view s) noexcept {
  const uint64_t h = XXH3_64bits_withSeed(s.data(), s.size(), 1);
  return h == 0 ? 1 : h;
}

uint64_t distinct_hash_int64(int64_t v) noexcept {
  unsigned char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(static_cast<uint64_t>(v) >> (8 * i));
  const uint64_t h = XXH3_64bits_withSeed(bytes, sizeof bytes, 2);
  return h == 0 ? 1 : h;
}

uint64_t distinct_hash_number(double v) noexcept {
  // [-2^63, 2^63): the doubles that convert to int64 exactly when integral.
  if (v >= -9223372036854775808.0 && v < 9223372036854775808.0 && std::trunc(v) == v) {
    return distinct_hash_int64(static_cast<int64_t>(v));
  }
  const uint64_t bits = std::bit_cast<uint64_t>(v);
  unsigned char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(bits >> (8 * i));
  const uint64_t h = XXH3_64bits_withSeed(bytes, sizeof bytes, 3);
  return h == 0 ? 1 : h;
}

Writer::Impl::~Impl() {
  // The pager first: it unmaps the retired generations handed to it
  // and leaves the next one's pages before either is unmapped here.
  pager.reset();
  if (header != nullptr) {
    sync::store_relaxed(header->connection_state, static_cast<uint32_t>(ConnectionState::kStopped));
    sync::store_release(header->writer_pid, uint64_t{0});
  }
  map.reset();
  if (lock_fd >= 0) ::close(lock_fd);  // releases the flock
}

// ---------------------------------------------------------------------------
// open

Writer::Writer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Writer::~Writer() = default;

std::unique_ptr<Writer::Impl> Writer::Impl::prepare(std::string_view name, const Schema& schema,
                                                    const WriterOptions& options) {
  validate_segment_name(name);
  schema.validate();
  auto impl = std::make_unique<Impl>();
  impl->name = std::string(name);
  impl->dir = options.dir.empty() ? "/dev/shm" : options.dir;
  impl->options = options;
  impl->schema = schema;

  struct stat st;
  if (::stat(impl->dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    throw Error(ErrorCode::kNotFound, "segment directory " + impl->dir + " does not exist");
  }
  DirFileSystem fs;
  if (dir_file_system(impl->dir, &fs) && !fs.memory_backed && !options.allow_non_tmpfs) {
    throw Error(ErrorCode::kInvalidArgument,
                "segment directory " + impl->dir +
                    " is not a tmpfs: a segment there would be written back to disk. Use /dev/shm or a "
                    "memory-backed volume (Kubernetes emptyDir with medium: Memory), or allow it explicitly");
  }
  impl->acquire_lock();
  impl->remove_leftovers();
  return impl;
}

std::unique_ptr<Writer> Writer::open(std::string_view name, const Schema& schema, const WriterOptions& options) {
  std::unique_ptr<Impl> impl = Impl::prepare(name, schema, options);
  const std::string path = segment_path(impl->dir, name);
  std::optional<Schema> migrate_to;
  if (::access(path.c_str(), F_OK) != 0) {
    impl->create(false);
  } else {
    impl->map = MappedFile::open_read_write(path, name);
    bool replace = false;
    try {
      validate_segment(impl->map->data(), impl->map->size(), name);
      const uint64_t have = impl->map->header().schema_fingerprint;
      if (have != schema.fingerprint()) {
        // A table grown by a generation switch keeps its capacity: the
        // configured one is where it started.
        const Schema current = schema_of(impl->map->data());
        Schema adopted = schema;
        for (TableSpec& t : adopted.tables) {
          for (const TableSpec& c : current.tables) {
            if (c.name == t.name && c.capacity > t.capacity) t.capacity = c.capacity;
          }
        }
        if (adopted.fingerprint() == have) {
          impl->schema = current;
        } else if (options.migrate_on_schema_change) {
          impl->schema = current;
          migrate_to = std::move(adopted);
        } else if (!options.recreate_on_schema_change) {
          throw Error(ErrorCode::kSchemaMismatch,
                      "segment \"" + impl->name + "\" has schema fingerprint " + hex64(have) +
                          ", the configured schema is " + hex64(schema.fingerprint()) +
                          ": restore the old schema, remove the segment, or allow recreation "
                          "(WriterOptions::recreate_on_schema_change)");
        } else {
          replace = true;
        }
      }
    } catch (const Error& e) {
      // A segment whose creation never finished at this name cannot exist
      // (creation publishes by rename); anything else unreadable is only
      // replaced when the operator allows it.
      if (e.code() == ErrorCode::kSchemaMismatch || !options.recreate_on_schema_change) throw;
      replace = true;
    }
    if (replace) {
      impl->map.reset();
      impl->create(true);
    }
  }
  impl->prepare_pages();
  impl->attach();
  std::unique_ptr<Writer> writer(new Writer(std::move(impl)));
  // A schema change carried over: nothing is applied meanwhile (the writer
  // is not returned yet), and a refusal leaves the segment as it was.
  if (migrate_to) writer->switch_now(*migrate_to);
  return writer;
}

void Writer::remove_segment(std::string_view name, const std::string& dir) {
  validate_segment_name(name);
  ::unlink(segment_path(dir, name).c_str());
  ::unlink(writer::lock_path(dir, name).c_str());
  ::unlink(grow_request_path(name, dir).c_str());  // a grow asked of a segment that is gone
}

// ---------------------------------------------------------------------------
// lookups

int Writer::table_index(std::string_view table) const {
  for (size_t t = 0; t < impl_->schema.tables.size(); ++t) {
    if (impl_->schema.tables[t].name == table) return static_cast<int>(t);
  }
  return -1;
}

int Writer::field_index(uint32_t table, std::string_view field) const {
  if (table >= impl_->schema.tables.size()) return -1;
  const auto& fields = impl_->schema.tables[table].fields;
  for (size_t f = 0; f < fields.size(); ++f) {
    if (fields[f].name == field) return static_cast<int>(f);
  }
  return -1;
}

const Schema& Writer::schema() const { return impl_->schema; }

int Writer::source_index(uint32_t table, std::string_view source) const {
  if (table >= impl_->tables.size()) return -1;
  const auto& sources = impl_->tables[table].agg.plan.sources;
  for (size_t i = 0; i < sources.size(); ++i) {
    if (sources[i] == source) return static_cast<int>(i);
  }
  return -1;
}

ApplyResult Writer::upsert(uint32_t table, std::string_view key, int64_t event_time_ms,
                           std::span<const FieldValue> values, int64_t apply_unix_ns) {
  return apply(table, key, event_time_ms, values, {}, 0, apply_unix_ns);
}

// ---------------------------------------------------------------------------
// updates (update.cc)

ApplyResult Writer::apply(uint32_t table, std::string_view key, int64_t event_time_ms,
                          std::span<const FieldValue> values, std::span<const SourceValue> sources, uint64_t event_id,
                          int64_t apply_unix_ns) {
  Impl& w = *impl_;
  ApplyResult r;
  if (table >= w.tables.size()) {
    r = ApplyResult::kInvalid;
  } else if (w.tables[table].agg.enabled()) {
    r = w.apply_aggregated(table, key, event_time_ms, values, sources, event_id, apply_unix_ns);
  } else if (!sources.empty()) {
    r = ApplyResult::kInvalid;
  } else if (w.tables[table].geo.group_count > 0) {
    r = w.upsert_grouped(table, key, event_time_ms, values, apply_unix_ns);
  } else {
    r = w.upsert_plain(table, key, event_time_ms, values, apply_unix_ns);
  }
  if (w.staged) [[unlikely]]
    w.finish_position();
  if (w.next_gen) [[unlikely]]
    w.switch_follow(table, key);
  return r;
}

ApplyResult Writer::remove(uint32_t table, std::string_view key, int64_t event_time_ms, int64_t apply_unix_ns) {
  Impl& w = *impl_;
  const ApplyResult r =
      table >= w.tables.size() ? ApplyResult::kInvalid : w.remove(table, key, event_time_ms, apply_unix_ns);
  if (w.staged) [[unlikely]]
    w.finish_position();
  if (w.next_gen) [[unlikely]]
    w.switch_follow(table, key);
  return r;
}

ApplyResult Writer::unpin(uint32_t table, std::string_view key, int64_t event_time_ms, int64_t pinned_after_ms,
                          int64_t apply_unix_ns) {
  Impl& w = *impl_;
  const ApplyResult r = table >= w.tables.size() ? ApplyResult::kInvalid
                                                 : w.unpin(table, key, event_time_ms, pinned_after_ms, apply_unix_ns);
  if (w.staged) [[unlikely]]
    w.finish_position();
  if (w.next_gen) [[unlikely]]
    w.switch_follow(table, key);
  return r;
}

// ---------------------------------------------------------------------------
// state and stats

void Writer::set_connection_state(ConnectionState state) {
  sync::store_relaxed(impl_->header->connection_state, static_cast<uint32_t>(state));
}

void Writer::add_messages_rejected(uint64_t n) { writer::bump(impl_->header->messages_rejected, n); }

bool Writer::created() const { return impl_->created; }
bool Writer::restored() const { return impl_->restored; }
uint64_t Writer::repaired_slots() const { return impl_->repaired; }
const AttachReport& Writer::attach_report() const { return impl_->report; }

layout::HugePageReport Writer::huge_pages() const {
  impl_->map->touch_huge_pages();
  layout::HugePageReport r = impl_->map->huge_pages();
  r.mount_huge = mount_huge_option(impl_->dir);
  return r;
}

const char* huge_pages_name(HugePages h) {
  switch (h) {
    case HugePages::kAuto: return "auto";
    case HugePages::kCollapse: return "collapse";
    case HugePages::kOff: return "off";
  }
  return "?";
}
std::string Writer::path() const { return segment_path(impl_->dir, impl_->name); }
const void* Writer::data() const { return impl_->map->data(); }

WriterStats Writer::stats(uint32_t table) const {
  WriterStats st;
  if (table >= impl_->tables.size()) return st;
  const Impl::TableState& ts = impl_->tables[table];
  st.live_keys = sync::load_relaxed(ts.desc->counters.live_keys);
  st.tombstones = sync::load_relaxed(ts.desc->counters.tombstones);
  st.slot_count = ts.geo.slot_count;
  st.capacity = ts.desc->capacity;
  const AggregateCounters& ac = ts.desc->aggregate_counters;
  st.aggregate_events = sync::load_relaxed(ac.events);
  st.late_dropped = sync::load_relaxed(ac.late_dropped);
  st.outside_window = sync::load_relaxed(ac.outside_window);
  st.duplicates = sync::load_relaxed(ac.duplicates);
  st.dedup_evictions = sync::load_relaxed(ac.dedup_evictions);
  st.refreshes = sync::load_relaxed(ac.refreshes);
  if (ts.agg.arena != nullptr) {
    st.arena_chunks = ts.agg.chunk_count;
    st.arena_used = sync::load_relaxed(ts.agg.arena[kArenaUsedWord]);
    st.arena_peak_used = sync::load_relaxed(ts.agg.arena[kArenaPeakUsedWord]);
    st.arena_refused = sync::load_relaxed(ts.agg.arena[kArenaRefusedWord]);
  }
  return st;
}

}  // namespace larder
