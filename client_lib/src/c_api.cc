// The C ABI over the C++ client. No exception crosses it: open functions
// catch and return codes; the read functions are noexcept already.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "larder/client.h"
#include "larder/larder.h"

struct larder_segment {
  larder::Segment segment;
};

struct larder_table {
  larder::Table table;
  // Byte offset of each field's value in a row buffer: made on first use by
  // the gathers and larder_row_field_offset (row_field_offsets()).
  std::once_flag offsets_once;
  std::vector<uint32_t> field_offsets;
};

// The C constants are the C++ enums' numbers (tests/status_codes_test.cc
// also checks that every enumerator has its twin).
static_assert(LARDER_OK == static_cast<int>(larder::Status::kOk));
static_assert(LARDER_SYNC_UNKNOWN == static_cast<int>(larder::SyncState::kUnknown));
static_assert(LARDER_SYNC_CATCHING_UP == static_cast<int>(larder::SyncState::kCatchingUp));
static_assert(LARDER_SYNC_READY == static_cast<int>(larder::SyncState::kReady));
static_assert(LARDER_SYNC_INCOMPLETE == static_cast<int>(larder::SyncState::kIncomplete));
static_assert(sizeof(larder_position_t) == 32);
static_assert(sizeof(larder_sync_info_t) == 144);
// The 1.1 structs as bindings declare them; within major version 1 they only
// grow at the end.
static_assert(sizeof(larder_open_options) == 32 && offsetof(larder_open_options, abi_version) == 24);
static_assert(sizeof(larder_segment_stats_t) == 112 && offsetof(larder_segment_stats_t, table_count) == 108);
static_assert(sizeof(larder_table_stats_t) == 144 && offsetof(larder_table_stats_t, aggregate_clock_ms) == 128 &&
              offsetof(larder_table_stats_t, refreshed_through_ms) == 136);
static_assert(sizeof(larder_read_options) == 16 && offsetof(larder_read_options, max_age_ms) == 8);
static_assert(LARDER_NOT_FOUND == static_cast<int>(larder::Status::kNotFound));
static_assert(LARDER_MAX_GROUPS == larder::layout::kMaxFieldGroups);
static_assert(LARDER_NO_GROUP_TIME == larder::layout::kNoGroupTime);
static_assert(sizeof(larder_group_max_age) == 16 && offsetof(larder_group_max_age, max_age_ms) == 8);
static_assert(LARDER_STALE == static_cast<int>(larder::Status::kStale));
static_assert(LARDER_BUSY == static_cast<int>(larder::Status::kBusy));
static_assert(LARDER_INVALID_KEY == static_cast<int>(larder::Status::kInvalidKey));
static_assert(LARDER_CORRUPT == static_cast<int>(larder::Status::kCorrupt));
static_assert(LARDER_E_INVALID_ARGUMENT == static_cast<int>(larder::ErrorCode::kInvalidArgument));
static_assert(LARDER_E_NOT_FOUND == static_cast<int>(larder::ErrorCode::kNotFound));
static_assert(LARDER_E_PERMISSION_DENIED == static_cast<int>(larder::ErrorCode::kPermissionDenied));
static_assert(LARDER_E_VERSION_MISMATCH == static_cast<int>(larder::ErrorCode::kVersionMismatch));
static_assert(LARDER_E_SCHEMA_MISMATCH == static_cast<int>(larder::ErrorCode::kSchemaMismatch));
static_assert(LARDER_E_NOT_READY == static_cast<int>(larder::ErrorCode::kNotReady));
static_assert(LARDER_E_CORRUPT == static_cast<int>(larder::ErrorCode::kCorrupt));
static_assert(LARDER_E_WRITER_LOCKED == static_cast<int>(larder::ErrorCode::kWriterLocked));
static_assert(LARDER_E_NO_SPACE == static_cast<int>(larder::ErrorCode::kNoSpace));
static_assert(LARDER_E_SYSTEM == static_cast<int>(larder::ErrorCode::kSystem));
static_assert(LARDER_INT64 == static_cast<int>(larder::FieldType::kInt64));
static_assert(LARDER_FLOAT64 == static_cast<int>(larder::FieldType::kFloat64));
static_assert(LARDER_FLOAT32 == static_cast<int>(larder::FieldType::kFloat32));
static_assert(LARDER_BOOL == static_cast<int>(larder::FieldType::kBool));
static_assert(LARDER_FLOAT32_VECTOR == static_cast<int>(larder::FieldType::kFloat32Vector));
static_assert(LARDER_STRING == static_cast<int>(larder::FieldType::kString));

