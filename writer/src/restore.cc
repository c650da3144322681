// Images of a segment: copy_image() takes one on the writer thread between
// updates; restore() builds a segment from one (a snapshot file's contents,
// a peer's answer), which it does not trust.
//
// restore() in order, so that any failure leaves an existing segment at the
// name untouched (not a byte written to it) and no file behind:
//  1. The writer lock (Impl::prepare): no other writer is attached.
//  2. The image is checked in memory (check_image): a valid v3 segment, the
//     schema's fingerprint, the layout the schema plans here (every offset,
//     size and descriptor), nothing armed (undo, journal, pending position),
//     every slot's seq even, meta state known, key and string lengths within
//     their fields.
//  3. It is copied into ".<name>.creating.<pid>" in the segment directory
//     (the name remove_leftovers() cleans up after a crash), with the key
//     counts check_image took (the image's own counters are not trusted),
//     marked kReady, and renamed over the name. The writer attaches without
//     repair: check_image has seen every slot at rest and nothing armed.
//  4. Only then is the old segment, if any, marked kRetired (its readers
//     reopen the name, as with recreate_on_schema_change).
//
// Threading: the writer thread (copy_image), the thread that opens the Writer
// (restore).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "writer_impl.h"

namespace larder {

using namespace layout;  // NOLINT: the writer works on the layout's words
using writer::throw_errno;

namespace {

// What a table of a checked image holds, counted by check_image: the
// restored segment's counters (the image's own are not trusted).
struct TableCount {
  uint64_t live = 0;
  uint64_t tombstones = 0;
  int64_t max_event_ms = 0;
};

// Checks a segment image against the layout `schema` plans, and counts its
// keys. Throws Error: kCorrupt naming the first problem, kSchemaMismatch,
// kVersionMismatch. `base` is 8-byte aligned.
std::vector<TableCount> check_image(const void* base, size_t size, const Schema& schema, const LayoutPlan& plan,
                                    const std::string& name) {
  const std::string what = "image of segment \"" + name + "\"";
  auto corrupt = [&](const std::string& why) { throw Error(ErrorCode::kCorrupt, what + ": " + why); };
  if (size < sizeof(SegmentHeader)) {
    corrupt("truncated: " + std::to_string(size) + " bytes, less than a segment header (" +
            std::to_string(sizeof(SegmentHeader)) + ")");
  }
  const auto& h = *static_cast<const SegmentHeader*>(base);
  if (h.magic == kMagic && h.layout_version == kLayoutVersion && h.segment_bytes > size) {
    corrupt("truncated: " + std::to_string(size) + " of " + std::to_string(h.segment_bytes) + " bytes");
  }
  try {
    validate_segment(base, size, name + " (image)");
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kNotReady) corrupt("the image was taken while the segment was being created");
    throw;
  }
  if (sync::load_relaxed(h.state) != static_cast<uint32_t>(SegmentState::kReady) &&
      sync::load_relaxed(h.state) != static_cast<uint32_t>(SegmentState::kRetired)) {
    corrupt("bad segment state " + std::to_string(sync::load_relaxed(h.state)));
  }
  if (h.schema_fingerprint != schema.fingerprint()) {
    throw Error(ErrorCode::kSchemaMismatch, what + " has schema fingerprint " + hex64(h.schema_fingerprint) +
                                                ", the configured schema is " + hex64(schema.fingerprint()) +
                                                ": restore a snapshot taken with this schema");
  }

