// The generation switch: growing a table or changing the schema while the
// segment keeps serving (docs/design.md, "Generations").
//
// Generation N is the segment under its name; the writer builds N+1 beside
// it, under ".<name>.creating.<pid>", and fills it from N a chunk of slots at
// a time (switch_step) between updates. Updates keep going to N alone, with
// their whole crash-safety protocol; N+1 is nobody's but this thread's until
// it is published, so its slots are written with plain relaxed stores, no
// seqlock, no undo copy. An update of a key whose slot the copy has already
// passed copies that row again (switch_follow), so when the copy is done
// N+1 holds every row of N as N holds it. For a table without aggregates
// the copy of each table makes two passes:
//  1. The copy: every slot of N, in order. A row the copy has passed that
//     is updated and still live is only marked (a bit per kMarkSlots slots
//     of N, so the marks stay in cache): the pass does not copy it again at
//     each update.
//  2. The sweep: the marked slots, in order, each copied as it is then. A
//     row behind the sweep that is updated is logged (below); one ahead of
//     it is marked, and the sweep takes it. When the sweep reaches the end
//     the table is done.
// A slot copied as N holds it when the sweep comes holds its key's newest
// state (a key never moves), so copying any slot, marked or only beside one
// that is, is right; what a mark must not lose is a state the slot held
// before it went to another key. A slot only goes to another key after it
// was a tombstone, and a row that becomes a tombstone is never only marked:
// it is logged. Logged rows (a
// tombstone, or any row behind the sweep) have their words copied into the
// log right after the update and are copied into N+1 at the start of the
// next step, in the order they were logged and before the copy or sweep
// moves on, so they land as if each were copied at its update, and before
// any later state of the same slot the sweep reads. The log is taken in a
// batch with the rows' slots of N+1 prefetched; the sweep reads N and
// writes N+1 about in order, as pass 1 does, and takes a row updated many
// times once. A table with aggregates copies a passed row at its update
// (the state block and rings are not in the row's words): no sweep.
//
// The page work is not the writer thread's: a thread of its own (pager.h)
// populates N+1's pages ahead of the copy and unmaps the retired generation
// after publish. The copy's stores are plain ones: it reads each
// destination line to probe it, so a non-temporal store would first have
// to evict a line just loaded (measured: the copy 1.7x slower, readers'
// p99 no better; docs/performance.md). switch_step() without a budget
// paces itself: the copy takes a set share of the writer's busy time, and
// half its idle time (kSwitchShare).
//
// Publishing, in order (each step a CrashPoint::kSwitch):
//  1. N+1's counters, header words and source block are copied from N, its
//     generation set to N's + 1, and its state stored kReady (release: pairs
//     with the readers' acquire load in validate_segment).
//  2. ".<name>.retiring.<pid>" is linked to N, so that N can still be found
//     if the writer dies before step 4.
//  3. N+1 is renamed over the name: from here a reader that opens the name
//     maps N+1, and a restarted writer attaches to it.
//  4. N's state is stored kRetired (release: readers that still map N see it
//     and move to the name), and the link is removed.
// A writer killed before step 3 leaves N serving, untouched but for the
// updates it applied; the next writer removes the unpublished file
// (remove_leftovers). Killed between 3 and 4, it leaves N+1 serving and N
// not yet retired: the next writer finds the link to a file that is no
// longer the name's, retires it and removes the link. Readers keep N mapped
// whatever happens to its name, so they never fault on a vanished file.
//
// Threading: the writer thread, like every Impl function; the pager's
// thread runs pager.cc only.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <utility>

#include "aggregate_events.h"
#include "crash_hook.h"
#include "larder/layout/clock.h"
#include "pager.h"
#include "row_write.h"
#include "table.h"
#include "writer_impl.h"