namespace {

int fail(int code, const char* message, char* err, size_t errlen) {
  if (err != nullptr && errlen > 0) {
    std::strncpy(err, message, errlen - 1);
    err[errlen - 1] = '\0';
  }
  return code;
}

template <class F>
int guarded(F&& f, char* err, size_t errlen) {
  try {
    f();
    return LARDER_E_OK;
  } catch (const larder::Error& e) {
    return fail(static_cast<int>(e.code()), e.what(), err, errlen);
  } catch (const std::bad_alloc&) {
    return fail(LARDER_E_SYSTEM, "out of memory", err, errlen);
  } catch (const std::exception& e) {
    return fail(LARDER_E_SYSTEM, e.what(), err, errlen);
  }
}

const larder::Field& field_at(const larder_table* t, uint32_t field) { return t->table.fields()[field]; }

// The field `field` of the table when it exists and has type `type`, so a
// typed accessor never reads more bytes than the field has; nullptr (the
// caller answers "no value") for a NULL table or row, an index out of range
// or another type.
const larder::Field* typed_field(const larder_table* t, const void* row, uint32_t field, larder::FieldType type) {
  if (t == nullptr || row == nullptr || field >= t->table.fields().size()) return nullptr;
  const larder::Field& f = field_at(t, field);
  return f.type == type ? &f : nullptr;
}

// Options as this library knows them: the caller's first `size` bytes over
// zeros (its compiled struct may be older and shorter, every zero is a
// default), after checking that a newer, longer struct sets nothing this
// library would ignore. Returns nullptr when accepted, else why not.
constexpr uint32_t kMaxOptionsSize = 4096;

const char* read_options(const larder_open_options* in, larder_open_options& out) {
  out = larder_open_options{};
  out.size = sizeof out;
  if (in == nullptr) return nullptr;
  const uint32_t size = in->size;
  // A size that ends inside a field would leave that field half-copied.
  static constexpr uint32_t kFieldEnds[] = {
      offsetof(larder_open_options, max_retries) + sizeof(uint32_t),
      offsetof(larder_open_options, dir) + sizeof(const char*),
      offsetof(larder_open_options, expected_schema_fingerprint) + sizeof(uint64_t),
      offsetof(larder_open_options, abi_version) + sizeof(uint32_t),
      offsetof(larder_open_options, reserved) + sizeof(uint32_t),
  };
  if (size < kFieldEnds[0]) return "larder_open_options.size is smaller than its first two fields: set it to sizeof";
  if (size > kMaxOptionsSize) return "larder_open_options.size is implausibly large: set it to sizeof";
  if (size < sizeof out && std::find(std::begin(kFieldEnds), std::end(kFieldEnds), size) == std::end(kFieldEnds)) {
    return "larder_open_options.size ends inside a field: set it to sizeof";
  }
  const auto* bytes = reinterpret_cast<const unsigned char*>(in);
  for (uint32_t i = sizeof out; i < size; ++i) {
    if (bytes[i] != 0) {
      return "larder_open_options sets a field this library does not know (built against a newer larder.h): "
             "upgrade liblarder";
    }
  }
  std::memcpy(&out, in, std::min<size_t>(size, sizeof out));
  if (out.reserved != 0) return "larder_open_options.reserved must be 0";
  return nullptr;
}

// larder_read_options as larder::ReadOptions, by the rules of read_options above
// (a caller's shorter struct leaves defaults, a longer one must be zero
// beyond what this library knows). False when they cannot be honoured.
bool get_options(const larder_read_options* in, larder::ReadOptions& out) {
  out = larder::ReadOptions{};
  if (in == nullptr) return true;
  const uint32_t size = in->size;
  static constexpr uint32_t kFieldEnds[] = {
      offsetof(larder_read_options, age_of) + sizeof(int32_t),
      offsetof(larder_read_options, max_age_ms) + sizeof(int64_t),
  };
  if (size < kFieldEnds[0] || size > kMaxOptionsSize) return false;
  if (size < sizeof(larder_read_options) &&
      std::find(std::begin(kFieldEnds), std::end(kFieldEnds), size) == std::end(kFieldEnds)) {
    return false;
  }
  const auto* bytes = reinterpret_cast<const unsigned char*>(in);
  for (uint32_t i = sizeof(larder_read_options); i < size; ++i) {
    if (bytes[i] != 0) return false;
  }
  larder_read_options c{};
  std::memcpy(&c, in, std::min<size_t>(size, sizeof c));
  if (c.age_of != LARDER_AGE_OF_EVENT && c.age_of != LARDER_AGE_OF_COMPUTED) return false;
  out.max_age_ms = c.max_age_ms;
  out.age_of = c.age_of == LARDER_AGE_OF_COMPUTED ? larder::AgeOf::kComputed : larder::AgeOf::kEvent;
  return true;
}

// Copies the first out->size bytes of a filled stats struct to the caller
// (fields an older caller does not know are not written).
template <class Stats>
int copy_stats(const Stats& filled, Stats* out) {
  if (out == nullptr || out->size < 8) return LARDER_E_INVALID_ARGUMENT;
  const uint32_t n = std::min<uint32_t>(out->size, sizeof(Stats));
  Stats copy = filled;
  copy.size = n;
  std::memcpy(static_cast<void*>(out), &copy, n);
  return LARDER_E_OK;
}

larder::RowView view(const larder_table* t, const void* row) {
  return t->table.view(static_cast<const uint64_t*>(row));
}

larder_read_result to_c(const larder::ReadResult& r) {
  return larder_read_result{static_cast<int32_t>(r.status), 0, r.event_time_ms, r.apply_unix_ns};
}

// larder_get_many and larder_get_many_ex: Table::get_many on chunks of views of the caller's keys.
void get_many_chunked(const larder_table* table, const void* const* keys, const size_t* key_lens, size_t n,
                      uint64_t* out, larder_read_result* results, const larder::ReadOptions& options,
                      int64_t* computed_at_ms) {
  const size_t row_words = table->table.row_words();
  constexpr size_t kChunk = 64;
  std::string_view views[kChunk];
  larder::ReadResult rs[kChunk];
  for (size_t base = 0; base < n; base += kChunk) {
    const size_t m = std::min(kChunk, n - base);
    for (size_t i = 0; i < m; ++i)
      views[i] = std::string_view(static_cast<const char*>(keys[base + i]), key_lens[base + i]);
    table->table.get_many(std::span<const std::string_view>(views, m), out + base * row_words,
                          std::span<larder::ReadResult>(rs, m), options);
    for (size_t i = 0; i < m; ++i) results[base + i] = to_c(rs[i]);
    if (computed_at_ms != nullptr) {
      for (size_t i = 0; i < m; ++i) computed_at_ms[base + i] = rs[i].found() ? rs[i].computed_at_ms : 0;
    }
  }
}

// The C bounds as C++ ones: their count, or -1 when one names a group the
// table does not have or more bounds than groups are given.
int group_bounds(const larder_table* t, const larder_group_max_age* in, size_t n, larder::GroupMaxAge* out) {
  const size_t groups = t->table.groups().size();
  if (n > groups) return -1;
  for (size_t i = 0; i < n; ++i) {
    if (in[i].group >= groups) return -1;
    out[i] = larder::GroupMaxAge{in[i].group, in[i].max_age_ms};
  }
  return static_cast<int>(n);
}

}  // namespace

