// The C ABI of larder/offline.h over the engine (engine.h). No exception
// crosses it: every entry point that can fail returns non-zero with a
// one-line message.
//
// What build() does in the corner cases:
// - a spine table, or an events table, that the config does not have: an
//   error naming it and the tables there are;
// - events of another table than the spine's: not read (neither applied nor
//   counted); a frame answers for one table;
// - keys outside the engine's partition, in the events or the spine: skipped
//   (the frame holds only the spine rows of the partition,
//   larder_offline_frame_spine_index says which);
// - a spine key with no event: found 0;
// - an event the decoder refuses: counted (rejected), the first one's reason
//   kept (larder_offline_frame_first_rejection); as are events the writer
//   refuses (a table or its aggregate arena full).
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "larder/layout/table_view.h"
#include "larder/offline.h"
#include "larder/offline/engine.h"
#include "sort_by_hash.h"

using larder::offline::Engine;
using larder::offline::Replay;
using larder::offline::sort_by_hash;

// The order of a replay (larder_offline_set_order).
enum class KeyOrder { kByKey, kArrival };

struct larder_offline {
  std::unique_ptr<Engine> engine;
  KeyOrder order = KeyOrder::kByKey;
};

struct larder_offline_frame {
  struct Column {
    std::string name;
    int32_t type = 0;
    uint32_t dim = 1;
    std::vector<unsigned char> values;
    std::vector<int64_t> offsets;  // strings
    std::vector<uint8_t> valid;
  };
  size_t rows = 0;
  uint64_t rejected = 0;
  larder::offline::ReplayCounters counters;
  std::string first_rejection;
  std::vector<uint8_t> found;
  std::vector<int64_t> event_time_ms;
  std::vector<int64_t> computed_at_ms;
  std::vector<int64_t> spine_index;
  std::vector<Column> columns;
};

