// The client library: read-only mapping, name resolution and the read path.
//
// Threading: everything here may be called from any thread; Segment, Table
// and Field are immutable after open. The read path (Table::get, get_many)
// touches only the caller's buffers and the read-only mapping.
#include "larder/client.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <mutex>

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

// One generation of a table, as a Table reads it. Immutable once built.
struct TableGeneration {
  std::shared_ptr<const Mapping> mapping;
  const TableDescriptor* desc = nullptr;
  TableGeometry geo;  // validated at open; never re-read from the segment
  uint64_t generation = 0;
  // AggregateCounters::refreshed_through_ms; null for a table without
  // aggregates, whose rows change only when applied.
  const Word* refreshed_word = nullptr;
  // The row copies straight into the Table's layout (the generation it was
  // opened on, or a later one of the same layout: a larger capacity).
  bool same_layout = true;
  // Otherwise, where each field of the Table's layout is in this one's row
  // (fields by name, groups by name; a field not here reads not valid).
  struct Move {
    uint32_t from_offset = 0;  // bytes from the payload's start
    uint32_t to_offset = 0;
    uint32_t bytes = 0;
    uint32_t from_index = 0;  // validity bits
    uint32_t to_index = 0;
    uint32_t max_len = 0;  // a string of the Table's layout: its max length (a longer one is cut); else 0
  };
  std::vector<Move> moves;
  std::vector<int> group_from;  // each group of the Table's layout: its index here, -1: absent
};