extern "C" {

uint32_t larder_version(void) { return LARDER_ABI_VERSION; }

const char* larder_version_string(void) {
#define LARDER_STR2(x) #x
#define LARDER_STR(x) LARDER_STR2(x)
  return LARDER_STR(LARDER_ABI_VERSION_MAJOR) "." LARDER_STR(LARDER_ABI_VERSION_MINOR);
#undef LARDER_STR
#undef LARDER_STR2
}

int larder_open(const char* name, const char* dir, larder_segment** out, char* err, size_t errlen) {
  larder_open_options options{};
  options.size = sizeof options;
  options.dir = dir;
  return larder_open_ex(name, &options, out, err, errlen);
}

int larder_open_ex(const char* name, const larder_open_options* options, larder_segment** out, char* err,
                   size_t errlen) {
  if (out != nullptr) *out = nullptr;
  if (out == nullptr || name == nullptr)
    return fail(LARDER_E_INVALID_ARGUMENT, "name and out are required", err, errlen);
  larder_open_options o;
  if (const char* why = read_options(options, o)) return fail(LARDER_E_INVALID_ARGUMENT, why, err, errlen);
  if (o.abi_version != 0) {
    const uint32_t major = o.abi_version >> 16, minor = o.abi_version & 0xffff;
    if (major != LARDER_ABI_VERSION_MAJOR || minor > LARDER_ABI_VERSION_MINOR) {
      char buf[160];
      std::snprintf(
          buf, sizeof buf, "the caller needs larder C ABI %u.%u, this liblarder implements %d.%d: %s", major, minor,
          LARDER_ABI_VERSION_MAJOR, LARDER_ABI_VERSION_MINOR,
          major != LARDER_ABI_VERSION_MAJOR ? "use a liblarder of the same major version" : "upgrade liblarder");
      return fail(LARDER_E_VERSION_MISMATCH, buf, err, errlen);
    }
  }
  return guarded(
      [&] {
        larder::ClientOptions client;
        if (o.dir != nullptr && o.dir[0] != '\0') client.dir = o.dir;
        if (o.max_retries != 0) client.max_retries = o.max_retries;
        client.expected_schema_fingerprint = o.expected_schema_fingerprint;
        auto seg = std::make_unique<larder_segment>();
        seg->segment = larder::Segment::open(name, client);
        *out = seg.release();
      },
      err, errlen);
}

void larder_close(larder_segment* segment) { delete segment; }

larder_segment_info larder_segment_stat(const larder_segment* segment) {
  if (segment == nullptr) return larder_segment_info{};
  const larder::SegmentInfo i = segment->segment.info();
  larder_segment_info c{};
  c.state = static_cast<uint32_t>(i.state);
  c.connection = static_cast<uint32_t>(i.connection);
  c.layout_version = i.layout_version;
  c.schema_fingerprint = i.schema_fingerprint;
  c.writer_pid = i.writer_pid;
  c.heartbeat_age_ms = i.heartbeat_age_ms;
  c.updates_applied = i.updates_applied;
  c.messages_rejected = i.messages_rejected;
  c.last_apply_unix_ns = i.last_apply_unix_ns;
  return c;
}

int larder_writer_alive(const larder_segment* segment, int64_t max_heartbeat_age_ms) {
  if (segment == nullptr) return 0;
  return segment->segment.writer_alive(max_heartbeat_age_ms) ? 1 : 0;
}

int larder_segment_stats(const larder_segment* segment, larder_segment_stats_t* out) {
  if (segment == nullptr) return LARDER_E_INVALID_ARGUMENT;
  const larder::SegmentInfo i = segment->segment.info();
  larder_segment_stats_t c{};
  c.state = static_cast<uint32_t>(i.state);
  c.connection = static_cast<uint32_t>(i.connection);
  c.layout_version = i.layout_version;
  c.schema_fingerprint = i.schema_fingerprint;
  c.segment_bytes = i.segment_bytes;
  c.generation = i.generation;
  c.writer_pid = i.writer_pid;
  c.heartbeat_age_ms = i.heartbeat_age_ms;
  c.writer_sessions = i.writer_sessions;
  c.repaired_slots = i.repaired_slots;
  c.updates_applied = i.updates_applied;
  c.messages_rejected = i.messages_rejected;
  c.last_apply_unix_ns = i.last_apply_unix_ns;
  c.created_unix_ns = i.created_unix_ns;
  c.sync_state = static_cast<int32_t>(segment->segment.state());
  c.table_count = segment->segment.table_count();
  return copy_stats(c, out);
}

int larder_segment_table_name(const larder_segment* segment, uint32_t index, char* buf, size_t buflen, size_t* len) {
  if (segment == nullptr || (buf == nullptr && buflen > 0)) return LARDER_E_INVALID_ARGUMENT;
  const std::string_view name = segment->segment.table_name(index);
  if (name.empty()) return LARDER_E_NOT_FOUND;  // names are validated non-empty at open
  if (len != nullptr) *len = name.size();
  if (buflen <= name.size()) return LARDER_E_NO_SPACE;
  std::memcpy(buf, name.data(), name.size());
  buf[name.size()] = '\0';
  return LARDER_E_OK;
}

larder_sync_state_t larder_segment_state(const larder_segment* segment) {
  if (segment == nullptr) return LARDER_SYNC_UNKNOWN;
  return static_cast<larder_sync_state_t>(segment->segment.state());
}

void larder_segment_sync_info(const larder_segment* segment, larder_sync_info_t* out) {
  if (out == nullptr) return;
  *out = larder_sync_info_t{};
  if (segment == nullptr) return;
  try {
    const larder::SyncInfo info = segment->segment.sync();
    out->state = static_cast<int32_t>(info.state);
    out->changed_unix_ns = info.changed_unix_ns;
    for (const larder::SyncInfo::Partition& p : info.partitions) {
      out->partition_count = std::max(out->partition_count, p.partition + 1);
    }
    std::snprintf(out->source_id, sizeof out->source_id, "%s", info.source_id.c_str());
  } catch (...) {  // out of memory: the state alone
    out->state = static_cast<int32_t>(segment->segment.state());
  }
}

int larder_segment_position(const larder_segment* segment, uint32_t partition, larder_position_t* out) {
  if (out == nullptr) return LARDER_NOT_FOUND;
  *out = larder_position_t{};
  if (segment == nullptr) return LARDER_NOT_FOUND;
  try {
    const larder::SyncInfo info = segment->segment.sync();
    for (const larder::SyncInfo::Partition& p : info.partitions) {
      if (p.partition != partition) continue;
      if (p.next_offset) {
        out->next_offset = *p.next_offset;
        out->skip_updates = p.skip_updates;
        out->flags |= LARDER_POSITION_HAS_NEXT;
      }
      if (p.target) {
        out->target = *p.target;
        out->flags |= LARDER_POSITION_HAS_TARGET;
      }
      if (p.first_retained) {
        out->first_retained = *p.first_retained;
        out->flags |= LARDER_POSITION_HAS_FIRST_RETAINED;
      }
      return LARDER_OK;
    }
  } catch (...) {  // out of memory: nothing to report
  }
  return LARDER_NOT_FOUND;
}

int larder_table_open(const larder_segment* segment, const char* name, larder_table** out, char* err, size_t errlen) {
  if (segment == nullptr || out == nullptr || name == nullptr) {
    return fail(LARDER_E_INVALID_ARGUMENT, "segment, name and out are required", err, errlen);
  }
  *out = nullptr;
  return guarded(
      [&] {
        auto t = std::make_unique<larder_table>();
        t->table = segment->segment.table(name);
        *out = t.release();
      },
      err, errlen);
}

void larder_table_close(larder_table* table) { delete table; }

size_t larder_table_row_bytes(const larder_table* table) { return table == nullptr ? 0 : table->table.row_words() * 8; }

uint32_t larder_table_field_count(const larder_table* table) {
  return table == nullptr ? 0 : static_cast<uint32_t>(table->table.fields().size());
}

larder_field_info larder_table_field(const larder_table* table, uint32_t index) {
  if (table == nullptr || index >= table->table.fields().size()) return larder_field_info{nullptr, 0, 0};
  const larder::Field& f = field_at(table, index);
  return larder_field_info{f.name.data(), static_cast<int32_t>(f.type), f.count};
}

int larder_field_lookup(const larder_table* table, const char* name, uint32_t* index) {
  if (index != nullptr) *index = LARDER_NO_FIELD;
  if (table == nullptr || name == nullptr || index == nullptr) return LARDER_E_INVALID_ARGUMENT;
  const auto& fields = table->table.fields();
  for (size_t i = 0; i < fields.size(); ++i) {
    if (fields[i].name == name) {
      *index = static_cast<uint32_t>(i);
      return LARDER_E_OK;
    }
  }
  return LARDER_E_NOT_FOUND;
}

int32_t larder_field_index(const larder_table* table, const char* name) {
  uint32_t index;
  // Field counts are far below INT32_MAX (the layout caps them), so the cast is exact.
  return larder_field_lookup(table, name, &index) == LARDER_E_OK ? static_cast<int32_t>(index) : -1;
}

int larder_table_stats(const larder_table* table, larder_table_stats_t* out) {
  if (table == nullptr) return LARDER_E_INVALID_ARGUMENT;
  const larder::TableStats s = table->table.stats();
  larder_table_stats_t c{};
  c.aggregates = s.aggregates;
  c.capacity = s.capacity;
  c.slot_count = s.slot_count;
  c.live_keys = s.live_keys;
  c.tombstones = s.tombstones;
  c.upserts = s.upserts;
  c.deletes = s.deletes;
  c.stale_ignored = s.stale_ignored;
  c.full_rejected = s.full_rejected;
  c.last_apply_unix_ns = s.last_apply_unix_ns;
  c.max_event_time_ms = s.max_event_time_ms;
  c.aggregate_events = s.aggregate_events;
  c.late_dropped = s.late_dropped;
  c.duplicates = s.duplicates;
  c.dedup_evictions = s.dedup_evictions;
  c.refreshes = s.refreshes;
  c.aggregate_clock_ms = s.aggregate_clock_ms;
  c.refreshed_through_ms = s.refreshed_through_ms;
  return copy_stats(c, out);
}

larder_read_result larder_get(const larder_table* table, const void* key, size_t key_len, void* row,
                              int64_t max_age_ms) {
  if (table == nullptr || row == nullptr || (key == nullptr && key_len > 0)) {
    return larder_read_result{LARDER_INVALID_KEY, 0, 0, 0};
  }
  return to_c(table->table.get(std::string_view(static_cast<const char*>(key), key_len), static_cast<uint64_t*>(row),
                               larder::ReadOptions{max_age_ms}));
}

int32_t larder_get_ex(const larder_table* table, const void* key, size_t key_len, void* row,
                      const larder_read_options* options, larder_read_result* result, int64_t* computed_at_ms) {
  larder::ReadOptions o;
  larder::ReadResult r;
  r.status = larder::Status::kInvalidKey;
  if (table != nullptr && row != nullptr && (key != nullptr || key_len == 0) && get_options(options, o)) {
    r = table->table.get(std::string_view(static_cast<const char*>(key), key_len), static_cast<uint64_t*>(row), o);
  }
  if (result != nullptr) *result = to_c(r);
  if (computed_at_ms != nullptr) *computed_at_ms = r.found() ? r.computed_at_ms : 0;
  return static_cast<int32_t>(r.status);
}

void larder_get_many_ex(const larder_table* table, const void* const* keys, const size_t* key_lens, size_t n,
                        void* rows, larder_read_result* results, const larder_read_options* options,
                        int64_t* computed_at_ms) {
  larder::ReadOptions o;
  if (results == nullptr) return;
  if (table == nullptr || keys == nullptr || key_lens == nullptr || rows == nullptr || !get_options(options, o)) {
    std::fill(results, results + n, larder_read_result{LARDER_INVALID_KEY, 0, 0, 0});
    if (computed_at_ms != nullptr) std::fill(computed_at_ms, computed_at_ms + n, int64_t{0});
    return;
  }
  get_many_chunked(table, keys, key_lens, n, static_cast<uint64_t*>(rows), results, o, computed_at_ms);
}

void larder_get_many(const larder_table* table, const void* const* keys, const size_t* key_lens, size_t n, void* rows,
                     larder_read_result* results, int64_t max_age_ms) {
  if (results == nullptr) return;
  if (table == nullptr || keys == nullptr || key_lens == nullptr || rows == nullptr) {
    std::fill(results, results + n, larder_read_result{LARDER_INVALID_KEY, 0, 0, 0});
    return;
  }
  get_many_chunked(table, keys, key_lens, n, static_cast<uint64_t*>(rows), results, larder::ReadOptions{max_age_ms},
                   nullptr);
}

int larder_row_valid(const larder_table* table, const void* row, uint32_t field) {
  if (table == nullptr || row == nullptr || field >= table->table.fields().size()) return 0;
  return view(table, row).valid(field_at(table, field)) ? 1 : 0;
}

// Each accessor reads exactly the bytes of a field of its own type: the index
// comes from the caller, and a wrong one must not read another field's bytes
// or past the row buffer (larder.h says what each returns instead).
int64_t larder_row_int64(const larder_table* table, const void* row, uint32_t field) {
  const larder::Field* f = typed_field(table, row, field, larder::FieldType::kInt64);
  return f == nullptr ? 0 : view(table, row).i64(*f);
}
double larder_row_float64(const larder_table* table, const void* row, uint32_t field) {
  const larder::Field* f = typed_field(table, row, field, larder::FieldType::kFloat64);
  return f != nullptr ? view(table, row).f64(*f) : std::numeric_limits<double>::quiet_NaN();
}
float larder_row_float32(const larder_table* table, const void* row, uint32_t field) {
  const larder::Field* f = typed_field(table, row, field, larder::FieldType::kFloat32);
  return f != nullptr ? view(table, row).f32(*f) : std::numeric_limits<float>::quiet_NaN();
}
int larder_row_bool(const larder_table* table, const void* row, uint32_t field) {
  const larder::Field* f = typed_field(table, row, field, larder::FieldType::kBool);
  return f != nullptr && view(table, row).boolean(*f) ? 1 : 0;
}
double larder_row_as_double(const larder_table* table, const void* row, uint32_t field) {
  if (table == nullptr || row == nullptr || field >= table->table.fields().size()) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  return view(table, row).as_f64(field_at(table, field));
}
const float* larder_row_vector(const larder_table* table, const void* row, uint32_t field, uint32_t* dims) {
  if (dims != nullptr) *dims = 0;
  const larder::Field* f = typed_field(table, row, field, larder::FieldType::kFloat32Vector);
  if (f == nullptr) return nullptr;
  const auto v = view(table, row).vector(*f);
  if (dims != nullptr) *dims = static_cast<uint32_t>(v.size());
  return v.data();
}
const char* larder_row_string(const larder_table* table, const void* row, uint32_t field, uint32_t* len) {
  if (len != nullptr) *len = 0;
  const larder::Field* f = typed_field(table, row, field, larder::FieldType::kString);
  if (f == nullptr) return nullptr;
  // RowView clamps the stored length to the field's max_len: never past the field.
  const auto s = view(table, row).string(*f);
  if (len != nullptr) *len = static_cast<uint32_t>(s.size());
  return s.data();
}

uint32_t larder_table_group_count(const larder_table* table) {
  return table == nullptr ? 0 : static_cast<uint32_t>(table->table.groups().size());
}

const char* larder_table_group_name(const larder_table* table, uint32_t group) {
  if (table == nullptr || group >= table->table.groups().size()) return nullptr;
  return table->table.groups()[group].name.data();  // NUL-terminated in the mapping
}

int larder_group_lookup(const larder_table* table, const char* name, uint32_t* index) {
  if (index != nullptr) *index = LARDER_NO_GROUP;
  if (table == nullptr || name == nullptr || index == nullptr) return LARDER_E_INVALID_ARGUMENT;
  for (const larder::Group& g : table->table.groups()) {
    if (g.name == name) {
      *index = g.index;
      return LARDER_E_OK;
    }
  }
  return LARDER_E_NOT_FOUND;
}

uint32_t larder_field_group(const larder_table* table, uint32_t field) {
  if (table == nullptr || field >= table->table.fields().size() || table->table.groups().empty())
    return LARDER_NO_GROUP;
  return table->table.fields()[field].group;
}

int64_t larder_row_group_event_time_ms(const larder_table* table, const void* row, uint32_t group) {
  if (table == nullptr || row == nullptr || group >= table->table.groups().size()) return LARDER_NO_GROUP_TIME;
  return view(table, row).group_event_time_ms(table->table.groups()[group]);
}

int32_t larder_get_groups(const larder_table* table, const void* key, size_t key_len, void* row,
                          const larder_read_options* options, const larder_group_max_age* group_max_age,
                          size_t ngroup_max_age, larder_read_result* result, int64_t* computed_at_ms) {
  larder::ReadOptions o;
  larder::ReadResult r;
  r.status = larder::Status::kInvalidKey;
  larder::GroupMaxAge bounds[LARDER_MAX_GROUPS];
  const int made = table == nullptr || (group_max_age == nullptr && ngroup_max_age > 0)
                       ? -1
                       : group_bounds(table, group_max_age, ngroup_max_age, bounds);
  if (made >= 0 && row != nullptr && (key != nullptr || key_len == 0) && get_options(options, o)) {
    o.group_max_age = std::span<const larder::GroupMaxAge>(bounds, static_cast<size_t>(made));
    r = table->table.get(std::string_view(static_cast<const char*>(key), key_len), static_cast<uint64_t*>(row), o);
  }
  if (result != nullptr) *result = to_c(r);
  if (computed_at_ms != nullptr) *computed_at_ms = r.found() ? r.computed_at_ms : 0;
  return static_cast<int32_t>(r.status);
}

int64_t larder_row_event_time_ms(const larder_table* table, const void* row) {
  return table == nullptr || row == nullptr ? 0 : view(table, row).event_time_ms();
}

int64_t larder_row_apply_unix_ns(const larder_table* table, const void* row) {
  return table == nullptr || row == nullptr ? 0 : view(table, row).apply_unix_ns();
}

int larder_row_key(const larder_table* table, const void* row, char* buf, size_t buflen, size_t* key_len) {
  if (table == nullptr || row == nullptr || (buf == nullptr && buflen > 0)) return LARDER_E_INVALID_ARGUMENT;
  // The stored length, not RowView::key()'s clamped one: a length the schema
  // does not allow means the buffer is not a row a read returned.
  const uint64_t stored =
      static_cast<const uint64_t*>(row)[larder::layout::kSlotKeyLenWord - larder::layout::kSlotEventTimeWord] &
      0xffffffffu;
  if (stored == 0 || stored > table->table.key_max_len()) return LARDER_E_CORRUPT;
  const std::string_view key = view(table, row).key();
  if (key_len != nullptr) *key_len = key.size();
  if (buflen < key.size()) return LARDER_E_NO_SPACE;
  std::memcpy(buf, key.data(), key.size());
  return LARDER_E_OK;
}

const char* larder_status_name(int32_t status) {
  // Status is 8 bits wide: a wider number must not wrap onto a status.
  if (status < 0 || status > 0xff) return "unknown";
  return larder::status_name(static_cast<larder::Status>(status));
}

const char* larder_error_name(int code) {
  switch (code) {
    case LARDER_E_OK: return "ok";
    case LARDER_E_INVALID_ARGUMENT: return "invalid_argument";
    case LARDER_E_NOT_FOUND: return "not_found";
    case LARDER_E_PERMISSION_DENIED: return "permission_denied";
    case LARDER_E_VERSION_MISMATCH: return "version_mismatch";
    case LARDER_E_SCHEMA_MISMATCH: return "schema_mismatch";
    case LARDER_E_NOT_READY: return "not_ready";
    case LARDER_E_CORRUPT: return "corrupt";
    case LARDER_E_WRITER_LOCKED: return "writer_locked";
    case LARDER_E_NO_SPACE: return "no_space";
    case LARDER_E_SYSTEM: return "system";
    default: return "unknown";
  }
}
int64_t larder_now_unix_ms(void) { return larder::now_unix_ms(); }

}  // extern "C"