namespace {

void set_error(char* err, size_t err_len, std::string_view message) {
  if (err == nullptr || err_len == 0) return;
  const size_t n = std::min(message.size(), err_len - 1);
  std::memcpy(err, message.data(), n);
  err[n] = '\0';
}

std::string table_list(const Engine& engine) {
  std::string out;
  for (const auto& t : engine.schema().tables) out += (out.empty() ? "" : ", ") + t.name;
  return out;
}

std::string_view slice(const char* bytes, const int64_t* offsets, size_t i) {
  return {bytes + offsets[i], static_cast<size_t>(offsets[i + 1] - offsets[i])};
}

// Engine::in_partition of a key whose hash_key(key, 0) is `hash`
// (partition_of).
bool in_partition(const Engine& engine, uint64_t hash) {
  const uint32_t n = engine.options().partitions;
  if (n <= 1) return true;
  __extension__ using u128 = unsigned __int128;
  return static_cast<uint32_t>((static_cast<u128>(hash) * n) >> 64) == engine.options().partition;
}

// Offsets must start at 0 or later and never go down.
void check_offsets(const int64_t* offsets, size_t n, const char* what, const char* table) {
  if (offsets == nullptr) throw std::invalid_argument(fmt::format("{} of table \"{}\": offsets are NULL", what, table));
  if (offsets[0] < 0) throw std::invalid_argument(fmt::format("{} of table \"{}\": offsets[0] < 0", what, table));
  for (size_t i = 0; i < n; ++i) {
    if (offsets[i + 1] < offsets[i]) {
      throw std::invalid_argument(fmt::format("{} of table \"{}\": offsets[{}] < offsets[{}]", what, table, i + 1, i));
    }
  }
}

// larder_offline_column::present, per event.
constexpr uint8_t kNotSent = 0;
constexpr uint8_t kPresent = 1;
constexpr uint8_t kSentAsNull = 2;

// One event's builder calls (UpdateBuilder, as the Protobuf decoder makes them).
struct EventWalk {
  larder::sidecar::UpdateBuilder* builder = nullptr;
  const larder_offline_events* events = nullptr;
  uint32_t table = 0;
  const std::vector<int32_t>* input_of = nullptr;  // per column: the input index, -1 unknown
  const std::vector<larder::sidecar::InputType>* input_types = nullptr;
  size_t row = 0;
};

void walk_event(void* ctx) {
  using larder::sidecar::InputType;
  const EventWalk& w = *static_cast<const EventWalk*>(ctx);
  larder::sidecar::UpdateBuilder& b = *w.builder;
  const larder_offline_events& e = *w.events;
  const size_t r = w.row;
  b.begin_update(0, false);
  b.set_table(w.table);
  b.set_key(slice(e.keys, e.key_offsets, r));
  b.set_event_time_ms(e.event_time_ms[r]);
  if (e.ids != nullptr) b.set_id(slice(e.ids, e.id_offsets, r));
  if (e.op != nullptr && e.op[r] != 0) {
    b.set_op(e.op[r] == 1 ? "delete" : "?");
    b.end_update();
    return;
  }
  b.set_fields_present();
  for (size_t c = 0; c < e.column_count; ++c) {
    const larder_offline_column& col = e.columns[c];
    const uint8_t present = col.present != nullptr ? col.present[r] : kPresent;
    if (present == kNotSent) continue;
    const int32_t input = (*w.input_of)[c];
    if (input < 0) {
      b.unknown_input(col.name);
      continue;
    }
    const auto in = static_cast<uint32_t>(input);
    if (present == kSentAsNull) {  // what the decoder makes of a JSON null member
      b.input_null(in);
      continue;
    }
    switch (col.type) {
      case LARDER_OFFLINE_INT64: b.input_integer(in, static_cast<const int64_t*>(col.data)[r]); break;
      case LARDER_OFFLINE_FLOAT64: {
        const double v = static_cast<const double*>(col.data)[r];
        const InputType t = (*w.input_types)[in];
        // A column of integers with gaps arrives as float64 (pandas): an
        // integral value is the integer it holds, for the inputs that want one.
        if ((t == InputType::kInteger || t == InputType::kScalar) && std::isfinite(v) && v == std::trunc(v) &&
            std::fabs(v) < 9.2e18) {
          b.input_integer(in, static_cast<int64_t>(v));
        } else {
          b.input_double(in, v);
        }
        break;
      }
      case LARDER_OFFLINE_BOOL: b.input_bool(in, static_cast<const uint8_t*>(col.data)[r] != 0); break;
      case LARDER_OFFLINE_STRING: b.input_string(in, slice(static_cast<const char*>(col.data), col.offsets, r)); break;
      case LARDER_OFFLINE_FLOAT64_LIST: {
        const double* v = static_cast<const double*>(col.data) + r * col.dim;
        b.vector_begin(in);
        for (uint32_t d = 0; d < col.dim; ++d) b.vector_push(v[d]);
        b.vector_end();
        break;
      }
      default: break;  // checked before the replay
    }
  }
  b.end_update();
}

struct EventRef {
  int64_t arrival_ms;
  uint32_t set;
  size_t row;
};

// The arguments of one build, checked, and the rows of the partition.
struct Input {
  uint32_t table = 0;
  const larder_offline_events* events = nullptr;
  size_t event_sets = 0;
  const larder_offline_spine* spine = nullptr;
  // The events of the spine's table in the partition, in input order (event
  // set after event set, rows in order), and the hash of each one's key.
  std::vector<EventRef> refs;
  std::vector<uint64_t> hashes;
  bool ids = false;  // some event set carries event ids
  // The spine rows of the partition, in spine order (the frame's rows), and
  // the hash of each one's key.
  std::vector<int64_t> spine_index;
  std::vector<uint64_t> spine_hashes;
};

Input check_input(Engine& engine, const larder_offline_events* events, size_t event_sets,
                  const larder_offline_spine* spine) {
  if (spine == nullptr || spine->table == nullptr) throw std::invalid_argument("no spine");
  const int t = engine.table_index(spine->table);
  if (t < 0) {
    throw std::invalid_argument(
        fmt::format("spine table \"{}\" is not in the config; tables: {}", spine->table, table_list(engine)));
  }
  Input in;
  in.table = static_cast<uint32_t>(t);
  in.events = events;
  in.event_sets = event_sets;
  in.spine = spine;
  if (spine->n > 0) {
    check_offsets(spine->key_offsets, spine->n, "spine keys", spine->table);
    if (spine->keys == nullptr || spine->at_ms == nullptr) throw std::invalid_argument("spine: keys or at_ms NULL");
  }
  if (event_sets > 0 && events == nullptr) throw std::invalid_argument("events: NULL with event_sets > 0");

  for (size_t s = 0; s < event_sets; ++s) {
    const larder_offline_events& e = events[s];
    if (e.table == nullptr) throw std::invalid_argument(fmt::format("events[{}]: table is NULL", s));
    const int et = engine.table_index(e.table);
    if (et < 0) {
      throw std::invalid_argument(
          fmt::format("events table \"{}\" is not in the config; tables: {}", e.table, table_list(engine)));
    }
    if (static_cast<uint32_t>(et) != in.table || e.n == 0) continue;
    check_offsets(e.key_offsets, e.n, "event keys", e.table);
    if (e.keys == nullptr || e.event_time_ms == nullptr) {
      throw std::invalid_argument(fmt::format("events of table \"{}\": keys or event_time_ms NULL", e.table));
    }
    if (e.ids != nullptr) {
      check_offsets(e.id_offsets, e.n, "event ids", e.table);
      in.ids = true;
    }
    for (size_t c = 0; c < e.column_count; ++c) {
      const larder_offline_column& col = e.columns[c];
      if (col.name == nullptr || col.data == nullptr) {
        throw std::invalid_argument(fmt::format("events of table \"{}\": column {} has no name or data", e.table, c));
      }
      if (col.type < LARDER_OFFLINE_INT64 || col.type > LARDER_OFFLINE_FLOAT64_LIST) {
        throw std::invalid_argument(
            fmt::format("events of table \"{}\": column \"{}\" has type {}", e.table, col.name, col.type));
      }
      if (col.type == LARDER_OFFLINE_STRING) check_offsets(col.offsets, e.n, col.name, e.table);
      if (col.present != nullptr) {
        const uint8_t* bad = std::find_if(col.present, col.present + e.n, [](uint8_t p) { return p > kSentAsNull; });
        if (bad != col.present + e.n) {
          throw std::invalid_argument(
              fmt::format("events of table \"{}\": column \"{}\": present[{}] is {} (0 not sent, 1 a value, 2 null)",
                          e.table, col.name, bad - col.present, static_cast<int>(*bad)));
        }
      }
    }
    for (size_t r = 0; r < e.n; ++r) {
      const std::string_view key = slice(e.keys, e.key_offsets, r);
      // The partition is the high bits of this hash (partition_of).
      const uint64_t h = larder::layout::hash_key(key, 0);
      if (!in_partition(engine, h)) continue;
      in.refs.push_back(
          EventRef{e.arrival_ms != nullptr ? e.arrival_ms[r] : e.event_time_ms[r], static_cast<uint32_t>(s), r});
      in.hashes.push_back(h);
    }
  }
  for (size_t r = 0; r < spine->n; ++r) {
    const uint64_t h = larder::layout::hash_key(slice(spine->keys, spine->key_offsets, r), 0);
    if (!in_partition(engine, h)) continue;
    in.spine_index.push_back(static_cast<int64_t>(r));
    in.spine_hashes.push_back(h);
  }
  return in;
}

// A prefetch the compiler keeps. GCC deletes a __builtin_prefetch whose
// address comes from a plain load that nothing else uses (here: a step's
// EventRef, a row's offsets), with the load and the loop around it.
inline void prefetch(const void* p) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p);
#endif
}

