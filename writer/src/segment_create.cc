// Creating a segment and attaching the writer to it: the lock file that
// makes the writer single, creation under a temporary name published by
// rename, and the writer's local view of the tables.
//
// Invariant: a segment file at its final name is complete. It is built under
// ".<name>.creating.<pid>", its state stored kReady (release, pairs with the
// readers' acquire load in validate_segment), and only then renamed.
//
// Threading: the thread that opens the Writer.
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "larder/layout/clock.h"
#include "row_write.h"

namespace larder {

using namespace layout;  // NOLINT: the writer works on the layout's words
using writer::bump;
using writer::throw_errno;

std::string writer::lock_path(std::string_view dir, std::string_view name) { return segment_path(dir, name) + ".lock"; }

void Writer::Impl::acquire_lock() {
  const std::string path = writer::lock_path(dir, name);
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

// Temporary files of creators that died before publishing (a segment or
// the next generation of one, generation.cc), and the link to a generation
// a switch published over but died before retiring: it is retired now, so
// that its readers move to the name.
void Writer::Impl::remove_leftovers() {
  const std::string prefix = "." + name + ".creating.";
  const std::string retiring = "." + name + ".retiring.";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  while (dirent* e = ::readdir(d)) {
    const std::string path = dir + "/" + e->d_name;
    if (std::strncmp(e->d_name, prefix.c_str(), prefix.size()) == 0) {
      ::unlink(path.c_str());
    } else if (std::strncmp(e->d_name, retiring.c_str(), retiring.size()) == 0) {
      struct stat old_st, cur_st;
      const bool replaced = ::stat(path.c_str(), &old_st) == 0 &&
                            ::stat(segment_path(dir, name).c_str(), &cur_st) == 0 && old_st.st_ino != cur_st.st_ino;
      if (replaced) {
        try {
          auto old = MappedFile::open_read_write(path, name);
          auto* oh = static_cast<SegmentHeader*>(old->mutable_data());
          if (oh->magic == kMagic) {
            sync::store_release(oh->writer_pid, uint64_t{0});
            sync::store_release(oh->state, static_cast<uint32_t>(SegmentState::kRetired));  // readers follow
          }
        } catch (const Error&) {
        }
      }
      ::unlink(path.c_str());
    }
  }
  ::closedir(d);
}

namespace {

// The `index`-th element of an array of D at byte `offset` of the segment.
template <class D>
D* descriptor_at(char* base, uint64_t offset, size_t index) {
  return reinterpret_cast<D*>(base + offset + index * sizeof(D));
}

// Copies `name` into a fixed name field, NUL-terminated and cut to fit.
template <size_t N>
void copy_name(char (&out)[N], const std::string& name) {
  std::snprintf(out, N, "%s", name.c_str());
}

}  // namespace

// Table `spec` as planned in `tp`; `field_count` counts its declared and
// aggregate fields. Writes into the unpublished segment only.
void writer::fill_table_descriptor(TableDescriptor* d, const TableSpec& spec, const TablePlan& tp, size_t field_count,
                                   uint64_t hash_seed) {
  copy_name(d->name, spec.name);
  d->field_count = static_cast<uint32_t>(field_count);
  d->key_max_len = spec.key_max_len;
  d->capacity = spec.capacity;
  d->slot_count = tp.slot_count;
  d->slot_bytes = tp.slot_bytes;
  d->row_bytes = tp.row_bytes;
  d->validity_words = tp.validity_words;
  d->key_words = tp.key_words;
  d->fields_offset = tp.fields_offset;
  d->slots_offset = tp.slots_offset;
  d->hash_seed = hash_seed;
  d->max_load_permille = static_cast<uint32_t>((spec.capacity * 1000 + tp.slot_count - 1) / tp.slot_count);
  d->max_load_ppm = static_cast<uint32_t>(std::llround(spec.max_load_factor * 1e6));
  d->aggregate_count = static_cast<uint32_t>(spec.aggregates.size());
  d->state_stride_words = tp.aggregates.stride_words;
  d->aggregates_offset = tp.aggregates_offset;
  d->state_offset = tp.state_offset;
  d->dedup_offset = tp.dedup_offset;
  d->dedup_buckets = tp.dedup_buckets;
  d->allowed_lateness_ms = spec.allowed_lateness_ms;
  d->dedup_horizon_ms = spec.dedup_horizon_ms;
  d->dedup_capacity = spec.dedup_capacity;
  d->group_count = tp.group_count;
  d->groups_offset = tp.groups_offset;
  d->arena_chunk_words = tp.aggregates.chunk_words;
  d->arena_chunks = static_cast<uint32_t>(tp.arena_chunks);
  d->arena_offset = tp.arena_offset;
}

// Field number `index` of its table, placed as `fp`; `aggregate` marks the
// fields that hold an aggregate's value.
void writer::fill_field_descriptor(FieldDescriptor* out, const FieldSpec& fs, const FieldPlan& fp, size_t index,
                                   bool aggregate, uint32_t group) {
  copy_name(out->name, fs.name);
  out->type = static_cast<uint32_t>(fs.type);
  out->count = (fs.type == FieldType::kFloat32Vector || fs.type == FieldType::kString) ? fs.count : 1;
  out->offset = fp.offset;
  out->bytes = fp.bytes;
  out->index = static_cast<uint32_t>(index);
  out->flags = aggregate ? kFieldAggregate : 0;
  out->group = group;
}

void writer::fill_group_descriptor(GroupDescriptor* out, const std::string& name) { copy_name(out->name, name); }

// Aggregate `as`, whose value is the table's field number `field`.
void writer::fill_aggregate_descriptor(AggregateDescriptor* out, const AggregateSpec& as, size_t field) {
  copy_name(out->source, as.source);
  out->fn = static_cast<uint32_t>(as.fn);
  out->end = static_cast<uint32_t>(as.end);
  out->window_ms = as.window_ms;
  out->resolution_ms = as.resolution_ms;
  out->field = static_cast<uint32_t>(field);
  out->window_events = as.window_events;
  out->min_periods = as.min_periods;
  out->ddof = as.ddof;
}

// Builds an unpublished segment of `of` (planned as `plan`) at `tmp`:
// every page allocated, header and descriptors written, state still
// kCreating. seeds[t], when given and not 0, is table t's hash seed (a new
// generation keeps its keys' hashes). Removes `tmp` on failure.
std::unique_ptr<MappedFile> Writer::Impl::build_file(const Schema& of, const LayoutPlan& plan, const std::string& tmp,
                                                     std::span<const uint64_t> seeds) const {
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
  // message, not later with SIGBUS on first touch. The size is set first: a
  // tmpfs mounted huge=within_size gives 2 MiB pages only below the file's
  // size, which some kernels read before fallocate has extended it.
  int err = ::ftruncate(fd, static_cast<off_t>(plan.segment_bytes)) == 0 ? 0 : errno;
  if (err == 0) err = ::posix_fallocate(fd, 0, static_cast<off_t>(plan.segment_bytes));
  if (err != 0) {
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

  auto file = MappedFile::open_read_write(tmp, name);
  char* base = static_cast<char*>(file->mutable_data());
  auto* h = reinterpret_cast<SegmentHeader*>(base);
  // The file is zero-filled: state is kCreating until the release store below.
  h->magic = kMagic;
  h->layout_version = kLayoutVersion;
  h->endian_tag = kEndianTag;
  h->abi_signature = abi_signature();
  h->schema_fingerprint = of.fingerprint();
  h->segment_bytes = plan.segment_bytes;
  h->table_count = static_cast<uint32_t>(of.tables.size());
  h->header_bytes = static_cast<uint32_t>(plan.header_bytes);
  h->undo_offset = plan.undo_offset;
  h->undo_bytes = plan.undo_bytes;
  h->created_unix_ns = static_cast<uint64_t>(now_unix_ns());
  std::snprintf(h->creator, sizeof h->creator, "larder %s", "0.1.0");

  std::random_device rd;
  for (size_t t = 0; t < of.tables.size(); ++t) {
    const TableSpec& spec = of.tables[t];
    const TablePlan& tp = plan.tables[t];
    const std::vector<FieldSpec> fields = spec.all_fields();
    const uint64_t hash_seed = t < seeds.size() && seeds[t] != 0 ? seeds[t] : (uint64_t{rd()} << 32) ^ rd();
    writer::fill_table_descriptor(descriptor_at<TableDescriptor>(base, plan.header_bytes, t), spec, tp, fields.size(),
                                  hash_seed);
    for (size_t f = 0; f < fields.size(); ++f) {
      // Declared fields first, then one per aggregate.
      writer::fill_field_descriptor(descriptor_at<FieldDescriptor>(base, tp.fields_offset, f), fields[f], tp.fields[f],
                                    f, f >= spec.fields.size(), tp.field_groups[f]);
    }
    const std::vector<std::string> groups = spec.group_names();
    for (size_t g = 0; g < groups.size(); ++g) {
      writer::fill_group_descriptor(descriptor_at<GroupDescriptor>(base, tp.groups_offset, g), groups[g]);
    }
    for (size_t a = 0; a < spec.aggregates.size(); ++a) {
      writer::fill_aggregate_descriptor(descriptor_at<AggregateDescriptor>(base, tp.aggregates_offset, a),
                                        spec.aggregates[a], spec.fields.size() + a);
    }
  }
  h->journal_offset = plan.journal_offset;
  h->journal_capacity = plan.journal_capacity;
  h->source_offset = plan.source_offset;
  return file;
}

void Writer::Impl::create(bool replace_existing) {
  const LayoutPlan plan = plan_layout(schema);
  const std::string path = segment_path(dir, name);

  struct statvfs vfs;
  if (::statvfs(dir.c_str(), &vfs) != 0) throw_errno(ErrorCode::kSystem, "statvfs " + dir);
  const uint64_t avail = uint64_t{vfs.f_bavail} * vfs.f_frsize;
  if (avail < plan.segment_bytes + kSegmentFreeMargin) {
    throw Error(ErrorCode::kNoSpace,
                "segment \"" + name + "\" needs " + std::to_string(plan.segment_bytes) + " bytes but " + dir + " has " +
                    std::to_string(avail) +
                    " free: enlarge it (docker --shm-size, Kubernetes emptyDir sizeLimit, mount -o remount,size=) "
                    "or lower the tables' capacity");
  }

  const std::string tmp = segment_path(dir, "." + name + ".creating." + std::to_string(::getpid()));
  map = build_file(schema, plan, tmp, {});
  char* base = static_cast<char*>(map->mutable_data());
  header = reinterpret_cast<SegmentHeader*>(base);
  if (replace_existing) {
    // Readers of the old file see kRetired and reopen the name.
    try {
      auto old = MappedFile::open_read_write(path, name);
      auto* oh = static_cast<SegmentHeader*>(old->mutable_data());
      if (oh->magic == kMagic) {
        header->generation = oh->generation + 1;
        sync::store_release(oh->state, static_cast<uint32_t>(SegmentState::kRetired));  // readers' validate_segment
      }
    } catch (const Error&) {
    }
  }
  // Publishes every header and descriptor store above to the readers'
  // acquire load of the state (validate_segment).
  sync::store_release(header->state, static_cast<uint32_t>(SegmentState::kReady));
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    errno = err;
    throw_errno(ErrorCode::kSystem, "publish " + path);
  }
  created = true;
}

void Writer::Impl::prepare_pages() {
  if (options.huge_pages == HugePages::kOff) return;
  DirFileSystem fs;
  if (!dir_file_system(dir, &fs) || !fs.memory_backed) return;  // huge pages are a tmpfs matter
  const std::string mount = mount_huge_option(dir);
  const bool mount_allows = mount == "always" || mount == "within_size" || mount == "advise";
  if (!mount_allows && options.huge_pages != HugePages::kCollapse) return;
  map->touch_huge_pages();
  if (map->huge_pages().all_huge()) return;
  // Refused (an older kernel, no free 2 MiB pages): the pages stay as they
  // are, and huge_pages() reports what they are.
  map->collapse();
}

void writer::bind_aggregates(writer::AggregateTable& agg, char* base, const TableDescriptor& d, const TableSpec& spec) {
  if (!agg.enabled()) return;
  agg.state = reinterpret_cast<Word*>(base + d.state_offset);
  agg.dedup = reinterpret_cast<Word*>(base + d.dedup_offset);
  agg.dedup_buckets = d.dedup_buckets;
  if (agg.plan.chunk_words > 0) {
    agg.arena = reinterpret_cast<Word*>(base + d.arena_offset);
    agg.chunk_count = d.arena_chunks;
  }
  agg.bucket_memo.assign(2 * agg.plan.groups.size(), {});
  agg.lateness_ms = spec.lateness_ms();
  agg.horizon_ms = spec.dedup_horizon();
  for (const AggregatePlan::Group& g : agg.plan.groups) {
    const auto it = std::find(agg.plan.sources.begin(), agg.plan.sources.end(), g.source);
    agg.group_source.push_back(g.source.empty() ? -1 : static_cast<int>(it - agg.plan.sources.begin()));
    agg.counts_every_event |= g.source.empty();
  }
  for (const AggregatePlan::EventStore& es : agg.plan.event_stores) {
    const auto it = std::find(agg.plan.sources.begin(), agg.plan.sources.end(), es.source);
    agg.store_source.push_back(es.source.empty() ? -1 : static_cast<int>(it - agg.plan.sources.begin()));
    agg.counts_every_event |= es.source.empty();
  }
  // The outputs the slot write computes from their window's words alone
  // (writer::OutputSlot); the others keep kGeneral.
  agg.output_slots.clear();
  for (const AggregatePlan::Output& o : agg.plan.outputs) {
    writer::OutputSlot s;
    const FieldDescriptor& fd = field_descriptor(base, d, o.field);
    const auto type = static_cast<FieldType>(fd.type);
    if (o.events == 0 && o.fn != AggregateFn::kDistinctCount && o.fn != AggregateFn::kLastN &&
        (type == FieldType::kFloat64 || type == FieldType::kInt64)) {
      const AggregatePlan::Group& g = agg.plan.groups[o.group];
      s.kind = type == FieldType::kInt64 ? writer::OutputSlot::Kind::kInt64 : writer::OutputSlot::Kind::kFloat64;
      s.fn = o.fn;
      s.ddof = o.ddof;
      s.window_word = g.windows[o.window].offset;
      s.last_word = g.offset + kGroupLastValueWord;
      s.row_byte = fd.offset;
      s.field = o.field;
    }
    agg.output_slots.push_back(s);
  }
}

void Writer::Impl::attach(bool repair_first) {
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
    if (ts.agg.plan.stride_words != ts.desc->state_stride_words ||
        ts.agg.plan.chunk_words != ts.desc->arena_chunk_words ||
        (ts.agg.plan.chunk_words > 0 && spec.arena_chunk_count() != ts.desc->arena_chunks)) {
      throw Error(ErrorCode::kCorrupt, "segment \"" + name + "\" table \"" + spec.name +
                                           "\": aggregate state size differs from the schema's plan");
    }
    writer::bind_aggregates(ts.agg, base, *ts.desc, spec);
    if (ts.agg.enabled()) {
      ts.outputs_lo = ts.geo.row_words;
      for (const AggregatePlan::Output& o : ts.agg.plan.outputs) {
        ts.outputs_lo = std::min(ts.outputs_lo, writer::field_first_word(ts.fields[o.field]));
        ts.outputs_hi = std::max(ts.outputs_hi, writer::field_end_word(ts.fields[o.field]));
      }
    }
    if (ts.geo.group_count > 0) {
      const uint32_t groups = ts.geo.group_count;
      ts.all_groups = (uint32_t{1} << groups) - 1;
      ts.group_validity.assign(size_t{groups} * ts.geo.validity_words, 0);
      for (const FieldDescriptor& fd : ts.fields) {
        ts.group_validity[size_t{fd.group} * ts.geo.validity_words + fd.index / 64] |= uint64_t{1} << (fd.index % 64);
      }
      ts.source_groups.assign(ts.agg.plan.sources.size(), 0);
      for (size_t a = 0; a < ts.agg.plan.outputs.size(); ++a) {
        const AggregatePlan::Output& o = ts.agg.plan.outputs[a];
        const uint32_t bit = uint32_t{1} << ts.fields[o.field].group;
        ts.aggregate_groups |= bit;
        const std::string& src = spec.aggregates[a].source;
        if (src.empty()) {
          ts.every_event_groups |= bit;
        } else {
          const auto it = std::find(ts.agg.plan.sources.begin(), ts.agg.plan.sources.end(), src);
          ts.source_groups[static_cast<size_t>(it - ts.agg.plan.sources.begin())] |= bit;
        }
      }
    }
    tables.push_back(std::move(ts));
  }
  source = reinterpret_cast<SourceBlock*>(base + header->source_offset);
  journal = writer::Journal(header, reinterpret_cast<Word*>(base),
                            reinterpret_cast<JournalEntry*>(base + header->journal_offset), header->journal_capacity);
  journal.set_recording(options.crash_safety);
  uint32_t max_row_words = 0;
  for (const TableState& ts : tables) max_row_words = std::max(max_row_words, ts.geo.row_words);
  scratch.assign(max_row_words, 0);
  group_values.reserve(kMaxFields);

  if (repair_first) repair();
  // The due heap lives in this process; the due times in the segment. The
  // heap is rebuilt by scan_due, a slice per refresh(), not here: open costs
  // what was in flight, not the table size.
  due_scan_pending = false;
  for (TableState& ts : tables) {
    if (!ts.agg.enabled()) {
      ts.due_scan = ts.geo.slot_count;
      continue;
    }
    clock_ms = std::max(clock_ms, static_cast<int64_t>(sync::load_relaxed(ts.desc->aggregate_counters.clock_ms)));
    ts.due_scan = 0;
    due_scan_pending = true;
  }
  // The counters are exact now (repair, create or restore made them so):
  // this session keeps them exact through the count records.
  bump(header->writer_sessions);
  sync::store_relaxed(header->counters_session, sync::load_relaxed(header->writer_sessions));
  sync::store_relaxed(header->writer_start_unix_ns, static_cast<uint64_t>(now_unix_ns()));
  sync::store_relaxed(header->heartbeat_mono_ns, static_cast<uint64_t>(now_mono_ns()));
  sync::store_relaxed(header->connection_state, static_cast<uint32_t>(ConnectionState::kUnknown));
  sync::store_release(header->writer_pid, static_cast<uint64_t>(::getpid()));
}

}  // namespace larder