// ---- Batch gathers ---------------------------------------------------------
//
// The gathers read keys in chunks through Table::get_many (which prefetches
// within a chunk) into a row buffer on the stack, then copy the requested
// cells out. Nothing here touches shared memory directly: the rows are the
// consistent copies get_many made.

namespace {

// Keys per Table::get_many call (256 measured no faster: the prefetch
// pipeline refills within a few keys).
constexpr size_t kGatherChunk = 64;
// Stack budget for one chunk of rows: 32 KiB. Rows up to 512 bytes read 64
// keys per chunk; wider ones fewer; rows wider than the whole budget go one
// at a time through a per-thread buffer that grows once.
constexpr size_t kGatherStackWords = 4096;

// Key i of a gather's key arguments (see larder.h for the three forms).
// NUL-terminated keys are split as they are read; ok() says afterwards
// whether they matched their form (exactly n of them filling key_len).
class KeyCursor {
 public:
  KeyCursor(const char* bytes, size_t len, const uint64_t* offsets, size_t width)
      : bytes_(bytes), len_(len), offsets_(offsets), width_(width) {}

  // The checks that need no scan: offsets ordered and inside key_len,
  // fixed-width keys inside key_len.
  bool precheck(size_t n) const noexcept {
    if (n == 0) return true;
    if (bytes_ == nullptr) return false;
    if (offsets_ != nullptr) {
      for (size_t i = 0; i < n; ++i) {
        if (offsets_[i] > offsets_[i + 1]) return false;
      }
      return offsets_[n] <= len_;
    }
    if (width_ > 0) return n <= len_ / width_;
    return len_ > 0 && bytes_[len_ - 1] == '\0';
  }