// An event's offsets and values in its columns (walk_event reads them).
void prefetch_row(const larder_offline_events& e, size_t r) {
  prefetch(&e.key_offsets[r]);
  prefetch(&e.event_time_ms[r]);
  if (e.arrival_ms != nullptr) prefetch(&e.arrival_ms[r]);
  if (e.op != nullptr) prefetch(&e.op[r]);
  if (e.ids != nullptr) prefetch(&e.id_offsets[r]);
  for (size_t c = 0; c < e.column_count; ++c) {
    const larder_offline_column& col = e.columns[c];
    if (col.present != nullptr) prefetch(&col.present[r]);
    switch (col.type) {
      case LARDER_OFFLINE_INT64:
      case LARDER_OFFLINE_FLOAT64: prefetch(static_cast<const char*>(col.data) + r * 8); break;
      case LARDER_OFFLINE_BOOL: prefetch(static_cast<const char*>(col.data) + r); break;
      case LARDER_OFFLINE_STRING: prefetch(&col.offsets[r]); break;
      case LARDER_OFFLINE_FLOAT64_LIST: prefetch(static_cast<const char*>(col.data) + r * col.dim * 8); break;
      default: break;
    }
  }
}

// An event's key and string bytes, once prefetch_row() fetched their offsets.
void prefetch_bytes(const larder_offline_events& e, size_t r) {
  prefetch(e.keys + e.key_offsets[r]);
  if (e.ids != nullptr) prefetch(e.ids + e.id_offsets[r]);
  for (size_t c = 0; c < e.column_count; ++c) {
    const larder_offline_column& col = e.columns[c];
    if (col.type == LARDER_OFFLINE_STRING) prefetch(static_cast<const char*>(col.data) + col.offsets[r]);
  }
}

// The events of one set copied into the order of a key-by-key replay (one
// pass after the sort, gather_steps): the replay then reads every column
// front to back, where the hardware prefetcher keeps ahead of it, instead of
// one row at random per event, whose misses compete with the writer's own.
// Same layout as the input (a larder_offline_events over these vectors), so
// walk_event reads it as it reads the caller's. Costs the input's size again
// while the build runs.
struct Gathered {
  struct Column {
    std::vector<unsigned char> data;  // fixed-width values: sized up front, written at row * width
    std::vector<int64_t> offsets;     // strings
    std::vector<uint8_t> present;
  };
  size_t rows = 0;
  std::string keys;
  std::vector<int64_t> key_offsets, event_time_ms, arrival_ms;
  std::vector<uint8_t> op;
  std::string ids;
  std::vector<int64_t> id_offsets;
  std::vector<Column> cols;
  std::vector<larder_offline_column> columns;
  larder_offline_events events{};

