// The single writer of a segment.
//
// Threading: every function runs on the thread that owns the Writer (the
// sidecar's writer thread). Readers in other processes read concurrently
// through table_view.h; the comments marked W1/W2 are the publication points
// they pair with (see sync.h).
//
// Crash safety: every change to a slot goes through SlotWrite, which copies
// the slot to the undo area and arms it before making seq odd, and disarms it
// after seq is even again. A writer that restarts restores an armed, odd slot
// from the undo copy (repair()), so a SIGKILL at any instruction leaves every
// row either as it was before the interrupted update or as after it.
#include "larder/layout/writer.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <queue>
#include <random>
#include <string>
#include <vector>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "aggregate.h"
#include "larder/layout/clock.h"
#include "larder/layout/segment_file.h"
#include "larder/layout/sync.h"
#include "larder/layout/table_view.h"

namespace larder {

using namespace layout;  // NOLINT: this file implements the layout's writer

const char* apply_result_name(ApplyResult r) {
  switch (r) {
    case ApplyResult::kApplied: return "applied";
    case ApplyResult::kStale: return "stale";
    case ApplyResult::kTableFull: return "table_full";
    case ApplyResult::kInvalid: return "invalid";
    case ApplyResult::kDuplicate: return "duplicate";
    case ApplyResult::kLate: return "late";
  }
  return "unknown";
}

namespace {

constexpr uint64_t kNone = ~uint64_t{0};

// The most time one maintain() call spends refreshing aggregates.
constexpr int64_t kMaintainRefreshNs = 5'000'000;

std::atomic<CrashHook> crash_hook{nullptr};

inline void crash_point(CrashPoint point) {
  if (CrashHook hook = crash_hook.load(std::memory_order_relaxed); hook != nullptr) [[unlikely]] {
    hook(point);
  }
}

// Free space to leave on the file system beyond the segment itself.
constexpr uint64_t kSpaceMargin = 1 << 20;

[[noreturn]] void throw_errno(ErrorCode code, const std::string& what) {
  throw Error(code, what + ": " + std::strerror(errno));
}

void bump(Word& w, uint64_t by = 1) { sync::store_relaxed(w, sync::load_relaxed(w) + by); }
void dec(Word& w) { sync::store_relaxed(w, sync::load_relaxed(w) - 1); }

std::string hex64(uint64_t v) {
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

void set_crash_hook(CrashHook hook) { crash_hook.store(hook); }

namespace layout::detail {
void crash_point_hook(CrashPoint point) { crash_point(point); }
}  // namespace layout::detail

uint64_t event_id_hash(std::string_view id) noexcept {
  const uint64_t h = XXH3_64bits(id.data(), id.size());
  return h == 0 ? 1 : h;
}

struct Writer::Impl {
  struct TableState {
    TableDescriptor* desc = nullptr;
    Word* slots = nullptr;
    TableGeometry geo;
    std::vector<FieldDescriptor> fields;  // local copy
    uint64_t max_used = 0;                // live + tombstones before empties are kept back
    uint64_t purge_cursor = 0;
    uint32_t declared_fields = 0;  // fields an update may write; aggregate outputs follow
    detail::AggregateTable agg;
    Word* slot(uint64_t i) const { return slots + i * geo.slot_words; }
  };

  std::string name;
  std::string dir;
  WriterOptions options;
  Schema schema;
  int lock_fd = -1;
  std::unique_ptr<MappedFile> map;
  SegmentHeader* header = nullptr;
  Word* undo = nullptr;
  std::vector<TableState> tables;
  std::vector<uint64_t> scratch;  // a row image being built
  PackedKey packed;
  bool created = false;
  uint64_t repaired = 0;

  // Aggregates: the journal of state changes, the aggregate clock (ms, never
  // decreasing) and the keys to refresh, soonest first.
  detail::Journal journal;
  int64_t clock_ms = 0;
  struct Due {
    int64_t due_ms;
    uint32_t table;
    uint64_t slot;
    bool operator>(const Due& o) const { return due_ms > o.due_ms; }
  };
  std::priority_queue<Due, std::vector<Due>, std::greater<Due>> due;

  void advance_clock(int64_t now_unix_ns) { clock_ms = std::max(clock_ms, now_unix_ns / 1'000'000); }

  ~Impl() {
    if (header != nullptr) {
      header->connection_state.store(static_cast<uint32_t>(ConnectionState::kStopped), std::memory_order_relaxed);
      sync::store_release(header->writer_pid, uint64_t{0});
    }
    map.reset();
    if (lock_fd >= 0) ::close(lock_fd);  // releases the flock
  }

  void acquire_lock();
  void remove_leftovers();
  void create(bool replace_existing);
  void attach();
  void repair();

  // -- slot writes -------------------------------------------------------
  // A scope that makes one slot odd for the duration of a change.
  class SlotWrite {
   public:
    SlotWrite(Impl& w, uint32_t table, uint64_t index) : w_(w), s_(w.tables[table].slot(index)) {
      const uint32_t n = w.tables[table].geo.slot_words;
      for (uint32_t k = 0; k < n; ++k) sync::store_relaxed(w.undo[k], sync::load_relaxed(s_[k]));
      sync::store_relaxed(w.header->undo_table, uint64_t{table});
      sync::store_relaxed(w.header->undo_slot, index);
      sync::store_release(w.header->undo_armed, uint64_t{1});  // after the copy, before seq turns odd
      crash_point(CrashPoint::kUndoArmed);
      seq_ = sync::load_relaxed(s_[kSlotSeqWord]);
      sync::store_relaxed(s_[kSlotSeqWord], seq_ + 1);
      sync::writer_fence();  // W1: pairs with the readers' R2
      crash_point(CrashPoint::kSeqOdd);
    }
    ~SlotWrite() {
      crash_point(CrashPoint::kPayloadWritten);
      sync::store_release(s_[kSlotSeqWord], seq_ + 2);  // W2: pairs with the readers' R1
      // The slot is written, so the aggregate change it publishes is
      // complete: a restart keeps it (repair() also recognises the instant
      // between these two stores by the slot's seq).
      if (w_.journal.armed()) w_.journal.mark_done();
      crash_point(CrashPoint::kSeqEven);
      sync::store_release(w_.header->undo_armed, uint64_t{0});
    }
    void set(size_t word, uint64_t v) {
      crash_point(CrashPoint::kMidPayload);
      sync::store_payload(s_[word], v);
    }

   private:
    Impl& w_;
    Word* s_;
    uint64_t seq_;
  };

  struct Probe {
    uint64_t found = kNone;      // slot holding the key (live or tombstone)
    uint64_t empty = kNone;      // first empty slot, ending the chain
    uint64_t tombstone = kNone;  // first tombstone of another key
    uint64_t expired = kNone;    // first tombstone past its retention
  };

  Probe probe(const TableState& ts, uint64_t hash, int64_t now_ns) const {
    Probe p;
    const int64_t retention_ns = options.tombstone_retention_ms * 1'000'000;
    uint64_t i = ts.geo.home(hash);
    const uint32_t key_at = ts.geo.key_word_offset();
    for (uint64_t n = 0; n < ts.geo.slot_count; ++n) {
      const Word* s = ts.slot(i);
      const uint64_t meta = sync::load_relaxed(s[kSlotMetaWord]);
      if (meta == 0) {
        p.empty = i;
        return p;
      }
      if ((meta & ~kMetaStateMask) == (hash & ~kMetaStateMask) &&
          (sync::load_relaxed(s[kSlotKeyLenWord]) & 0xffffffffu) == packed.length) {
        bool same = true;
        for (uint32_t w = 0; same && w < packed.word_count; ++w)
          same = sync::load_relaxed(s[key_at + w]) == packed.words[w];
        if (same) {
          p.found = i;
          return p;
        }
      }
      if (meta_state(meta) == SlotState::kTombstone) {
        if (p.tombstone == kNone) p.tombstone = i;
        if (p.expired == kNone &&
            static_cast<int64_t>(sync::load_relaxed(s[kSlotApplyTimeWord])) + retention_ns < now_ns) {
          p.expired = i;
        }
      }
      if (++i == ts.geo.slot_count) i = 0;
    }
    return p;
  }

  uint64_t used(const TableState& ts) const {
    return sync::load_relaxed(ts.desc->counters.live_keys) + sync::load_relaxed(ts.desc->counters.tombstones);
  }

  // Where a key that is not in the table goes, or kNone. `for_tombstone`:
  // the record of a delete of an absent key, which never displaces anything.
  uint64_t choose_slot(const TableState& ts, const Probe& p, bool for_tombstone) const {
    if (p.expired != kNone) return p.expired;
    const uint64_t u = used(ts);
    if (p.empty != kNone && u < ts.max_used) return p.empty;
    if (for_tombstone) return kNone;
    if (p.tombstone != kNone) return p.tombstone;
    if (p.empty != kNone && u + 1 < ts.geo.slot_count) return p.empty;  // always keep one empty slot
    return kNone;
  }

  bool values_valid(const TableState& ts, std::span<const FieldValue> values) const {
    for (const FieldValue& v : values) {
      if (v.field >= ts.fields.size()) return false;
      const FieldDescriptor& fd = ts.fields[v.field];
      if (static_cast<FieldType>(fd.type) != v.type) return false;
      if (v.type == FieldType::kString && (v.length > fd.count || (v.length > 0 && v.data == nullptr))) return false;
      if (v.type == FieldType::kFloat32Vector && (v.length != fd.count || v.data == nullptr)) return false;
    }
    return true;
  }

  // Writes the value into the row image (scratch), returning its word range.
  void encode(const FieldDescriptor& fd, const FieldValue& v, uint32_t* lo, uint32_t* hi) {
    auto* row = reinterpret_cast<unsigned char*>(scratch.data());
    unsigned char* at = row + fd.offset;
    switch (v.type) {
      case FieldType::kInt64: std::memcpy(at, &v.i64, 8); break;
      case FieldType::kFloat64: std::memcpy(at, &v.f64, 8); break;
      case FieldType::kFloat32: {
        const float f = static_cast<float>(v.f64);
        std::memcpy(at, &f, 4);
        break;
      }
      case FieldType::kBool: *at = v.i64 != 0 ? 1 : 0; break;
      case FieldType::kFloat32Vector: std::memcpy(at, v.data, 4ull * v.length); break;
      case FieldType::kString:
        std::memset(at, 0, fd.bytes);
        std::memcpy(at, &v.length, 4);
        if (v.length > 0) std::memcpy(at + 4, v.data, v.length);
        break;
    }
    *lo = std::min(*lo, fd.offset / 8);
    *hi = std::max(*hi, static_cast<uint32_t>((fd.offset + fd.bytes + 7) / 8));
  }

  // Turns expired tombstones that no probe chain needs back into empty
  // slots, visiting `steps` slots from the table's cursor. A tombstone at i
  // is needed while some key after it in the same cluster has its home at or
  // before i (its chain runs through i); otherwise emptying i hides nothing
  // from any reader. Returns the slots reclaimed.
  uint64_t purge(uint32_t table, uint64_t steps) {
    TableState& ts = tables[table];
    if (sync::load_relaxed(ts.desc->counters.tombstones) == 0) return 0;
    const uint64_t n = ts.geo.slot_count;
    const int64_t expiry_ns = now_unix_ns() - options.tombstone_retention_ms * 1'000'000;
    auto distance = [n](uint64_t from, uint64_t to) { return to >= from ? to - from : to + n - from; };
    uint64_t reclaimed = 0;
    for (uint64_t step = 0; step < steps; ++step) {
      const uint64_t i = ts.purge_cursor;
      ts.purge_cursor = (i + 1 == n) ? 0 : i + 1;
      const Word* s = ts.slot(i);
      if (meta_state(sync::load_relaxed(s[kSlotMetaWord])) != SlotState::kTombstone ||
          static_cast<int64_t>(sync::load_relaxed(s[kSlotApplyTimeWord])) >= expiry_ns) {
        continue;
      }
      bool needed = false;
      for (uint64_t q = (i + 1) % n, k = 0; k + 1 < n && !needed; q = (q + 1) % n, ++k) {
        const uint64_t meta = sync::load_relaxed(ts.slot(q)[kSlotMetaWord]);
        if (meta == 0) break;
        needed = distance(ts.geo.home(meta), q) >= distance(i, q);
      }
      if (needed) continue;
      {
        SlotWrite write(*this, table, i);
        write.set(kSlotMetaWord, 0);
      }
      dec(ts.desc->counters.tombstones);
      ++reclaimed;
    }
    return reclaimed;
  }

  ApplyResult upsert_plain(uint32_t table, std::string_view key, int64_t event_time_ms,
                           std::span<const FieldValue> values, int64_t apply_unix_ns);
  ApplyResult apply_aggregated(uint32_t table, std::string_view key, int64_t event_time_ms,
                               std::span<const FieldValue> values, std::span<const SourceValue> sources,
                               uint64_t event_id, int64_t apply_unix_ns);
  bool refresh_slot(uint32_t table, uint64_t slot);

  // Writes every aggregate output of `block` into the row image (scratch) and
  // the validity bits, widening [lo, hi) to the words written.
  void encode_outputs(const TableState& ts, const Word* block, uint64_t* validity, uint32_t* lo, uint32_t* hi) {
    for (size_t o = 0; o < ts.agg.plan.outputs.size(); ++o) {
      const uint32_t f = ts.agg.plan.outputs[o].field;
      const detail::OutputValue v = detail::output(ts.agg, block, o);
      const FieldDescriptor& fd = ts.fields[f];
      encode(fd,
             static_cast<FieldType>(fd.type) == FieldType::kInt64 ? FieldValue::int64(f, v.i64)
                                                                  : FieldValue::float64(f, v.f64),
             lo, hi);
      const uint64_t bit = uint64_t{1} << (f % 64);
      validity[f / 64] = v.valid ? (validity[f / 64] | bit) : (validity[f / 64] & ~bit);
    }
  }

  // Records when the block must next be refreshed, and queues it.
  void schedule(uint32_t table, uint64_t slot, Word* block) {
    const int64_t at = detail::next_due_ms(tables[table].agg, block);
    const uint64_t word = at > 0 ? static_cast<uint64_t>(at) + 1 : 0;
    if (sync::load_relaxed(detail::due_word(block)) == word) return;
    journal.set(detail::due_word(block), word);
    if (at > 0) due.push(Due{at, table, slot});
  }

  void count_apply(TableState& ts, int64_t event_time_ms, int64_t now_ns) {
    sync::store_relaxed(ts.desc->counters.last_apply_unix_ns, static_cast<uint64_t>(now_ns));
    if (event_time_ms > static_cast<int64_t>(sync::load_relaxed(ts.desc->counters.max_event_time_ms))) {
      sync::store_relaxed(ts.desc->counters.max_event_time_ms, static_cast<uint64_t>(event_time_ms));
    }
    sync::store_relaxed(header->last_apply_unix_ns, static_cast<uint64_t>(now_ns));
    bump(header->updates_applied);
  }
};

// ---------------------------------------------------------------------------
// open / create / repair

void Writer::Impl::acquire_lock() {
  const std::string path = lock_path(dir, name);
  lock_fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, options.mode & 0666);
  if (lock_fd < 0) {
    if (errno == EACCES || errno == EROFS) throw_errno(ErrorCode::kPermissionDenied, "writer lock " + path);
    throw_errno(ErrorCode::kSystem, "writer lock " + path);
  }
  if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(lock_fd);
    lock_fd = -1;
    if (err == EWOULDBLOCK) {
      std::string holder;
      try {
        auto m = MappedFile::open_read_only(segment_path(dir, name), name);
        if (m->header().magic == kMagic) {
          holder = " (pid " + std::to_string(sync::load_relaxed(m->header().writer_pid)) + ")";
        }
      } catch (const Error&) {
      }
      throw Error(ErrorCode::kWriterLocked, "segment \"" + name + "\" in " + dir + " already has a writer" + holder +
                                                ": one sidecar per segment; stop the other one or pick another name");
    }
    errno = err;
    throw_errno(ErrorCode::kSystem, "flock " + path);
  }
}

// Temporary files of creators that died before publishing.
void Writer::Impl::remove_leftovers() {
  const std::string prefix = "." + name + ".creating.";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  while (dirent* e = ::readdir(d)) {
    if (std::strncmp(e->d_name, prefix.c_str(), prefix.size()) == 0) {
      ::unlink((dir + "/" + e->d_name).c_str());
    }
  }
  ::closedir(d);
}

void Writer::Impl::create(bool replace_existing) {
  const LayoutPlan plan = plan_layout(schema);
  const std::string path = segment_path(dir, name);

  struct statvfs vfs;
  if (::statvfs(dir.c_str(), &vfs) != 0) throw_errno(ErrorCode::kSystem, "statvfs " + dir);
  const uint64_t avail = uint64_t{vfs.f_bavail} * vfs.f_frsize;
  if (avail < plan.segment_bytes + kSpaceMargin) {
    throw Error(ErrorCode::kNoSpace,
                "segment \"" + name + "\" needs " + std::to_string(plan.segment_bytes) + " bytes but " + dir + " has " +
                    std::to_string(avail) +
                    " free: enlarge it (docker --shm-size, Kubernetes emptyDir sizeLimit, mount -o remount,size=) "
                    "or lower the tables' capacity");
  }

  const std::string tmp = segment_path(dir, "." + name + ".creating." + std::to_string(::getpid()));
  int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EACCES || errno == EROFS) throw_errno(ErrorCode::kPermissionDenied, "create " + tmp);
    throw_errno(ErrorCode::kSystem, "create " + tmp);
  }
  // fchmod after open: the mode is exactly options.mode, whatever the umask.
  if (::fchmod(fd, options.mode & 07777) != 0) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw_errno(ErrorCode::kSystem, "chmod " + tmp);
  }
  // Allocate every page now so that a too-small tmpfs fails here with a
  // message, not later with SIGBUS on first touch.
  if (int err = ::posix_fallocate(fd, 0, static_cast<off_t>(plan.segment_bytes)); err != 0) {
    ::close(fd);
    ::unlink(tmp.c_str());
    if (err == ENOSPC) {
      throw Error(ErrorCode::kNoSpace, "segment \"" + name + "\" needs " + std::to_string(plan.segment_bytes) +
                                           " bytes and " + dir +
                                           " ran out of space while allocating them: enlarge it (docker "
                                           "--shm-size, Kubernetes emptyDir sizeLimit) or lower the capacity");
    }
    errno = err;
    throw_errno(ErrorCode::kSystem, "allocate " + tmp);
  }
  ::close(fd);

  map = MappedFile::open_read_write(tmp, name);
  char* base = static_cast<char*>(map->mutable_data());
  header = reinterpret_cast<SegmentHeader*>(base);
  // The file is zero-filled: state is kCreating until the release store below.
  header->magic = kMagic;
  header->layout_version = kLayoutVersion;
  header->endian_tag = kEndianTag;
  header->abi_signature = abi_signature();
  header->schema_fingerprint = schema.fingerprint();
  header->segment_bytes = plan.segment_bytes;
  header->table_count = static_cast<uint32_t>(schema.tables.size());
  header->header_bytes = static_cast<uint32_t>(plan.header_bytes);
  header->undo_offset = plan.undo_offset;
  header->undo_bytes = plan.undo_bytes;
  header->created_unix_ns = static_cast<uint64_t>(now_unix_ns());
  std::snprintf(header->creator, sizeof header->creator, "larder %s", "0.1.0");

  std::random_device rd;
  for (size_t t = 0; t < schema.tables.size(); ++t) {
    const TableSpec& spec = schema.tables[t];
    const TablePlan& tp = plan.tables[t];
    auto* d = reinterpret_cast<TableDescriptor*>(base + plan.header_bytes + t * sizeof(TableDescriptor));
    const std::vector<FieldSpec> fields = spec.all_fields();
    std::snprintf(d->name, sizeof d->name, "%s", spec.name.c_str());
    d->field_count = static_cast<uint32_t>(fields.size());
    d->key_max_len = spec.key_max_len;
    d->capacity = spec.capacity;
    d->slot_count = tp.slot_count;
    d->slot_bytes = tp.slot_bytes;
    d->row_bytes = tp.row_bytes;
    d->validity_words = tp.validity_words;
    d->key_words = tp.key_words;
    d->fields_offset = tp.fields_offset;
    d->slots_offset = tp.slots_offset;
    d->hash_seed = (uint64_t{rd()} << 32) ^ rd();
    d->max_load_permille = static_cast<uint32_t>((spec.capacity * 1000 + tp.slot_count - 1) / tp.slot_count);
    d->max_load_ppm = static_cast<uint32_t>(std::llround(spec.max_load_factor * 1e6));
    for (size_t f = 0; f < fields.size(); ++f) {
      auto* out = reinterpret_cast<FieldDescriptor*>(base + tp.fields_offset + f * sizeof(FieldDescriptor));
      const FieldSpec& fs = fields[f];
      std::snprintf(out->name, sizeof out->name, "%s", fs.name.c_str());
      out->type = static_cast<uint32_t>(fs.type);
      out->count = (fs.type == FieldType::kFloat32Vector || fs.type == FieldType::kString) ? fs.count : 1;
      out->offset = tp.fields[f].offset;
      out->bytes = tp.fields[f].bytes;
      out->index = static_cast<uint32_t>(f);
      out->flags = f >= spec.fields.size() ? kFieldAggregate : 0;
    }
    d->aggregate_count = static_cast<uint32_t>(spec.aggregates.size());
    d->state_stride_words = tp.aggregates.stride_words;
    d->aggregates_offset = tp.aggregates_offset;
    d->state_offset = tp.state_offset;
    d->dedup_offset = tp.dedup_offset;
    d->dedup_buckets = tp.dedup_buckets;
    d->allowed_lateness_ms = spec.allowed_lateness_ms;
    d->dedup_horizon_ms = spec.dedup_horizon_ms;
    d->dedup_capacity = spec.dedup_capacity;
    for (size_t a = 0; a < spec.aggregates.size(); ++a) {
      auto* ad = reinterpret_cast<AggregateDescriptor*>(base + tp.aggregates_offset + a * sizeof(AggregateDescriptor));
      const AggregateSpec& as = spec.aggregates[a];
      std::snprintf(ad->source, sizeof ad->source, "%s", as.source.c_str());
      ad->fn = static_cast<uint32_t>(as.fn);
      ad->end = static_cast<uint32_t>(as.end);
      ad->window_ms = as.window_ms;
      ad->resolution_ms = as.resolution_ms;
      ad->field = static_cast<uint32_t>(spec.fields.size() + a);
    }
  }
  header->journal_offset = plan.journal_offset;
  header->journal_capacity = plan.journal_capacity;
  if (replace_existing) {
    // Readers of the old file see kRetired and reopen the name.
    try {
      auto old = MappedFile::open_read_write(path, name);
      auto* oh = static_cast<SegmentHeader*>(old->mutable_data());
      if (oh->magic == kMagic) {
        header->generation = oh->generation + 1;
        oh->state.store(static_cast<uint32_t>(SegmentState::kRetired), std::memory_order_release);
      }
    } catch (const Error&) {
    }
  }
  header->state.store(static_cast<uint32_t>(SegmentState::kReady), std::memory_order_release);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    errno = err;
    throw_errno(ErrorCode::kSystem, "publish " + path);
  }
  created = true;
}

