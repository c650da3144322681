// Schema validation, fingerprint and the layout plan.
#include "larder/layout/schema.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <string>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "larder/layout/error.h"

namespace larder::layout {

namespace {

[[noreturn]] void invalid(const std::string& what) { throw Error(ErrorCode::kInvalidArgument, what); }

}  // namespace

const char* field_type_name(FieldType type) {
  switch (type) {
    case FieldType::kInt64: return "int64";
    case FieldType::kFloat64: return "float64";
    case FieldType::kFloat32: return "float32";
    case FieldType::kBool: return "bool";
    case FieldType::kFloat32Vector: return "vector";
    case FieldType::kString: return "string";
  }
  return "unknown";
}

bool parse_field_type(std::string_view text, FieldType* out) {
  for (FieldType t : {FieldType::kInt64, FieldType::kFloat64, FieldType::kFloat32, FieldType::kBool,
                      FieldType::kFloat32Vector, FieldType::kString}) {
    if (text == field_type_name(t)) {
      *out = t;
      return true;
    }
  }
  return false;
}

const char* aggregate_fn_name(AggregateFn fn) {
  switch (fn) {
    case AggregateFn::kCount: return "count";
    case AggregateFn::kSum: return "sum";
    case AggregateFn::kMean: return "mean";
    case AggregateFn::kMin: return "min";
    case AggregateFn::kMax: return "max";
    case AggregateFn::kLast: return "last";
    case AggregateFn::kVariance: return "variance";
    case AggregateFn::kStddev: return "stddev";
    case AggregateFn::kDistinctCount: return "distinct_count";
    case AggregateFn::kLastN: return "last_n";
    case AggregateFn::kFirst: return "first";
  }
  return "unknown";
}

bool parse_aggregate_fn(std::string_view text, AggregateFn* out) {
  for (AggregateFn fn : kAllAggregateFns) {
    if (text == aggregate_fn_name(fn)) {
      *out = fn;
      return true;
    }
  }
  if (text == "avg")
    *out = AggregateFn::kMean;
  else if (text == "var")
    *out = AggregateFn::kVariance;
  else if (text == "std")
    *out = AggregateFn::kStddev;
  else if (text == "distinct")
    *out = AggregateFn::kDistinctCount;
  else
    return false;
  return true;
}

int64_t default_resolution_ms(int64_t window_ms) {
  if (window_ms <= 0) return 0;
  for (int64_t n = 60; n <= kMaxBucketsPerWindow && n <= window_ms; ++n) {
    if (window_ms % n == 0) return window_ms / n;
  }
  return window_ms >= 60 ? 0 : 1;  // 0: no whole-millisecond default; the resolution must be given
}

namespace {
bool numeric_source_type(FieldType t) {
  return t == FieldType::kInt64 || t == FieldType::kFloat64 || t == FieldType::kFloat32 || t == FieldType::kBool;
}
// distinct_count compares values for equality: floats are refused (rounding
// makes equal readings differ; bucketize them into an int64 first).
bool distinct_source_type(FieldType t) {
  return t == FieldType::kInt64 || t == FieldType::kBool || t == FieldType::kString;
}
}  // namespace

std::vector<FieldSpec> TableSpec::all_fields() const {
  std::vector<FieldSpec> all = fields;
  for (const AggregateSpec& a : aggregates) {
    if (a.fn == AggregateFn::kLastN) {  // newest first, NaN past the key's events
      all.push_back(FieldSpec{a.name, FieldType::kFloat32Vector, a.window_events, a.group});
      continue;
    }
    const bool integer = a.fn == AggregateFn::kCount || a.fn == AggregateFn::kDistinctCount;
    all.push_back(FieldSpec{a.name, integer ? FieldType::kInt64 : FieldType::kFloat64, 1, a.group});
  }
  return all;
}

std::vector<std::string> TableSpec::group_names() const {
  std::vector<std::string> names;
  const std::vector<FieldSpec> all = all_fields();
  // Naming kDefaultGroup is naming no group: a table whose fields name only
  // it has no groups, and its fingerprint is the same either way.
  bool any = false;
  for (const FieldSpec& f : all) any = any || (!f.group.empty() && f.group != kDefaultGroup);
  if (!any) return names;
  for (const FieldSpec& f : all) {
    const std::string g = f.group.empty() ? kDefaultGroup : f.group;
    if (std::find(names.begin(), names.end(), g) == names.end()) names.push_back(g);
  }
  return names;
}

std::vector<uint32_t> TableSpec::field_groups() const {
  const std::vector<std::string> names = group_names();
  const std::vector<FieldSpec> all = all_fields();
  std::vector<uint32_t> out(all.size(), 0);
  if (names.empty()) return out;
  for (size_t f = 0; f < all.size(); ++f) {
    const std::string g = all[f].group.empty() ? kDefaultGroup : all[f].group;
    out[f] = static_cast<uint32_t>(std::find(names.begin(), names.end(), g) - names.begin());
  }
  return out;
}

int64_t TableSpec::resolution_of(const AggregateSpec& a) const {
  return a.resolution_ms > 0 ? a.resolution_ms : default_resolution_ms(a.window_ms);
}

int64_t TableSpec::lateness_ms() const {
  if (allowed_lateness_ms > 0) return allowed_lateness_ms;
  int64_t longest = 0;
  for (const AggregateSpec& a : aggregates) longest = std::max(longest, a.window_ms);
  // Count windows and sequences have no time span: without a time window
  // the lateness defaults to an hour.
  return longest > 0 ? longest : kDefaultEventLatenessMs;
}

int64_t TableSpec::max_lateness_ms() const {
  int64_t longest = 0;
  bool events = false;
  for (const AggregateSpec& a : aggregates) {
    longest = std::max(longest, a.window_ms);
    events = events || a.counts_events();
  }
  return events ? kMaxWindowMs : longest;
}

uint64_t TableSpec::dedup_ids() const {
  if (aggregates.empty()) return 0;
  return dedup_capacity > 0 ? dedup_capacity : std::max<uint64_t>(capacity, 65536);
}

int64_t TableSpec::dedup_horizon() const { return dedup_horizon_ms > 0 ? dedup_horizon_ms : lateness_ms(); }

uint64_t TableSpec::arena_chunk_count() const {
  const uint32_t sparse = plan_aggregates(*this).sparse_groups;
  if (sparse == 0) return 0;
  if (arena_chunks > 0) return arena_chunks;
  // A quiet key never needs a chunk; sized for 1 busy key in 100 per group.
  return std::min(kMaxArenaChunks, std::max<uint64_t>(16, (capacity * sparse + 99) / 100));
}

bool valid_identifier(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength || name[0] == '.' || name[0] == '-') return false;
  for (char c : name) {
    bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

uint32_t field_bytes(FieldType type, uint32_t count) {
  switch (type) {
    case FieldType::kInt64:
    case FieldType::kFloat64: return 8;
    case FieldType::kFloat32: return 4;
    case FieldType::kBool: return 1;
    case FieldType::kFloat32Vector: return 4 * count;
    case FieldType::kString: return 4 + count;  // uint32 length, then the bytes
  }
  return 0;
}

uint32_t field_align(FieldType type) {
  switch (type) {
    case FieldType::kInt64:
    case FieldType::kFloat64: return 8;
    case FieldType::kFloat32Vector: return 8;  // whole words: friendlier to SIMD consumers
    case FieldType::kFloat32:
    case FieldType::kString: return 4;
    case FieldType::kBool: return 1;
  }
  return 8;
}

namespace {

// A count window or a sequence: N events, no time span, no bucket settings.
void validate_event_aggregate(const AggregateSpec& a, const std::string& aw) {
  if (a.window_events < 1 || a.window_events > kMaxWindowEvents) {
    invalid(aw + ": " + std::string(a.fn == AggregateFn::kLastN ? "n " : "window ") + std::to_string(a.window_events) +
            (a.fn == AggregateFn::kLastN ? "" : " events") + " is outside 1.." + std::to_string(kMaxWindowEvents) +
            (a.fn == AggregateFn::kFirst ? " (first needs a count window)" : ""));
  }
  if (a.fn == AggregateFn::kDistinctCount) invalid(aw + ": distinct_count takes a time window, not a count window");
  if (a.window_ms != 0 || a.resolution_ms != 0) {
    invalid(aw + ": a count window or sequence has no time window or resolution");
  }
  if (a.end != WindowEnd::kNow) invalid(aw + ": a count window or sequence has no end (it ends at the newest event)");
  if (a.min_periods > a.window_events) {
    invalid(aw + ": min_periods " + std::to_string(a.min_periods) + " is above the window's " +
            std::to_string(a.window_events) + " events");
  }
}

void validate_aggregates(const TableSpec& t, const std::string& where, std::set<std::string>* names) {
  if (t.aggregates.size() > kMaxAggregates) {
    invalid(where + ": " + std::to_string(t.aggregates.size()) + " aggregates, at most " +
            std::to_string(kMaxAggregates));
  }
  int64_t longest = 0;
  for (const AggregateSpec& a : t.aggregates) {
    const std::string aw = where + " aggregate \"" + a.name + "\"";
    if (!valid_identifier(a.name)) invalid(aw + ": invalid name (1..63 of [A-Za-z0-9_.-])");
    if (!names->insert(a.name).second) invalid(aw + ": the name is already a field or another aggregate");
    if (static_cast<uint32_t>(a.fn) < 1 || a.fn > AggregateFn::kFirst) invalid(aw + ": unknown function");
    if (a.source.empty()) {
      if (a.fn != AggregateFn::kCount) invalid(aw + ": " + aggregate_fn_name(a.fn) + " needs a source");
    } else {
      if (!valid_identifier(a.source)) invalid(aw + ": invalid source name \"" + a.source + "\"");
      for (const FieldSpec& f : t.fields) {
        if (f.name != a.source) continue;
        if (a.fn == AggregateFn::kDistinctCount || (a.fn == AggregateFn::kCount && f.type == FieldType::kString)) {
          // A count of a string source counts the events that carry it.
          if (!distinct_source_type(f.type)) {
            invalid(aw + ": source \"" + a.source + "\" is a " + field_type_name(f.type) +
                    " field; distinct_count needs a string, int64 or bool (bucketize a float into an int64)");
          }
        } else if (!numeric_source_type(f.type)) {
          invalid(aw + ": source \"" + a.source + "\" is a " + field_type_name(f.type) +
                  " field; aggregates need a number (int64, float64, float32 or bool)");
        }
      }
    }
    if (a.ddof > 1) invalid(aw + ": ddof " + std::to_string(a.ddof) + " is not 0 or 1");
    if (a.ddof != 0 && a.fn != AggregateFn::kVariance && a.fn != AggregateFn::kStddev) {
      invalid(aw + ": ddof applies to variance and stddev only");
    }
    if (a.counts_events() || a.fn == AggregateFn::kLastN || a.fn == AggregateFn::kFirst) {
      validate_event_aggregate(a, aw);
      continue;
    }
    if (a.min_periods != 0) invalid(aw + ": min_periods applies to count windows and last_n only");
    if (a.end != WindowEnd::kNow && a.end != WindowEnd::kLatestEvent) invalid(aw + ": unknown window end");
    if (a.window_ms < kMinWindowMs || a.window_ms > kMaxWindowMs) {
      invalid(aw + ": window " + std::to_string(a.window_ms) + " ms is outside 1 s .. 30 days");
    }
    if (a.resolution_ms < 0) invalid(aw + ": resolution " + std::to_string(a.resolution_ms) + " ms is negative");
    const int64_t r = t.resolution_of(a);
    if (r <= 0) {
      invalid(aw + ": no whole-millisecond resolution divides the window " + std::to_string(a.window_ms) +
              " ms into 60..4096 buckets; give a resolution");
    }
    if (a.window_ms % r != 0) {
      invalid(aw + ": window " + std::to_string(a.window_ms) + " ms is not a multiple of the resolution " +
              std::to_string(r) + " ms");
    }
    if (a.window_ms / r > kMaxBucketsPerWindow) {
      invalid(aw + ": window / resolution = " + std::to_string(a.window_ms / r) + " buckets, at most " +
              std::to_string(kMaxBucketsPerWindow) + "; use a coarser resolution");
    }
    longest = std::max(longest, a.window_ms);
  }
  if (t.aggregates.empty()) {
    if (t.allowed_lateness_ms != 0 || t.dedup_capacity != 0 || t.dedup_horizon_ms != 0 || t.arena_chunks != 0) {
      invalid(where + ": allowed_lateness, dedup and arena_chunks apply to aggregates, and the table has none");
    }
    return;
  }
  if (t.allowed_lateness_ms < 0 || t.allowed_lateness_ms > t.max_lateness_ms()) {
    invalid(where + ": allowed_lateness " + std::to_string(t.allowed_lateness_ms) + " ms must be between 0 and " +
            (longest == t.max_lateness_ms() ? "the longest window, " : "30 days with count windows, ") +
            std::to_string(t.max_lateness_ms()) + " ms");
  }
  if (t.dedup_horizon_ms < 0 || (t.dedup_horizon_ms > 0 && t.dedup_horizon_ms < t.lateness_ms())) {
    invalid(where + ": dedup horizon " + std::to_string(t.dedup_horizon_ms) +
            " ms is shorter than the allowed lateness " + std::to_string(t.lateness_ms()) +
            " ms: an event could be old enough to be forgotten and still count");
  }
  if (t.dedup_capacity > (uint64_t{1} << 32)) invalid(where + ": dedup capacity is above 2^32 ids");
  if (t.arena_chunks > kMaxArenaChunks) {
    invalid(where + ": arena_chunks " + std::to_string(t.arena_chunks) + " is above " +
            std::to_string(kMaxArenaChunks));
  }
}

}  // namespace

void Schema::validate() const {
  if (tables.empty()) invalid("schema: at least one table is required");
  if (tables.size() > kMaxTables)
    invalid("schema: " + std::to_string(tables.size()) + " tables, at most " + std::to_string(kMaxTables));
  std::set<std::string> table_names;
  for (const TableSpec& t : tables) {
    const std::string where = "table \"" + t.name + "\"";
    if (!valid_identifier(t.name)) {
      invalid(where + ": names are 1.." + std::to_string(kMaxNameLength) +
              " characters of [A-Za-z0-9_.-], not starting with '.' or '-'");
    }
    if (!table_names.insert(t.name).second) invalid(where + ": declared twice");
    if (t.key_max_len < 1 || t.key_max_len > kMaxKeyLength) {
      invalid(where + ": key_max_len " + std::to_string(t.key_max_len) + " is outside 1.." +
              std::to_string(kMaxKeyLength));
    }
    if (t.capacity < 1 || t.capacity > (uint64_t{1} << 36)) {
      invalid(where + ": capacity " + std::to_string(t.capacity) + " is outside 1..2^36");
    }
    if (!(t.max_load_factor > 0.0 && t.max_load_factor <= 0.95)) {
      invalid(where + ": max_load_factor " + std::to_string(t.max_load_factor) + " is outside (0, 0.95]");
    }
    if (t.fields.empty() && t.aggregates.empty()) invalid(where + ": at least one field or aggregate is required");
    if (t.all_fields().size() > kMaxFields) {
      invalid(where + ": more than " + std::to_string(kMaxFields) + " fields and aggregates");
    }
    std::set<std::string> field_names;
    for (const FieldSpec& f : t.fields) {
      const std::string fwhere = where + " field \"" + f.name + "\"";
      if (!valid_identifier(f.name)) invalid(fwhere + ": invalid name (1..63 of [A-Za-z0-9_.-])");
      if (!field_names.insert(f.name).second) invalid(fwhere + ": declared twice");
      switch (f.type) {
        case FieldType::kFloat32Vector:
          if (f.count < 1 || f.count > kMaxVectorDims) {
            invalid(fwhere + ": vector dims " + std::to_string(f.count) + " is outside 1.." +
                    std::to_string(kMaxVectorDims));
          }
          break;
        case FieldType::kString:
          if (f.count < 1 || f.count > kMaxStringLength) {
            invalid(fwhere + ": string max_len " + std::to_string(f.count) + " is outside 1.." +
                    std::to_string(kMaxStringLength));
          }
          break;
        case FieldType::kInt64:
        case FieldType::kFloat64:
        case FieldType::kFloat32:
        case FieldType::kBool: break;
        default: invalid(fwhere + ": unknown type " + std::to_string(static_cast<uint32_t>(f.type)));
      }
    }
    validate_aggregates(t, where, &field_names);
    for (const FieldSpec& f : t.all_fields()) {
      if (!f.group.empty() && !valid_identifier(f.group)) {
        invalid(where + " field \"" + f.name + "\": invalid group name \"" + f.group + "\" (1..63 of [A-Za-z0-9_.-])");
      }
    }
    const size_t groups = t.group_names().size();
    if (groups > kMaxFieldGroups) {
      invalid(where + ": " + std::to_string(groups) + " field groups (counting \"" + kDefaultGroup +
              "\" for fields that name none), at most " + std::to_string(kMaxFieldGroups));
    }
  }
}

uint64_t Schema::fingerprint() const {
  std::string canon = "larder-schema-v1\n";
  for (const TableSpec& t : tables) {
    canon += "table " + t.name + " key " + std::to_string(t.key_max_len) + " capacity " + std::to_string(t.capacity) +
             " load " + std::to_string(static_cast<uint64_t>(std::llround(t.max_load_factor * 1e6))) + "\n";
    for (const FieldSpec& f : t.fields) {
      canon += " field " + f.name + " " + field_type_name(f.type) + " " + std::to_string(f.count) +
               (f.group.empty() || f.group == kDefaultGroup ? "" : " group " + f.group) + "\n";
    }
    for (const AggregateSpec& a : t.aggregates) {
      canon += " aggregate " + a.name + " " + a.source + " " + aggregate_fn_name(a.fn) + " " +
               std::to_string(a.window_ms) + " " + std::to_string(t.resolution_of(a)) + " " +
               std::to_string(static_cast<uint32_t>(a.end)) +
               (a.group.empty() || a.group == kDefaultGroup ? "" : " group " + a.group) +
               (a.counts_events()
                    ? " events " + std::to_string(a.window_events) + " min_periods " + std::to_string(a.min_periods)
                    : "") +
               (a.ddof != 0 ? " ddof " + std::to_string(a.ddof) : "") + "\n";
    }
    if (!t.aggregates.empty()) {
      canon += " lateness " + std::to_string(t.allowed_lateness_ms) + " dedup " + std::to_string(t.dedup_capacity) +
               " " + std::to_string(t.dedup_horizon_ms) + " arena " + std::to_string(t.arena_chunk_count()) + "\n";
    }
  }
  return XXH3_64bits(canon.data(), canon.size());
}

LayoutPlan plan_layout(const Schema& schema) {
  LayoutPlan plan;
  plan.header_bytes = kSegmentHeaderBytes;
  uint64_t at = kSegmentHeaderBytes + kTableDescriptorBytes * schema.tables.size();
  uint64_t max_slot_bytes = 0;
  uint64_t journal_words = 0;
  for (const TableSpec& t : schema.tables) {
    TablePlan tp;
    const std::vector<FieldSpec> fields = t.all_fields();
    tp.fields_offset = round_up(at, 8);
    at = tp.fields_offset + kFieldDescriptorBytes * fields.size();
    tp.aggregates_offset = t.aggregates.empty() ? 0 : at;
    at += kAggregateDescriptorBytes * t.aggregates.size();
    tp.group_count = static_cast<uint32_t>(t.group_names().size());
    tp.groups_offset = tp.group_count == 0 ? 0 : at;
    at += kGroupDescriptorBytes * tp.group_count;
    tp.field_groups = t.field_groups();
    tp.aggregates = plan_aggregates(t);
    journal_words = std::max<uint64_t>(journal_words, tp.aggregates.journal_words);
    tp.dedup_buckets = (t.dedup_ids() + kDedupWays - 1) / kDedupWays;
    tp.arena_chunks = tp.aggregates.chunk_words > 0 ? t.arena_chunk_count() : 0;
    uint32_t row = 0;
    for (const FieldSpec& f : fields) {
      const uint32_t count = (f.type == FieldType::kFloat32Vector || f.type == FieldType::kString) ? f.count : 1;
      FieldPlan fp;
      fp.bytes = field_bytes(f.type, count);
      fp.offset = static_cast<uint32_t>(round_up(row, field_align(f.type)));
      row = fp.offset + fp.bytes;
      tp.fields.push_back(fp);
    }
    tp.row_bytes = static_cast<uint32_t>(round_up(row, 8));
    tp.validity_words = static_cast<uint32_t>((fields.size() + 63) / 64);
    tp.key_words = static_cast<uint32_t>((t.key_max_len + 7) / 8);
    tp.slot_bytes = static_cast<uint32_t>(round_up(
        8 * (kSlotHeaderWords + tp.validity_words + tp.key_words + tp.group_count) + tp.row_bytes, kSlotAlign));
    // Enough slots that `capacity` live keys stay under the load factor.
    tp.slot_count = static_cast<uint64_t>(std::ceil(static_cast<double>(t.capacity) / t.max_load_factor));
    if (tp.slot_count < t.capacity + 1) tp.slot_count = t.capacity + 1;
    if (tp.slot_count < 8) tp.slot_count = 8;
    tp.slots_bytes = tp.slot_count * tp.slot_bytes;
    max_slot_bytes = std::max<uint64_t>(max_slot_bytes, tp.slot_bytes);
    plan.tables.push_back(std::move(tp));
  }
  plan.undo_offset = round_up(at, kSlotAlign);
  plan.undo_bytes = max_slot_bytes;
  at = plan.undo_offset + plan.undo_bytes;
  plan.journal_offset = round_up(at, kSlotAlign);
  plan.journal_capacity = journal_words == 0 ? 0 : journal_words + 16;
  at = plan.journal_offset + plan.journal_capacity * sizeof(JournalEntry);
  plan.source_offset = round_up(at, kSlotAlign);
  at = plan.source_offset + sizeof(SourceBlock);
  for (TablePlan& tp : plan.tables) {
    tp.slots_offset = round_up(at, kSlotArrayAlign);
    at = tp.slots_offset + tp.slots_bytes;
    if (tp.aggregates.stride_words > 0) {
      tp.state_offset = round_up(at, kSlotAlign);
      tp.state_bytes = tp.slot_count * tp.aggregates.stride_words * 8;
      at = tp.state_offset + tp.state_bytes;
      tp.dedup_offset = round_up(at, kSlotAlign);
      at = tp.dedup_offset + tp.dedup_buckets * kDedupBucketBytes;
      if (tp.aggregates.chunk_words > 0) {
        tp.arena_offset = round_up(at, kSlotAlign);
        tp.arena_bytes = 8 * (kArenaHeaderWords + tp.arena_chunks * tp.aggregates.chunk_words);
        at = tp.arena_offset + tp.arena_bytes;
      }
    }
  }
  plan.segment_bytes = round_up(at, kSlotArrayAlign);
  return plan;
}

AggregatePlan plan_aggregates(const TableSpec& table) {
  AggregatePlan p;
  if (table.aggregates.empty()) return p;
  uint32_t at = kAggregateSlotHeaderWords;
  for (const AggregateSpec& a : table.aggregates) {
    const int64_t r = table.resolution_of(a);
    if (!a.source.empty() && std::find(p.sources.begin(), p.sources.end(), a.source) == p.sources.end()) {
      p.sources.push_back(a.source);
    }
    if (a.counts_events()) {  // count windows and sequences: aggregate_events_plan.cc
      plan_event_output(table, a, p);
      continue;
    }
    uint32_t g = 0;
    while (g < p.groups.size() && !(p.groups[g].source == a.source && p.groups[g].resolution_ms == r)) ++g;
    if (g == p.groups.size()) {
      AggregatePlan::Group group;
      group.source = a.source;
      group.resolution_ms = r;
      p.groups.push_back(std::move(group));
    }
    AggregatePlan::Group& group = p.groups[g];
    uint32_t w = 0;
    while (w < group.windows.size() && !(group.windows[w].window_ms == a.window_ms && group.windows[w].end == a.end))
      ++w;
    if (w == group.windows.size()) {
      AggregatePlan::Window win;
      win.window_ms = a.window_ms;
      win.buckets = r > 0 ? a.window_ms / r : 0;
      win.end = a.end;
      group.windows.push_back(win);
    }
    group.ring_buckets = std::max(group.ring_buckets, r > 0 ? a.window_ms / r : 0);
    const uint32_t stats = aggregate_bucket_stats(a.fn);
    group.sum |= (stats & kBucketSum) != 0;
    group.sumsq |= (stats & kBucketM2) != 0;
    group.min |= (stats & kBucketMin) != 0;
    group.max |= (stats & kBucketMax) != 0;
    group.last |= a.fn == AggregateFn::kLast;
    group.distinct |= a.fn == AggregateFn::kDistinctCount;
    AggregatePlan::Output out;
    out.field = static_cast<uint32_t>(table.fields.size() + p.outputs.size());
    out.group = g;
    out.window = w;
    out.fn = a.fn;
    out.ddof = a.ddof;
    p.outputs.push_back(out);
  }
  // Words one change may store: the slot header and a dedup entry, and per
  // group its header twice, each window three times (moved on the clock,
  // moved on a new newest bucket, folded) and one bucket twice (reset, fold).
  uint32_t journal = 2 * kAggregateSlotHeaderWords + 2 * kDedupWays;
  // Every group's header and windows first: an event touches all of them,
  // so they share a few adjacent cache lines; then the rings, of which an
  // event touches one bucket each.
  for (AggregatePlan::Group& g : p.groups) {
    g.bucket_words = aggregate_bucket_words(g.stats());
    g.offset = at;
    at += kAggregateGroupHeaderWords;
    for (AggregatePlan::Window& w : g.windows) {
      w.offset = at;
      at += kAggregateWindowWords;
    }
  }
  p.hot_words = at;
  for (AggregatePlan::Group& g : p.groups) {
    g.inline_buckets = static_cast<uint32_t>(std::min<int64_t>(g.ring_buckets, kInlineBuckets));
    g.ring_offset = at;
    at += g.inline_buckets * g.bucket_words;
    journal += 2 * kAggregateGroupHeaderWords + 3 * kAggregateWindowWords * static_cast<uint32_t>(g.windows.size()) +
               2 * g.bucket_words;
    if (g.sparse()) {
      // A demotion (on the clock) and a promotion (on the event) in one
      // change: each rewrites every inline bucket, and moves the chunk
      // word, a free chunk's link and the arena's head, count and peak.
      journal += 2 * (g.inline_buckets * g.bucket_words + 5);
      p.chunk_words = std::max(p.chunk_words, g.chunk_words());
      ++p.sparse_groups;
    }
  }
  // The distinct areas, coldest: an event stores the dropped word, one entry,
  // and one slice's tag and a register, after resetting that slice.
  for (AggregatePlan::Group& g : p.groups) {
    if (!g.distinct) continue;
    g.distinct_offset = at;
    g.slice_buckets = distinct_slice_buckets(g.ring_buckets);
    at += kDistinctAreaWords;
    journal += 1 + kDistinctEntryWords + 2 * kDistinctSliceWords;
  }
  place_event_stores(p, &at, &journal);  // aggregate_events_plan.cc
  p.stride_words = at;
  p.journal_words = journal;
  return p;
}

}  // namespace larder::layout