  // Room for n rows of e. The fixed-width arrays are sized (not reserved):
  // append() stores into them with a memcpy of a known size, no growth check.
  void reserve(const larder_offline_events& e, size_t n) {
    key_offsets.assign(n + 1, 0);
    event_time_ms.resize(n);
    if (e.arrival_ms != nullptr) arrival_ms.resize(n);
    if (e.op != nullptr) op.resize(n);
    if (e.ids != nullptr) id_offsets.assign(n + 1, 0);
    cols.resize(e.column_count);
    for (size_t c = 0; c < e.column_count; ++c) {
      const larder_offline_column& col = e.columns[c];
      if (col.present != nullptr) cols[c].present.resize(n);
      switch (col.type) {
        case LARDER_OFFLINE_INT64:
        case LARDER_OFFLINE_FLOAT64: cols[c].data.resize(n * 8); break;
        case LARDER_OFFLINE_BOOL: cols[c].data.resize(n); break;
        case LARDER_OFFLINE_STRING: cols[c].offsets.assign(n + 1, 0); break;
        case LARDER_OFFLINE_FLOAT64_LIST: cols[c].data.resize(n * col.dim * 8); break;
        default: break;
      }
    }
  }

  // Appends row r of e (at most the n rows reserve() made room for).
  void append(const larder_offline_events& e, size_t r) {
    const size_t at = rows++;
    keys.append(slice(e.keys, e.key_offsets, r));
    key_offsets[at + 1] = static_cast<int64_t>(keys.size());
    event_time_ms[at] = e.event_time_ms[r];
    if (e.arrival_ms != nullptr) arrival_ms[at] = e.arrival_ms[r];
    if (e.op != nullptr) op[at] = e.op[r];
    if (e.ids != nullptr) {
      ids.append(slice(e.ids, e.id_offsets, r));
      id_offsets[at + 1] = static_cast<int64_t>(ids.size());
    }
    for (size_t c = 0; c < e.column_count; ++c) {
      const larder_offline_column& col = e.columns[c];
      Column& g = cols[c];
      if (col.present != nullptr) g.present[at] = col.present[r];
      const auto* data = static_cast<const unsigned char*>(col.data);
      switch (col.type) {
        case LARDER_OFFLINE_INT64:
        case LARDER_OFFLINE_FLOAT64: std::memcpy(g.data.data() + at * 8, data + r * 8, 8); break;
        case LARDER_OFFLINE_BOOL: g.data[at] = data[r]; break;
        case LARDER_OFFLINE_STRING: {
          const std::string_view s = slice(static_cast<const char*>(col.data), col.offsets, r);
          g.data.insert(g.data.end(), s.begin(), s.end());
          g.offsets[at + 1] = static_cast<int64_t>(g.data.size());
          break;
        }
        case LARDER_OFFLINE_FLOAT64_LIST: {
          const size_t w = size_t{col.dim} * 8;
          std::memcpy(g.data.data() + at * w, data + r * w, w);
          break;
        }
        default: break;
      }
    }
  }

  // The events view over the copies (after the last append).
  void finish(const larder_offline_events& e) {
    events = e;
    events.n = rows;
    events.keys = keys.data();
    events.key_offsets = key_offsets.data();
    events.event_time_ms = event_time_ms.data();
    events.arrival_ms = e.arrival_ms != nullptr ? arrival_ms.data() : nullptr;
    events.op = e.op != nullptr ? op.data() : nullptr;
    events.ids = e.ids != nullptr ? ids.data() : nullptr;
    events.id_offsets = e.ids != nullptr ? id_offsets.data() : nullptr;
    columns.assign(e.columns, e.columns + e.column_count);
    for (size_t c = 0; c < e.column_count; ++c) {
      columns[c].data = cols[c].data.data();
      columns[c].offsets = e.columns[c].type == LARDER_OFFLINE_STRING ? cols[c].offsets.data() : nullptr;
      columns[c].present = e.columns[c].present != nullptr ? cols[c].present.data() : nullptr;
    }
    events.columns = columns.data();
  }
};

// A step of a key-by-key replay: an event or a spine read.
struct Step {
  uint64_t hash;
  int64_t time;  // arrival, or the read's instant
  uint64_t tag;  // kRead | frame row, or an index into in.refs
};
constexpr uint64_t kRead = uint64_t{1} << 63;