void Writer::Impl::attach() {
  char* base = static_cast<char*>(map->mutable_data());
  header = reinterpret_cast<SegmentHeader*>(base);
  undo = reinterpret_cast<Word*>(base + header->undo_offset);
  tables.clear();
  for (uint32_t t = 0; t < header->table_count; ++t) {
    TableState ts;
    ts.desc = const_cast<TableDescriptor*>(&table_descriptor(base, t));
    ts.geo = table_geometry(base, *ts.desc);
    ts.slots = const_cast<Word*>(ts.geo.slots);
    for (uint32_t f = 0; f < ts.desc->field_count; ++f) ts.fields.push_back(field_descriptor(base, *ts.desc, f));
    ts.max_used = ts.desc->capacity + (ts.geo.slot_count - ts.desc->capacity) / 2;
    // The schema equals the segment's (same fingerprint), so its plan is the
    // segment's layout.
    const TableSpec& spec = schema.tables[t];
    ts.declared_fields = static_cast<uint32_t>(spec.fields.size());
    ts.agg.plan = plan_aggregates(spec);
    if (ts.agg.plan.stride_words != ts.desc->state_stride_words) {
      throw Error(ErrorCode::kCorrupt, "segment \"" + name + "\" table \"" + spec.name +
                                           "\": aggregate state size differs from the schema's plan");
    }
    if (ts.agg.enabled()) {
      ts.agg.state = reinterpret_cast<Word*>(base + ts.desc->state_offset);
      ts.agg.dedup = reinterpret_cast<Word*>(base + ts.desc->dedup_offset);
      ts.agg.dedup_buckets = ts.desc->dedup_buckets;
      ts.agg.lateness_ms = spec.lateness_ms();
      ts.agg.horizon_ms = spec.dedup_horizon();
      for (const AggregatePlan::Group& g : ts.agg.plan.groups) {
        const auto it = std::find(ts.agg.plan.sources.begin(), ts.agg.plan.sources.end(), g.source);
        ts.agg.group_source.push_back(g.source.empty() ? -1 : static_cast<int>(it - ts.agg.plan.sources.begin()));
        ts.agg.counts_every_event |= g.source.empty();
      }
    }
    tables.push_back(std::move(ts));
  }
  journal = detail::Journal(header, reinterpret_cast<Word*>(base),
                            reinterpret_cast<JournalEntry*>(base + header->journal_offset), header->journal_capacity);
  uint32_t max_row_words = 0;
  for (const TableState& ts : tables) max_row_words = std::max(max_row_words, ts.geo.row_words);
  scratch.assign(max_row_words, 0);

  repair();
  for (uint32_t t = 0; t < tables.size(); ++t) {
    TableState& ts = tables[t];
    if (!ts.agg.enabled()) continue;
    clock_ms = std::max(clock_ms, static_cast<int64_t>(sync::load_relaxed(ts.desc->aggregate_counters.clock_ms)));
    for (uint64_t i = 0; i < ts.geo.slot_count; ++i) {
      if (meta_state(sync::load_relaxed(ts.slot(i)[kSlotMetaWord])) != SlotState::kLive) continue;
      const uint64_t word = sync::load_relaxed(detail::due_word(ts.agg.block(i)));
      if (word != 0) due.push(Due{static_cast<int64_t>(word - 1), t, i});
    }
  }
  bump(header->writer_sessions);
  sync::store_relaxed(header->writer_start_unix_ns, static_cast<uint64_t>(now_unix_ns()));
  sync::store_relaxed(header->heartbeat_mono_ns, static_cast<uint64_t>(now_mono_ns()));
  header->connection_state.store(static_cast<uint32_t>(ConnectionState::kUnknown), std::memory_order_relaxed);
  sync::store_release(header->writer_pid, static_cast<uint64_t>(::getpid()));
}