  // Keys must be taken in order, i = 0, 1, ...
  std::string_view key(size_t i) noexcept {
    if (offsets_ != nullptr) {
      return {bytes_ + offsets_[i], static_cast<size_t>(offsets_[i + 1] - offsets_[i])};
    }
    if (width_ > 0) {
      const char* k = bytes_ + i * width_;
      size_t len = width_;
      while (len > 0 && k[len - 1] == '\0') --len;
      return {k, len};
    }
    return next_terminated();
  }

  // After the last key: true unless NUL-terminated keys did not fill key_len
  // exactly (a key held a NUL, or terminators were missing).
  bool ok(size_t n) const noexcept {
    return offsets_ != nullptr || width_ > 0 || n == 0 || (!overrun_ && next_ == len_);
  }

 private:
  std::string_view next_terminated() noexcept {
    static_assert(std::endian::native == std::endian::little, "the word scan below assumes little-endian");
    const char* k = bytes_ + next_;
    const size_t avail = next_ < len_ ? len_ - next_ : 0;
    size_t len = 0;
    // A word at a time: the lowest set bit of `zero` marks the first NUL byte.
    while (len + 8 <= avail) {
      uint64_t w;
      std::memcpy(&w, k + len, 8);
      const uint64_t zero = (w - 0x0101010101010101ULL) & ~w & 0x8080808080808080ULL;
      if (zero != 0) {
        len += static_cast<size_t>(std::countr_zero(zero)) / 8;
        next_ += len + 1;
        return {k, len};
      }
      len += 8;
    }
    while (len < avail && k[len] != '\0') ++len;
    if (len == avail) {  // no terminator before key_len
      overrun_ = true;
      next_ = len_;
      return {k, 0};
    }
    next_ += len + 1;
    return {k, len};
  }

