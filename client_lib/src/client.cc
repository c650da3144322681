// The client library: read-only mapping, name resolution and the read path.
//
// Threading: everything here may be called from any thread; Segment, Table
// and Field are immutable after open. The read path (Table::get, get_many)
// touches only the caller's buffers and the read-only mapping.
#include "larder/client.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "larder/layout/clock.h"
#include "larder/layout/schema.h"
#include "larder/layout/segment_file.h"
#include "larder/layout/sync.h"
#include "larder/layout/table_view.h"

namespace larder {

using namespace layout;  // NOLINT: the client implements the layout's read side

struct Mapping {
  std::unique_ptr<MappedFile> file;
  const SegmentHeader* header = nullptr;
  // The table count validate_segment checked the directory against, kept so
  // that a header changed after open cannot send a reader past the directory.
  uint32_t table_count = 0;
};

const char* status_name(Status s) noexcept {
  switch (s) {
    case Status::kOk: return "ok";
    case Status::kNotFound: return "not_found";
    case Status::kStale: return "stale";
    case Status::kBusy: return "busy";
    case Status::kInvalidKey: return "invalid_key";
    case Status::kCorrupt: return "corrupt";
  }
  return "unknown";
}

int64_t now_unix_ms() noexcept { return now_unix_ns() / 1'000'000; }

double RowView::as_f64(const Field& f) const noexcept {
  switch (f.type) {
    case FieldType::kInt64: return static_cast<double>(i64(f));
    case FieldType::kFloat64: return f64(f);
    case FieldType::kFloat32: return f32(f);
    case FieldType::kBool: return boolean(f) ? 1.0 : 0.0;
    case FieldType::kFloat32Vector:
    case FieldType::kString: break;
  }
  return std::numeric_limits<double>::quiet_NaN();
}

Row::Row(size_t words, uint32_t validity_words, uint32_t key_words) : buffer_(words, 0) {
  static_cast<RowView&>(*this) = RowView(buffer_.data(), validity_words, key_words);
}

RowBatch::RowBatch(size_t capacity, size_t row_words, uint32_t validity_words, uint32_t key_words)
    : buffer_(capacity * row_words, 0),
      capacity_(capacity),
      row_words_(row_words),
      validity_words_(validity_words),
      key_words_(key_words) {}

// ---------------------------------------------------------------------------
// Segment

Segment Segment::open(std::string_view name, const ClientOptions& options) {
  validate_segment_name(name);
  auto mapping = std::make_shared<Mapping>();
  mapping->file = MappedFile::open_read_only(segment_path(options.dir, name), name);
  validate_segment(mapping->file->data(), mapping->file->size(), name);
  mapping->header = &mapping->file->header();
  mapping->table_count = mapping->header->table_count;
  if (options.expected_schema_fingerprint != 0 &&
      mapping->header->schema_fingerprint != options.expected_schema_fingerprint) {
    char buf[200];
    std::snprintf(buf, sizeof buf, "segment \"%.*s\" has schema fingerprint %016llx, the reader expects %016llx",
                  static_cast<int>(name.size()), name.data(),
                  static_cast<unsigned long long>(mapping->header->schema_fingerprint),
                  static_cast<unsigned long long>(options.expected_schema_fingerprint));
    throw Error(ErrorCode::kSchemaMismatch, buf);
  }
  Segment s;
  s.mapping_ = std::move(mapping);
  s.name_ = std::string(name);
  s.options_ = options;
  if (s.options_.max_retries == 0) s.options_.max_retries = 1;
  return s;
}

uint32_t Segment::table_count() const noexcept { return mapping_ ? mapping_->table_count : 0; }

std::string_view Segment::table_name(uint32_t index) const noexcept {
  if (index >= table_count()) return {};
  return fixed_name(table_descriptor(mapping_->file->data(), index).name);
}

std::vector<std::string> Segment::table_names() const {
  std::vector<std::string> names;
  if (!mapping_) return names;
  for (uint32_t t = 0; t < mapping_->table_count; ++t) {
    names.emplace_back(fixed_name(table_descriptor(mapping_->file->data(), t).name));
  }
  return names;
}

Table Segment::table(std::string_view name) const {
  if (!mapping_) throw Error(ErrorCode::kInvalidArgument, "Segment::table on a segment that is not open");
  const void* base = mapping_->file->data();
  for (uint32_t t = 0; t < mapping_->table_count; ++t) {
    const TableDescriptor& d = table_descriptor(base, t);
    if (fixed_name(d.name) != name) continue;
    Table tab;
    tab.mapping_ = mapping_;
    tab.desc_ = &d;
    tab.geo_ = table_geometry(base, d);
    tab.name_ = std::string(name);
    tab.max_retries_ = options_.max_retries;
    if (d.aggregate_count > 0) tab.refreshed_word_ = &d.aggregate_counters.refreshed_through_ms;
    tab.field_names_.reserve(d.field_count);
    for (uint32_t f = 0; f < d.field_count; ++f)
      tab.field_names_.emplace_back(fixed_name(field_descriptor(base, d, f).name));
    const uint32_t payload_bytes = 8 * (tab.geo_.row_word_offset() - kSlotEventTimeWord);
    // Group names view the mapping (validated NUL-terminated), which the
    // table keeps alive: they stay valid in copies of the table.
    for (uint32_t g = 0; g < tab.geo_.group_count; ++g) {
      tab.groups_.push_back(Group{g, fixed_name(group_descriptor(base, d, g).name),
                                  static_cast<uint32_t>(tab.geo_.group_word_offset() - kSlotEventTimeWord + g)});
    }
    for (uint32_t f = 0; f < d.field_count; ++f) {
      const FieldDescriptor& fd = field_descriptor(base, d, f);
      tab.fields_.push_back(Field{fd.index, static_cast<FieldType>(fd.type), fd.count, fd.offset, tab.field_names_[f],
                                  (fd.flags & kFieldAggregate) != 0, fd.group});
      if (fd.type == static_cast<uint32_t>(FieldType::kString)) {
        tab.string_bounds_.push_back(Table::StringBound{payload_bytes + fd.offset, fd.count});
      }
    }
    return tab;
  }
  std::string have;
  for (const std::string& n : table_names()) have += (have.empty() ? "" : ", ") + n;
  throw Error(ErrorCode::kNotFound,
              "segment \"" + name_ + "\" has no table \"" + std::string(name) + "\" (tables: " + have + ")");
}

SegmentInfo Segment::info() const noexcept {
  SegmentInfo i;
  if (!mapping_) return i;
  const SegmentHeader& h = *mapping_->header;
  // Pairs with the writer's release store of kReady (or kRetired): the
  // header and descriptors written before it are visible.
  i.state = static_cast<SegmentState>(sync::load_acquire(h.state));
  i.connection = static_cast<ConnectionState>(sync::load_relaxed(h.connection_state));  // informational
  i.layout_version = h.layout_version;
  i.schema_fingerprint = h.schema_fingerprint;
  i.segment_bytes = h.segment_bytes;
  i.generation = h.generation;
  i.writer_pid = sync::load_acquire(h.writer_pid);
  const uint64_t hb = sync::load_relaxed(h.heartbeat_mono_ns);
  i.heartbeat_age_ms = hb == 0 ? -1 : saturating_sub(now_mono_ns(), static_cast<int64_t>(hb)) / 1'000'000;
  i.writer_sessions = sync::load_relaxed(h.writer_sessions);
  i.repaired_slots = sync::load_relaxed(h.repaired_slots);
  i.updates_applied = sync::load_relaxed(h.updates_applied);
  i.messages_rejected = sync::load_relaxed(h.messages_rejected);
  i.last_apply_unix_ns = static_cast<int64_t>(sync::load_relaxed(h.last_apply_unix_ns));
  i.created_unix_ns = static_cast<int64_t>(h.created_unix_ns);
  return i;
}

bool Segment::writer_alive(int64_t max_heartbeat_age_ms) const noexcept {
  const SegmentInfo i = info();
  return i.writer_pid != 0 && i.heartbeat_age_ms >= 0 && i.heartbeat_age_ms <= max_heartbeat_age_ms;
}

bool Segment::retired() const noexcept {
  // Pairs with the release store of kRetired by the writer that replaced
  // this segment.
  return mapping_ && sync::load_acquire(mapping_->header->state) == static_cast<uint32_t>(SegmentState::kRetired);
}

SyncState Segment::state() const noexcept {
  if (!mapping_) return SyncState::kUnknown;
  // Pairs with the writer's release store of sync_state (set_sync_state).
  const uint64_t v = sync::load_acquire(source_block(mapping_->header).sync_state);
  return v <= static_cast<uint64_t>(SyncState::kIncomplete) ? static_cast<SyncState>(v) : SyncState::kUnknown;
}

SyncInfo Segment::sync() const {
  SyncInfo info;
  if (!mapping_) return info;
  const SourceBlock& b = source_block(mapping_->header);
  info.state = state();
  info.changed_unix_ns = static_cast<int64_t>(sync::load_relaxed(b.sync_changed_unix_ns));
  // The id is text the writer stores word by word: cut at the first NUL and
  // never past the block, whatever the words hold.
  char text[kSourceIdWords * 8];
  for (size_t k = 0; k < kSourceIdWords; ++k) {
    const uint64_t w = sync::load_relaxed(b.source_id[k]);
    std::memcpy(text + 8 * k, &w, 8);
  }
  info.source_id.assign(text, strnlen(text, sizeof text));
  const uint64_t count = std::min<uint64_t>(sync::load_relaxed(b.partition_count), kMaxSourcePartitions);
  for (uint32_t p = 0; p < count; ++p) {
    const PartitionWords& pw = b.partitions[p];
    // One word at a time: next and skip may come from two successive
    // positions (source.cc in the writer).
    const uint64_t next = sync::load_relaxed(pw.next_plus_one);
    const uint64_t skip = sync::load_relaxed(pw.skip_updates);
    const uint64_t target = sync::load_relaxed(pw.target_plus_one);
    const uint64_t first = sync::load_relaxed(pw.first_retained_plus_one);
    if (next == 0 && target == 0 && first == 0) continue;
    SyncInfo::Partition part;
    part.partition = p;
    if (next != 0) {
      part.next_offset = next - 1;
      part.skip_updates = static_cast<uint32_t>(std::min<uint64_t>(skip, UINT32_MAX));
    }
    if (target != 0) part.target = target - 1;
    if (first != 0) part.first_retained = first - 1;
    info.partitions.push_back(part);
  }
  return info;
}

// ---------------------------------------------------------------------------
// Table

Field Table::field(std::string_view name) const {
  for (const Field& f : fields_) {
    if (f.name == name) return f;
  }
  std::string have;
  for (const Field& f : fields_) have += (have.empty() ? "" : ", ") + std::string(f.name);
  throw Error(ErrorCode::kNotFound,
              "table \"" + name_ + "\" has no field \"" + std::string(name) + "\" (fields: " + have + ")");
}

Field Table::field(std::string_view name, FieldType expected) const {
  Field f = field(name);
  if (f.type != expected) {
    throw Error(ErrorCode::kSchemaMismatch, "field \"" + name_ + "." + std::string(name) + "\" is " +
                                                field_type_name(f.type) + ", the reader expects " +
                                                field_type_name(expected));
  }
  return f;
}

Group Table::group(std::string_view name) const {
  for (const Group& g : groups_) {
    if (g.name == name) return g;
  }
  std::string have;
  for (const Group& g : groups_) have += (have.empty() ? "" : ", ") + std::string(g.name);
  throw Error(ErrorCode::kNotFound, "table \"" + name_ + "\" has no field group \"" + std::string(name) + "\" (" +
                                        (have.empty() ? std::string("it declares none") : "groups: " + have) + ")");
}

Row Table::make_row() const { return Row(row_words(), geo_.validity_words, geo_.key_words); }

RowBatch Table::make_batch(size_t capacity) const {
  return RowBatch(capacity, row_words(), geo_.validity_words, geo_.key_words);
}

int64_t Table::refreshed_through_ms() const noexcept {
  if (refreshed_word_ == nullptr) return 0;
  // Pairs with the writer's release store after the refreshes it covers
  // (maintenance.cc, Writer::Impl::refresh): a row copied after this load
  // holds every refresh up to the value loaded.
  return static_cast<int64_t>(sync::load_acquire(*refreshed_word_));
}

ReadResult Table::lookup(std::string_view key, uint64_t hash, uint64_t* out, int64_t now_ms, int64_t refreshed_ms,
                         const ReadOptions& options) const noexcept {
  ReadResult r;
  if (key.empty() || key.size() > geo_.key_max_len) {
    r.status = Status::kInvalidKey;
    return r;
  }
  PackedKey packed;
  packed.assign(key);
  // A local copy: `out` is a uint64_t* that could alias the member's fields,
  // which would make the compiler reload them on every copied word.
  const TableGeometry g = geo_;
  switch (find(g, packed, hash, out, max_retries_)) {
    case FindResult::kAbsent: r.status = Status::kNotFound; return r;
    case FindResult::kBusy: r.status = Status::kBusy; return r;
    case FindResult::kFound: break;
  }
  // The key length matched the caller's (already bounded) key inside the
  // seqlock window, so only the string lengths are left to check.
  for (const StringBound& b : string_bounds_) {
    uint32_t len;
    std::memcpy(&len, reinterpret_cast<const unsigned char*>(out) + b.offset, sizeof len);
    if (len > b.max_len) {
      r.status = Status::kCorrupt;
      return r;
    }
  }
  r.event_time_ms = static_cast<int64_t>(out[0]);
  r.apply_unix_ns = static_cast<int64_t>(out[1]);
  // The apply time brought the row's windows up to the clock too (an update
  // advances them before it folds), so the row is current as of the later of
  // the two. Floor division: an untrusted negative time stays below its ms.
  const int64_t applied_ms = r.apply_unix_ns / 1'000'000 - (r.apply_unix_ns % 1'000'000 < 0 ? 1 : 0);
  r.computed_at_ms = std::max(applied_ms, refreshed_ms);
  r.status =
      (options.max_age_ms > 0 && r.age_ms(options.age_of, now_ms) > options.max_age_ms) ? Status::kStale : Status::kOk;
  if (!options.group_max_age.empty()) [[unlikely]] {
    const uint32_t at = g.group_word_offset() - kSlotEventTimeWord;
    for (const GroupMaxAge& b : options.group_max_age) {
      if (b.group < g.group_count && b.max_age_ms > 0 &&
          saturating_sub(now_ms, static_cast<int64_t>(out[at + b.group])) > b.max_age_ms) {
        r.status = Status::kStale;
      }
    }
  }
  return r;
}

ReadResult Table::get(std::string_view key, Row& out, const ReadOptions& options) const noexcept {
  return get(key, out.data(), options);
}

ReadResult Table::get(std::string_view key, uint64_t* row, const ReadOptions& options) const noexcept {
  const uint64_t hash = hash_key(key, geo_.hash_seed);
  prefetch_home(geo_, hash);  // a wide slot's lines are fetched in parallel
  const int64_t now_ms = options.max_age_ms > 0 || !options.group_max_age.empty() ? now_unix_ms() : 0;
  return lookup(key, hash, row, now_ms, refreshed_through_ms(), options);
}

void Table::get_many(std::span<const std::string_view> keys, RowBatch& out, std::span<ReadResult> results,
                     const ReadOptions& options) const noexcept {
  const size_t n = std::min({keys.size(), out.capacity(), results.size()});
  get_many(keys.first(n), out.row_data(0), results, options);
}

void Table::get_many(std::span<const std::string_view> keys, uint64_t* rows, std::span<ReadResult> results,
                     const ReadOptions& options) const noexcept {
  const size_t n = std::min(keys.size(), results.size());
  const size_t stride = row_words();
  const int64_t now_ms = options.max_age_ms > 0 || !options.group_max_age.empty() ? now_unix_ms() : 0;
  // Once for the batch, before its first row is copied: a lower bound for
  // every row of it.
  const int64_t refreshed_ms = refreshed_through_ms();
  // Hash and prefetch a window ahead of the lookups so that the slots' cache
  // misses overlap instead of queueing one after another.
  constexpr size_t kWindow = 16;
  uint64_t hashes[kWindow];
  for (size_t i = 0; i < n && i < kWindow; ++i) {
    hashes[i] = hash_key(keys[i], geo_.hash_seed);
    prefetch_home(geo_, hashes[i]);
  }
  for (size_t i = 0; i < n; ++i) {
    const uint64_t h = hashes[i % kWindow];
    if (i + kWindow < n) {
      hashes[i % kWindow] = hash_key(keys[i + kWindow], geo_.hash_seed);
      prefetch_home(geo_, hashes[i % kWindow]);
    }
    results[i] = lookup(keys[i], h, rows + i * stride, now_ms, refreshed_ms, options);
  }
}

Status Table::check_row(const uint64_t* row) const noexcept {
  const uint64_t key_len = row[kSlotKeyLenWord - kSlotEventTimeWord] & 0xffffffffu;
  if (key_len == 0 || key_len > geo_.key_max_len) return Status::kCorrupt;
  for (const StringBound& b : string_bounds_) {
    uint32_t len;
    std::memcpy(&len, reinterpret_cast<const unsigned char*>(row) + b.offset, sizeof len);
    if (len > b.max_len) return Status::kCorrupt;
  }
  return Status::kOk;
}

TableStats Table::stats() const noexcept {
  TableStats s;
  if (desc_ == nullptr) return s;
  const TableCounters& c = desc_->counters;
  s.capacity = desc_->capacity;
  s.slot_count = geo_.slot_count;
  s.live_keys = sync::load_relaxed(c.live_keys);
  s.tombstones = sync::load_relaxed(c.tombstones);
  s.upserts = sync::load_relaxed(c.upserts);
  s.deletes = sync::load_relaxed(c.deletes);
  s.stale_ignored = sync::load_relaxed(c.stale_ignored);
  s.full_rejected = sync::load_relaxed(c.full_rejected);
  s.last_apply_unix_ns = static_cast<int64_t>(sync::load_relaxed(c.last_apply_unix_ns));
  s.max_event_time_ms = static_cast<int64_t>(sync::load_relaxed(c.max_event_time_ms));
  const AggregateCounters& a = desc_->aggregate_counters;
  s.aggregates = desc_->aggregate_count;
  s.aggregate_events = sync::load_relaxed(a.events);
  s.late_dropped = sync::load_relaxed(a.late_dropped);
  s.outside_window = sync::load_relaxed(a.outside_window);
  s.duplicates = sync::load_relaxed(a.duplicates);
  s.dedup_evictions = sync::load_relaxed(a.dedup_evictions);
  s.refreshes = sync::load_relaxed(a.refreshes);
  s.aggregate_clock_ms = static_cast<int64_t>(sync::load_relaxed(a.clock_ms));
  s.refreshed_through_ms = static_cast<int64_t>(sync::load_relaxed(a.refreshed_through_ms));
  return s;
}

}  // namespace larder