// Copies the events of `steps` into `gathered` (per event set, in step
// order) and their sets into `step_set`. The steps visit the input rows in a
// random order: each step's input is fetched ahead of it, in three stages
// each reading only what the stage before fetched (its EventRef, then its
// row's offsets and values, then its key's bytes), so the misses overlap
// instead of following one another. Each stage runs for kGroup steps at
// once, every kGroup steps: the misses (and their page walks) of a group
// overlap, as in upsert_many.
void gather_steps(const Input& in, const std::vector<Step>& steps, std::vector<Gathered>& gathered,
                  std::vector<uint32_t>& step_set) {
  const larder_offline_events* events = in.events;
  std::vector<size_t> per_set(in.event_sets, 0);
  for (const Step& s : steps) {
    if ((s.tag & kRead) == 0) ++per_set[in.refs[s.tag].set];
  }
  size_t total = 0;
  for (size_t s = 0; s < in.event_sets; ++s) {
    if (per_set[s] > 0) gathered[s].reserve(events[s], per_set[s]);
    total += per_set[s];
  }
  step_set.reserve(total);
  constexpr size_t kGroup = 16, kRefAhead = 3 * kGroup, kRowAhead = 2 * kGroup, kBytesAhead = kGroup;
  auto event_at = [&](size_t j) -> const EventRef* {
    return (steps[j].tag & kRead) == 0 ? &in.refs[steps[j].tag] : nullptr;
  };
  auto stage = [&](size_t from, auto&& fetch) {
    for (size_t j = from; j < std::min(from + kGroup, steps.size()); ++j) fetch(j);
  };
  auto fetch_ref = [&](size_t j) {
    if ((steps[j].tag & kRead) == 0) prefetch(&in.refs[steps[j].tag]);
  };
  auto fetch_row = [&](size_t j) {
    if (const EventRef* ref = event_at(j)) prefetch_row(events[ref->set], ref->row);
  };
  auto fetch_bytes = [&](size_t j) {
    if (const EventRef* ref = event_at(j)) prefetch_bytes(events[ref->set], ref->row);
  };
  for (size_t j = 0; j < std::min(kRefAhead, steps.size()); ++j) fetch_ref(j);
  for (size_t j = 0; j < std::min(kRowAhead, steps.size()); ++j) fetch_row(j);
  for (size_t j = 0; j < std::min(kBytesAhead, steps.size()); ++j) fetch_bytes(j);
  for (size_t i = 0; i < steps.size(); ++i) {
    if (i % kGroup == 0) {
      stage(i + kRefAhead, fetch_ref);
      stage(i + kRowAhead, fetch_row);
      stage(i + kBytesAhead, fetch_bytes);
    }
    if (const EventRef* ref = event_at(i)) {
      gathered[ref->set].append(events[ref->set], ref->row);
      step_set.push_back(ref->set);
    }
  }
  for (size_t s = 0; s < in.event_sets; ++s) {
    if (per_set[s] > 0) gathered[s].finish(events[s]);
  }
}

uint64_t distinct_keys(std::vector<uint64_t> hashes) {
  sort_by_hash(
      hashes, [](uint64_t h) { return h; }, std::less<uint64_t>());
  return static_cast<uint64_t>(std::unique(hashes.begin(), hashes.end()) - hashes.begin());
}