  const char* bytes_;
  size_t len_;
  const uint64_t* offsets_;
  size_t width_;
  size_t next_ = 0;
  bool overrun_ = false;
};

// Reads n keys; calls fill(i, row) with the row of key i, or nullptr when
// there is none to take values from (anything but kOk and kStale).
// group_times (nullable): n x group_count, each row's group event times
// (LARDER_NO_GROUP_TIME where there is no row).
template <class Fill>
void gather_rows(const larder::Table& table, KeyCursor& keys, size_t n, int32_t* status, int64_t* event_time_ms,
                 int64_t* computed_at_ms, int64_t* group_times, const larder::ReadOptions& options,
                 Fill&& fill) noexcept {
  const size_t row_words = table.row_words();
  alignas(64) uint64_t stack_rows[kGatherStackWords];
  uint64_t* rows = stack_rows;
  size_t chunk = std::min(kGatherChunk, kGatherStackWords / row_words);
  if (chunk == 0) {
    // Wider than the stack budget (vectors of thousands of dimensions).
    thread_local std::vector<uint64_t> wide;
    if (wide.size() < row_words) {
      try {
        wide.resize(row_words);
      } catch (...) {
        return;  // out of memory: leave the outputs as they are
      }
    }
    rows = wide.data();
    chunk = 1;
  }
  std::string_view views[kGatherChunk];
  larder::ReadResult results[kGatherChunk];
  const std::vector<larder::Group>& groups = table.groups();
  for (size_t base = 0; base < n; base += chunk) {
    const size_t m = std::min(chunk, n - base);
    for (size_t i = 0; i < m; ++i) views[i] = keys.key(base + i);
    table.get_many(std::span<const std::string_view>(views, m), rows, std::span<larder::ReadResult>(results, m),
                   options);
    for (size_t i = 0; i < m; ++i) {
      const larder::ReadResult& r = results[i];
      if (status != nullptr) status[base + i] = static_cast<int32_t>(r.status);
      if (event_time_ms != nullptr) event_time_ms[base + i] = r.found() ? r.event_time_ms : 0;
      if (computed_at_ms != nullptr) computed_at_ms[base + i] = r.found() ? r.computed_at_ms : 0;
      if (group_times != nullptr) {
        const larder::RowView row = table.view(rows + i * row_words);
        for (const larder::Group& g : groups) {
          group_times[(base + i) * groups.size() + g.index] =
              r.found() ? row.group_event_time_ms(g) : larder::layout::kNoGroupTime;
        }
      }
      fill(base + i, r.found() ? rows + i * row_words : nullptr);
    }
  }
}

const std::vector<uint32_t>& row_field_offsets(const larder_table* t) {
  auto* mt = const_cast<larder_table*>(t);
  std::call_once(mt->offsets_once, [mt] {
    const larder::Table& table = mt->table;
    const std::vector<uint64_t> probe(table.row_words(), 0);
    const larder::RowView view = table.view(probe.data());
    const auto* base = reinterpret_cast<const char*>(probe.data());
    for (const larder::Field& f : table.fields()) {
      // vector() points at the field's bytes whatever its type.
      mt->field_offsets.push_back(static_cast<uint32_t>(reinterpret_cast<const char*>(view.vector(f).data()) - base));
    }
  });
  return mt->field_offsets;
}

constexpr size_t kValidityWord = larder::layout::kSlotHeaderWords - larder::layout::kSlotEventTimeWord;

// Where one requested field sits in a row buffer, resolved once per call.
struct Cell {
  uint32_t offset = 0;    // bytes from the start of the row buffer
  uint32_t validity = 0;  // word of the row buffer holding its validity bit
  uint64_t mask = 0;      // its bit; 0: no such field of this kind (always missing)
  uint32_t count = 0;     // vector dimensions
  larder::FieldType type = larder::FieldType::kInt64;
};

Cell cell_of(const larder_table* t, uint32_t field, bool want_vector) {
  const auto& fields = t->table.fields();
  Cell c;
  if (field >= fields.size()) return c;
  const larder::Field& f = fields[field];
  if ((f.type == larder::FieldType::kFloat32Vector) != want_vector || f.type == larder::FieldType::kString) return c;
  c.offset = row_field_offsets(t)[field];
  c.validity = static_cast<uint32_t>(kValidityWord + field / 64);
  c.mask = uint64_t{1} << (field % 64);
  c.count = f.count;
  c.type = f.type;
  return c;
}

double scalar_value(const Cell& c, const uint64_t* row, double missing) noexcept {
  if ((row[c.validity] & c.mask) == 0) return missing;  // also mask 0: not a scalar field
  const auto* p = reinterpret_cast<const unsigned char*>(row) + c.offset;
  switch (c.type) {
    case larder::FieldType::kInt64: {
      int64_t v;
      std::memcpy(&v, p, sizeof v);
      return static_cast<double>(v);
    }
    case larder::FieldType::kFloat64: {
      double v;
      std::memcpy(&v, p, sizeof v);
      return v;
    }
    case larder::FieldType::kFloat32: {
      float v;
      std::memcpy(&v, p, sizeof v);
      return v;
    }
    case larder::FieldType::kBool: return *p != 0 ? 1.0 : 0.0;
    default: return missing;
  }
}

void vector_value(const Cell& c, const uint64_t* row, float* out, float missing) noexcept {
  if (row != nullptr && (row[c.validity] & c.mask) != 0) {
    std::memcpy(out, reinterpret_cast<const unsigned char*>(row) + c.offset, sizeof(float) * c.count);
  } else {
    std::fill(out, out + c.count, missing);
  }
}

bool is_vector_field(const larder::Table& table, uint32_t field) {
  return field < table.fields().size() && table.fields()[field].type == larder::FieldType::kFloat32Vector;
}

// larder_gather, larder_gather_ex and larder_gather_groups.
int gather(const larder_table* table, const char* key_bytes, size_t key_len, const uint64_t* key_offsets,
           size_t key_width, size_t n, const uint32_t* scalar_fields, size_t nscalar, double* scalar_out,
           double missing_scalar, const uint32_t* vector_fields, size_t nvector, float* vector_out,
           float missing_vector, int32_t* status, int64_t* event_time_ms, int64_t* computed_at_ms, int64_t* group_times,
           const larder::ReadOptions& options) {
  if (table == nullptr) return LARDER_E_INVALID_ARGUMENT;
  if (nscalar > 0 && (scalar_fields == nullptr || scalar_out == nullptr)) return LARDER_E_INVALID_ARGUMENT;
  if (nvector > 0 && (vector_fields == nullptr || vector_out == nullptr)) return LARDER_E_INVALID_ARGUMENT;
  KeyCursor keys(key_bytes, key_len, key_offsets, key_width);
  if (!keys.precheck(n)) return LARDER_E_INVALID_ARGUMENT;
  const larder::Table& t = table->table;
  for (size_t v = 0; v < nvector; ++v) {
    if (!is_vector_field(t, vector_fields[v])) return LARDER_E_INVALID_ARGUMENT;
  }
  // Resolve the requested fields once (a few per call in practice; wider
  // requests go through the cells in groups, re-resolved per row).
  constexpr size_t kCells = 32;
  Cell scalars[kCells], vectors[kCells];
  const size_t planned_scalars = std::min(nscalar, kCells), planned_vectors = std::min(nvector, kCells);
  size_t vector_dims = 0;
  try {
    row_field_offsets(table);
    for (size_t j = 0; j < planned_scalars; ++j) scalars[j] = cell_of(table, scalar_fields[j], false);
    for (size_t v = 0; v < nvector; ++v) {
      vector_dims += t.fields()[vector_fields[v]].count;
      if (v < planned_vectors) vectors[v] = cell_of(table, vector_fields[v], true);
    }
  } catch (const std::bad_alloc&) {
    return LARDER_E_SYSTEM;  // the one-time offsets table
  }
  auto fill = [&](size_t i, const uint64_t* row) {
    double* values = scalar_out + i * nscalar;
    if (row == nullptr) {
      std::fill(values, values + nscalar, missing_scalar);
    } else {
      for (size_t j = 0; j < planned_scalars; ++j) values[j] = scalar_value(scalars[j], row, missing_scalar);
      for (size_t j = planned_scalars; j < nscalar; ++j) {
        values[j] = scalar_value(cell_of(table, scalar_fields[j], false), row, missing_scalar);
      }
    }
    float* out = vector_out + i * vector_dims;
    for (size_t v = 0; v < planned_vectors; ++v) {
      vector_value(vectors[v], row, out, missing_vector);
      out += vectors[v].count;
    }
    for (size_t v = planned_vectors; v < nvector; ++v) {
      const Cell c = cell_of(table, vector_fields[v], true);
      vector_value(c, row, out, missing_vector);
      out += c.count;
    }
  };
  gather_rows(t, keys, n, status, event_time_ms, computed_at_ms, group_times, options, fill);
  return keys.ok(n) ? LARDER_E_OK : LARDER_E_INVALID_ARGUMENT;
}

}  // namespace