  // The layout: every offset and size equals what this build plans.
  auto differs = [&](const std::string& item, uint64_t have, uint64_t want) {
    if (have != want) {
      corrupt(item + " is " + std::to_string(have) + ", the schema's plan has " + std::to_string(want) +
              " (layout differs from the plan)");
    }
  };
  differs("segment size", h.segment_bytes, plan.segment_bytes);
  differs("table count", h.table_count, schema.tables.size());
  differs("header size", h.header_bytes, plan.header_bytes);
  differs("undo offset", h.undo_offset, plan.undo_offset);
  differs("undo size", h.undo_bytes, plan.undo_bytes);
  differs("journal offset", h.journal_offset, plan.journal_offset);
  differs("journal capacity", h.journal_capacity, plan.journal_capacity);
  differs("source block offset", h.source_offset, plan.source_offset);
  for (size_t t = 0; t < schema.tables.size(); ++t) {
    const TableSpec& spec = schema.tables[t];
    const TablePlan& tp = plan.tables[t];
    const TableDescriptor& d = table_descriptor(base, static_cast<uint32_t>(t));
    const std::vector<FieldSpec> fields = spec.all_fields();
    auto want = std::make_unique<TableDescriptor>();
    writer::fill_table_descriptor(want.get(), spec, tp, fields.size(), d.hash_seed);
    const std::string tw = "table " + std::to_string(t) + " ";
    if (std::memcmp(d.name, want->name, kNameBytes) != 0) corrupt(tw + "name differs from the schema's plan");
    differs(tw + "field count", d.field_count, want->field_count);
    differs(tw + "key_max_len", d.key_max_len, want->key_max_len);
    differs(tw + "capacity", d.capacity, want->capacity);
    differs(tw + "slot count", d.slot_count, want->slot_count);
    differs(tw + "slot size", d.slot_bytes, want->slot_bytes);
    differs(tw + "row size", d.row_bytes, want->row_bytes);
    differs(tw + "validity words", d.validity_words, want->validity_words);
    differs(tw + "key words", d.key_words, want->key_words);
    differs(tw + "fields offset", d.fields_offset, want->fields_offset);
    differs(tw + "slots offset", d.slots_offset, want->slots_offset);
    differs(tw + "max load", d.max_load_permille, want->max_load_permille);
    differs(tw + "max load ppm", d.max_load_ppm, want->max_load_ppm);
    differs(tw + "aggregate count", d.aggregate_count, want->aggregate_count);
    differs(tw + "aggregate state stride", d.state_stride_words, want->state_stride_words);
    differs(tw + "aggregates offset", d.aggregates_offset, want->aggregates_offset);
    differs(tw + "state offset", d.state_offset, want->state_offset);
    differs(tw + "dedup offset", d.dedup_offset, want->dedup_offset);
    differs(tw + "dedup buckets", d.dedup_buckets, want->dedup_buckets);
    differs(tw + "arena chunk words", d.arena_chunk_words, want->arena_chunk_words);
    differs(tw + "arena chunks", d.arena_chunks, want->arena_chunks);
    differs(tw + "arena offset", d.arena_offset, want->arena_offset);
    differs(tw + "allowed lateness", static_cast<uint64_t>(d.allowed_lateness_ms),
            static_cast<uint64_t>(want->allowed_lateness_ms));
    differs(tw + "dedup horizon", static_cast<uint64_t>(d.dedup_horizon_ms),
            static_cast<uint64_t>(want->dedup_horizon_ms));
    differs(tw + "dedup capacity", d.dedup_capacity, want->dedup_capacity);
    differs(tw + "group count", d.group_count, want->group_count);
    differs(tw + "groups offset", d.groups_offset, want->groups_offset);
    const std::vector<std::string> groups = spec.group_names();
    for (size_t g = 0; g < groups.size(); ++g) {
      GroupDescriptor gd{};
      writer::fill_group_descriptor(&gd, groups[g]);
      if (std::memcmp(&gd, &group_descriptor(base, d, static_cast<uint32_t>(g)), sizeof gd) != 0) {
        corrupt(tw + "group " + std::to_string(g) + " descriptor differs from the schema's plan");
      }
    }
    for (size_t f = 0; f < fields.size(); ++f) {
      FieldDescriptor fd{};
      writer::fill_field_descriptor(&fd, fields[f], tp.fields[f], f, f >= spec.fields.size(), tp.field_groups[f]);
      if (std::memcmp(&fd, &field_descriptor(base, d, static_cast<uint32_t>(f)), sizeof fd) != 0) {
        corrupt(tw + "field " + std::to_string(f) + " descriptor differs from the schema's plan");
      }
    }
    for (size_t a = 0; a < spec.aggregates.size(); ++a) {
      AggregateDescriptor ad{};
      writer::fill_aggregate_descriptor(&ad, spec.aggregates[a], spec.fields.size() + a);
      if (std::memcmp(&ad, &aggregate_descriptor(base, d, static_cast<uint32_t>(a)), sizeof ad) != 0) {
        corrupt(tw + "aggregate " + std::to_string(a) + " descriptor differs from the schema's plan");
      }
    }
  }