// One replay of a build's input into a frame. by_key: key after key
// (Replay::begin_key): every step of a key (its events and its spine reads)
// is ordered as arrival order would order it among all keys' steps: by time,
// an event before a read at its own instant (a read sees the events arrived
// by then), events in input order and reads in spine order among equal times.
// Returns nullptr where that order could answer otherwise than arrival order
// (two keys of one hash, a refusal by the writer): the caller replays again
// in arrival order.
std::unique_ptr<larder_offline_frame> replay_input(Engine& engine, const Input& in, bool by_key) {
  const larder_offline_events* events = in.events;
  const larder_offline_spine* spine = in.spine;
  const uint32_t table = in.table;
  auto frame = std::make_unique<larder_offline_frame>();
  frame->spine_index = in.spine_index;
  const size_t rows = frame->spine_index.size();
  auto spine_key = [&](size_t fr) {
    return slice(spine->keys, spine->key_offsets, static_cast<size_t>(frame->spine_index[fr]));
  };
  auto event_key = [&](const EventRef& ref) {
    return slice(events[ref.set].keys, events[ref.set].key_offsets, ref.row);
  };
  // Events arriving after the last spine instant change no answer: neither
  // order applies them.
  int64_t last_read_ms = INT64_MIN;
  for (size_t fr = 0; fr < rows; ++fr) {
    last_read_ms = std::max(last_read_ms, spine->at_ms[frame->spine_index[fr]]);
  }

  // The scratch table holds every key of the events (also those of events
  // after the last read, as in arrival order).
  std::vector<uint64_t> min_capacity(engine.schema().tables.size(), 0);
  min_capacity[table] = distinct_keys(in.hashes);
  std::unique_ptr<Replay> replay = engine.start(min_capacity);
  replay->only_table(table);

  // Key by key: the steps, by key in the order of the key's home slot (its
  // hash under the table's seed, so the replay walks the scratch table from
  // its first slot to its last), then as arrival order would order them.
  std::vector<Step> steps;
  // Arrival order: the events (indexes into in.refs) and the reads
  // ((at_ms, frame row)), each by time, stable.
  std::vector<size_t> order;
  std::vector<std::pair<int64_t, size_t>> reads;
  if (by_key) {
    const uint64_t seed = replay->key_hash_seed(table);
    steps.reserve(in.refs.size() + rows);
    for (size_t i = 0; i < in.refs.size(); ++i) {
      const EventRef& ref = in.refs[i];
      if (ref.arrival_ms <= last_read_ms) {
        steps.push_back(Step{larder::layout::hash_key(event_key(ref), seed), ref.arrival_ms, i});
      }
    }
    for (size_t fr = 0; fr < rows; ++fr) {
      steps.push_back(
          Step{larder::layout::hash_key(spine_key(fr), seed), spine->at_ms[frame->spine_index[fr]], kRead | fr});
    }
    sort_by_hash(
        steps, [](const Step& s) { return s.hash; },
        [](const Step& a, const Step& b) {
          if (a.hash != b.hash) return a.hash < b.hash;
          if (a.time != b.time) return a.time < b.time;
          return a.tag < b.tag;
        });
  } else {
    order.resize(in.refs.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return in.refs[a].arrival_ms < in.refs[b].arrival_ms; });
    for (size_t fr = 0; fr < rows; ++fr) reads.emplace_back(spine->at_ms[frame->spine_index[fr]], fr);
    std::stable_sort(reads.begin(), reads.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  }

  // Columns to inputs, once per event set.
  std::vector<larder::sidecar::InputType> input_types;
  std::vector<larder::sidecar::UpdateBuilder::Input> inputs = replay->builder().inputs(table);
  for (const auto& input : inputs) input_types.push_back(input.type);
  std::vector<std::vector<int32_t>> input_of(in.event_sets);
  for (size_t s = 0; s < in.event_sets; ++s) {
    for (size_t c = 0; c < events[s].column_count; ++c) {
      int32_t found = -1;
      for (size_t i = 0; i < inputs.size(); ++i) {
        if (inputs[i].name == events[s].columns[c].name) found = static_cast<int32_t>(i);
      }
      input_of[s].push_back(found);
    }
  }

  // The frame's columns: the table's fields, in schema order.
  const larder::Table& view = replay->table(table);
  for (const larder::Field& f : view.fields()) {
    larder_offline_frame::Column col;
    col.name = std::string(f.name);
    col.type = static_cast<int32_t>(f.type);
    col.dim = f.type == larder::layout::FieldType::kFloat32Vector || f.type == larder::layout::FieldType::kString
                  ? f.count
                  : 1;
    size_t width = 8;
    switch (f.type) {
      case larder::layout::FieldType::kInt64:
      case larder::layout::FieldType::kFloat64: width = 8; break;
      case larder::layout::FieldType::kFloat32: width = 4; break;
      case larder::layout::FieldType::kBool: width = 1; break;
      case larder::layout::FieldType::kFloat32Vector: width = 4 * static_cast<size_t>(f.count); break;
      case larder::layout::FieldType::kString: width = 0; break;
    }
    col.values.assign(rows * width, 0);
    col.valid.assign(rows, 0);
    frame->columns.push_back(std::move(col));
  }
  frame->rows = rows;
  frame->found.assign(rows, 0);
  frame->event_time_ms.assign(rows, 0);
  frame->computed_at_ms.assign(rows, 0);
  std::vector<std::string> strings;  // per (row, string column), joined at the end
  size_t string_columns = 0;
  std::vector<size_t> string_slot(view.fields().size(), 0);
  for (size_t f = 0; f < view.fields().size(); ++f) {
    if (view.fields()[f].type == larder::layout::FieldType::kString) string_slot[f] = string_columns++;
  }
  strings.resize(rows * string_columns);

  EventWalk walk;
  walk.builder = &replay->builder();
  walk.table = table;
  walk.input_types = &input_types;
  // The first rejected event in arrival order (arrival, input order), in
  // whichever order the replay meets them.
  size_t first_rejected = SIZE_MAX;
  larder::sidecar::DecodeResult first_result;
  // Event i of in.refs, read from row `row` of `source` (the caller's set,
  // or its copy in step order).
  auto apply_row = [&](size_t i, const larder_offline_events& source, uint32_t set, size_t row, int64_t arrival_ms) {
    walk.events = &source;
    walk.input_of = &input_of[set];
    walk.row = row;
    larder::sidecar::DecodeResult r = replay->apply_built(arrival_ms, arrival_ms, walk_event, &walk);
    if (!r.ok && (first_rejected == SIZE_MAX || arrival_ms < in.refs[first_rejected].arrival_ms ||
                  (arrival_ms == in.refs[first_rejected].arrival_ms && i < first_rejected))) {
      first_rejected = i;
      first_result = std::move(r);
    }
  };
  auto apply = [&](size_t i) {
    const EventRef& ref = in.refs[i];
    apply_row(i, events[ref.set], ref.set, ref.row, ref.arrival_ms);
  };
  larder::Row row = view.make_row();
  auto read = [&](size_t fr, std::string_view key, int64_t at_ms) {
    const larder::ReadResult res = replay->read(table, key, at_ms, row);
    if (!res.found()) return;
    frame->found[fr] = 1;
    frame->event_time_ms[fr] = res.event_time_ms;
    frame->computed_at_ms[fr] = res.computed_at_ms;
    for (size_t f = 0; f < view.fields().size(); ++f) {
      const larder::Field& field = view.fields()[f];
      if (!row.valid(field)) continue;
      larder_offline_frame::Column& col = frame->columns[f];
      col.valid[fr] = 1;
      unsigned char* at = col.values.data();
      switch (field.type) {
        case larder::layout::FieldType::kInt64: {
          const int64_t v = row.i64(field);
          std::memcpy(at + fr * 8, &v, 8);
          break;
        }
        case larder::layout::FieldType::kFloat64: {
          const double v = row.f64(field);
          std::memcpy(at + fr * 8, &v, 8);
          break;
        }
        case larder::layout::FieldType::kFloat32: {
          const float v = row.f32(field);
          std::memcpy(at + fr * 4, &v, 4);
          break;
        }
        case larder::layout::FieldType::kBool: at[fr] = row.boolean(field) ? 1 : 0; break;
        case larder::layout::FieldType::kFloat32Vector: {
          const std::span<const float> v = row.vector(field);
          std::memcpy(at + fr * 4 * field.count, v.data(), std::min<size_t>(v.size(), field.count) * 4);
          break;
        }
        case larder::layout::FieldType::kString:
          strings[fr * string_columns + string_slot[f]] = std::string(row.string(field));
          break;
      }
    }
  };

  if (by_key) {
    // Each step's event, copied out of the input in step order (Gathered),
    // then replayed from the copies front to back.
    std::vector<Gathered> gathered(in.event_sets);
    std::vector<uint32_t> step_set;  // per event step, in step order: its set
    gather_steps(in, steps, gathered, step_set);
    std::vector<size_t> next_row(in.event_sets, 0);
    size_t event_step = 0;
    std::string_view key_of_group;
    for (size_t i = 0; i < steps.size(); ++i) {
      const Step& step = steps[i];
      const bool is_read = (step.tag & kRead) != 0;
      const size_t at = static_cast<size_t>(step.tag & ~kRead);
      uint32_t set = 0;
      size_t event_row = 0;
      std::string_view key;
      if (is_read) {
        key = spine_key(at);
      } else {
        set = step_set[event_step++];
        event_row = next_row[set]++;
        key = slice(gathered[set].events.keys, gathered[set].events.key_offsets, event_row);
      }
      if (i == 0 || step.hash != steps[i - 1].hash) {
        replay->begin_key();
        key_of_group = key;
      } else if (key != key_of_group) {
        return nullptr;  // two keys of one 64-bit hash: their steps interleave
      }
      if (is_read) {
        read(at, key, step.time);
      } else {
        apply_row(at, gathered[set].events, set, event_row, step.time);  // an event step's time is its arrival
      }
    }
  } else {
    size_t next = 0;
    for (const auto& [at_ms, fr] : reads) {
      for (; next < order.size() && in.refs[order[next]].arrival_ms <= at_ms; ++next) apply(order[next]);
      read(fr, spine_key(fr), at_ms);
    }
  }
  replay->flush();
  // A refusal depends on what the other keys hold at that moment, which
  // differs between the orders.
  if (by_key && replay->counters().refused > 0) return nullptr;
  if (first_rejected != SIZE_MAX) {
    const EventRef& ref = in.refs[first_rejected];
    frame->first_rejection = fmt::format("table \"{}\" event {}: {}: {}", events[ref.set].table, ref.row,
                                         larder::sidecar::reject_reason_name(first_result.reason), first_result.detail);
  }
  for (size_t f = 0; f < view.fields().size(); ++f) {
    if (view.fields()[f].type != larder::layout::FieldType::kString) continue;
    larder_offline_frame::Column& col = frame->columns[f];
    col.offsets.assign(rows + 1, 0);
    for (size_t r = 0; r < rows; ++r) {
      const std::string& s = strings[r * string_columns + string_slot[f]];
      col.values.insert(col.values.end(), s.begin(), s.end());
      col.offsets[r + 1] = static_cast<int64_t>(col.values.size());
    }
  }
  frame->counters = replay->counters();
  frame->rejected = frame->counters.rejected + frame->counters.refused;
  return frame;
}