extern "C" {

int larder_gather_f64(const larder_table* table, const char* key_bytes, size_t key_len, const uint64_t* key_offsets,
                      size_t key_width, size_t n, const uint32_t* fields, size_t nfields, double* out, int32_t* status,
                      int64_t* event_time_ms, int64_t max_age_ms, double missing_value) {
  return larder_gather(table, key_bytes, key_len, key_offsets, key_width, n, fields, nfields, out, missing_value,
                       nullptr, 0, nullptr, 0.0f, status, event_time_ms, max_age_ms);
}

int larder_gather_vector(const larder_table* table, const char* key_bytes, size_t key_len, const uint64_t* key_offsets,
                         size_t key_width, size_t n, uint32_t field, float* out, int32_t* status,
                         int64_t* event_time_ms, int64_t max_age_ms, float missing_value) {
  return larder_gather(table, key_bytes, key_len, key_offsets, key_width, n, nullptr, 0, nullptr, 0.0, &field, 1, out,
                       missing_value, status, event_time_ms, max_age_ms);
}

int larder_gather(const larder_table* table, const char* key_bytes, size_t key_len, const uint64_t* key_offsets,
                  size_t key_width, size_t n, const uint32_t* scalar_fields, size_t nscalar, double* scalar_out,
                  double missing_scalar, const uint32_t* vector_fields, size_t nvector, float* vector_out,
                  float missing_vector, int32_t* status, int64_t* event_time_ms, int64_t max_age_ms) {
  return gather(table, key_bytes, key_len, key_offsets, key_width, n, scalar_fields, nscalar, scalar_out,
                missing_scalar, vector_fields, nvector, vector_out, missing_vector, status, event_time_ms, nullptr,
                nullptr, larder::ReadOptions{max_age_ms});
}

int larder_gather_ex(const larder_table* table, const char* key_bytes, size_t key_len, const uint64_t* key_offsets,
                     size_t key_width, size_t n, const uint32_t* scalar_fields, size_t nscalar, double* scalar_out,
                     double missing_scalar, const uint32_t* vector_fields, size_t nvector, float* vector_out,
                     float missing_vector, int32_t* status, int64_t* event_time_ms, const larder_read_options* options,
                     int64_t* computed_at_ms) {
  larder::ReadOptions o;
  if (!get_options(options, o)) return LARDER_E_INVALID_ARGUMENT;
  return gather(table, key_bytes, key_len, key_offsets, key_width, n, scalar_fields, nscalar, scalar_out,
                missing_scalar, vector_fields, nvector, vector_out, missing_vector, status, event_time_ms,
                computed_at_ms, nullptr, o);
}

int larder_gather_groups(const larder_table* table, const char* key_bytes, size_t key_len, const uint64_t* key_offsets,
                         size_t key_width, size_t n, const uint32_t* scalar_fields, size_t nscalar, double* scalar_out,
                         double missing_scalar, const uint32_t* vector_fields, size_t nvector, float* vector_out,
                         float missing_vector, int32_t* status, int64_t* event_time_ms,
                         const larder_read_options* options, const larder_group_max_age* group_max_age,
                         size_t ngroup_max_age, int64_t* computed_at_ms, int64_t* group_event_time_ms) {
  if (table == nullptr) return LARDER_E_INVALID_ARGUMENT;
  if (ngroup_max_age > 0 && group_max_age == nullptr) return LARDER_E_INVALID_ARGUMENT;
  larder::ReadOptions o;
  if (!get_options(options, o)) return LARDER_E_INVALID_ARGUMENT;
  larder::GroupMaxAge bounds[LARDER_MAX_GROUPS];
  const int made = group_bounds(table, group_max_age, ngroup_max_age, bounds);
  if (made < 0) return LARDER_E_INVALID_ARGUMENT;
  o.group_max_age = std::span<const larder::GroupMaxAge>(bounds, static_cast<size_t>(made));
  return gather(table, key_bytes, key_len, key_offsets, key_width, n, scalar_fields, nscalar, scalar_out,
                missing_scalar, vector_fields, nvector, vector_out, missing_vector, status, event_time_ms,
                computed_at_ms, group_event_time_ms, o);
}

uint32_t larder_row_validity_offset(const larder_table* table) {
  if (table == nullptr) return UINT32_MAX;
  // The row buffer is the slot from its event-time word on (format.h).
  return static_cast<uint32_t>(8 * (larder::layout::kSlotHeaderWords - larder::layout::kSlotEventTimeWord));
}

uint32_t larder_row_key_offset(const larder_table* table) {
  if (table == nullptr) return UINT32_MAX;
  // Measured through RowView, which owns the row geometry.
  try {
    const std::vector<uint64_t> probe(table->table.row_words(), 0);
    const char* key = table->table.view(probe.data()).key().data();
    return static_cast<uint32_t>(key - reinterpret_cast<const char*>(probe.data()));
  } catch (const std::bad_alloc&) {
    return UINT32_MAX;
  }
}

uint32_t larder_row_field_offset(const larder_table* table, uint32_t field) {
  if (table == nullptr || field >= table->table.fields().size()) return UINT32_MAX;
  try {
    return row_field_offsets(table)[field];
  } catch (const std::bad_alloc&) {
    return UINT32_MAX;
  }
}

int32_t larder_get_into(const larder_table* table, const void* key, size_t key_len, void* row, int64_t max_age_ms,
                        larder_read_result* result) {
  const larder_read_result r = larder_get(table, key, key_len, row, max_age_ms);
  if (result != nullptr) *result = r;
  return r.status;
}

}  // extern "C"