  // Nothing half-done: an image is taken between updates.
  if (sync::load_relaxed(h.undo_armed) != 0) corrupt("the undo record is armed (a slot write in progress)");
  if (sync::load_relaxed(h.journal_armed) != 0) corrupt("the aggregate journal is armed (a change in progress)");
  for (uint32_t t = 0; t < h.table_count; ++t) {
    if (sync::load_relaxed(table_descriptor(base, t).count_armed) != 0) {
      corrupt("table " + std::to_string(t) + " count record is armed (a slot write in progress)");
    }
  }
  const SourceBlock& src = source_block(base);
  if (sync::load_relaxed(src.pending_state) != kPendingIdle) {
    corrupt("a source position is pending (state " + std::to_string(sync::load_relaxed(src.pending_state)) + ")");
  }
  if (sync::load_relaxed(src.sync_state) > static_cast<uint64_t>(SyncState::kIncomplete)) {
    corrupt("bad sync state " + std::to_string(sync::load_relaxed(src.sync_state)));
  }
  if (sync::load_relaxed(src.partition_count) > kMaxSourcePartitions) {
    corrupt("bad source partition count " + std::to_string(sync::load_relaxed(src.partition_count)));
  }
  if ((sync::load_relaxed(src.source_id[kSourceIdWords - 1]) >> 56) != 0) corrupt("source id is not NUL terminated");
  for (size_t p = 0; p < kMaxSourcePartitions; ++p) {
    if (sync::load_relaxed(src.partitions[p].skip_updates) > UINT32_MAX) {
      corrupt("partition " + std::to_string(p) + " skip count out of range");
    }
  }