// Restores the slot a dead writer was changing, then recounts every table.
void Writer::Impl::repair() {
  // An unfinished aggregate change first. Its state words were all written
  // before its slot write began, so it is complete once that slot write
  // finished (the journal says so, or the guarded slot's seq moved on by 2
  // from its undo copy): keep it. Otherwise undo it; the slot, if it got
  // that far, is restored from the undo copy below.
  if (sync::load_acquire(header->journal_armed) != 0) {
    bool slot_written = sync::load_relaxed(header->journal_armed) == detail::Journal::kDone;
    if (!slot_written && sync::load_acquire(header->undo_armed) != 0) {
      const uint64_t t = sync::load_relaxed(header->undo_table);
      const uint64_t i = sync::load_relaxed(header->undo_slot);
      if (t < tables.size() && i < tables[t].geo.slot_count) {
        slot_written =
            sync::load_relaxed(tables[t].slot(i)[kSlotSeqWord]) == sync::load_relaxed(undo[kSlotSeqWord]) + 2;
      }
    }
    if (slot_written) {
      journal.commit();
    } else {
      journal.rollback(header->segment_bytes / 8);
    }
  }
  repaired = 0;
  if (sync::load_acquire(header->undo_armed) != 0) {
    const uint64_t t = sync::load_relaxed(header->undo_table);
    const uint64_t i = sync::load_relaxed(header->undo_slot);
    if (t < tables.size() && i < tables[t].geo.slot_count) {
      Word* s = tables[t].slot(i);
      const uint64_t seq = sync::load_relaxed(s[kSlotSeqWord]);
      if (seq & 1) {
        const uint64_t before = sync::load_relaxed(undo[kSlotSeqWord]);  // even: the slot before the change
        sync::writer_fence();
        for (uint32_t k = 1; k < tables[t].geo.slot_words; ++k) sync::store_payload(s[k], sync::load_relaxed(undo[k]));
        // A new even value: a reader that saw `before` and then torn words
        // must not validate against the restored slot.
        sync::store_release(s[kSlotSeqWord], std::max(before, seq - 1) + 2);
        ++repaired;
      }
    }
    sync::store_release(header->undo_armed, uint64_t{0});
  }
  for (TableState& ts : tables) {
    uint64_t live = 0, tomb = 0;
    int64_t max_event = 0;
    for (uint64_t i = 0; i < ts.geo.slot_count; ++i) {
      Word* s = ts.slot(i);
      const uint64_t seq = sync::load_relaxed(s[kSlotSeqWord]);
      uint64_t meta = sync::load_relaxed(s[kSlotMetaWord]);
      if (seq & 1) {
        // Odd without an undo record: its contents cannot be trusted. Keep it
        // out of every reader's sight as a tombstone; replay refills it.
        if (meta != 0) meta = make_meta(meta, SlotState::kTombstone);
        sync::store_relaxed(s[kSlotMetaWord], meta);
        sync::store_release(s[kSlotSeqWord], seq + 1);
        ++repaired;
      }
      switch (meta_state(meta)) {
        case SlotState::kLive: ++live; break;
        case SlotState::kTombstone: ++tomb; break;
        default: break;
      }
      if (meta != 0) max_event = std::max(max_event, static_cast<int64_t>(sync::load_relaxed(s[kSlotEventTimeWord])));
    }
    sync::store_relaxed(ts.desc->counters.live_keys, live);
    sync::store_relaxed(ts.desc->counters.tombstones, tomb);
    sync::store_relaxed(ts.desc->counters.max_event_time_ms, static_cast<uint64_t>(max_event));
  }
  sync::store_relaxed(header->repaired_slots, repaired);
}