namespace larder {

using namespace layout;  // NOLINT: the writer works on the layout's words

namespace {

// One field of a row of N+1 and where its value is in a row of N.
struct FieldCopy {
  uint32_t from_offset = 0;  // byte offsets inside the row payloads
  uint32_t to_offset = 0;
  uint32_t bytes = 0;       // bytes to copy (a string: its length word and N's max length)
  uint32_t from_index = 0;  // validity bits
  uint32_t to_index = 0;
  // A declared conversion (FieldSpec::convert_from): N's type to N+1's, and
  // N+1's descriptor to encode into. Equal types: the bytes are copied.
  FieldType from_type = FieldType::kInt64;
  FieldType to_type = FieldType::kInt64;
  FieldDescriptor to{};
};

// A field N does not have, with a configured default (FieldSpec::default_value).
struct FieldDefault {
  FieldDescriptor to{};
  int64_t i64 = 0;
  double f64 = 0;
  std::string text;
  std::vector<float> floats;
};

// The conversions a switch applies (FieldSpec::convert_from).
bool convertible(FieldType from, FieldType to) {
  using F = FieldType;
  return (from == F::kInt64 && to == F::kFloat64) || (from == F::kFloat64 && to == F::kInt64) ||
         (from == F::kFloat32 && to == F::kFloat64) || (from == F::kFloat64 && to == F::kFloat32) ||
         (from == F::kInt64 && to == F::kString) || (from == F::kBool && to == F::kInt64);
}

// Converts N's value at `from` into `to` of N+1's row. False when the value
// has no place in the new type (a NaN or out-of-range float64 as int64, a
// number longer than the string's max_len): the field then reads not valid.
bool convert_field(const FieldCopy& c, const unsigned char* from, unsigned char* to_row) {
  using F = FieldType;
  int64_t i = 0;
  double d = 0;
  float f = 0;
  switch (c.from_type) {
    case F::kInt64: std::memcpy(&i, from, 8); break;
    case F::kFloat64: std::memcpy(&d, from, 8); break;
    case F::kFloat32: std::memcpy(&f, from, 4); break;
    case F::kBool: i = *from != 0 ? 1 : 0; break;
    default: return false;
  }
  const uint32_t field = c.to.index;
  switch (c.to_type) {
    case F::kFloat64:
      writer::encode_field(to_row, c.to,
                           FieldValue::float64(field, c.from_type == F::kInt64 ? static_cast<double>(i) : double{f}));
      return true;
    case F::kFloat32:
      writer::encode_field(to_row, c.to, FieldValue::float32(field, static_cast<float>(d)));
      return true;
    case F::kInt64:
      if (c.from_type == F::kFloat64) {
        // Nearest, halves away from zero; 2^63 itself is out of range.
        if (!(std::fabs(d) < 9223372036854775808.0)) return false;
        i = std::llround(d);
      }
      writer::encode_field(to_row, c.to, FieldValue::int64(field, i));
      return true;
    case F::kString: {
      const std::string text = std::to_string(i);
      if (text.size() > c.to.count) return false;
      writer::encode_field(to_row, c.to, FieldValue::string(field, text));
      return true;
    }
    default: return false;
  }
}

// Parses the default of field `spec` (described by `fd` in N+1) into
// `out`: "" or why it cannot.
std::string parse_default(const FieldSpec& spec, const FieldDescriptor& fd, FieldDefault* out) {
  const std::string& text = *spec.default_value;
  out->to = fd;
  auto number = [](std::string_view t, double* v) {
    const std::string s(t);
    char* end = nullptr;
    errno = 0;
    *v = std::strtod(s.c_str(), &end);
    return !s.empty() && end == s.c_str() + s.size() && errno == 0;
  };
  switch (spec.type) {
    case FieldType::kInt64: {
      char* end = nullptr;
      errno = 0;
      const long long v = std::strtoll(text.c_str(), &end, 10);
      if (text.empty() || end != text.c_str() + text.size() || errno != 0) return "\"" + text + "\" is not an int64";
      out->i64 = v;
      return "";
    }
    case FieldType::kFloat64:
    case FieldType::kFloat32: return number(text, &out->f64) ? "" : "\"" + text + "\" is not a number";
    case FieldType::kBool:
      if (text == "true" || text == "false") {
        out->i64 = text == "true" ? 1 : 0;
        return "";
      }
      return "\"" + text + "\" is not true or false";
    case FieldType::kString:
      if (text.size() > spec.count) {
        return "\"" + text + "\" is longer than max_len " + std::to_string(spec.count);
      }
      out->text = text;
      return "";
    case FieldType::kFloat32Vector: {
      std::string_view rest = text;
      while (true) {
        const size_t comma = rest.find(',');
        std::string_view item = rest.substr(0, comma);
        while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
        while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
        double v = 0;
        if (!number(item, &v)) return "\"" + std::string(item) + "\" is not a number";
        out->floats.push_back(static_cast<float>(v));
        if (comma == std::string_view::npos) break;
        rest.remove_prefix(comma + 1);
      }
      if (out->floats.size() != spec.count) {
        return std::to_string(out->floats.size()) + " numbers for a vector of " + std::to_string(spec.count);
      }
      return "";
    }
  }
  return "unknown type";
}

void apply_default(const FieldDefault& d, unsigned char* to_row) {
  const uint32_t field = d.to.index;
  switch (static_cast<FieldType>(d.to.type)) {
    case FieldType::kInt64: writer::encode_field(to_row, d.to, FieldValue::int64(field, d.i64)); break;
    case FieldType::kFloat64: writer::encode_field(to_row, d.to, FieldValue::float64(field, d.f64)); break;
    case FieldType::kFloat32:
      writer::encode_field(to_row, d.to, FieldValue::float32(field, static_cast<float>(d.f64)));
      break;
    case FieldType::kBool: writer::encode_field(to_row, d.to, FieldValue::boolean(field, d.i64 != 0)); break;
    case FieldType::kString: writer::encode_field(to_row, d.to, FieldValue::string(field, d.text)); break;
    case FieldType::kFloat32Vector:
      writer::encode_field(to_row, d.to, FieldValue::vector(field, std::span<const float>(d.floats)));
      break;
  }
}

// Live keys and tombstones a table holds before it keeps its empty slots
// back (table.h, choose_slot), as attach() computes it.
uint64_t max_used_of(uint64_t capacity, uint64_t slot_count) { return capacity + (slot_count - capacity) / 2; }

// Slots of N ahead of the copy whose place in N+1 is prefetched: the copy
// reads N in order, which the hardware prefetches, and writes N+1 at random,
// which it does not; with the next rows' slots in flight the misses overlap.
constexpr uint64_t kCopyAhead = 16;
// map_ahead maps N+1's slots this far beyond the copy's place, in one call.
constexpr uint64_t kMapAheadBytes = uint64_t{8} << 20;

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older kernels refuse it (EINVAL)
#endif

// The follow log (switch_follow): copied at once when it holds this many
// words (a caller that updates without calling switch_step between).
constexpr size_t kFollowLogWords = size_t{1} << 17;
// Logged rows ahead of the one being copied whose N+1 slots are prefetched.
constexpr size_t kFollowAhead = 8;

// The paced switch_step(): the copy (pass 1 and the sweep) takes this share
// of the writer thread's CPU time, so updates keep the rest; after a pause
// with no update, half of the time the thread was not running (it waited
// for messages). A thread that applied updates, or did not wait (no
// voluntary context switch), and still was not running was preempted, not
// idle: that time is not the copy's. The share is kept
// as a balance (Switch::credit_ns): what the thread's time since the last
// step allows, less what each step spent, so a step that spent more leaves
// the next ones less. The follow log is not the copy's: it is the updates'
// own copies, deferred from their path to the step, and is counted with
// them (charging it to the share would starve the copy while most updates
// land behind it, and stretch the switch). So the copy's pace is known: a
// saturated writer finishes a table of S slots in about (S + the marked
// slots) × ns_per_slot / kSwitchShare of its time, an idle one in twice
// that of wall time. At least kPacedMinSlots units a step (a unit: a slot of
// pass 1 or of the sweep), taken from the balance too, so that a caller
// stepping with nothing between still ends the switch, and at most
// kPacedMaxSlots, so a step stays short.
constexpr double kSwitchShare = 0.08;
constexpr uint64_t kPacedMinSlots = 16;
constexpr uint64_t kPacedMaxSlots = uint64_t{1} << 18;
// Slots of N per mark bit: 8 slots of a table of 1.3 million take a 20 KiB
// bitmap, which an update reads and writes at random.
constexpr uint64_t kMarkSlots = 8;
// A sweep's scan of a word of marks counts as this fraction of a unit: a
// unit is a slot copied.
constexpr uint64_t kSweepWordsPerUnit = 16;
// The copy's cost per slot before the first slice measured it.
constexpr double kFirstNsPerSlot = 500;

// Times this thread gave up the CPU to wait (a read, a futex, a sleep).
int64_t thread_waits() {
  rusage u{};
  ::getrusage(RUSAGE_THREAD, &u);
  return u.ru_nvcsw;
}

int64_t thread_cpu_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// Automatic growth refused (no space, say): tried again after this long.
constexpr int64_t kGrowRetryNs = 10'000'000'000;

// The grow request file is looked for at most this often (a stat).
constexpr int64_t kGrowRequestCheckNs = 100'000'000;

// Words of a state block carried from N to N+1 (AggregatePlan offsets).
struct WordRange {
  uint32_t from = 0;
  uint32_t to = 0;
  uint32_t words = 0;
};

// A sparse group's chunk word in N's block and in N+1's, and the words of
// its dense ring in an arena chunk.
struct ChunkCarry {
  uint32_t from_word = 0;
  uint32_t to_word = 0;
  uint32_t words = 0;
};

bool same_windows(const AggregatePlan::Group& a, const AggregatePlan::Group& b) {
  if (a.windows.size() != b.windows.size()) return false;
  for (size_t i = 0; i < a.windows.size(); ++i) {
    if (a.windows[i].window_ms != b.windows[i].window_ms || a.windows[i].end != b.windows[i].end) return false;
  }
  return true;
}

// Whether a group of N keeps its buckets exactly as `n` of N+1 would: then
// its state is carried word for word.
bool same_group(const AggregatePlan::Group& o, const AggregatePlan::Group& n) {
  return o.ring_buckets == n.ring_buckets && o.inline_buckets == n.inline_buckets && o.bucket_words == n.bucket_words &&
         o.stats() == n.stats() && o.last == n.last && o.distinct == n.distinct && o.slice_buckets == n.slice_buckets &&
         same_windows(o, n);
}

// An aggregate's output as N computes it is the one N+1 would: same
// function over the same window of the same source.
bool same_aggregate(const TableSpec& ot, const AggregateSpec& o, const TableSpec& nt, const AggregateSpec& n) {
  return o.source == n.source && o.fn == n.fn && o.window_ms == n.window_ms && o.end == n.end &&
         o.window_events == n.window_events && o.min_periods_or_default() == n.min_periods_or_default() &&
         o.ddof == n.ddof && (o.counts_events() || ot.resolution_of(o) == nt.resolution_of(n));
}

}  // namespace

struct Writer::Impl::Switch {
  Schema next;
  std::string tmp;
  std::unique_ptr<MappedFile> file;
  struct Table {
    int from = -1;  // the table of N it is filled from; -1: a new table, empty
    TableDescriptor* desc = nullptr;
    TableGeometry geo;
    Word* slots = nullptr;
    std::vector<FieldCopy> copies;
    std::vector<FieldDefault> defaults;
    std::vector<int> group_from;  // N's group of each group, -1: new (never written)
    uint64_t max_used = 0;
    uint64_t live = 0;
    uint64_t tombstones = 0;
    // Aggregates (agg.enabled()): N+1's state, the block a key starts with
    // (reset_block), what each row's block takes from N's, and the outputs
    // computed from the carried block rather than copied (new or changed
    // aggregates). N+1's arena is handed out here: `fresh` chunks were
    // taken in order, `free_chunks` were given back by a row copied again.
    writer::AggregateTable agg;
    std::vector<FieldDescriptor> fields;
    std::vector<uint64_t> fresh_block;
    std::vector<WordRange> state_copies;
    std::vector<ChunkCarry> chunk_copies;
    std::vector<uint32_t> recompute;
    std::vector<uint64_t> free_chunks;
    uint64_t fresh_chunks = 0;
    uint64_t used_chunks = 0;
    uint64_t peak_chunks = 0;
    uint64_t mapped_bytes = 0;  // the bytes of `slots` mapped ahead of the copy (map_ahead)
  };
  std::vector<Table> tables;

  // What a row's aggregate state carries from table `ot` of N (its state
  // `from`) to `nt` of N+1 (into st): "" or why it cannot.
  static std::string plan_aggregate_carry(const TableSpec& ot, const TableSpec& nt, const writer::AggregateTable& from,
                                          Table& st);