  // Every slot: the seqlock at rest, a known state, lengths within bounds.
  std::vector<TableCount> counts(h.table_count);
  for (uint32_t t = 0; t < h.table_count; ++t) {
    const TableDescriptor& d = table_descriptor(base, t);
    const TableGeometry geo = table_geometry(base, d);
    struct StringField {
      uint32_t word;  // from the slot start
      uint32_t shift;
      uint32_t max_len;
      uint32_t index;
    };
    std::vector<StringField> strings;
    for (uint32_t f = 0; f < d.field_count; ++f) {
      const FieldDescriptor& fd = field_descriptor(base, d, f);
      if (static_cast<FieldType>(fd.type) != FieldType::kString) continue;
      // The length is the field's first 4 bytes; strings are 4-byte aligned.
      strings.push_back({geo.row_word_offset() + fd.offset / 8, (fd.offset % 8) * 8, fd.count, f});
    }
    const std::string tw = "table \"" + std::string(fixed_name(d.name)) + "\" slot ";
    for (uint64_t i = 0; i < geo.slot_count; ++i) {
      const Word* s = geo.slots + i * geo.slot_words;
      if (sync::load_relaxed(s[kSlotSeqWord]) & 1) corrupt(tw + std::to_string(i) + ": odd seq (a write in progress)");
      const uint64_t meta = sync::load_relaxed(s[kSlotMetaWord]);
      if (meta_state(meta) != SlotState::kEmpty && meta_state(meta) != SlotState::kLive &&
          meta_state(meta) != SlotState::kTombstone) {
        corrupt(tw + std::to_string(i) + ": bad meta state " + std::to_string(meta & kMetaStateMask));
      }
      if (meta == 0) continue;
      ++(meta_state(meta) == SlotState::kLive ? counts[t].live : counts[t].tombstones);
      counts[t].max_event_ms =
          std::max(counts[t].max_event_ms, static_cast<int64_t>(sync::load_relaxed(s[kSlotEventTimeWord])));
      const uint64_t key_len = sync::load_relaxed(s[kSlotKeyLenWord]);
      if (key_len == 0 || key_len > geo.key_max_len) {
        corrupt(tw + std::to_string(i) + ": key_len " + std::to_string(key_len) + " outside 1.." +
                std::to_string(geo.key_max_len));
      }
      for (const StringField& sf : strings) {
        const uint64_t len = (sync::load_relaxed(s[sf.word]) >> sf.shift) & 0xffffffffu;
        if (len > sf.max_len) {
          corrupt(tw + std::to_string(i) + ": string field " + std::to_string(sf.index) + " length " +
                  std::to_string(len) + " above its max_len " + std::to_string(sf.max_len));
        }
      }
      // The row's event time is the newest of its groups' (a group time
      // above it would make the row look younger than a group it holds).
      const auto row_time = static_cast<int64_t>(sync::load_relaxed(s[kSlotEventTimeWord]));
      for (uint32_t g = 0; g < geo.group_count; ++g) {
        const auto gt = static_cast<int64_t>(sync::load_relaxed(s[geo.group_word_offset() + g]));
        if (gt > row_time) {
          corrupt(tw + std::to_string(i) + ": group " + std::to_string(g) + " event time " + std::to_string(gt) +
                  " is newer than the row's " + std::to_string(row_time));
        }
      }
    }
  }
  return counts;
}

}  // namespace

void Writer::copy_image(std::vector<unsigned char>* out) const {
  // Between updates nothing is armed (undo, journal, pending position), so
  // the copy is a consistent segment. The writer thread is the only one that
  // writes these words: plain reads of them are race-free here.
  const size_t n = impl_->map->size();
  out->resize(n);
  std::memcpy(out->data(), impl_->map->data(), n);
}

std::unique_ptr<Writer> Writer::restore(std::string_view name, const Schema& schema,
                                        std::span<const unsigned char> image, const WriterOptions& options) {
  std::unique_ptr<Impl> impl = Impl::prepare(name, schema, options);
  impl->restore_image(image);
  impl->prepare_pages();
  impl->attach(false);  // restore_image checked every slot: nothing to repair, counters set
  return std::unique_ptr<Writer>(new Writer(std::move(impl)));
}