// What the copies of one Table share: the generations it has read (every
// one stays mapped while the Table lives: a lookup on another thread may
// still be reading a retired one) and the one to read now.
struct TableFollow {
  std::string segment;
  std::string dir;
  std::string table;
  // The Table's own layout, the first generation's, that conversions target.
  std::vector<FieldDescriptor> fields;
  std::vector<std::string> group_names;
  TableGeometry geo;
  // Pairs the release store of a new generation with the readers' acquire
  // load: the generation's fields, written before, are visible.
  std::atomic<const TableGeneration*> current{nullptr};
  std::mutex follow_mu;  // one thread maps the next generation; the others read the current one meanwhile
  std::vector<std::unique_ptr<TableGeneration>> generations;
  int64_t next_try_mono_ns = 0;  // a failed follow waits this long before the next try (follow_mu)
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
    auto gen = std::make_unique<TableGeneration>();
    gen->mapping = mapping_;
    gen->desc = &d;
    gen->geo = table_geometry(base, d);
    gen->generation = mapping_->header->generation;
    if (d.aggregate_count > 0) gen->refreshed_word = &d.aggregate_counters.refreshed_through_ms;
    auto follow = std::make_shared<TableFollow>();
    follow->segment = name_;
    follow->dir = options_.dir;
    follow->table = std::string(name);
    follow->geo = gen->geo;
    for (uint32_t f = 0; f < d.field_count; ++f) follow->fields.push_back(field_descriptor(base, d, f));
    for (uint32_t g = 0; g < d.group_count; ++g) {
      follow->group_names.emplace_back(fixed_name(group_descriptor(base, d, g).name));
    }
    follow->current.store(gen.get(), std::memory_order_release);
    follow->generations.push_back(std::move(gen));
    tab.follow_ = std::move(follow);
    tab.geo_ = table_geometry(base, d);
    tab.name_ = std::string(name);
    tab.max_retries_ = options_.max_retries;
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

int64_t Table::refreshed_through_ms(const TableGeneration& g) noexcept {
  if (g.refreshed_word == nullptr) return 0;
  // Pairs with the writer's release store after the refreshes it covers
  // (maintenance.cc, Writer::Impl::refresh): a row copied after this load
  // holds every refresh up to the value loaded.
  return static_cast<int64_t>(sync::load_acquire(*g.refreshed_word));
}

namespace {

// Seqlock read of slot `s` of generation `gen` (read_slot in table_view.h)
// into a row of the Table's layout `view`: header words and key as they
// are, each field moved to its place in `view`, fields the generation lacks
// zero and not valid.
SlotRead read_slot_converted(const TableGeneration& gen, const TableGeometry& view, const Word* s, const PackedKey& key,
                             uint64_t hash, uint64_t* out, uint32_t max_retries) noexcept {
  const TableGeometry& g = gen.geo;
  const uint32_t key_at = g.key_word_offset();
  const uint32_t row_at = g.row_word_offset();
  const uint32_t view_row = view.row_word_offset() - kSlotEventTimeWord;
  auto* out_row = reinterpret_cast<unsigned char*>(out + view_row);
  for (uint32_t attempt = 0; attempt < max_retries; ++attempt) {
    const uint64_t s0 = sync::load_acquire(s[kSlotSeqWord]);  // R1: pairs with W2
    if (s0 & 1) {
      sync::cpu_relax();
      continue;
    }
    bool same = meta_matches(sync::load_payload(s[kSlotMetaWord]), hash) &&
                (sync::load_payload(s[kSlotKeyLenWord]) & 0xffffffffu) == key.length;
    for (uint32_t w = 0; same && w < key.word_count; ++w) {
      same = sync::load_payload(s[key_at + w]) == key.words[w];
    }
    if (same) {
      std::memset(out, 0, 8 * view.copy_words());
      for (size_t w = kSlotEventTimeWord; w <= kSlotKeyLenWord; ++w) {
        out[w - kSlotEventTimeWord] = sync::load_payload(s[w]);
      }
      for (uint32_t w = 0; w < key.word_count; ++w) out[view.key_word_offset() - kSlotEventTimeWord + w] = key.words[w];
      for (const TableGeneration::Move& m : gen.moves) {
        if (((sync::load_payload(s[kSlotHeaderWords + m.from_index / 64]) >> (m.from_index % 64)) & 1) == 0) continue;
        // Word by word, each an atomic load: the field's bytes at their
        // place in the words that hold them.
        uint32_t done = 0;
        while (done < m.bytes) {
          const uint32_t at = m.from_offset + done;
          const uint64_t word = sync::load_payload(s[row_at + at / 8]);
          const uint32_t n = std::min<uint32_t>(8 - at % 8, m.bytes - done);
          std::memcpy(out_row + m.to_offset + done, reinterpret_cast<const unsigned char*>(&word) + at % 8, n);
          done += n;
        }
        out[kSlotHeaderWords - kSlotEventTimeWord + m.to_index / 64] |= uint64_t{1} << (m.to_index % 64);
      }
      for (uint32_t vg = 0; vg < view.group_count; ++vg) {
        const int og = gen.group_from[vg];
        out[view.group_word_offset() - kSlotEventTimeWord + vg] =
            og >= 0 ? sync::load_payload(s[g.group_word_offset() + static_cast<uint32_t>(og)])
                    : static_cast<uint64_t>(kNoGroupTime);
      }
    }
    sync::reader_fence();  // R2: pairs with W1
    if (sync::load_relaxed(s[kSlotSeqWord]) == s0) {
      if (!same) return SlotRead::kMismatch;
      // A string longer than the Table's layout holds is cut to it.
      for (const TableGeneration::Move& m : gen.moves) {
        if (m.max_len == 0) continue;
        uint32_t len;
        std::memcpy(&len, out_row + m.to_offset, 4);
        if (len > m.max_len) {
          len = m.max_len;
          std::memcpy(out_row + m.to_offset, &len, 4);
        }
      }
      return SlotRead::kMatch;
    }
  }
  return SlotRead::kBusy;
}

// find() (table_view.h) with read_slot_converted.
FindResult find_converted(const TableGeneration& gen, const TableGeometry& view, const PackedKey& key, uint64_t hash,
                          uint64_t* out, uint32_t max_retries) noexcept {
  const TableGeometry& g = gen.geo;
  uint64_t i = g.home(hash);
  for (uint64_t probed = 0; probed < g.slot_count; ++probed) {
    const Word* s = g.slot(i);
    const uint64_t meta = sync::load_relaxed(s[kSlotMetaWord]);
    if (meta == 0) return FindResult::kAbsent;
    if (meta_matches(meta, hash)) {
      switch (read_slot_converted(gen, view, s, key, hash, out, max_retries)) {
        case SlotRead::kMatch: return FindResult::kFound;
        case SlotRead::kBusy: return FindResult::kBusy;
        case SlotRead::kMismatch: break;
      }
    }
    if (++i == g.slot_count) i = 0;
  }
  return FindResult::kAbsent;
}

// Builds the generation of `f`'s table in the segment mapped by `m`, or
// null when the segment has no such table.
std::unique_ptr<TableGeneration> table_generation(const TableFollow& f, std::shared_ptr<const Mapping> m) {
  const void* base = m->file->data();
  for (uint32_t t = 0; t < m->table_count; ++t) {
    const TableDescriptor& d = table_descriptor(base, t);
    if (fixed_name(d.name) != f.table) continue;
    auto gen = std::make_unique<TableGeneration>();
    gen->desc = &d;
    gen->geo = table_geometry(base, d);
    gen->generation = m->header->generation;
    if (d.aggregate_count > 0) gen->refreshed_word = &d.aggregate_counters.refreshed_through_ms;
    // The same layout: every field and group where the Table has it.
    bool same = d.field_count == f.fields.size() && d.group_count == f.group_names.size() &&
                gen->geo.slot_words == f.geo.slot_words && gen->geo.validity_words == f.geo.validity_words &&
                gen->geo.key_words == f.geo.key_words && gen->geo.row_words == f.geo.row_words;
    for (uint32_t i = 0; same && i < d.field_count; ++i) {
      same = std::memcmp(&field_descriptor(base, d, i), &f.fields[i], sizeof(FieldDescriptor)) == 0;
    }
    for (uint32_t g = 0; same && g < d.group_count; ++g) {
      same = fixed_name(group_descriptor(base, d, g).name) == f.group_names[g];
    }
    gen->same_layout = same;
    if (!same) {
      for (const FieldDescriptor& to : f.fields) {
        for (uint32_t i = 0; i < d.field_count; ++i) {
          const FieldDescriptor& from = field_descriptor(base, d, i);
          if (std::strncmp(from.name, to.name, kNameBytes) != 0 || from.type != to.type) continue;
          if (from.type == static_cast<uint32_t>(FieldType::kFloat32Vector) && from.count != to.count) continue;
          TableGeneration::Move mv{from.offset, to.offset, std::min(from.bytes, to.bytes), from.index, to.index, 0};
          if (to.type == static_cast<uint32_t>(FieldType::kString)) mv.max_len = to.count;
          gen->moves.push_back(mv);
        }
      }
      for (const std::string& name : f.group_names) {
        int found = -1;
        for (uint32_t g = 0; g < d.group_count; ++g) {
          if (fixed_name(group_descriptor(base, d, g).name) == name) found = static_cast<int>(g);
        }
        gen->group_from.push_back(found);
      }
    }
    gen->mapping = std::move(m);
    return gen;
  }
  return nullptr;
}

// A failed follow (the name missing for a moment, no such table) is tried
// again after this long, so a retired generation costs its readers a
// mutex try, not a file open, per lookup.
constexpr int64_t kFollowRetryNs = 10'000'000;

}  // namespace

const TableGeneration* Table::follow() const noexcept {
  TableFollow& f = *follow_;
  std::unique_lock<std::mutex> lock(f.follow_mu, std::try_to_lock);
  const TableGeneration* cur = f.current.load(std::memory_order_acquire);
  if (!lock.owns_lock()) return cur;  // another thread is mapping the next one
  if (sync::load_acquire(cur->mapping->header->state) != static_cast<uint32_t>(SegmentState::kRetired)) return cur;
  const int64_t now = now_mono_ns();
  if (now < f.next_try_mono_ns) return cur;
  // Only a failed try waits: a follow that succeeds may be followed at once
  // by the next switch, and a reader must not stay behind it.
  f.next_try_mono_ns = now + kFollowRetryNs;
  try {
    auto m = std::make_shared<Mapping>();
    m->file = MappedFile::open_read_only(segment_path(f.dir, f.segment), f.segment);
    validate_segment(m->file->data(), m->file->size(), f.segment);
    m->header = &m->file->header();
    m->table_count = m->header->table_count;
    if (m->header->generation <= cur->generation) return cur;  // the name has not moved on yet
    std::unique_ptr<TableGeneration> gen = table_generation(f, std::move(m));
    if (gen == nullptr) return cur;  // dropped from the segment: the retired rows stay readable
    const TableGeneration* next = gen.get();
    f.generations.push_back(std::move(gen));
    f.next_try_mono_ns = 0;
    // Publishes the generation built above to the acquire loads of current.
    f.current.store(next, std::memory_order_release);
    return next;
  } catch (...) {
    return cur;
  }
}

const TableGeneration& Table::generation_to_read() const noexcept {
  // A default-constructed Table reads an empty table (every key absent).
  static const TableGeneration kNone{};
  if (!follow_) [[unlikely]]
    return kNone;
  // Pairs with the release store in follow(), by whichever thread followed.
  const TableGeneration* g = follow_->current.load(std::memory_order_acquire);
  // The one extra load a lookup pays for following generations. Relaxed:
  // it only decides whether to look for the next generation; what the next
  // one holds is published by its own file's state (validate_segment).
  if (sync::load_relaxed(g->mapping->header->state) == static_cast<uint32_t>(SegmentState::kRetired)) [[unlikely]] {
    g = follow();
  }
  return *g;
}

uint64_t Table::slot_count() const noexcept { return generation_to_read().geo.slot_count; }

uint64_t Table::generation() const noexcept { return generation_to_read().generation; }

ReadResult Table::lookup(const TableGeneration& gen, std::string_view key, uint64_t hash, uint64_t* out, int64_t now_ms,
                         int64_t refreshed_ms, const ReadOptions& options) const noexcept {
  ReadResult r;
  if (key.empty() || key.size() > geo_.key_max_len) {
    r.status = Status::kInvalidKey;
    return r;
  }
  PackedKey packed;
  packed.assign(key);
  // A local copy: `out` is a uint64_t* that could alias the member's fields,
  // which would make the compiler reload them on every copied word.
  const TableGeometry g = gen.geo;
  const FindResult found = gen.same_layout ? find(g, packed, hash, out, max_retries_)
                                           : find_converted(gen, geo_, packed, hash, out, max_retries_);
  switch (found) {
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
    const uint32_t at = geo_.group_word_offset() - kSlotEventTimeWord;
    for (const GroupMaxAge& b : options.group_max_age) {
      if (b.group < geo_.group_count && b.max_age_ms > 0 &&
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
  const TableGeneration& gen = generation_to_read();
  const uint64_t hash = hash_key(key, gen.geo.hash_seed);
  prefetch_home(gen.geo, hash);  // a wide slot's lines are fetched in parallel
  const int64_t now_ms = options.max_age_ms > 0 || !options.group_max_age.empty() ? now_unix_ms() : 0;
  return lookup(gen, key, hash, row, now_ms, refreshed_through_ms(gen), options);
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
  // One generation for the whole batch: its rows come from one file.
  const TableGeneration& gen = generation_to_read();
  const TableGeometry& g = gen.geo;
  const int64_t refreshed_ms = refreshed_through_ms(gen);
  // Hash and prefetch a window ahead of the lookups so that the slots' cache
  // misses overlap instead of queueing one after another.
  constexpr size_t kWindow = 16;
  uint64_t hashes[kWindow];
  for (size_t i = 0; i < n && i < kWindow; ++i) {
    hashes[i] = hash_key(keys[i], g.hash_seed);
    prefetch_home(g, hashes[i]);
  }
  for (size_t i = 0; i < n; ++i) {
    const uint64_t h = hashes[i % kWindow];
    if (i + kWindow < n) {
      hashes[i % kWindow] = hash_key(keys[i + kWindow], g.hash_seed);
      prefetch_home(g, hashes[i % kWindow]);
    }
    results[i] = lookup(gen, keys[i], h, rows + i * stride, now_ms, refreshed_ms, options);
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
  if (!follow_) return s;
  const TableGeneration& gen = generation_to_read();
  const TableDescriptor* d = gen.desc;
  const TableCounters& c = d->counters;
  s.capacity = d->capacity;
  s.slot_count = gen.geo.slot_count;
  s.live_keys = sync::load_relaxed(c.live_keys);
  s.tombstones = sync::load_relaxed(c.tombstones);
  s.upserts = sync::load_relaxed(c.upserts);
  s.deletes = sync::load_relaxed(c.deletes);
  s.stale_ignored = sync::load_relaxed(c.stale_ignored);
  s.full_rejected = sync::load_relaxed(c.full_rejected);
  s.last_apply_unix_ns = static_cast<int64_t>(sync::load_relaxed(c.last_apply_unix_ns));
  s.max_event_time_ms = static_cast<int64_t>(sync::load_relaxed(c.max_event_time_ms));
  const AggregateCounters& a = d->aggregate_counters;
  s.aggregates = d->aggregate_count;
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