  std::vector<int> to_of;        // each table of N: its table in N+1, -1 when dropped
  std::vector<uint64_t> cursor;  // each table of N: its slots below this are copied
  // Each table of N without aggregates: a bit per kMarkSlots slots, the
  // rows to copy again at the sweep (the copy passed them, an update
  // changed them), and the sweep's place (pass 2): its slots below this are
  // swept.
  std::vector<std::vector<uint64_t>> marked;
  std::vector<uint64_t> swept;
  uint32_t walking = 0;            // the table of N the copy is in
  std::vector<uint64_t> from_img;  // a slot of N, then one of N+1, as words
  std::vector<uint64_t> to_img;
  std::vector<uint64_t> held_chunks;  // a row copied again: the chunks its N+1 block held, index + 1
  // Rows of tables without aggregates updated after the copy passed them,
  // to copy at the next step: each its table, its slot of N, its words.
  std::vector<uint64_t> follow_log;
  uint64_t copied = 0;
  uint64_t total = 0;
  int64_t started_mono_ns = 0;
  // N+1's file as the pager populates it: where each table's slots start.
  char* file_base = nullptr;
  // The paced switch_step(): when the last step ended (wall and this
  // thread's CPU time) and the copy's measured cost per slot.
  int64_t step_end_mono_ns = 0;
  int64_t step_end_cpu_ns = 0;
  uint64_t step_end_updates = 0;         // the header's updates_applied then
  int64_t step_end_waits = 0;            // this thread's voluntary context switches then
  double ns_per_slot = kFirstNsPerSlot;  // per unit: a slot of pass 1, a row of the sweep
  double credit_ns = 0;                  // the copy's time the share allows and it has not spent (< 0: overspent)
  int64_t copy_ns = 0;                   // this thread's CPU time on pass 1 and the sweep
  int64_t follow_ns = 0;                 // and on the follow log
};

// Maps N+1's slots that the copy of N's slots below `stop` (of `end`) will
// write, ahead of it: one madvise(MADV_POPULATE_WRITE) per kMapAheadBytes,
// where the copy would take a page fault per 4 KiB page (the pages are
// allocated already, by build_file's posix_fallocate; this only enters them
// in the page table). A row of N's slot s lands at its home in N+1 or a few
// slots after, about s × (N+1's slots / N's slots), so mapping up to that
// place plus kMapAheadBytes covers the copy's stores. Best effort: a kernel
// that refuses the advice (before 5.14) leaves the copy faulting as before.
// The pager populates the whole file ahead of the copy on its own thread
// (pager.h); `pager_bytes` of the slots are done, and this thread maps
// pages itself only where the copy has caught up with the pager.
static void map_ahead(Writer::Impl::Switch::Table& to, uint64_t stop, uint64_t end, uint64_t pager_bytes) {
  const uint64_t slot_bytes = uint64_t{to.geo.slot_words} * sizeof(Word);
  const uint64_t total = to.geo.slot_count * slot_bytes;
  __extension__ using u128 = unsigned __int128;  // stop × slot_count may pass 64 bits
  const auto reach = static_cast<uint64_t>(static_cast<u128>(stop) * to.geo.slot_count / end);
  const uint64_t need = std::min(total, reach * slot_bytes + slot_bytes * 64);
  if (need <= pager_bytes) return;
  to.mapped_bytes = std::max(to.mapped_bytes, pager_bytes);
  if (need <= to.mapped_bytes) return;
  const uint64_t upto = std::min(total, need + kMapAheadBytes);
  static const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const auto base = reinterpret_cast<uintptr_t>(to.slots);
  const uintptr_t from = (base + to.mapped_bytes) & ~(page - 1);
  ::madvise(reinterpret_cast<void*>(from), base + upto - from, MADV_POPULATE_WRITE);
  to.mapped_bytes = upto;
}

// A group of N+1 (one source at one resolution) with no group of N of the
// same source and resolution starts empty; one of N with none in N+1 is
// dropped; one in both is carried word for word when its buckets and
// windows are the same, and refused otherwise: N's buckets do not hold what
// the changed group needs (a statistic it did not keep, a longer ring).
// Event stores (count windows, last_n) likewise, by source and capacity.
std::string Writer::Impl::Switch::plan_aggregate_carry(const TableSpec& ot, const TableSpec& nt,
                                                       const writer::AggregateTable& from, Table& st) {
  st.agg.plan = plan_aggregates(nt);
  if (!st.agg.enabled()) return "";
  const AggregatePlan& op = from.plan;
  const AggregatePlan& np = st.agg.plan;
  auto names_in = [&](const std::string& source, int64_t resolution_ms, bool events) {
    std::string names;
    for (const AggregateSpec& a : nt.aggregates) {
      if (a.source != source || a.counts_events() != events) continue;
      if (!events && nt.resolution_of(a) != resolution_ms) continue;
      names += (names.empty() ? "" : ", ") + a.name;
    }
    return names;
  };
  if (from.enabled()) st.state_copies.push_back({0, 0, kAggregateSlotHeaderWords});  // the due time
  for (const AggregatePlan::Group& ng : np.groups) {
    const AggregatePlan::Group* og = nullptr;
    for (const AggregatePlan::Group& g : op.groups) {
      if (g.source == ng.source && g.resolution_ms == ng.resolution_ms) og = &g;
    }
    if (og == nullptr) continue;  // new: starts empty
    if (!same_group(*og, ng)) {
      return "aggregates " + names_in(ng.source, ng.resolution_ms, false) + " (source \"" + ng.source +
             "\", resolution " + std::to_string(ng.resolution_ms) +
             " ms) need buckets or windows the current generation does not keep for that source and resolution, "
             "so their state cannot be carried: keep that source's aggregates at that resolution as they are, or "
             "give the new or changed ones another resolution_ms (they then start empty)";
    }
    st.state_copies.push_back({og->offset, ng.offset, kAggregateGroupHeaderWords});
    for (size_t i = 0; i < ng.windows.size(); ++i) {
      st.state_copies.push_back({og->windows[i].offset, ng.windows[i].offset, kAggregateWindowWords});
    }
    st.state_copies.push_back({og->ring_offset, ng.ring_offset, ng.inline_buckets * ng.bucket_words});
    if (ng.distinct) st.state_copies.push_back({og->distinct_offset, ng.distinct_offset, kDistinctAreaWords});
    if (ng.sparse())
      st.chunk_copies.push_back({og->offset + kGroupChunkWord, ng.offset + kGroupChunkWord, ng.chunk_words()});
  }
  for (const AggregatePlan::EventStore& ne : np.event_stores) {
    for (const AggregatePlan::EventStore& oe : op.event_stores) {
      if (oe.source != ne.source) continue;
      if (oe.capacity != ne.capacity) {
        return "count windows or sequences " + names_in(ne.source, 0, true) + " (source \"" + ne.source +
               "\") keep the newest " + std::to_string(ne.capacity) + " events, the current generation " +
               std::to_string(oe.capacity) +
               ": the store of that source cannot be carried; keep its largest window_events as it is";
      }
      st.state_copies.push_back(
          {oe.offset, ne.offset, kEventStoreHeaderWords + ne.capacity * static_cast<uint32_t>(kEventEntryWords)});
    }
  }
  for (size_t a = 0; a < nt.aggregates.size(); ++a) {
    bool same = false;
    for (const AggregateSpec& o : ot.aggregates) {
      if (o.name == nt.aggregates[a].name) same = same_aggregate(ot, o, nt, nt.aggregates[a]);
    }
    if (!same) st.recompute.push_back(static_cast<uint32_t>(a));
  }
  return "";
}

void Writer::Impl::SwitchDeleter::operator()(Switch* s) const {
  if (s == nullptr) return;
  if (!s->tmp.empty()) ::unlink(s->tmp.c_str());  // unpublished: never under the name
  delete s;
}

void Writer::begin_switch(const Schema& next) { impl_->start_switch(next); }

void Writer::Impl::start_switch(const Schema& next) {
  Impl& w = *this;
  const std::string seg = "segment \"" + w.name + "\"";
  auto refuse = [&](ErrorCode code, const std::string& why) {
    w.switch_record.last_error = seg + ": generation switch refused: " + why;
    throw Error(code, w.switch_record.last_error);
  };
  if (w.next_gen) refuse(ErrorCode::kInvalidArgument, "a switch is already in progress");
  next.validate();
  if (next.fingerprint() == w.schema.fingerprint()) refuse(ErrorCode::kInvalidArgument, "the schema is unchanged");

  std::unique_ptr<Switch, SwitchDeleter> sw(new Switch);
  sw->next = next;
  sw->to_of.assign(w.tables.size(), -1);
  sw->cursor.assign(w.tables.size(), 0);
  sw->marked.resize(w.tables.size());
  sw->swept.assign(w.tables.size(), 0);
  std::vector<uint64_t> seeds(next.tables.size(), 0);
  for (size_t t = 0; t < next.tables.size(); ++t) {
    const TableSpec& nt = next.tables[t];
    Switch::Table st;
    for (size_t o = 0; o < w.schema.tables.size(); ++o) {
      if (w.schema.tables[o].name == nt.name) st.from = static_cast<int>(o);
    }
    if (st.from >= 0) {
      const TableSpec& ot = w.schema.tables[static_cast<size_t>(st.from)];
      const TableState& ts = w.tables[static_cast<size_t>(st.from)];
      const std::string tw = "table \"" + nt.name + "\"";
      if (const std::string why = Switch::plan_aggregate_carry(ot, nt, w.tables[static_cast<size_t>(st.from)].agg, st);
          !why.empty()) {
        refuse(ErrorCode::kSchemaMismatch, tw + ": " + why);
      }
      if (nt.key_max_len < ot.key_max_len) {
        refuse(ErrorCode::kInvalidArgument, tw + " key_max_len " + std::to_string(nt.key_max_len) +
                                                " is below the current " + std::to_string(ot.key_max_len) +
                                                ": keys already stored could not be carried");
      }
      const uint64_t live = sync::load_relaxed(ts.desc->counters.live_keys);
      if (nt.capacity < live) {
        refuse(ErrorCode::kInvalidArgument, tw + " capacity " + std::to_string(nt.capacity) + " is below its " +
                                                std::to_string(live) + " live keys");
      }
      for (const FieldSpec& nf : nt.fields) {
        const std::string fw = "field \"" + nt.name + "." + nf.name + "\"";
        for (const FieldSpec& of : ot.fields) {
          if (of.name != nf.name) continue;
          if (of.type != nf.type) {
            if (nf.convert_from && *nf.convert_from == of.type && convertible(of.type, nf.type)) continue;
            std::string why =
                fw + " is " + field_type_name(of.type) + " now and " + field_type_name(nf.type) + " in the new schema";
            if (nf.convert_from && *nf.convert_from != of.type) {
              why += ", and it declares convert_from: " + std::string(field_type_name(*nf.convert_from));
            } else if (nf.convert_from) {
              why += ", a conversion a switch does not make";
            } else {
              why += ", with no convert_from";
            }
            refuse(ErrorCode::kSchemaMismatch,
                   why +
                       ": a switch converts int64 <-> float64, float32 <-> float64, int64 -> string and "
                       "bool -> int64 when the field declares convert_from; otherwise add the field under a new "
                       "name and drop the old one");
          }
          const bool same_size = of.type == FieldType::kString ? nf.count >= of.count : nf.count == of.count;
          if (!same_size) {
            refuse(ErrorCode::kSchemaMismatch,
                   fw + " is " + field_type_name(of.type) + "(" + std::to_string(of.count) + ") now and " +
                       field_type_name(nf.type) + "(" + std::to_string(nf.count) +
                       ") in the new schema; a string may only get longer and a vector keeps its dims: add the "
                       "field under a new name and drop the old one");
          }
        }
      }
      seeds[t] = ts.desc->hash_seed;
      sw->to_of[static_cast<size_t>(st.from)] = static_cast<int>(t);
    }
    sw->tables.push_back(std::move(st));
  }

  // Two generations side by side: N stays while N+1 is built and after, for
  // as long as readers map it.
  const LayoutPlan plan = plan_layout(next);
  // A generation retired by the last switch still holds its pages until
  // the pager has unmapped it (and its readers have): wait for the first.
  if (w.pager) w.pager->wait_retired();
  struct statvfs vfs;
  if (::statvfs(w.dir.c_str(), &vfs) != 0) {
    w.switch_record.last_error = seg + ": statvfs " + w.dir + ": " + std::strerror(errno);
    throw Error(ErrorCode::kSystem, w.switch_record.last_error);
  }
  const uint64_t avail = uint64_t{vfs.f_bavail} * vfs.f_frsize;
  if (avail < plan.segment_bytes + kSegmentFreeMargin) {
    refuse(ErrorCode::kNoSpace, "the next generation needs " + std::to_string(plan.segment_bytes) +
                                    " bytes beside the " + std::to_string(w.map->size()) + " of the current one, and " +
                                    w.dir + " has " + std::to_string(avail) +
                                    " free: enlarge it (docker --shm-size, Kubernetes emptyDir sizeLimit) or switch "
                                    "to a smaller capacity");
  }
  sw->tmp = segment_path(w.dir, "." + w.name + ".creating." + std::to_string(::getpid()));
  try {
    sw->file = w.build_file(next, plan, sw->tmp, seeds);
  } catch (const Error& e) {
    sw->tmp.clear();  // build_file removed it
    w.switch_record.last_error = e.what();
    throw;
  }
  char* base = static_cast<char*>(sw->file->mutable_data());
  uint32_t max_words = 0;
  for (size_t t = 0; t < sw->tables.size(); ++t) {
    Switch::Table& st = sw->tables[t];
    st.desc = const_cast<TableDescriptor*>(&table_descriptor(base, static_cast<uint32_t>(t)));
    st.geo = table_geometry(base, *st.desc);
    st.slots = const_cast<Word*>(st.geo.slots);
    st.max_used = max_used_of(st.desc->capacity, st.geo.slot_count);
    max_words = std::max(max_words, st.geo.slot_words);
    if (st.from < 0) continue;
    if (st.agg.enabled()) {
      writer::bind_aggregates(st.agg, base, *st.desc, next.tables[t]);
      for (uint32_t f = 0; f < st.desc->field_count; ++f) st.fields.push_back(field_descriptor(base, *st.desc, f));
      st.fresh_block.assign(st.agg.plan.stride_words, 0);
      for (const AggregatePlan::Group& g : st.agg.plan.groups) {  // as reset_block leaves a block
        for (const AggregatePlan::Window& win : g.windows) {
          st.fresh_block[win.offset + kWindowMinWord] =
              std::bit_cast<uint64_t>(std::numeric_limits<double>::infinity());
          st.fresh_block[win.offset + kWindowMaxWord] =
              std::bit_cast<uint64_t>(-std::numeric_limits<double>::infinity());
        }
      }
      sw->held_chunks.resize(std::max(sw->held_chunks.size(), st.chunk_copies.size()));
    }
    const TableState& ts = w.tables[static_cast<size_t>(st.from)];
    max_words = std::max(max_words, ts.geo.slot_words);
    sw->total += ts.geo.slot_count;
    if (!st.agg.enabled()) {
      sw->marked[static_cast<size_t>(st.from)].assign((ts.geo.slot_count + 64 * kMarkSlots - 1) / (64 * kMarkSlots), 0);
    }
    const TableSpec& spec = next.tables[t];
    for (uint32_t f = 0; f < st.desc->field_count; ++f) {
      const FieldDescriptor& to = field_descriptor(base, *st.desc, f);
      bool carried = false;
      for (const FieldDescriptor& from : ts.fields) {
        if (std::strncmp(from.name, to.name, kNameBytes) != 0) continue;
        carried = true;
        // Types that differ here were declared (checked above), or are an
        // aggregate's output whose aggregate changed: computed again then.
        const auto ft = static_cast<FieldType>(from.type);
        const auto tt = static_cast<FieldType>(to.type);
        if (ft != tt && !convertible(ft, tt)) continue;
        sw->tables[t].copies.push_back(FieldCopy{from.offset, to.offset, from.bytes, from.index, to.index, ft, tt, to});
      }
      if (carried || f >= spec.fields.size() || !spec.fields[f].default_value) continue;
      FieldDefault d;
      if (const std::string why = parse_default(spec.fields[f], to, &d); !why.empty()) {
        w.switch_record.last_error = seg + ": generation switch refused: field \"" + spec.name + "." +
                                     spec.fields[f].name + "\" default: " + why;
        throw Error(ErrorCode::kInvalidArgument, w.switch_record.last_error);  // sw's deleter removes the file
      }
      st.defaults.push_back(std::move(d));
    }
    for (uint32_t g = 0; g < st.geo.group_count; ++g) {
      int found = -1;
      const GroupDescriptor& to = group_descriptor(base, *st.desc, g);
      const char* map_base = static_cast<const char*>(w.map->data());
      for (uint32_t og = 0; og < ts.geo.group_count; ++og) {
        if (std::strncmp(group_descriptor(map_base, *ts.desc, og).name, to.name, kNameBytes) == 0) {
          found = static_cast<int>(og);
        }
      }
      st.group_from.push_back(found);
    }
  }
  sw->from_img.assign(max_words, 0);
  sw->to_img.assign(max_words, 0);
  sw->started_mono_ns = now_mono_ns();
  sw->step_end_mono_ns = sw->started_mono_ns;
  sw->step_end_cpu_ns = thread_cpu_ns();
  sw->step_end_updates = sync::load_relaxed(w.header->updates_applied);
  sw->step_end_waits = thread_waits();
  sw->file_base = base;
  // N+1's pages, front to back, on the pager's thread; into 2 MiB pages
  // where the writer's huge-page policy collapses the segment's own
  // (prepare_pages), so a new generation is backed as the first was.
  bool collapse = false;
  if (w.options.huge_pages != HugePages::kOff) {
    DirFileSystem fs;
    const std::string mount = mount_huge_option(w.dir);
    collapse = dir_file_system(w.dir, &fs) && fs.memory_backed &&
               (mount == "always" || mount == "within_size" || mount == "advise" ||
                w.options.huge_pages == HugePages::kCollapse);
  }
  if (!w.pager) w.pager = std::make_unique<writer::Pager>();
  w.pager->populate(base, sw->file->size(), collapse);
  w.next_gen = std::move(sw);
  w.switch_record.last_error.clear();
  writer::crash_point(CrashPoint::kSwitch);
}

void Writer::grow(uint32_t table, uint64_t capacity) {
  if (table >= impl_->schema.tables.size()) {
    throw Error(ErrorCode::kInvalidArgument, "grow: no table " + std::to_string(table));
  }
  Schema next = impl_->schema;
  next.tables[table].capacity = capacity;
  begin_switch(next);
}

// The paced step's budget, in units of work: the copy's share of the
// writer thread's time since the last step (kSwitchShare of its CPU time,
// and half of the rest when it applied no update meanwhile) added to the
// balance, at the cost per unit measured so far. `drain_ns`: what this step
// spent on the follow log, which is not the copy's and not the thread's
// time outside the steps either.
uint64_t Writer::Impl::paced_budget(int64_t now_mono, int64_t now_cpu, int64_t drain_ns) {
  Switch& sw = *next_gen;
  const auto busy = static_cast<double>(std::max<int64_t>(0, now_cpu - drain_ns - sw.step_end_cpu_ns));
  const auto wall = static_cast<double>(std::max<int64_t>(0, now_mono - drain_ns - sw.step_end_mono_ns));
  // Idle: no update applied and the thread waited (a voluntary context
  // switch: it slept on its messages). Otherwise the time it was not running
  // was taken by other threads (a loaded machine), not the writer's to give.
  const bool updated = sync::load_relaxed(header->updates_applied) != sw.step_end_updates;
  const bool waited = thread_waits() != sw.step_end_waits;
  const double idle = updated || !waited ? 0.0 : std::max(0.0, wall - busy);
  const double per_unit = std::max(sw.ns_per_slot, 1.0);
  // A long pause earns no more than one full step: the balance is not a
  // store of copying to spend later in a burst.
  const double cap = static_cast<double>(kPacedMaxSlots) * per_unit;
  sw.credit_ns = std::min(cap, sw.credit_ns + busy * kSwitchShare / (1 - kSwitchShare) + idle / 2);
  const double units = sw.credit_ns / per_unit;
  if (!(units > static_cast<double>(kPacedMinSlots))) return kPacedMinSlots;
  return units >= static_cast<double>(kPacedMaxSlots) ? kPacedMaxSlots : static_cast<uint64_t>(units);
}

bool Writer::switch_step() { return impl_->step(0, true); }

bool Writer::switch_step(uint64_t slot_budget) { return impl_->step(slot_budget, false); }

bool Writer::Impl::step(uint64_t slot_budget, bool paced) {
  Impl& w = *this;
  if (!w.next_gen) return true;
  const int64_t cpu0 = thread_cpu_ns();
  // Rows logged since the last step first: before the copy or the sweep
  // moves on, so each is copied where an immediate copy would have been.
  if (!w.drain_follow_log()) return true;  // abandoned
  Impl::Switch& sw = *w.next_gen;
  const int64_t cpu1 = thread_cpu_ns();
  if (paced) slot_budget = w.paced_budget(now_mono_ns(), cpu1, cpu1 - cpu0);
  const uint64_t budget_given = slot_budget;
  while (sw.walking < w.tables.size() && slot_budget > 0) {
    const uint32_t t = sw.walking;
    const uint64_t end = sw.to_of[t] < 0 ? 0 : w.tables[t].geo.slot_count;
    uint64_t& at = sw.cursor[t];
    if (at >= end) {  // pass 2: the sweep of the rows marked during pass 1 and since
      if (!sw.marked[t].empty() && !w.sweep_marked(t, &slot_budget)) return true;  // abandoned
      if (sw.marked[t].empty() || sw.swept[t] >= end) {
        sw.swept[t] = end;
        ++sw.walking;
      }
      continue;
    }
    const uint64_t before = at;
    const uint64_t stop = end - at > slot_budget ? at + slot_budget : end;
    Impl::Switch::Table& to = sw.tables[static_cast<size_t>(sw.to_of[t])];
    const auto slots_at = static_cast<uint64_t>(reinterpret_cast<char*>(to.slots) - sw.file_base);
    const uint64_t populated = w.pager->populated();
    map_ahead(to, stop, end, populated > slots_at ? populated - slots_at : 0);
    for (; at < stop; ++at) {
      if (at + kCopyAhead < end) w.prefetch_copy(t, at + kCopyAhead);
      if (!w.copy_to_next(t, at)) return true;  // abandoned
    }
    sw.copied += at - before;
    slot_budget -= at - before;
  }
  // The cost per unit of this slice, for the next paced budget, and the
  // balance it spent.
  const int64_t cpu2 = thread_cpu_ns();
  const uint64_t n = budget_given - slot_budget;
  sw.copy_ns += cpu2 - cpu1;
  sw.follow_ns += cpu1 - cpu0;
  if (n >= 64) {
    sw.ns_per_slot = 0.75 * sw.ns_per_slot + 0.25 * static_cast<double>(cpu2 - cpu1) / static_cast<double>(n);
  }
  sw.credit_ns -= static_cast<double>(cpu2 - cpu1);
  sw.step_end_mono_ns = now_mono_ns();
  sw.step_end_cpu_ns = cpu2;
  sw.step_end_updates = sync::load_relaxed(w.header->updates_applied);
  sw.step_end_waits = thread_waits();
  writer::crash_point(CrashPoint::kSwitch);
  if (sw.walking < w.tables.size()) return false;
  w.publish_next();
  return true;
}

void Writer::switch_now(const Schema& next) {
  begin_switch(next);
  while (!switch_step(~uint64_t{0})) {
  }
  if (!impl_->switch_record.last_error.empty()) throw Error(ErrorCode::kNoSpace, impl_->switch_record.last_error);
}

void Writer::abort_switch() { impl_->end_switch(); }

// Drops the switch in progress: the pager leaves N+1's pages first, then
// the file is unmapped and removed (SwitchDeleter).
void Writer::Impl::end_switch() {
  if (pager) pager->stop_populating();
  next_gen.reset();
}

bool Writer::switch_active() const { return impl_->next_gen != nullptr; }

SwitchProgress Writer::switch_progress() const {
  SwitchProgress p = impl_->switch_record;
  p.generation = impl_->header->generation;
  if (impl_->next_gen) {
    p.active = true;
    p.slots_copied = impl_->next_gen->copied;
    p.slots_total = impl_->next_gen->total;
    p.started_mono_ns = impl_->next_gen->started_mono_ns;
    p.copy_cpu_ns = impl_->next_gen->copy_ns;
    p.follow_cpu_ns = impl_->next_gen->follow_ns;
  }
  return p;
}

void Writer::Impl::fail_switch(const std::string& why) {
  switch_record.last_error = "segment \"" + name + "\": generation switch abandoned: " + why;
  end_switch();
}

// Prefetches, for writing, the N+1 home slot of the row in slot `slot` of
// N's table `table`.
void Writer::Impl::prefetch_copy(uint32_t table, uint64_t slot) const {
  const Switch& sw = *next_gen;
  const uint64_t meta = sync::load_relaxed(tables[table].slot(slot)[kSlotMetaWord]);
  if (meta == 0) return;
  const Switch::Table& to = sw.tables[static_cast<size_t>(sw.to_of[table])];
  const auto* d = reinterpret_cast<const char*>(to.slots + to.geo.home(meta) * to.geo.slot_words);
  const uint32_t lines = std::min<uint32_t>(to.geo.slot_words / 8, 16);
  for (uint32_t l = 0; l < lines; ++l) __builtin_prefetch(d + 64 * l, 1, 3);
}

// Prefetches, for writing, the N+1 home slot of a logged row of table
// `table` (its words at `image`).
void Writer::Impl::prefetch_row(uint32_t table, const uint64_t* image) const {
  const Switch& sw = *next_gen;
  const uint64_t meta = image[kSlotMetaWord];
  if (meta == 0) return;
  const Switch::Table& to = sw.tables[static_cast<size_t>(sw.to_of[table])];
  const auto* d = reinterpret_cast<const char*>(to.slots + to.geo.home(meta) * to.geo.slot_words);
  __builtin_prefetch(d, 1, 3);
}

void Writer::Impl::switch_follow(uint32_t table, std::string_view key) {
  const Switch& sw = *next_gen;
  if (table >= tables.size() || sw.to_of[table] < 0) return;
  const TableState& ts = tables[table];
  if (sw.cursor[table] == 0 || key.empty() || key.size() > ts.geo.key_max_len) return;
  const uint64_t hash = hash_key(key, ts.geo.hash_seed);
  packed.assign(key);
  const Probe p = probe(ts, hash, 0);
  if (p.found != writer::kNone) switch_follow_slot(table, p.found);
}

void Writer::Impl::switch_follow_slot(uint32_t table, uint64_t slot) {
  Switch& sw = *next_gen;
  if (table >= tables.size() || sw.to_of[table] < 0 || slot >= sw.cursor[table]) return;
  if (sw.tables[static_cast<size_t>(sw.to_of[table])].agg.enabled()) {
    copy_to_next(table, slot);  // the state block is not in the logged words: now
    return;
  }
  const TableState& ts = tables[table];
  const Word* s = ts.slot(slot);
  // A live row the sweep has still to pass: marked, the sweep copies it as
  // it is then. Not a tombstone: its slot may go to another key before the
  // sweep comes (the header comment).
  if (slot >= sw.swept[table] && meta_state(sync::load_relaxed(s[kSlotMetaWord])) == SlotState::kLive) {
    const uint64_t mark = slot / kMarkSlots;
    sw.marked[table][mark / 64] |= uint64_t{1} << (mark % 64);
    return;
  }
  // Logged, copied at the next step (drain_follow_log). The slot was just
  // written, so its words are in cache; an empty slot is logged too, as the
  // copy of it would be: it copies nothing.
  std::vector<uint64_t>& log = sw.follow_log;
  const size_t at = log.size();
  log.resize(at + 2 + ts.geo.slot_words);
  log[at] = table;
  log[at + 1] = slot;
  for (uint32_t i = 0; i < ts.geo.slot_words; ++i) log[at + 2 + i] = sync::load_relaxed(s[i]);
  if (log.size() >= kFollowLogWords) drain_follow_log();
}

bool Writer::Impl::sweep_marked(uint32_t table, uint64_t* budget) {
  Switch& sw = *next_gen;
  std::vector<uint64_t>& marks = sw.marked[table];
  const uint64_t end = tables[table].geo.slot_count;
  // A word of marks at a time (64 × kMarkSlots slots): its bits are cleared
  // first, so a row marked again after its copy is taken again. The slots
  // are read in order, as pass 1 reads them, and their rows of N+1 are
  // about in order too (a row lands near s × N+1's slots / N's), with the
  // next ones prefetched. The sweep's place moves by whole words.
  constexpr uint64_t kWordSlots = 64 * kMarkSlots;
  uint64_t word = sw.swept[table] / kWordSlots;
  uint64_t scanned = 0;
  uint64_t slots = 0;
  while (word < marks.size() && slots + scanned / kSweepWordsPerUnit < *budget) {
    const uint64_t bits = std::exchange(marks[word], 0);
    ++scanned;
    for (uint64_t b = bits; b != 0; b &= b - 1) {
      const uint64_t first = (word * 64 + static_cast<uint64_t>(std::countr_zero(b))) * kMarkSlots;
      const uint64_t last = std::min(first + kMarkSlots, end);
      for (uint64_t s = first; s < last; ++s) prefetch_copy(table, s);
      for (uint64_t s = first; s < last; ++s) {
        if (!copy_to_next(table, s)) return false;
      }
      slots += last - first;
    }
    ++word;
  }
  sw.swept[table] = std::min(word * kWordSlots, end);
  *budget -= std::min(*budget, slots + scanned / kSweepWordsPerUnit);
  return true;
}

// Copies the logged rows into N+1 in the order they were logged, the N+1
// home slots of the next few prefetched. False when the switch had to be
// abandoned.
bool Writer::Impl::drain_follow_log() {
  Switch& sw = *next_gen;
  std::vector<uint64_t>& log = sw.follow_log;
  if (log.empty()) return true;
  auto entry_words = [&](size_t at) { return 2 + tables[log[at]].geo.slot_words; };
  size_t ahead = 0;  // the entry whose slot is prefetched next
  for (size_t n = 0; n < kFollowAhead && ahead < log.size(); ++n) {
    prefetch_row(static_cast<uint32_t>(log[ahead]), log.data() + ahead + 2);
    ahead += entry_words(ahead);
  }
  for (size_t at = 0; at < log.size(); at += entry_words(at)) {
    if (ahead < log.size()) {
      prefetch_row(static_cast<uint32_t>(log[ahead]), log.data() + ahead + 2);
      ahead += entry_words(ahead);
    }
    if (!copy_to_next(static_cast<uint32_t>(log[at]), log[at + 1], log.data() + at + 2)) return false;
  }
  log.clear();
  return true;
}

// Copies slot `slot` of table `table` of N into N+1, over the same key's
// slot there or into a new one. False when the switch had to be abandoned.
bool Writer::Impl::copy_to_next(uint32_t table, uint64_t slot, const uint64_t* image) {
  Switch& sw = *next_gen;
  const TableState& from = tables[table];
  Switch::Table& to = sw.tables[static_cast<size_t>(sw.to_of[table])];
  const Word* s = from.slot(slot);
  const uint64_t meta = image != nullptr ? image[kSlotMetaWord] : sync::load_relaxed(s[kSlotMetaWord]);
  // An empty slot holds nothing; one that was emptied after it was copied
  // held an expired tombstone, which N+1 may keep.
  if (meta == 0) return true;
  const uint64_t* src = image;
  if (src == nullptr) {
    uint64_t* img = sw.from_img.data();
    for (uint32_t i = 0; i < from.geo.slot_words; ++i) img[i] = sync::load_relaxed(s[i]);
    src = img;
  }
  const uint32_t key_len = static_cast<uint32_t>(src[kSlotKeyLenWord] & 0xffffffffu);
  const uint32_t key_words = (key_len + 7) / 8;

  // The key's slot in N+1: the same probe as table.h, by N+1's geometry.
  uint64_t at = writer::kNone;
  uint64_t i = to.geo.home(meta);
  const uint32_t to_key = to.geo.key_word_offset();
  const uint32_t from_key = from.geo.key_word_offset();
  for (uint64_t n = 0; n < to.geo.slot_count; ++n) {
    const Word* d = to.slots + i * to.geo.slot_words;
    const uint64_t dm = sync::load_relaxed(d[kSlotMetaWord]);
    if (dm == 0) break;
    if ((dm & ~kMetaStateMask) == (meta & ~kMetaStateMask) &&
        (sync::load_relaxed(d[kSlotKeyLenWord]) & 0xffffffffu) == key_len) {
      bool same = true;
      for (uint32_t k = 0; same && k < key_words; ++k) same = sync::load_relaxed(d[to_key + k]) == src[from_key + k];
      if (same) {
        at = i;
        break;
      }
    }
    if (++i == to.geo.slot_count) i = 0;
  }
  const bool live = meta_state(meta) == SlotState::kLive;
  SlotState was = SlotState::kEmpty;
  if (at == writer::kNone) {
    // A new slot of N+1: the empty one that ended the probe.
    const uint64_t used = to.live + to.tombstones;
    if (!live && used >= to.max_used) return true;  // a tombstone N+1 has no room to keep
    if (live && to.live >= to.desc->capacity) {
      fail_switch("table \"" + std::string(fixed_name(to.desc->name)) + "\" of the next generation is full (" +
                  std::to_string(to.desc->capacity) + " keys): keys were added during the switch");
      return false;
    }
    if (used + 1 >= to.geo.slot_count) {
      fail_switch("table \"" + std::string(fixed_name(to.desc->name)) + "\" of the next generation has no slot left");
      return false;
    }
    at = i;
  } else {
    was = meta_state(sync::load_relaxed(to.slots[at * to.geo.slot_words + kSlotMetaWord]));
  }

  // The row of N+1: header words and key as they are, fields moved to their
  // new places with their validity, new fields not valid.
  uint64_t* img = sw.to_img.data();
  std::fill(img, img + to.geo.slot_words, uint64_t{0});
  img[kSlotMetaWord] = meta;
  img[kSlotEventTimeWord] = src[kSlotEventTimeWord];
  img[kSlotApplyTimeWord] = src[kSlotApplyTimeWord];
  img[kSlotKeyLenWord] = src[kSlotKeyLenWord];
  for (uint32_t k = 0; k < key_words; ++k) img[to_key + k] = src[from_key + k];
  const auto* from_row = reinterpret_cast<const unsigned char*>(src + from.geo.row_word_offset());
  auto* to_row = reinterpret_cast<unsigned char*>(img + to.geo.row_word_offset());
  for (const FieldCopy& c : to.copies) {
    if (((src[kSlotHeaderWords + c.from_index / 64] >> (c.from_index % 64)) & 1) == 0) continue;
    if (c.from_type == c.to_type) {
      std::memcpy(to_row + c.to_offset, from_row + c.from_offset, c.bytes);
    } else if (!convert_field(c, from_row + c.from_offset, to_row)) {
      continue;  // no place in the new type: not valid
    }
    img[kSlotHeaderWords + c.to_index / 64] |= uint64_t{1} << (c.to_index % 64);
  }
  if (live) {
    for (const FieldDefault& fd : to.defaults) {
      apply_default(fd, to_row);
      img[kSlotHeaderWords + fd.to.index / 64] |= uint64_t{1} << (fd.to.index % 64);
    }
  }
  for (uint32_t g = 0; g < to.geo.group_count; ++g) {
    const int og = to.group_from[g];
    img[to.geo.group_word_offset() + g] =
        og >= 0 ? src[from.geo.group_word_offset() + static_cast<uint32_t>(og)] : static_cast<uint64_t>(kNoGroupTime);
  }
  if (to.agg.enabled()) {
    if (!carry_state(table, slot, at, live)) return false;
    // New and changed aggregates: their outputs as of the carried state, as
    // the next event or refresh of the key would write them.
    const Word* block = to.agg.block(at);
    for (const uint32_t o : to.recompute) {
      const AggregatePlan::Output& out = to.agg.plan.outputs[o];
      const FieldDescriptor& fd = to.fields[out.field];
      bool valid = false;
      if (!live) {
      } else if (out.fn == AggregateFn::kLastN) {
        float seq[kMaxWindowEvents];
        valid = writer::sequence_output(to.agg, block, out, seq);
        writer::encode_field(to_row, fd, FieldValue::vector(out.field, std::span<const float>(seq, fd.count)));
      } else {
        const writer::OutputValue v = writer::output(to.agg, block, o, clock_ms);
        writer::encode_field(to_row, fd,
                             static_cast<FieldType>(fd.type) == FieldType::kInt64
                                 ? FieldValue::int64(out.field, v.i64)
                                 : FieldValue::float64(out.field, v.f64));
        valid = v.valid;
      }
      writer::set_valid(img + kSlotHeaderWords, fd.index, valid);
    }
  }
  Word* d = to.slots + at * to.geo.slot_words;
  for (uint32_t k = kSlotMetaWord; k < to.geo.slot_words; ++k) sync::store_relaxed(d[k], img[k]);

  if (was == SlotState::kLive) --to.live;
  if (was == SlotState::kTombstone) --to.tombstones;
  ++(live ? to.live : to.tombstones);
  return true;
}

// The aggregate state of slot `slot` of N's table `table` into slot `at` of
// N+1: a live row's block as planned (plan_aggregate_carry), its dense rings
// in chunks of N+1's arena; a tombstone's block as a new key's (a delete
// forgets the aggregates). A row copied again gives back or reuses the
// chunks its earlier copy took. False when the switch had to be abandoned.
bool Writer::Impl::carry_state(uint32_t table, uint64_t slot, uint64_t at, bool live) {
  Switch& sw = *next_gen;
  const writer::AggregateTable& fa = tables[table].agg;
  Switch::Table& to = sw.tables[static_cast<size_t>(sw.to_of[table])];
  Word* nb = to.agg.block(at);
  const uint32_t stride = to.agg.plan.stride_words;
  for (size_t c = 0; c < to.chunk_copies.size(); ++c) {
    const uint64_t held = sync::load_relaxed(nb[to.chunk_copies[c].to_word]);
    sw.held_chunks[c] = held <= to.agg.chunk_count ? held : 0;
  }
  for (uint32_t k = 0; k < stride; ++k) sync::store_relaxed(nb[k], to.fresh_block[k]);
  if (live && fa.enabled()) {
    const Word* ob = fa.block(slot);
    for (const WordRange& r : to.state_copies) {
      for (uint32_t k = 0; k < r.words; ++k) sync::store_relaxed(nb[r.to + k], sync::load_relaxed(ob[r.from + k]));
    }
    for (size_t c = 0; c < to.chunk_copies.size(); ++c) {
      const ChunkCarry& cc = to.chunk_copies[c];
      const uint64_t from_chunk = sync::load_relaxed(ob[cc.from_word]);
      if (from_chunk == 0 || from_chunk > fa.chunk_count) {  // sparse (a damaged word reads as sparse too)
        sync::store_relaxed(nb[cc.to_word], uint64_t{0});
        continue;
      }
      uint64_t chunk = 0;  // index + 1
      if (sw.held_chunks[c] != 0) {
        chunk = std::exchange(sw.held_chunks[c], 0);
      } else if (!to.free_chunks.empty()) {
        chunk = to.free_chunks.back() + 1;
        to.free_chunks.pop_back();
        ++to.used_chunks;
      } else if (to.fresh_chunks < to.agg.chunk_count) {
        chunk = ++to.fresh_chunks;
        ++to.used_chunks;
      } else {
        fail_switch("table \"" + std::string(fixed_name(to.desc->name)) +
                    "\" of the next generation has no free "
                    "aggregate arena chunk (arena_chunks " +
                    std::to_string(to.agg.chunk_count) + "): give it at least the " +
                    std::to_string(tables[table].desc->arena_chunks) + " of the current generation");
        return false;
      }
      to.peak_chunks = std::max(to.peak_chunks, to.used_chunks);
      const Word* src = fa.chunk(from_chunk - 1);
      Word* dst = to.agg.chunk(chunk - 1);
      for (uint32_t k = 0; k < cc.words; ++k) sync::store_relaxed(dst[k], sync::load_relaxed(src[k]));
      sync::store_relaxed(nb[cc.to_word], chunk);
    }
  }
  for (size_t c = 0; c < to.chunk_copies.size(); ++c) {
    if (sw.held_chunks[c] == 0) continue;
    to.free_chunks.push_back(sw.held_chunks[c] - 1);
    --to.used_chunks;
    sw.held_chunks[c] = 0;
  }
  return true;
}

void Writer::Impl::publish_next() {
  Switch& sw = *next_gen;
  writer::crash_point(CrashPoint::kSwitch);
  char* nbase = static_cast<char*>(sw.file->mutable_data());
  auto* nh = reinterpret_cast<SegmentHeader*>(nbase);
  for (size_t t = 0; t < sw.tables.size(); ++t) {
    Switch::Table& st = sw.tables[t];
    TableCounters& c = st.desc->counters;
    sync::store_relaxed(c.live_keys, st.live);
    sync::store_relaxed(c.tombstones, st.tombstones);
    if (st.from < 0) continue;
    const TableCounters& oc = tables[static_cast<size_t>(st.from)].desc->counters;
    for (Word TableCounters::*w :
         {&TableCounters::upserts, &TableCounters::deletes, &TableCounters::stale_ignored,
          &TableCounters::full_rejected, &TableCounters::last_apply_unix_ns, &TableCounters::max_event_time_ms}) {
      sync::store_relaxed(c.*w, sync::load_relaxed(oc.*w));
    }
    const TableState& from = tables[static_cast<size_t>(st.from)];
    if (!st.agg.enabled() || !from.agg.enabled()) continue;
    // The aggregates' counters and clock, N's dedup set, and N+1's arena as
    // the copy handed it out (chunks given back linked as the free list).
    const AggregateCounters& oa = from.desc->aggregate_counters;
    AggregateCounters& na = st.desc->aggregate_counters;
    for (Word AggregateCounters::*w :
         {&AggregateCounters::events, &AggregateCounters::late_dropped, &AggregateCounters::duplicates,
          &AggregateCounters::dedup_evictions, &AggregateCounters::refreshes, &AggregateCounters::clock_ms,
          &AggregateCounters::outside_window, &AggregateCounters::refreshed_through_ms}) {
      sync::store_relaxed(na.*w, sync::load_relaxed(oa.*w));
    }
    writer::bump(na.dedup_evictions, writer::dedup_carry(from.agg, st.agg));
    if (st.agg.arena != nullptr) {
      Word* a = st.agg.arena;
      uint64_t head = 0;
      for (const uint64_t f : st.free_chunks) {
        sync::store_relaxed(st.agg.chunk(f)[kArenaChunkNextWord], head);
        head = f + 1;
      }
      sync::store_relaxed(a[kArenaFreeHeadWord], head);
      sync::store_relaxed(a[kArenaUsedWord], st.used_chunks);
      sync::store_relaxed(a[kArenaFreshWord], st.fresh_chunks);
      const uint64_t old_peak = from.agg.arena != nullptr ? sync::load_relaxed(from.agg.arena[kArenaPeakUsedWord]) : 0;
      sync::store_relaxed(a[kArenaPeakUsedWord], std::max(st.peak_chunks, old_peak));
      if (from.agg.arena != nullptr) {
        sync::store_relaxed(a[kArenaRefusedWord], sync::load_relaxed(from.agg.arena[kArenaRefusedWord]));
      }
    }
  }
  for (Word SegmentHeader::*w : {&SegmentHeader::writer_sessions, &SegmentHeader::updates_applied,
                                 &SegmentHeader::messages_rejected, &SegmentHeader::last_apply_unix_ns}) {
    sync::store_relaxed(nh->*w, sync::load_relaxed(header->*w));
  }
  sync::store_relaxed(nh->connection_state, sync::load_relaxed(header->connection_state));
  // The counters were kept by the copy: the attach below trusts them.
  sync::store_relaxed(nh->counters_session, sync::load_relaxed(header->writer_sessions));
  // Between updates nothing is pending in N's source block: its words are
  // the positions of exactly what N holds, and now of what N+1 holds.
  const auto* from_src = reinterpret_cast<const Word*>(source);
  auto* to_src = reinterpret_cast<Word*>(nbase + nh->source_offset);
  for (size_t k = 0; k < sizeof(SourceBlock) / sizeof(Word); ++k) {
    sync::store_relaxed(to_src[k], sync::load_relaxed(from_src[k]));
  }
  nh->generation = header->generation + 1;
  // Publishes every store above to the readers' acquire load of the state
  // (validate_segment), before the name points at the file.
  sync::store_release(nh->state, static_cast<uint32_t>(SegmentState::kReady));
  writer::crash_point(CrashPoint::kSwitch);

  const std::string path = segment_path(dir, name);
  const std::string retiring = segment_path(dir, "." + name + ".retiring." + std::to_string(::getpid()));
  ::unlink(retiring.c_str());
  if (::link(path.c_str(), retiring.c_str()) != 0) {
    const std::string why = std::string("link ") + retiring + ": " + std::strerror(errno);
    fail_switch(why);
    throw Error(ErrorCode::kSystem, switch_record.last_error);
  }
  writer::crash_point(CrashPoint::kSwitch);
  if (::rename(sw.tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::string("publish ") + path + ": " + std::strerror(errno);
    ::unlink(retiring.c_str());
    fail_switch(why);
    throw Error(ErrorCode::kSystem, switch_record.last_error);
  }
  sw.tmp.clear();  // published: no longer the switch's to remove
  writer::crash_point(CrashPoint::kSwitch);
  // N is no one's to write any more: no writer, and retired (release: pairs
  // with the readers' acquire load of the state, Segment::retired and the
  // Table's generation check), so its readers move to the name.
  sync::store_release(header->writer_pid, uint64_t{0});
  sync::store_release(header->state, static_cast<uint32_t>(SegmentState::kRetired));
  writer::crash_point(CrashPoint::kSwitch);
  ::unlink(retiring.c_str());

  switch_record.switches += 1;
  switch_record.last_duration_ns = now_mono_ns() - sw.started_mono_ns;
  // N is unmapped on the pager's thread: when no reader maps it either,
  // that frees its pages, which takes as long as allocating them did.
  pager->stop_populating();
  pager->retire(std::move(map));
  map = std::move(sw.file);
  schema = sw.next;
  next_gen.reset();
  // Refresh entries name tables and slots of N; attach() schedules the scan
  // that rebuilds them for every table with aggregates of N+1.
  due = decltype(due){};
  attach(false);  // the copy kept the counters exact and left nothing armed
}

std::string Writer::grow_request_path(std::string_view name, const std::string& dir) {
  return segment_path(dir, "." + std::string(name) + ".grow");
}

void Writer::Impl::take_grow_request() {
  if (next_gen) return;  // one switch at a time: the request waits
  const int64_t now = now_mono_ns();
  if (now < grow_request_mono_ns) return;
  grow_request_mono_ns = now + kGrowRequestCheckNs;
  const std::string path = Writer::grow_request_path(name, dir);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return;
  char buf[256];
  const ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  ::unlink(path.c_str());  // taken, whatever comes of it
  const std::string what = "segment \"" + name + "\": grow request " + path + ": ";
  // "<table> <capacity>\n": nothing else is read (outside bytes).
  std::string text(buf, n > 0 ? static_cast<size_t>(n) : 0);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  const size_t space = text.find(' ');
  uint64_t capacity = 0;
  int table = -1;
  if (space != std::string::npos) {
    const std::string table_name = text.substr(0, space);
    for (size_t t = 0; t < schema.tables.size(); ++t) {
      if (schema.tables[t].name == table_name) table = static_cast<int>(t);
    }
    const std::string number = text.substr(space + 1);
    char* end = nullptr;
    errno = 0;
    capacity = std::strtoull(number.c_str(), &end, 10);
    if (number.empty() || end != number.c_str() + number.size() || errno != 0) capacity = 0;
    if (table < 0) {
      switch_record.last_error = what + "no table \"" + table_name + "\"";
      return;
    }
  }
  if (table < 0 || capacity == 0) {
    switch_record.last_error = what + "expected \"<table> <capacity>\"";
    return;
  }
  Schema next = schema;
  next.tables[static_cast<size_t>(table)].capacity = capacity;
  try {
    start_switch(next);
  } catch (const Error&) {
    // switch_record.last_error says why; the segment keeps serving as it is.
  }
}

void Writer::Impl::maybe_grow() {
  if (options.grow_at <= 0 || next_gen) return;
  const int64_t now = now_mono_ns();
  if (now < grow_retry_mono_ns) return;
  for (size_t t = 0; t < tables.size(); ++t) {
    const TableState& ts = tables[t];
    const uint64_t capacity = ts.desc->capacity;
    const uint64_t live = sync::load_relaxed(ts.desc->counters.live_keys);
    if (static_cast<double>(live) < options.grow_at * static_cast<double>(capacity)) continue;
    if (options.max_capacity != 0 && capacity >= options.max_capacity) continue;
    auto grown = static_cast<uint64_t>(static_cast<double>(capacity) * std::max(options.grow_factor, 1.0));
    grown = std::max(grown, capacity + 1);
    if (options.max_capacity != 0) grown = std::min(grown, options.max_capacity);
    Schema next = schema;
    next.tables[t].capacity = grown;
    try {
      start_switch(next);
    } catch (const Error&) {
      // switch_record.last_error says why; the table keeps serving as it is.
      grow_retry_mono_ns = now + kGrowRetryNs;
    }
    return;
  }
}

}  // namespace larder