void Writer::Impl::restore_image(std::span<const unsigned char> image) {
  const LayoutPlan plan = plan_layout(schema);
  // The checks read the header and slots as words: give them an aligned copy
  // when the caller's bytes are not.
  std::vector<uint64_t> aligned;
  const void* base = image.data();
  if (reinterpret_cast<uintptr_t>(base) % alignof(uint64_t) != 0) {
    aligned.resize((image.size() + 7) / 8);
    if (!image.empty()) std::memcpy(aligned.data(), image.data(), image.size());
    base = aligned.data();
  }
  const std::vector<TableCount> counts = check_image(base, image.size(), schema, plan, name);
  const size_t bytes = image.size();  // == plan.segment_bytes

  struct statvfs vfs;
  if (::statvfs(dir.c_str(), &vfs) != 0) throw_errno(ErrorCode::kSystem, "statvfs " + dir);
  const uint64_t avail = uint64_t{vfs.f_bavail} * vfs.f_frsize;
  if (avail < bytes + kSegmentFreeMargin) {
    throw Error(ErrorCode::kNoSpace, "restoring segment \"" + name + "\" needs " + std::to_string(bytes) +
                                         " bytes but " + dir + " has " + std::to_string(avail) +
                                         " free: enlarge it (docker --shm-size, Kubernetes emptyDir sizeLimit)");
  }
  const std::string tmp = segment_path(dir, "." + name + ".creating." + std::to_string(::getpid()));
  int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EACCES || errno == EROFS) throw_errno(ErrorCode::kPermissionDenied, "create " + tmp);
    throw_errno(ErrorCode::kSystem, "create " + tmp);
  }
  // From here on a failure removes the temporary file.
  struct Cleanup {
    const std::string& path;
    int* fd;
    bool armed = true;
    ~Cleanup() {
      if (*fd >= 0) ::close(*fd);
      if (armed) ::unlink(path.c_str());
    }
  } cleanup{tmp, &fd};
  if (::fchmod(fd, options.mode & 07777) != 0) throw_errno(ErrorCode::kSystem, "chmod " + tmp);
  // One copy, by write(2): on tmpfs it allocates and fills the file's pages
  // directly, where a memcpy into a fresh mapping pays a fault per page
  // (bench/core larder_bench_positions, restore: 4x slower that way on a
  // virtual machine). A full tmpfs fails the write with ENOSPC.
  const auto* from = static_cast<const unsigned char*>(base);
  for (size_t done = 0; done < bytes;) {
    const ssize_t n = ::pwrite(fd, from + done, bytes - done, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == ENOSPC) throw Error(ErrorCode::kNoSpace, "restoring segment \"" + name + "\": " + dir + " is full");
      throw_errno(ErrorCode::kSystem, "write " + tmp);
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  fd = -1;

  auto fresh = MappedFile::open_read_write(tmp, name);
  char* nbase = static_cast<char*>(fresh->mutable_data());
  auto* nh = reinterpret_cast<SegmentHeader*>(nbase);
  for (uint32_t t = 0; t < nh->table_count; ++t) {
    auto& c = const_cast<TableDescriptor&>(table_descriptor(nbase, t)).counters;
    sync::store_relaxed(c.live_keys, counts[t].live);
    sync::store_relaxed(c.tombstones, counts[t].tombstones);
    sync::store_relaxed(c.max_event_time_ms, static_cast<uint64_t>(counts[t].max_event_ms));
  }
  sync::store_relaxed(nh->repaired_slots, uint64_t{0});
  // The counters were just counted: the attach that follows trusts them.
  sync::store_relaxed(nh->counters_session, sync::load_relaxed(nh->writer_sessions));
  const std::string path = segment_path(dir, name);
  std::unique_ptr<MappedFile> old;
  try {
    old = MappedFile::open_read_write(path, name);
    if (old->header().magic != kMagic) old.reset();
  } catch (const Error&) {
  }
  // The new segment's identity: a later generation than both the image's and
  // the segment it replaces, no writer attached yet.
  uint64_t generation = nh->generation;
  if (old != nullptr) generation = std::max(generation, old->header().generation);
  nh->generation = generation + 1;
  sync::store_relaxed(nh->writer_pid, uint64_t{0});
  sync::store_relaxed(nh->journal_count, uint64_t{0});
  // Publishes the bytes above to the readers' acquire load of the state
  // (validate_segment), before the name points at the file.
  sync::store_release(nh->state, static_cast<uint32_t>(SegmentState::kReady));
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw_errno(ErrorCode::kSystem, "publish " + path);
  cleanup.armed = false;
  if (old != nullptr) {
    // Readers of the old file see kRetired and reopen the name.
    auto* oh = static_cast<SegmentHeader*>(old->mutable_data());
    sync::store_release(oh->state, static_cast<uint32_t>(SegmentState::kRetired));
  }
  map = std::move(fresh);
  created = true;
  restored = true;
}

}  // namespace larder