// Key by key unless something shared between keys could change an answer:
// - the dedup set (tables with aggregates, events with ids): its buckets
//   hold ids of many keys, and which id an insert evicts depends on the
//   other keys' ids in the bucket at that moment;
// - a refresh of every key at each read (EngineOptions::refresh_all_keys);
// - and, found during the replay, two keys of one hash or a refusal by the
//   writer (replay_input).
// Everything else the writer shares between keys does not reach an answer
// in a replay (docs/backfill.md, "Order of the replay").
std::unique_ptr<larder_offline_frame> build(Engine& engine, const larder_offline_events* events, size_t event_sets,
                                            const larder_offline_spine* spine, KeyOrder key_order) {
  const Input in = check_input(engine, events, event_sets, spine);
  const bool dedup = in.ids && !engine.schema().tables[in.table].aggregates.empty();
  if (key_order != KeyOrder::kArrival && !dedup && !engine.options().refresh_all_keys) {
    if (auto frame = replay_input(engine, in, true)) return frame;
  }
  return replay_input(engine, in, false);
}

const larder_offline_frame::Column* column(const larder_offline_frame* f, uint32_t field) {
  if (f == nullptr || field >= f->columns.size()) return nullptr;
  return &f->columns[field];
}

}  // namespace

extern "C" {

int larder_offline_open(const char* config_path, uint32_t partition, uint32_t partitions, larder_offline** out,
                        char* err, size_t err_len) {
  if (out == nullptr) {
    set_error(err, err_len, "out is NULL");
    return 1;
  }
  *out = nullptr;
  if (config_path == nullptr) {
    set_error(err, err_len, "config_path is NULL");
    return 1;
  }
  try {
    larder::offline::EngineOptions options;
    options.partition = partition;
    options.partitions = partitions == 0 ? 1 : partitions;
    if (partitions == 0 && partition != 0) options.partitions = 0;  // refused below with the numbers
    auto engine = std::make_unique<larder_offline>();
    engine->engine = Engine::open(config_path, options);
    *out = engine.release();
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

void larder_offline_close(larder_offline* engine) { delete engine; }

int larder_offline_set_order(larder_offline* engine, int32_t order) {
  if (engine == nullptr || (order != LARDER_OFFLINE_ORDER_BY_KEY && order != LARDER_OFFLINE_ORDER_ARRIVAL)) return 1;
  engine->order = order == LARDER_OFFLINE_ORDER_ARRIVAL ? KeyOrder::kArrival : KeyOrder::kByKey;
  return 0;
}

int larder_offline_build(larder_offline* engine, const larder_offline_events* events, size_t event_sets,
                         const larder_offline_spine* spine, larder_offline_frame** out, char* err, size_t err_len) {
  if (out == nullptr || engine == nullptr) {
    set_error(err, err_len, "engine or out is NULL");
    return 1;
  }
  *out = nullptr;
  try {
    *out = build(*engine->engine, events, event_sets, spine, engine->order).release();
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
}

size_t larder_offline_frame_rows(const larder_offline_frame* f) { return f != nullptr ? f->rows : 0; }
uint64_t larder_offline_frame_rejected(const larder_offline_frame* f) { return f != nullptr ? f->rejected : 0; }
const uint8_t* larder_offline_frame_found(const larder_offline_frame* f) {
  return f != nullptr ? f->found.data() : nullptr;
}
const int64_t* larder_offline_frame_event_time_ms(const larder_offline_frame* f) {
  return f != nullptr ? f->event_time_ms.data() : nullptr;
}
const int64_t* larder_offline_frame_computed_at_ms(const larder_offline_frame* f) {
  return f != nullptr ? f->computed_at_ms.data() : nullptr;
}
uint32_t larder_offline_frame_field_count(const larder_offline_frame* f) {
  return f != nullptr ? static_cast<uint32_t>(f->columns.size()) : 0;
}
const char* larder_offline_frame_field_name(const larder_offline_frame* f, uint32_t field) {
  const auto* c = column(f, field);
  return c != nullptr ? c->name.c_str() : nullptr;
}
int32_t larder_offline_frame_field_type(const larder_offline_frame* f, uint32_t field) {
  const auto* c = column(f, field);
  return c != nullptr ? c->type : 0;
}
uint32_t larder_offline_frame_field_dim(const larder_offline_frame* f, uint32_t field) {
  const auto* c = column(f, field);
  return c != nullptr ? c->dim : 0;
}
const void* larder_offline_frame_values(const larder_offline_frame* f, uint32_t field) {
  const auto* c = column(f, field);
  return c != nullptr ? c->values.data() : nullptr;
}
const int64_t* larder_offline_frame_string_offsets(const larder_offline_frame* f, uint32_t field) {
  const auto* c = column(f, field);
  return c != nullptr && !c->offsets.empty() ? c->offsets.data() : nullptr;
}
const uint8_t* larder_offline_frame_valid(const larder_offline_frame* f, uint32_t field) {
  const auto* c = column(f, field);
  return c != nullptr ? c->valid.data() : nullptr;
}
void larder_offline_frame_free(larder_offline_frame* f) { delete f; }

const int64_t* larder_offline_frame_spine_index(const larder_offline_frame* f) {
  return f != nullptr ? f->spine_index.data() : nullptr;
}
uint64_t larder_offline_frame_events(const larder_offline_frame* f) { return f != nullptr ? f->counters.events : 0; }
uint64_t larder_offline_frame_applied(const larder_offline_frame* f) { return f != nullptr ? f->counters.applied : 0; }
uint64_t larder_offline_frame_stale(const larder_offline_frame* f) { return f != nullptr ? f->counters.stale : 0; }
uint64_t larder_offline_frame_duplicates(const larder_offline_frame* f) {
  return f != nullptr ? f->counters.duplicates : 0;
}
uint64_t larder_offline_frame_late(const larder_offline_frame* f) { return f != nullptr ? f->counters.late : 0; }
const char* larder_offline_frame_first_rejection(const larder_offline_frame* f) {
  return f != nullptr ? f->first_rejection.c_str() : "";
}

}  // extern "C"