Writer::Writer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Writer::~Writer() = default;

std::unique_ptr<Writer> Writer::open(std::string_view name, const Schema& schema, const WriterOptions& options) {
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
  struct statfs fs;
  if (::statfs(impl->dir.c_str(), &fs) == 0 && fs.f_type != TMPFS_MAGIC && fs.f_type != RAMFS_MAGIC &&
      !options.allow_non_tmpfs) {
    throw Error(ErrorCode::kInvalidArgument,
                "segment directory " + impl->dir +
                    " is not a tmpfs: a segment there would be written back to disk. Use /dev/shm or a "
                    "memory-backed volume (Kubernetes emptyDir with medium: Memory), or allow it explicitly");
  }
  impl->acquire_lock();
  impl->remove_leftovers();

  const std::string path = segment_path(impl->dir, name);
  if (::access(path.c_str(), F_OK) != 0) {
    impl->create(false);
  } else {
    impl->map = MappedFile::open_read_write(path, name);
    bool replace = false;
    try {
      validate_segment(impl->map->data(), impl->map->size(), name);
      const uint64_t have = impl->map->header().schema_fingerprint;
      if (have != schema.fingerprint()) {
        if (!options.recreate_on_schema_change) {
          throw Error(ErrorCode::kSchemaMismatch,
                      "segment \"" + impl->name + "\" has schema fingerprint " + hex64(have) +
                          ", the configured schema is " + hex64(schema.fingerprint()) +
                          ": restore the old schema, remove the segment, or allow recreation "
                          "(recreate_on_schema_change)");
        }
        replace = true;
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
  impl->attach();
  return std::unique_ptr<Writer>(new Writer(std::move(impl)));
}

void Writer::remove_segment(std::string_view name, const std::string& dir) {
  validate_segment_name(name);
  ::unlink(segment_path(dir, name).c_str());
  ::unlink(lock_path(dir, name).c_str());
}

// ---------------------------------------------------------------------------
// updates

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

ApplyResult Writer::apply(uint32_t table, std::string_view key, int64_t event_time_ms,
                          std::span<const FieldValue> values, std::span<const SourceValue> sources, uint64_t event_id,
                          int64_t apply_unix_ns) {
  Impl& w = *impl_;
  if (table >= w.tables.size()) return ApplyResult::kInvalid;
  if (w.tables[table].agg.enabled()) {
    return w.apply_aggregated(table, key, event_time_ms, values, sources, event_id, apply_unix_ns);
  }
  if (!sources.empty()) return ApplyResult::kInvalid;
  return w.upsert_plain(table, key, event_time_ms, values, apply_unix_ns);
}

ApplyResult Writer::Impl::upsert_plain(uint32_t table, std::string_view key, int64_t event_time_ms,
                                       std::span<const FieldValue> values, int64_t apply_unix_ns) {
  Impl& w = *this;
  Impl::TableState& ts = w.tables[table];
  if (key.empty() || key.size() > ts.geo.key_max_len || !w.values_valid(ts, values)) return ApplyResult::kInvalid;
  const int64_t now = apply_unix_ns != 0 ? apply_unix_ns : now_unix_ns();
  const uint64_t hash = hash_key(key, ts.geo.hash_seed);
  w.packed.assign(key);
  const Impl::Probe p = w.probe(ts, hash, now);
  TableCounters& c = ts.desc->counters;

  uint64_t at = p.found;
  bool fresh_row = true;  // insert or revive: fields not given become invalid
  if (at != kNone) {
    const Word* s = ts.slot(at);
    if (event_time_ms < static_cast<int64_t>(sync::load_relaxed(s[kSlotEventTimeWord]))) {
      bump(c.stale_ignored);
      return ApplyResult::kStale;
    }
    fresh_row = meta_state(sync::load_relaxed(s[kSlotMetaWord])) != SlotState::kLive;
  }
  if (fresh_row && sync::load_relaxed(c.live_keys) >= ts.desc->capacity) {
    bump(c.full_rejected);
    return ApplyResult::kTableFull;
  }
  if (at == kNone) {
    at = w.choose_slot(ts, p, false);
    if (at == kNone && w.purge(table, ts.geo.slot_count) > 0) {
      // Out of empty slots along this chain: reclaimed tombstones; look again.
      at = w.choose_slot(ts, w.probe(ts, hash, now), false);
    }
    if (at == kNone) {
      bump(c.full_rejected);
      return ApplyResult::kTableFull;
    }
  }

  Word* s = ts.slot(at);
  const uint32_t row_at = ts.geo.row_word_offset();
  const uint32_t validity_at = kSlotHeaderWords;
  uint32_t lo = ts.geo.row_words, hi = 0;
  if (fresh_row) {
    std::fill(w.scratch.begin(), w.scratch.begin() + ts.geo.row_words, 0);
    lo = 0;
    hi = ts.geo.row_words;
  } else {
    for (const FieldValue& v : values) {
      const FieldDescriptor& fd = ts.fields[v.field];
      lo = std::min(lo, fd.offset / 8);
      hi = std::max(hi, static_cast<uint32_t>((fd.offset + fd.bytes + 7) / 8));
    }
    for (uint32_t k = lo; k < hi; ++k) w.scratch[k] = sync::load_relaxed(s[row_at + k]);
  }
  uint64_t validity[kMaxFields / 64];
  for (uint32_t k = 0; k < ts.geo.validity_words; ++k) {
    validity[k] = fresh_row ? 0 : sync::load_relaxed(s[validity_at + k]);
  }
  for (const FieldValue& v : values) {
    w.encode(ts.fields[v.field], v, &lo, &hi);
    validity[v.field / 64] |= uint64_t{1} << (v.field % 64);
  }
  const uint64_t prior_meta = sync::load_relaxed(s[kSlotMetaWord]);
  {
    Impl::SlotWrite write(w, table, at);
    if (fresh_row) {
      write.set(kSlotKeyLenWord, w.packed.length);
      for (uint32_t k = 0; k < ts.geo.key_words; ++k) {
        write.set(ts.geo.key_word_offset() + k, k < w.packed.word_count ? w.packed.words[k] : 0);
      }
    }
    for (uint32_t k = 0; k < ts.geo.validity_words; ++k) write.set(validity_at + k, validity[k]);
    for (uint32_t k = lo; k < hi; ++k) write.set(row_at + k, w.scratch[k]);
    write.set(kSlotEventTimeWord, static_cast<uint64_t>(event_time_ms));
    write.set(kSlotApplyTimeWord, static_cast<uint64_t>(now));
    if (fresh_row) write.set(kSlotMetaWord, make_meta(hash, SlotState::kLive));
  }
  if (fresh_row) {
    bump(c.live_keys);
    if (meta_state(prior_meta) == SlotState::kTombstone) dec(c.tombstones);
  }
  bump(c.upserts);
  w.count_apply(ts, event_time_ms, now);
  return ApplyResult::kApplied;
}

ApplyResult Writer::Impl::apply_aggregated(uint32_t table, std::string_view key, int64_t event_time_ms,
                                           std::span<const FieldValue> values, std::span<const SourceValue> sources,
                                           uint64_t event_id, int64_t apply_unix_ns) {
  TableState& ts = tables[table];
  if (key.empty() || key.size() > ts.geo.key_max_len || !values_valid(ts, values)) return ApplyResult::kInvalid;
  for (const FieldValue& v : values) {
    if (v.field >= ts.declared_fields) return ApplyResult::kInvalid;  // outputs belong to the writer
  }
  for (const SourceValue& sv : sources) {
    if (sv.source >= ts.agg.plan.sources.size() || !std::isfinite(sv.value)) return ApplyResult::kInvalid;
  }
  const int64_t now = apply_unix_ns != 0 ? apply_unix_ns : now_unix_ns();
  advance_clock(now);
  const int64_t clock = clock_ms;
  const uint64_t hash = hash_key(key, ts.geo.hash_seed);
  // Most keys sit in their home slot: start fetching its row and state now.
  prefetch_home(ts.geo, hash);
  detail::prefetch_event(ts.agg, ts.agg.block(ts.geo.home(hash)), clock, event_time_ms);
  packed.assign(key);
  const Probe p = probe(ts, hash, now);
  TableCounters& c = ts.desc->counters;
  AggregateCounters& ac = ts.desc->aggregate_counters;
  sync::store_relaxed(ac.clock_ms, static_cast<uint64_t>(clock));

  const uint64_t scoped = event_id != 0 ? detail::scoped_event_id(event_id, hash) : 0;
  if (scoped != 0 && detail::dedup_contains(ts.agg, scoped, clock)) {
    bump(ac.duplicates);
    return ApplyResult::kDuplicate;
  }

  uint64_t at = p.found;
  bool live = false;
  int64_t row_time = 0;
  if (at != kNone) {
    const Word* s = ts.slot(at);
    row_time = static_cast<int64_t>(sync::load_relaxed(s[kSlotEventTimeWord]));
    live = meta_state(sync::load_relaxed(s[kSlotMetaWord])) == SlotState::kLive;
    if (!live && event_time_ms < row_time) {  // older than the delete: the key stays deleted
      bump(c.stale_ignored);
      return ApplyResult::kStale;
    }
  }
  // Fields follow last write wins; aggregates take any event within the
  // allowed lateness.
  const bool fields_fresh = !live || event_time_ms >= row_time;
  // Only an event that carries aggregate input can be late: a count without
  // a source counts every event.
  const bool aggregate_input = !sources.empty() || ts.agg.counts_every_event;
  if (!aggregate_input && !fields_fresh) {
    bump(c.stale_ignored);
    return ApplyResult::kStale;
  }
  const bool late = aggregate_input && event_time_ms <= clock - ts.agg.lateness_ms;
  if (late && !(fields_fresh && !values.empty())) {
    bump(ac.late_dropped);
    return ApplyResult::kLate;
  }
  const bool fresh_row = !live;
  if (fresh_row && sync::load_relaxed(c.live_keys) >= ts.desc->capacity) {
    bump(c.full_rejected);
    return ApplyResult::kTableFull;
  }
  if (at == kNone) {
    at = choose_slot(ts, p, false);
    if (at == kNone && purge(table, ts.geo.slot_count) > 0) at = choose_slot(ts, probe(ts, hash, now), false);
    if (at == kNone) {
      bump(c.full_rejected);
      return ApplyResult::kTableFull;
    }
  }

  Word* s = ts.slot(at);
  Word* block = ts.agg.block(at);
  if (fresh_row) detail::reset_block(ts.agg, block);  // not live yet: no journal needed
  journal.begin();
  if (!fresh_row) detail::advance(ts.agg, block, clock, journal);
  bool folded = false;
  if (late) {
    bump(ac.late_dropped);
  } else {
    folded = detail::fold(ts.agg, block, clock, event_time_ms, sources, journal);
    if (folded) bump(ac.events);
  }
  if (scoped != 0 && detail::dedup_insert(ts.agg, scoped, event_time_ms, clock, journal)) bump(ac.dedup_evictions);
  schedule(table, at, block);

  // The row image: written fields, then every output.
  const uint32_t row_at = ts.geo.row_word_offset();
  const bool write_fields = fields_fresh;
  uint32_t lo = ts.geo.row_words, hi = 0;
  if (fresh_row) {
    std::fill(scratch.begin(), scratch.begin() + ts.geo.row_words, 0);
    lo = 0;
    hi = ts.geo.row_words;
  } else {
    if (write_fields) {
      for (const FieldValue& v : values) {
        const FieldDescriptor& fd = ts.fields[v.field];
        lo = std::min(lo, fd.offset / 8);
        hi = std::max(hi, static_cast<uint32_t>((fd.offset + fd.bytes + 7) / 8));
      }
    }
    for (const AggregatePlan::Output& o : ts.agg.plan.outputs) {
      lo = std::min(lo, ts.fields[o.field].offset / 8);
      hi = std::max(hi, ts.fields[o.field].offset / 8 + 1);
    }
    for (uint32_t k = lo; k < hi; ++k) scratch[k] = sync::load_relaxed(s[row_at + k]);
  }
  uint64_t validity[kMaxFields / 64];
  for (uint32_t k = 0; k < ts.geo.validity_words; ++k) {
    validity[k] = fresh_row ? 0 : sync::load_relaxed(s[kSlotHeaderWords + k]);
  }
  if (write_fields) {
    for (const FieldValue& v : values) {
      encode(ts.fields[v.field], v, &lo, &hi);
      validity[v.field / 64] |= uint64_t{1} << (v.field % 64);
    }
  }
  encode_outputs(ts, block, validity, &lo, &hi);
  const int64_t new_time = fresh_row ? event_time_ms : std::max(row_time, event_time_ms);
  const uint64_t prior_meta = sync::load_relaxed(s[kSlotMetaWord]);
  {
    SlotWrite write(*this, table, at);
    if (fresh_row) {
      write.set(kSlotKeyLenWord, packed.length);
      for (uint32_t k = 0; k < ts.geo.key_words; ++k) {
        write.set(ts.geo.key_word_offset() + k, k < packed.word_count ? packed.words[k] : 0);
      }
    }
    for (uint32_t k = 0; k < ts.geo.validity_words; ++k) write.set(kSlotHeaderWords + k, validity[k]);
    for (uint32_t k = lo; k < hi; ++k) write.set(row_at + k, scratch[k]);
    write.set(kSlotEventTimeWord, static_cast<uint64_t>(new_time));
    write.set(kSlotApplyTimeWord, static_cast<uint64_t>(now));
    if (fresh_row) write.set(kSlotMetaWord, make_meta(hash, SlotState::kLive));
  }
  journal.commit();
  if (fresh_row) {
    bump(c.live_keys);
    if (meta_state(prior_meta) == SlotState::kTombstone) dec(c.tombstones);
  }
  if (!fields_fresh) bump(c.stale_ignored);
  bump(c.upserts);
  count_apply(ts, event_time_ms, now);
  return ApplyResult::kApplied;
}

// Brings one live key's windows up to the clock and rewrites its outputs.
bool Writer::Impl::refresh_slot(uint32_t table, uint64_t slot) {
  TableState& ts = tables[table];
  Word* s = ts.slot(slot);
  if (meta_state(sync::load_relaxed(s[kSlotMetaWord])) != SlotState::kLive) return false;
  Word* block = ts.agg.block(slot);
  journal.begin();
  detail::advance(ts.agg, block, clock_ms, journal);
  schedule(table, slot, block);
  uint64_t validity[kMaxFields / 64];
  for (uint32_t k = 0; k < ts.geo.validity_words; ++k) validity[k] = sync::load_relaxed(s[kSlotHeaderWords + k]);
  uint32_t lo = ts.geo.row_words, hi = 0;
  encode_outputs(ts, block, validity, &lo, &hi);
  const uint32_t row_at = ts.geo.row_word_offset();
  {
    SlotWrite write(*this, table, slot);
    for (uint32_t k = 0; k < ts.geo.validity_words; ++k) write.set(kSlotHeaderWords + k, validity[k]);
    for (uint32_t k = lo; k < hi; ++k) write.set(row_at + k, scratch[k]);
  }
  journal.commit();
  bump(ts.desc->aggregate_counters.refreshes);
  return true;
}

bool Writer::refresh_due() const {
  const Impl& w = *impl_;
  return !w.due.empty() && w.due.top().due_ms <= std::max(w.clock_ms, layout::now_unix_ns() / 1'000'000);
}

uint64_t Writer::refresh(int64_t now_unix_ns, uint64_t key_budget) {
  Impl& w = *impl_;
  w.advance_clock(now_unix_ns != 0 ? now_unix_ns : layout::now_unix_ns());
  uint64_t done = 0;
  while (!w.due.empty() && done < key_budget && w.due.top().due_ms <= w.clock_ms) {
    const Impl::Due d = w.due.top();
    w.due.pop();
    // A queued time the key has since moved past (an event or an earlier
    // refresh rescheduled it) is dropped; the key's current time is queued too.
    Impl::TableState& ts = w.tables[d.table];
    if (sync::load_relaxed(detail::due_word(ts.agg.block(d.slot))) != static_cast<uint64_t>(d.due_ms) + 1) continue;
    if (w.refresh_slot(d.table, d.slot)) ++done;
  }
  for (Impl::TableState& ts : w.tables) {
    if (ts.agg.enabled()) sync::store_relaxed(ts.desc->aggregate_counters.clock_ms, static_cast<uint64_t>(w.clock_ms));
  }
  return done;
}

ApplyResult Writer::remove(uint32_t table, std::string_view key, int64_t event_time_ms, int64_t apply_unix_ns) {
  Impl& w = *impl_;
  if (table >= w.tables.size()) return ApplyResult::kInvalid;
  Impl::TableState& ts = w.tables[table];
  if (key.empty() || key.size() > ts.geo.key_max_len) return ApplyResult::kInvalid;
  const int64_t now = apply_unix_ns != 0 ? apply_unix_ns : now_unix_ns();
  w.advance_clock(now);  // every call moves the aggregate clock (writer.h)
  const uint64_t hash = hash_key(key, ts.geo.hash_seed);
  w.packed.assign(key);
  const Impl::Probe p = w.probe(ts, hash, now);
  TableCounters& c = ts.desc->counters;

  if (p.found != kNone) {
    Word* s = ts.slot(p.found);
    if (event_time_ms < static_cast<int64_t>(sync::load_relaxed(s[kSlotEventTimeWord]))) {
      bump(c.stale_ignored);
      return ApplyResult::kStale;
    }
    const bool was_live = meta_state(sync::load_relaxed(s[kSlotMetaWord])) == SlotState::kLive;
    {
      Impl::SlotWrite write(w, table, p.found);
      write.set(kSlotMetaWord, make_meta(hash, SlotState::kTombstone));
      write.set(kSlotEventTimeWord, static_cast<uint64_t>(event_time_ms));
      write.set(kSlotApplyTimeWord, static_cast<uint64_t>(now));
    }
    if (was_live) {
      dec(c.live_keys);
      bump(c.tombstones);
    }
  } else {
    // Remember the delete so that an older upsert arriving later stays
    // deleted; without room for the record the delete is still a no-op.
    const uint64_t at = w.choose_slot(ts, p, true);
    if (at != kNone) {
      Word* s = ts.slot(at);
      const bool was_empty = sync::load_relaxed(s[kSlotMetaWord]) == 0;
      {
        Impl::SlotWrite write(w, table, at);
        write.set(kSlotKeyLenWord, w.packed.length);
        for (uint32_t k = 0; k < ts.geo.key_words; ++k) {
          write.set(ts.geo.key_word_offset() + k, k < w.packed.word_count ? w.packed.words[k] : 0);
        }
        for (uint32_t k = 0; k < ts.geo.validity_words; ++k) write.set(kSlotHeaderWords + k, 0);
        write.set(kSlotEventTimeWord, static_cast<uint64_t>(event_time_ms));
        write.set(kSlotApplyTimeWord, static_cast<uint64_t>(now));
        write.set(kSlotMetaWord, make_meta(hash, SlotState::kTombstone));
      }
      if (was_empty) bump(c.tombstones);
    }
  }
  bump(c.deletes);
  w.count_apply(ts, event_time_ms, now);
  return ApplyResult::kApplied;
}

void Writer::heartbeat() {
  sync::store_relaxed(impl_->header->heartbeat_mono_ns, static_cast<uint64_t>(now_mono_ns()));
}

uint64_t Writer::maintain(uint64_t slot_budget) {
  heartbeat();
  // Bounded in time, so that a bucket boundary shared by many keys delays
  // updates by at most a few milliseconds per call; the sidecar's writer
  // thread works off a backlog between bulks of messages (refresh_due()).
  const int64_t until = now_mono_ns() + kMaintainRefreshNs;
  while (refresh(0, 512) == 512 && now_mono_ns() < until) {
  }
  Impl& w = *impl_;
  uint64_t reclaimed = 0;
  for (uint32_t t = 0; t < w.tables.size() && slot_budget > 0; ++t) {
    const uint64_t steps = std::min(w.tables[t].geo.slot_count, slot_budget);
    reclaimed += w.purge(t, steps);
    slot_budget -= steps;
  }
  return reclaimed;
}

void Writer::set_connection_state(ConnectionState state) {
  impl_->header->connection_state.store(static_cast<uint32_t>(state), std::memory_order_relaxed);
}

void Writer::add_messages_rejected(uint64_t n) { bump(impl_->header->messages_rejected, n); }

bool Writer::created() const { return impl_->created; }
uint64_t Writer::repaired_slots() const { return impl_->repaired; }
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
  st.duplicates = sync::load_relaxed(ac.duplicates);
  st.dedup_evictions = sync::load_relaxed(ac.dedup_evictions);
  st.refreshes = sync::load_relaxed(ac.refreshes);
  return st;
}

}  // namespace larder
