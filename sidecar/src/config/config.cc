// YAML config loading and validation (see config.h). Main thread, at start.
#include "config/config.h"

#include <fmt/format.h>
#include <regex.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <initializer_list>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "config/config_yaml.h"
#include "config/format.h"
#include "config/http_url.h"
#include "larder/layout/error.h"
#include "larder/layout/format.h"

namespace larder::sidecar {
namespace {

using config_yaml::each_item;
using config_yaml::fail;
using config_yaml::join;
using config_yaml::MapNode;
using config_yaml::present;

std::string read_file_trimmed(const std::string& path, const std::string& key) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(key, fmt::format("cannot read \"{}\"", path));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

// Passwords and tokens. With ConfigLoad::require_secrets false, one that
// cannot be read is a warning rather than an error: the config is being
// checked or sized where the secret is not available.
struct Secrets {
  bool required = true;
  std::vector<std::string>* warnings = nullptr;

  // False (and a warning) when `file` cannot be read and secrets are optional.
  bool available(const std::string& file, const std::string& key) const {
    if (required || ::access(file.c_str(), R_OK) == 0) return true;
    warnings->push_back(fmt::format("{}: cannot read \"{}\" (the sidecar needs it to start)", key, file));
    return false;
  }
};

void require_readable(const std::string& file, const std::string& key) {
  if (::access(file.c_str(), R_OK) != 0) fail(key, fmt::format("cannot read \"{}\"", file));
}

SegmentConfig parse_segment(const YAML::Node& node) {
  if (!node.IsDefined()) fail("segment", "required (name, dir, mode, full_check, on_schema_change, grow_at, ...)");
  MapNode m(node, "segment",
            {"name", "dir", "mode", "full_check", "on_schema_change", "grow_at", "grow_factor", "max_capacity",
             "huge_pages"});
  SegmentConfig s;
  s.name = m.str("name");
  if (!layout::valid_identifier(s.name)) {
    fail(m.child("name"),
         fmt::format("\"{}\" is not a valid name ([A-Za-z0-9_.-], 1..63 bytes, not starting with '.' or '-')", s.name));
  }
  s.dir = m.str("dir", "/dev/shm");
  if (s.dir.empty() || s.dir[0] != '/') fail(m.child("dir"), "must be an absolute path");
  const std::string mode = m.str("mode", "0640");
  bool ok = !mode.empty() && mode.size() <= 4;
  uint32_t v = 0;
  for (char c : mode) {
    ok = ok && c >= '0' && c <= '7';
    v = v * 8 + static_cast<uint32_t>(c - '0');
  }
  if (!ok || v > 0777)
    fail(m.child("mode"), fmt::format("expected an octal file mode such as \"0640\", got \"{}\"", mode));
  if ((v & 0600) != 0600) fail(m.child("mode"), "the owner (the sidecar) needs read and write: use 06x0");
  s.mode = v;
  s.full_check = m.boolean("full_check", false);
  const std::string on_change = m.str("on_schema_change", "refuse");
  if (on_change != "refuse" && on_change != "migrate") {
    fail(m.child("on_schema_change"), fmt::format("expected refuse or migrate, got \"{}\"", on_change));
  }
  s.migrate_on_schema_change = on_change == "migrate";
  s.grow_at = m.number("grow_at", 0, 0.0, 1.0);
  s.grow_factor = m.number("grow_factor", 2, 1.0, 64.0, true);
  s.max_capacity = m.integer("max_capacity", 0, 0, uint64_t{1} << 36);
  s.huge_pages = m.str("huge_pages", "auto");
  if (s.huge_pages != "auto" && s.huge_pages != "collapse" && s.huge_pages != "off") {
    fail(m.child("huge_pages"), fmt::format("expected auto, collapse or off, got \"{}\"", s.huge_pages));
  }
  return s;
}

// Durations: "500ms", "90s", "5m", "1h", "7d", or an integer of milliseconds.
// Longer than ten years is refused (no setting needs it, and it keeps every
// product below far from overflow).
constexpr int64_t kMaxDurationMs = 10LL * 366 * 24 * 3600 * 1000;

std::optional<int64_t> duration_ms(const MapNode& m, const char* key) {
  if (!m.has(key)) return std::nullopt;
  const std::string s = m.scalar(key);
  size_t digits = 0;
  while (digits < s.size() && s[digits] >= '0' && s[digits] <= '9') ++digits;
  const std::string_view unit = std::string_view(s).substr(digits);
  int64_t scale = 0;
  if (unit.empty() || unit == "ms") {
    scale = 1;
  } else if (unit == "s") {
    scale = 1000;
  } else if (unit == "m") {
    scale = 60 * 1000;
  } else if (unit == "h") {
    scale = 3600 * 1000;
  } else if (unit == "d") {
    scale = 24 * 3600 * 1000;
  }
  if (digits == 0 || scale == 0) {
    fail(m.child(key), fmt::format("expected a duration such as 500ms, 90s, 5m, 1h, 7d or an integer number of "
                                   "milliseconds, got \"{}\"",
                                   s));
  }
  const uint64_t n = digits > 15 ? ~uint64_t{0} : std::stoull(s.substr(0, digits));
  if (n > static_cast<uint64_t>(kMaxDurationMs / scale)) fail(m.child(key), fmt::format("\"{}\" is too long", s));
  return static_cast<int64_t>(n) * scale;
}

// 9999-12-31T23:59:59.999Z, the largest event time the message format accepts.
constexpr int64_t kMaxMinEventTimeMs = 253402300799999;

// A resolution that divides `window_ms` into at most kMaxBucketsPerWindow
// buckets, preferring about 60 (for error messages).
int64_t suggest_resolution(int64_t window_ms) {
  for (int64_t n = 60; n <= layout::kMaxBucketsPerWindow; ++n) {
    if (window_ms % n == 0) return window_ms / n;
  }
  for (int64_t n = 59; n > 1; --n) {
    if (window_ms % n == 0) return window_ms / n;
  }
  return window_ms;
}

// The JSON value an event member must hold for one of the targets that read
// it. All targets of one member must agree (a bool may also feed a source,
// and a distinct_count takes whatever scalar the member holds).
enum class InputKind : uint8_t { kNumber, kString, kBool, kArray, kNumberOrBool, kScalar };

const char* input_kind_text(InputKind k) {
  switch (k) {
    case InputKind::kNumber: return "a number";
    case InputKind::kString: return "a string";
    case InputKind::kBool: return "true/false";
    case InputKind::kArray: return "an array of numbers";
    case InputKind::kNumberOrBool: return "a number (or true/false)";
    case InputKind::kScalar: return "a string, an integer or true/false";
  }
  return "?";
}

bool compatible(InputKind a, InputKind b) {
  if (a == b) return true;
  if (a == InputKind::kScalar) std::swap(a, b);
  if (b == InputKind::kScalar) return a != InputKind::kArray;
  if (a == InputKind::kNumberOrBool) std::swap(a, b);
  return b == InputKind::kNumberOrBool && (a == InputKind::kNumber || a == InputKind::kBool);
}

struct InputUse {
  InputKind kind;
  std::string who;    // e.g. `field "country" (fields[0])`
  uint32_t dims = 0;  // kArray: the number of elements it reads
};

// Records that `who` reads member `input` as `kind`; fails at `path` when an
// earlier reader of the same member expects another JSON type.
void use_input(std::map<std::string, std::vector<InputUse>>& uses, const std::string& input, InputKind kind,
               const std::string& who, const std::string& path, uint32_t dims = 0) {
  std::vector<InputUse>& list = uses[input];
  for (const InputUse& u : list) {
    if (kind == InputKind::kArray && u.kind == kind && dims != u.dims) {
      fail(path, fmt::format("input \"{}\" is read as an array of {} numbers by {} but of {} by {}; a member holds "
                             "one array: make them agree",
                             input, dims, who, u.dims, u.who));
    }
    if (!compatible(u.kind, kind)) {
      fail(path, fmt::format("input \"{}\" is read as {} by {} but as {} by {}; a member holds one JSON type: "
                             "make them agree, or have producers send the other value under its own member name",
                             input, input_kind_text(kind), who, input_kind_text(u.kind), u.who));
    }
  }
  list.push_back(InputUse{kind, who, dims});
}

const char* const kAggregateFns =
    "count, sum, mean (avg), min, max, last, variance (var), stddev (std), distinct_count (distinct), last_n, "
    "first";

// What parse_table learns about a table's names while it reads them, so that
// later parts can refer back to earlier ones in their errors.
struct TableNames {
  std::string path;                                   // the table's key path, e.g. "tables[0]"
  std::map<std::string, size_t> field_index;          // field name -> fields[i]
  std::map<std::string, size_t> aggregate_index;      // aggregate name -> aggregates[i]
  std::map<std::string, std::vector<InputUse>> uses;  // event member -> who reads it, as what
  std::vector<std::string> from_paths;                // per field: the key path of its input, for errors
  std::vector<std::string> source_paths;              // per aggregate: the key path of its source
};

// The JSON type a field reads from its member, before any transform.
InputKind field_input_kind(layout::FieldType type) {
  switch (type) {
    case layout::FieldType::kInt64:
    case layout::FieldType::kFloat64:
    case layout::FieldType::kFloat32: return InputKind::kNumber;
    case layout::FieldType::kString: return InputKind::kString;
    case layout::FieldType::kBool: return InputKind::kBool;
    case layout::FieldType::kFloat32Vector: return InputKind::kArray;
  }
  return InputKind::kArray;  // not reached: parse_field_type gives the types above
}

// One `fields` entry: appends it to t.spec.fields and t.ingest.
// A field's or aggregate's `group` (docs/sidecar.md#field-groups); "" when
// it names none.
std::string parse_group(const MapNode& m) {
  if (!m.has("group")) return "";
  std::string group = m.str("group");
  if (!layout::valid_identifier(group)) {
    fail(m.child("group"), fmt::format("\"{}\" is not a valid group name ([A-Za-z0-9_.-], 1..63 bytes)", group));
  }
  return group;
}

void parse_field(const YAML::Node& fnode, const std::string& fpath, TableConfig& t, TableNames& names) {
  MapNode f(fnode, fpath, {"name", "type", "dims", "max_len", "from", "transform", "group", "default", "convert_from"});
  layout::FieldSpec spec;
  spec.name = f.str("name");
  if (!layout::valid_identifier(spec.name)) {
    fail(f.child("name"), fmt::format("\"{}\" is not a valid name ([A-Za-z0-9_.-], 1..63 bytes)", spec.name));
  }
  if (!names.field_index.emplace(spec.name, t.spec.fields.size()).second) {
    fail(f.child("name"), fmt::format("duplicate field \"{}\"", spec.name));
  }
  const std::string type = f.str("type");
  if (!layout::parse_field_type(type, &spec.type)) {
    fail(f.child("type"),
         fmt::format("unknown type \"{}\" (expected int64, float64, float32, bool, vector, string)", type));
  }
  if (spec.type == layout::FieldType::kFloat32Vector) {
    spec.count = static_cast<uint32_t>(f.integer("dims", std::nullopt, 1, layout::kMaxVectorDims));
  } else if (f.has("dims")) {
    fail(f.child("dims"), "only vector fields have dims");
  }
  if (spec.type == layout::FieldType::kString) {
    spec.count = static_cast<uint32_t>(f.integer("max_len", std::nullopt, 1, layout::kMaxStringLength));
  } else if (f.has("max_len")) {
    fail(f.child("max_len"), "only string fields have max_len");
  }
  spec.group = parse_group(f);
  // Schema changes by a generation switch (segment.on_schema_change: migrate);
  // the writer checks the value against the type when it starts the switch.
  if (f.has("default")) {
    const YAML::Node d = f.node("default");
    if (d.IsSequence()) {
      std::string text;
      for (const YAML::Node& item : d) {
        if (!item.IsScalar()) fail(f.child("default"), "expected numbers");
        text += (text.empty() ? "" : ",") + item.Scalar();
      }
      spec.default_value = text;
    } else {
      spec.default_value = f.str("default");
    }
  }
  if (f.has("convert_from")) {
    const std::string from = f.str("convert_from");
    layout::FieldType ft{};
    if (!layout::parse_field_type(from, &ft)) {
      fail(f.child("convert_from"),
           fmt::format("unknown type \"{}\" (expected int64, float64, float32, bool, vector, string)", from));
    }
    spec.convert_from = ft;
  }

  FieldIngest ingest;
  if (f.has("from") && f.node("from").IsSequence()) {
    each_item(f.node("from"), f.child("from"), true, [&](const YAML::Node& m, const std::string& mpath) {
      const std::string member = m.IsScalar() ? m.Scalar() : std::string();
      if (!layout::valid_identifier(member)) {
        fail(mpath, fmt::format("\"{}\" is not a valid member name ([A-Za-z0-9_.-], 1..63 bytes)", member));
      }
      const auto dup = std::find(ingest.from_members.begin(), ingest.from_members.end(), member);
      if (dup != ingest.from_members.end()) {
        fail(mpath, fmt::format("\"{}\" twice (also from[{}])", member, dup - ingest.from_members.begin()));
      }
      ingest.from_members.push_back(member);
    });
    if (ingest.from_members.empty()) fail(f.child("from"), "needs at least one member");
  } else if (f.has("from")) {
    ingest.from = f.str("from");
    if (!layout::valid_identifier(ingest.from)) {
      fail(f.child("from"),
           fmt::format("\"{}\" is not a valid member name ([A-Za-z0-9_.-], 1..63 bytes)", ingest.from));
    }
    if (ingest.from == spec.name) ingest.from.clear();  // the default, spelled out
  }
  ingest.transform = TransformChain::parse(f.node("transform"), f.child("transform"));
  InputKind kind = field_input_kind(spec.type);
  uint32_t input_dims = spec.type == layout::FieldType::kFloat32Vector ? spec.count : 0;
  if (!ingest.transform.empty()) {
    const TransformChain& chain = ingest.transform;
    const char* last = transform_kind_name(chain.steps().back().kind);
    switch (chain.output()) {
      case TransformOutput::kVector:
        if (spec.type != layout::FieldType::kFloat32Vector) {
          fail(f.child("transform"), fmt::format("the chain ends in {}, which gives a vector of {} numbers, but field "
                                                 "\"{}\" is {}: declare it vector with dims: {}",
                                                 last, chain.output_dims(), spec.name, type, chain.output_dims()));
        }
        if (chain.output_dims() != spec.count) {
          fail(f.child("dims"), fmt::format("the chain ends in {}, which gives {} numbers, but dims is {}", last,
                                            chain.output_dims(), spec.count));
        }
        break;
      case TransformOutput::kBool:
        if (spec.type != layout::FieldType::kBool) {
          fail(f.child("transform"), fmt::format("the chain ends in one_hot with index, which gives a bool, but "
                                                 "field \"{}\" is {}: declare it bool",
                                                 spec.name, type));
        }
        break;
      case TransformOutput::kInt64:
      case TransformOutput::kFloat64:
        if (kind != InputKind::kNumber) {
          fail(f.child("transform"),
               fmt::format("{} fields take no transform that ends in {}: it gives a number, stored in an int64, "
                           "float64 or float32 field (a vocabulary reads a string input: declare the field int64 "
                           "with from: the string member)",
                           type, last));
        }
        if (spec.type == layout::FieldType::kInt64 && chain.output() == TransformOutput::kFloat64) {
          fail(f.child("transform"),
               fmt::format("the chain ends in {}, which gives a float64, but field \"{}\" is int64: declare the "
                           "field float64 (or float32), or end the chain with bucketize",
                           last, spec.name));
        }
        break;
    }
    switch (chain.input()) {
      case TransformInput::kNumber: kind = InputKind::kNumber; break;
      case TransformInput::kString: kind = InputKind::kString; break;
      case TransformInput::kVector:
        kind = InputKind::kArray;
        input_dims = static_cast<uint32_t>(chain.input_dims());
        break;
    }
  }
  if (!ingest.from_members.empty()) {
    // Several members make the array a projection reads.
    const TransformChain& chain = ingest.transform;
    if (chain.input() != TransformInput::kVector || chain.input_dims() != ingest.from_members.size()) {
      fail(f.child("from"), fmt::format("a list of {} members makes an array for a project step of {} columns; "
                                        "the field needs transform: [{{project: ...}}] with {} columns",
                                        ingest.from_members.size(), chain.input_dims(), ingest.from_members.size()));
    }
    names.from_paths.push_back(f.child("from"));
    for (size_t k = 0; k < ingest.from_members.size(); ++k) {
      use_input(names.uses, ingest.from_members[k], InputKind::kNumber,
                fmt::format("field \"{}\" ({})", spec.name, fpath.substr(names.path.size() + 1)),
                fmt::format("{}[{}]", f.child("from"), k));
    }
    t.spec.fields.push_back(std::move(spec));
    t.ingest.push_back(std::move(ingest));
    return;
  }
  const std::string input = ingest.from.empty() ? spec.name : ingest.from;
  names.from_paths.push_back(f.child(f.has("from") ? "from" : "name"));
  use_input(names.uses, input, kind, fmt::format("field \"{}\" ({})", spec.name, fpath.substr(names.path.size() + 1)),
            names.from_paths.back(), input_dims);
  t.spec.fields.push_back(std::move(spec));
  t.ingest.push_back(std::move(ingest));
}

// `from` names an event member. A member that is also a declared field
// computed from elsewhere would read the raw member, not that field's
// result, which is never what was meant.
void check_from_is_not_computed(const TableConfig& t, const TableNames& names) {
  for (size_t i = 0; i < t.ingest.size(); ++i) {
    std::vector<std::string> members = t.ingest[i].from_members;
    if (!t.ingest[i].from.empty()) members.push_back(t.ingest[i].from);
    for (const std::string& from : members) {
      const auto it = names.field_index.find(from);
      if (it == names.field_index.end()) continue;
      const FieldIngest& other = t.ingest[it->second];
      if (!other.from_members.empty()) {
        fail(names.from_paths[i], fmt::format("\"{}\" is a field projected from several members; from names an "
                                              "event member, not another field's result",
                                              from));
      }
      if (other.from.empty()) continue;
      fail(names.from_paths[i],
           fmt::format("\"{}\" is a field computed from \"{}\"; from names an event member, not another "
                       "field's result: use from: {} (and repeat that field's steps)",
                       from, other.from, other.from));
    }
  }
}

// An aggregate's `source`: a numeric field of the table, or an event member
// (recorded as read as a number). Only count may omit it.
void parse_aggregate_source(const MapNode& a, const std::string& apath, layout::AggregateSpec& spec,
                            const TableConfig& t, TableNames& names) {
  if (a.has("source")) {
    spec.source = a.str("source");
    if (!layout::valid_identifier(spec.source)) {
      fail(a.child("source"), fmt::format("\"{}\" is not a valid name ([A-Za-z0-9_.-], 1..63 bytes)", spec.source));
    }
    if (const auto f = names.field_index.find(spec.source); f != names.field_index.end()) {
      // The aggregate folds that field's value (after its transform).
      const layout::FieldType type = t.spec.fields[f->second].type;
      if (spec.fn == layout::AggregateFn::kCount && type == layout::FieldType::kString) {
        // Counts the events that carry it.
      } else if (spec.fn == layout::AggregateFn::kDistinctCount) {
        if (type == layout::FieldType::kFloat64 || type == layout::FieldType::kFloat32 ||
            type == layout::FieldType::kFloat32Vector) {
          fail(a.child("source"),
               fmt::format("\"{}\" is a {} field; distinct_count compares values for equality: name a string, int64 "
                           "or bool field (bucketize a float into an int64 field first)",
                           spec.source, layout::field_type_name(type)));
        }
      } else if (type == layout::FieldType::kString || type == layout::FieldType::kFloat32Vector) {
        fail(a.child("source"),
             fmt::format("\"{}\" is a {} field; an aggregate folds numbers: name an int64, float64, float32 or "
                         "bool field, or an event member that holds numbers (count and distinct_count also take "
                         "a string)",
                         spec.source, layout::field_type_name(type)));
      }
    } else {
      // A count reads the member as a number unless a distinct_count of it
      // makes it any scalar (the decoder decides from all its readers).
      use_input(names.uses, spec.source,
                spec.fn == layout::AggregateFn::kDistinctCount ? InputKind::kScalar : InputKind::kNumberOrBool,
                fmt::format("aggregate \"{}\" ({})", spec.name, apath.substr(names.path.size() + 1)),
                a.child("source"));
    }
  } else if (spec.fn != layout::AggregateFn::kCount) {
    fail(a.child("source"),
         fmt::format("required for {}: the event member (or field) whose values it folds; only count may omit it",
                     layout::aggregate_fn_name(spec.fn)));
  }
  names.source_paths.push_back(a.child("source"));
}

// An aggregate's `window` and `resolution`: the window within bounds, the
// resolution (given or default) a divisor of it into few enough buckets.
void parse_aggregate_window(const MapNode& a, layout::AggregateSpec& spec) {
  const std::optional<int64_t> window = duration_ms(a, "window");
  if (!window) fail(a.child("window"), "required (e.g. 1h)");
  spec.window_ms = *window;
  if (spec.window_ms < layout::kMinWindowMs || spec.window_ms > layout::kMaxWindowMs) {
    fail(a.child("window"), fmt::format("{} is outside {}..{}", format_duration(spec.window_ms),
                                        format_duration(layout::kMinWindowMs), format_duration(layout::kMaxWindowMs)));
  }
  const std::optional<int64_t> resolution = duration_ms(a, "resolution");
  if (resolution) {
    if (*resolution <= 0) fail(a.child("resolution"), "must be > 0");
    if (spec.window_ms % *resolution != 0) {
      fail(a.child("resolution"),
           fmt::format("window {} is not a multiple of resolution {}; pick a resolution that divides it (e.g. {})",
                       format_duration(spec.window_ms), format_duration(*resolution),
                       format_duration(suggest_resolution(spec.window_ms))));
    }
    spec.resolution_ms = *resolution;
  }
  const int64_t effective = resolution ? *resolution : layout::default_resolution_ms(spec.window_ms);
  if (effective <= 0) {
    fail(a.child("window"),
         fmt::format("{} has no default resolution (no whole number of milliseconds divides it into 60..{} "
                     "buckets): set resolution to a divisor of the window (e.g. {}), or use a rounder window",
                     format_duration(spec.window_ms), layout::kMaxBucketsPerWindow,
                     format_duration(suggest_resolution(spec.window_ms))));
  }
  if (spec.window_ms / effective > layout::kMaxBucketsPerWindow) {
    fail(a.child(resolution ? "resolution" : "window"),
         fmt::format("window {} / resolution {} is {} buckets; at most {}: {} a resolution of {} or another "
                     "divisor of the window",
                     format_duration(spec.window_ms), format_duration(effective), spec.window_ms / effective,
                     layout::kMaxBucketsPerWindow, resolution ? "use" : "set",
                     format_duration(suggest_resolution(spec.window_ms))));
  }
}

// Count windows (`window: 10 events`) and sequences (`fn: last_n, n: 20`):
// fills window_events and min_periods; false for a time window.
bool parse_event_window(const MapNode& a, layout::AggregateSpec& spec) {
  const uint64_t max = layout::kMaxWindowEvents;
  if (spec.fn == layout::AggregateFn::kLastN) {
    if (a.has("window")) fail(a.child("window"), "last_n takes n (the values it keeps), not a window");
    spec.window_events = static_cast<uint32_t>(a.integer("n", std::nullopt, 1, max));
  } else {
    if (!a.has("window")) return false;
    const std::string w = a.scalar("window");
    const size_t unit = w.find_first_not_of("0123456789");
    if (unit == std::string::npos || w.find_first_not_of(' ', unit) == std::string::npos ||
        w.substr(w.find_first_not_of(' ', unit)) != "events") {
      return false;
    }
    if (spec.fn == layout::AggregateFn::kDistinctCount) {
      fail(a.child("window"), "distinct_count takes a time window (e.g. 1h), not a count of events");
    }
    if (a.has("resolution")) fail(a.child("resolution"), "a count window has no buckets");
    const std::string digits = w.substr(0, unit);
    const uint64_t n = digits.empty() || digits.size() > 6 ? 0 : std::stoull(digits);
    if (n < 1 || n > max) {
      fail(a.child("window"), fmt::format("{} events is outside 1..{} events", digits.empty() ? "0" : digits, max));
    }
    spec.window_events = static_cast<uint32_t>(n);
  }
  if (a.has("end")) fail(a.child("end"), "a count window or last_n always ends at the key's newest event");
  spec.min_periods = static_cast<uint32_t>(a.integer("min_periods", 0, 1, spec.window_events));
  return true;
}

// One `aggregates` entry: appends it to t.spec.aggregates.
void parse_aggregate(const YAML::Node& anode, const std::string& apath, TableConfig& t, TableNames& names) {
  MapNode a(anode, apath, {"name", "source", "fn", "window", "resolution", "end", "group", "min_periods", "ddof", "n"});
  layout::AggregateSpec spec;
  spec.name = a.str("name");
  if (!layout::valid_identifier(spec.name)) {
    fail(a.child("name"), fmt::format("\"{}\" is not a valid name ([A-Za-z0-9_.-], 1..63 bytes)", spec.name));
  }
  if (const auto f = names.field_index.find(spec.name); f != names.field_index.end()) {
    fail(a.child("name"), fmt::format("\"{}\" is already a field (fields[{}]); an aggregate is published as a field "
                                      "of its own name, so the names must differ",
                                      spec.name, f->second));
  }
  if (const auto d = names.aggregate_index.find(spec.name); d != names.aggregate_index.end()) {
    fail(a.child("name"), fmt::format("duplicate aggregate \"{}\" (also aggregates[{}])", spec.name, d->second));
  }
  names.aggregate_index.emplace(spec.name, t.spec.aggregates.size());

  const std::string fn = a.str("fn");
  if (!layout::parse_aggregate_fn(fn, &spec.fn)) {
    fail(a.child("fn"), fmt::format("unknown fn \"{}\" (expected {})", fn, kAggregateFns));
  }
  parse_aggregate_source(a, apath, spec, t, names);
  if (spec.fn == layout::AggregateFn::kVariance || spec.fn == layout::AggregateFn::kStddev) {
    spec.ddof = static_cast<uint32_t>(a.integer("ddof", 0, 0, 1));
  } else if (a.has("ddof")) {
    fail(a.child("ddof"), "only variance and stddev take it");
  }
  if (parse_event_window(a, spec)) {  // a count window or a sequence
    spec.group = parse_group(a);
    t.spec.aggregates.push_back(std::move(spec));
    return;
  }
  if (a.has("min_periods")) fail(a.child("min_periods"), "only count windows (window: N events) and last_n take it");
  if (a.has("n")) fail(a.child("n"), "only last_n takes it");
  if (spec.fn == layout::AggregateFn::kFirst) {
    fail(a.child("window"), "first needs a count window (e.g. window: 10 events)");
  }
  parse_aggregate_window(a, spec);
  const std::string end = a.str("end", "now");
  if (end == "now") {
    spec.end = layout::WindowEnd::kNow;
  } else if (end == "latest_event") {
    spec.end = layout::WindowEnd::kLatestEvent;
  } else {
    fail(a.child("end"), fmt::format("unknown end \"{}\" (expected now or latest_event)", end));
  }
  spec.group = parse_group(a);
  t.spec.aggregates.push_back(std::move(spec));
}

// Aggregates fold event values: neither an aggregate's source nor a field's
// `from` may name an aggregate. Also the per-table counts.
void check_aggregate_references(const MapNode& m, const TableConfig& t, const TableNames& names) {
  for (size_t i = 0; i < t.spec.aggregates.size(); ++i) {
    const std::string& source = t.spec.aggregates[i].source;
    if (const auto d = names.aggregate_index.find(source); d != names.aggregate_index.end()) {
      fail(names.source_paths[i], fmt::format("\"{}\" is an aggregate (aggregates[{}]); an aggregate folds event "
                                              "values, not other aggregates",
                                              source, d->second));
    }
  }
  for (size_t i = 0; i < t.ingest.size(); ++i) {
    std::vector<std::string> members = t.ingest[i].from_members;
    members.push_back(t.ingest[i].from);
    for (const std::string& from : members) {
      if (const auto d = names.aggregate_index.find(from); !from.empty() && d != names.aggregate_index.end()) {
        fail(names.from_paths[i],
             fmt::format("\"{}\" is an aggregate (aggregates[{}]); from names an event member", from, d->second));
      }
    }
  }
  if (t.spec.aggregates.size() > layout::kMaxAggregates) {
    fail(m.child("aggregates"),
         fmt::format("{} aggregates; a table has at most {}", t.spec.aggregates.size(), layout::kMaxAggregates));
  }
  if (t.spec.fields.size() + t.spec.aggregates.size() > layout::kMaxFields) {
    fail(m.child("aggregates"), fmt::format("{} fields and {} aggregates; together at most {}", t.spec.fields.size(),
                                            t.spec.aggregates.size(), layout::kMaxFields));
  }
}

// An event rate: "50" or "50/s" (per second), "3000/m", "200000/h", "4000000/d".
double parse_rate(const std::string& text, const std::string& key) {
  const size_t slash = text.find('/');
  const std::string number = text.substr(0, slash);
  const std::string unit = slash == std::string::npos ? "s" : text.substr(slash + 1);
  double per = 0;
  if (unit == "s") {
    per = 1;
  } else if (unit == "m") {
    per = 60;
  } else if (unit == "h") {
    per = 3600;
  } else if (unit == "d") {
    per = 86400;
  }
  char* end = nullptr;
  const double n = number.empty() ? -1 : std::strtod(number.c_str(), &end);
  if (per == 0 || end == nullptr || *end != '\0' || !(n > 0) || n > 1e12) {
    fail(key, fmt::format("expected events per second such as 50, or a rate such as 50/s, 3000/m, 200000/h, "
                          "4000000/d, got \"{}\"",
                          text));
  }
  return n / per;
}

// `allowed_lateness`, `dedup` and `arena_chunks`: only for tables with
// aggregates; lateness within the longest window, the dedup horizon at least
// the lateness.
void parse_lateness_and_dedup(const MapNode& m, TableConfig& t) {
  // The default lateness, and the bound of a given one (30 days with count
  // windows, which have no time span of their own).
  const int64_t longest = t.spec.aggregates.empty() ? 0 : t.spec.lateness_ms();
  if (const std::optional<int64_t> lateness = duration_ms(m, "allowed_lateness")) {
    if (t.spec.aggregates.empty()) fail(m.child("allowed_lateness"), "only tables with aggregates take it");
    if (*lateness <= 0) fail(m.child("allowed_lateness"), "must be > 0 (leave it out for the longest window)");
    if (*lateness > t.spec.max_lateness_ms()) {
      fail(m.child("allowed_lateness"),
           fmt::format("{} is longer than the longest window ({}): an event that old counts in no window",
                       format_duration(*lateness), format_duration(t.spec.max_lateness_ms())));
    }
    t.spec.allowed_lateness_ms = *lateness;
  }
  if (m.has("dedup")) {
    const MapNode d(m.node("dedup"), m.child("dedup"), {"horizon", "capacity", "expected_rate"});
    if (t.spec.aggregates.empty()) {
      fail(m.child("dedup"), "only tables with aggregates take it (plain fields are idempotent without it)");
    }
    const int64_t lateness = t.spec.allowed_lateness_ms > 0 ? t.spec.allowed_lateness_ms : longest;
    if (const std::optional<int64_t> horizon = duration_ms(d, "horizon")) {
      if (*horizon < lateness) {
        fail(d.child("horizon"),
             fmt::format("{} is shorter than the allowed lateness ({}{}): a redelivered event could be too old for "
                         "the duplicate check yet young enough to count again; use at least {}",
                         format_duration(*horizon), format_duration(lateness),
                         t.spec.allowed_lateness_ms > 0 ? "" : ", the longest window", format_duration(lateness)));
      }
      t.spec.dedup_horizon_ms = *horizon;
    }
    t.spec.dedup_capacity = d.integer("capacity", 0, 1, uint64_t{1} << 32);
    if (d.has("expected_rate"))
      t.expected_events_per_s = parse_rate(d.scalar("expected_rate"), d.child("expected_rate"));
  }
  if (m.has("arena_chunks")) {
    if (t.spec.aggregates.empty()) fail(m.child("arena_chunks"), "only tables with aggregates take it");
    t.spec.arena_chunks = m.integer("arena_chunks", 0, 1, layout::kMaxArenaChunks);
  }
}

// An `event_time` section (top level, or a table's), over `base`:
//   max_future_skew: a duration, or off
//   min_event_time: YYYY-MM-DD (UTC midnight), or an integer of ms since the epoch (0: off)
EventTimeBounds parse_event_time_bounds(const YAML::Node& node, const std::string& path, EventTimeBounds base) {
  MapNode m(node, path, {"max_future_skew", "min_event_time"});
  if (m.has("max_future_skew")) {
    if (m.scalar("max_future_skew") == "off") {
      base.max_future_skew_ms = EventTimeBounds::kOff;
    } else {
      base.max_future_skew_ms = *duration_ms(m, "max_future_skew");
    }
  }
  if (m.has("min_event_time")) {
    const std::string s = m.scalar("min_event_time");
    bool digits_only = !s.empty() && s.size() <= 15;
    for (char ch : s) digits_only = digits_only && ch >= '0' && ch <= '9';
    int year = 0;
    unsigned month = 0, day = 0;
    char tail = 0;
    if (digits_only) {
      base.min_event_time_ms = static_cast<int64_t>(std::stoull(s));
    } else if (s.size() == 10 && std::sscanf(s.c_str(), "%4d-%2u-%2u%c", &year, &month, &day, &tail) == 3 &&
               year >= 1970 && month >= 1 && month <= 12 && day >= 1 && day <= 31) {
      std::tm tm{};
      tm.tm_year = year - 1900;
      tm.tm_mon = static_cast<int>(month) - 1;
      tm.tm_mday = static_cast<int>(day);
      const time_t t = ::timegm(&tm);
      // timegm normalises 2023-02-30 to March 2nd: the date must round-trip.
      if (tm.tm_mday != static_cast<int>(day) || tm.tm_mon != static_cast<int>(month) - 1) {
        fail(m.child("min_event_time"), fmt::format("\"{}\" is not a date", s));
      }
      base.min_event_time_ms = static_cast<int64_t>(t) * 1000;
    } else {
      fail(m.child("min_event_time"),
           fmt::format("expected a date such as 2000-01-01 or an integer number of ms since the epoch, got \"{}\"", s));
    }
    if (base.min_event_time_ms > kMaxMinEventTimeMs) {
      fail(m.child("min_event_time"), fmt::format("\"{}\" is after 9999-12-31", s));
    }
  }
  return base;
}

// One `tables` entry. The parts run in this order, so the first bad setting
// of a table is the one reported: table settings, fields, their `from`s,
// aggregates, the references between them, lateness and dedup.
TableConfig parse_table(const YAML::Node& node, const std::string& path, const EventTimeBounds& global_bounds) {
  MapNode m(node, path,
            {"name", "key_max_len", "capacity", "max_load_factor", "allow_unknown_fields", "fields", "aggregates",
             "allowed_lateness", "dedup", "arena_chunks", "event_time"});
  TableConfig t;
  t.spec.name = m.str("name");
  if (!layout::valid_identifier(t.spec.name)) {
    fail(m.child("name"), fmt::format("\"{}\" is not a valid name ([A-Za-z0-9_.-], 1..63 bytes)", t.spec.name));
  }
  t.spec.key_max_len = static_cast<uint32_t>(m.integer("key_max_len", 64, 1, layout::kMaxKeyLength));
  t.spec.capacity = m.integer("capacity", std::nullopt, 1, uint64_t{1} << 32);
  t.spec.max_load_factor = m.number("max_load_factor", 0.75, 0.0, 0.95, true);
  t.allow_unknown_fields = m.boolean("allow_unknown_fields", false);
  t.event_time = parse_event_time_bounds(m.node("event_time"), m.child("event_time"), global_bounds);

  TableNames names;
  names.path = path;
  each_item(m.node("fields"), m.child("fields"), true,
            [&](const YAML::Node& fnode, const std::string& fpath) { parse_field(fnode, fpath, t, names); });
  if (t.spec.fields.empty()) fail(m.child("fields"), "a table needs at least one field");
  if (t.spec.fields.size() > layout::kMaxFields)
    fail(m.child("fields"), fmt::format("at most {} fields", layout::kMaxFields));
  check_from_is_not_computed(t, names);

  each_item(m.node("aggregates"), m.child("aggregates"), false,
            [&](const YAML::Node& anode, const std::string& apath) { parse_aggregate(anode, apath, t, names); });
  check_aggregate_references(m, t, names);
  if (const std::vector<std::string> groups = t.spec.group_names(); groups.size() > layout::kMaxFieldGroups) {
    std::string list;
    for (const std::string& g : groups) list += (list.empty() ? "" : ", ") + g;
    fail(m.child("fields"), fmt::format("{} field groups ({}; fields without a group are in \"{}\"), at most {}",
                                        groups.size(), list, layout::kDefaultGroup, layout::kMaxFieldGroups));
  }
  parse_lateness_and_dedup(m, t);
  return t;
}

QueueConfig parse_queue(const YAML::Node& node, const std::string& path) {
  if (!node.IsDefined()) fail(path, "required (name, type, ...)");
  MapNode m(node, path, {"name", "type", "durable", "delivery_limit", "stream_offset"});
  QueueConfig q;
  q.name = m.str("name");
  if (q.name.empty() || q.name.size() > 255) fail(m.child("name"), "must be 1..255 bytes");
  if (q.name.starts_with("amq.")) fail(m.child("name"), "names starting with \"amq.\" are reserved by RabbitMQ");
  const std::string type = m.str("type", "quorum");
  if (type == "quorum") {
    q.type = QueueType::kQuorum;
  } else if (type == "classic") {
    q.type = QueueType::kClassic;
  } else if (type == "stream") {
    q.type = QueueType::kStream;
  } else {
    fail(m.child("type"), fmt::format("unknown queue type \"{}\" (expected quorum, classic or stream)", type));
  }
  q.durable = m.boolean("durable", true);
  if (!q.durable && q.type != QueueType::kClassic)
    fail(m.child("durable"), fmt::format("{} queues are always durable", type));
  if (m.has("delivery_limit") && q.type != QueueType::kQuorum) {
    fail(m.child("delivery_limit"), "only quorum queues have a delivery limit");
  }
  q.delivery_limit = static_cast<uint32_t>(m.integer("delivery_limit", 5, 1, 1000000));
  if (m.has("stream_offset")) {
    if (q.type != QueueType::kStream) fail(m.child("stream_offset"), "only stream queues take a stream_offset");
    q.stream_offset = m.scalar("stream_offset");
    if (q.stream_offset != "first" && q.stream_offset != "last" && q.stream_offset != "next") {
      bool digits = !q.stream_offset.empty() && q.stream_offset.size() <= 18;
      for (char c : q.stream_offset) digits = digits && c >= '0' && c <= '9';
      if (!digits)
        fail(m.child("stream_offset"),
             fmt::format("expected first, last, next or an offset number, got \"{}\"", q.stream_offset));
      q.stream_offset_is_number = true;
      q.stream_offset_number = std::stoll(q.stream_offset);
    }
  }
  return q;
}

RabbitConfig parse_rabbitmq(const YAML::Node& node, const std::string& segment_name, const Secrets& secrets) {
  if (!node.IsDefined()) fail("rabbitmq", "required (url, password_env or password_file, queue, ...)");
  MapNode m(node, "rabbitmq",
            {"url", "password_env", "password_file", "queue", "bindings", "prefetch", "heartbeat_s", "tls",
             "dead_letter", "reconnect", "rpc_timeout_s", "drain_timeout_s", "connection_name", "format"});
  RabbitConfig r;
  r.format = parse_format(m.node("format"), m.child("format"));
  std::string error;
  const std::string url = m.str("url");
  if (!parse_amqp_url(url, &r.url, &error)) fail(m.child("url"), error);

  if (m.has("password_env") && m.has("password_file")) {
    fail("rabbitmq", "set password_env or password_file, not both");
  }
  if (m.has("password_env")) {
    const std::string var = m.scalar("password_env");
    const char* value = std::getenv(var.c_str());
    if (value == nullptr && secrets.required) {
      fail(m.child("password_env"), fmt::format("environment variable {} is not set", var));
    }
    if (value == nullptr) {
      secrets.warnings->push_back(fmt::format("{}: environment variable {} is not set (the sidecar needs it to start)",
                                              m.child("password_env"), var));
    }
    r.password = value != nullptr ? value : "";
    r.password_source = "env " + var;
  } else if (m.has("password_file")) {
    const std::string file = m.scalar("password_file");
    if (secrets.available(file, m.child("password_file")))
      r.password = read_file_trimmed(file, m.child("password_file"));
    r.password_source = "file " + file;
  } else {
    fail("rabbitmq",
         "set password_env (name of an environment variable) or password_file (a file holding "
         "the password); passwords are never taken from the URL or the command line");
  }

  r.queue = parse_queue(m.node("queue"), m.child("queue"));
  each_item(m.node("bindings"), m.child("bindings"), false, [&](const YAML::Node& bnode, const std::string& bpath) {
    MapNode b(bnode, bpath, {"exchange", "type", "routing_keys"});
    BindingConfig bc;
    bc.exchange = b.str("exchange");
    if (bc.exchange.empty()) fail(b.child("exchange"), "must not be empty (the default exchange cannot be bound)");
    bc.type = b.str("type", "topic");
    if (bc.type != "topic" && bc.type != "direct" && bc.type != "fanout" && bc.type != "headers") {
      fail(b.child("type"),
           fmt::format("unknown exchange type \"{}\" (expected topic, direct, fanout or headers)", bc.type));
    }
    each_item(b.node("routing_keys"), b.child("routing_keys"), false,
              [&](const YAML::Node& k, const std::string& kpath) {
                if (!k.IsScalar()) fail(kpath, "expected a routing key string");
                bc.routing_keys.push_back(k.Scalar());
              });
    if (bc.routing_keys.empty()) {
      if (bc.type == "topic" || bc.type == "direct") {
        fail(b.child("routing_keys"),
             fmt::format("a {} exchange needs at least one routing key (\"#\" matches all on topic)", bc.type));
      }
      bc.routing_keys.push_back("");
    }
    r.bindings.push_back(std::move(bc));
  });
  r.prefetch = static_cast<uint32_t>(m.integer("prefetch", 200, 1, 65535));
  r.heartbeat_s = static_cast<uint32_t>(m.integer("heartbeat_s", 15, 1, 600));

  {
    MapNode t(m.node("tls"), m.child("tls"), {"ca_file", "cert_file", "key_file", "verify_peer", "verify_hostname"});
    if (m.has("tls") && !r.url.tls) fail(m.child("tls"), "TLS settings need an amqps:// url");
    r.tls.ca_file = t.str("ca_file", "");
    r.tls.cert_file = t.str("cert_file", "");
    r.tls.key_file = t.str("key_file", "");
    r.tls.verify_peer = t.boolean("verify_peer", true);
    r.tls.verify_hostname = t.boolean("verify_hostname", r.tls.verify_peer);
    if (r.tls.verify_hostname && !r.tls.verify_peer) fail(t.child("verify_hostname"), "needs verify_peer: true");
    if (r.url.tls && r.tls.verify_peer && r.tls.ca_file.empty()) {
      fail(t.child("ca_file"),
           "required with amqps:// and verify_peer: true (the CA that signed the broker's certificate)");
    }
    if (r.tls.cert_file.empty() != r.tls.key_file.empty()) {
      fail(t.child(r.tls.cert_file.empty() ? "cert_file" : "key_file"),
           "cert_file and key_file go together (client certificate)");
    }
    if (!r.tls.ca_file.empty()) require_readable(r.tls.ca_file, t.child("ca_file"));
    if (!r.tls.cert_file.empty()) require_readable(r.tls.cert_file, t.child("cert_file"));
    if (!r.tls.key_file.empty()) require_readable(r.tls.key_file, t.child("key_file"));
  }
  {
    MapNode d(m.node("dead_letter"), m.child("dead_letter"), {"exchange", "queue"});
    r.dead_letter.exchange = d.str("exchange", r.queue.name + ".dlx");
    r.dead_letter.queue = d.str("queue", r.queue.name + ".dlq");
    if (r.dead_letter.exchange.empty() || r.dead_letter.exchange.starts_with("amq.")) {
      fail(d.child("exchange"), "must be a non-empty name not starting with \"amq.\"");
    }
    if (r.dead_letter.queue.empty() || r.dead_letter.queue == r.queue.name) {
      fail(d.child("queue"), "must be a non-empty name other than the queue's");
    }
  }
  {
    MapNode rc(m.node("reconnect"), m.child("reconnect"), {"base_s", "cap_s"});
    r.reconnect.base_s = rc.number("base_s", 0.5, 0.0, 60.0, true);
    r.reconnect.cap_s = rc.number("cap_s", 30.0, 0.0, 3600.0, true);
    if (r.reconnect.cap_s < r.reconnect.base_s) fail(rc.child("cap_s"), "must be >= base_s");
  }
  r.rpc_timeout_s = m.number("rpc_timeout_s", 10.0, 0.0, 600.0, true);
  r.drain_timeout_s = m.number("drain_timeout_s", 10.0, 0.0, 600.0);
  r.connection_name = m.str("connection_name", "larder-sidecar " + segment_name);
  return r;
}

// librdkafka settings that Larder owns: set elsewhere in the kafka block or
// needed for its guarantees (offsets committed only after the apply).
bool kafka_owned_property(const std::string& key) {
  static const char* const kOwned[] = {"bootstrap.servers",        "group.id",          "enable.auto.commit",
                                       "enable.auto.offset.store", "auto.offset.reset", "client.id",
                                       "enable.partition.eof"};
  for (const char* k : kOwned) {
    if (key == k) return true;
  }
  return false;
}

KafkaConfig parse_kafka(const YAML::Node& node, const std::string& segment_name, const Secrets& secrets) {
  MapNode m(node, "kafka",
            {"bootstrap_servers", "assignment", "topics", "group_id", "start", "partitions_per_topic", "max_in_flight",
             "commit_interval", "drain_timeout_s", "client_id", "properties", "sasl_password_env", "sasl_password_file",
             "format", "max_topics", "metadata_interval"});
  KafkaConfig k;
  k.format = parse_format(m.node("format"), m.child("format"));
  k.bootstrap_servers = m.str("bootstrap_servers");
  if (k.bootstrap_servers.empty()) fail(m.child("bootstrap_servers"), "must not be empty (host:port[,host:port])");
  std::set<std::string> seen;
  each_item(m.node("topics"), m.child("topics"), true, [&](const YAML::Node& t, const std::string& tpath) {
    if (!t.IsScalar() || t.Scalar().empty()) fail(tpath, "expected a topic name");
    if (t.Scalar().front() == '^') {
      // librdkafka matches a subscription regex with POSIX regcomp (extended):
      // the same check here makes a bad one an error at start.
      regex_t re;
      const int rc = ::regcomp(&re, t.Scalar().c_str(), REG_EXTENDED | REG_NOSUB);
      if (rc != 0) {
        char why[256];
        ::regerror(rc, &re, why, sizeof why);
        fail(tpath, fmt::format("invalid regex \"{}\": {}", t.Scalar(), why));
      }
      ::regfree(&re);
      k.regex = true;
    }
    if (!seen.insert(t.Scalar()).second) fail(tpath, fmt::format("duplicate topic \"{}\"", t.Scalar()));
    k.topics.push_back(t.Scalar());
  });
  if (k.topics.empty()) fail(m.child("topics"), "at least one topic is required");
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "%s", "localhost");
  k.group_id = m.str("group_id", fmt::format("larder-{}-{}", host, segment_name));
  if (k.group_id.empty()) fail(m.child("group_id"), "must not be empty");
  const std::string assignment = m.str("assignment", "all");
  if (assignment == "all") {
    k.assignment = KafkaAssignment::kAll;
  } else if (assignment == "group") {
    k.assignment = KafkaAssignment::kGroup;
  } else {
    fail(m.child("assignment"), fmt::format("unknown assignment \"{}\" (expected all or group)", assignment));
  }
  const std::string start = m.str("start", "stored");
  if (start == "stored") {
    k.start = KafkaStart::kStored;
  } else if (start == "earliest") {
    k.start = KafkaStart::kEarliest;
  } else if (start == "latest") {
    k.start = KafkaStart::kLatest;
  } else {
    fail(m.child("start"), fmt::format("unknown start \"{}\" (expected stored, earliest or latest)", start));
  }
  k.partitions_per_topic =
      static_cast<uint32_t>(m.integer("partitions_per_topic", 16, 1, layout::kMaxSourcePartitions));
  if (k.regex) {
    // Default: as many ranges as the segment holds (kMaxSourcePartitions
    // shared with the other sources is checked by load_config).
    const uint32_t fit =
        std::max<uint32_t>(1, static_cast<uint32_t>(layout::kMaxSourcePartitions) / k.partitions_per_topic);
    k.max_topics_default = !m.has("max_topics");
    k.max_topics =
        static_cast<uint32_t>(m.integer("max_topics", std::min<uint32_t>(fit, 4), 1, layout::kMaxSourcePartitions));
    size_t named = 0;
    for (const std::string& t : k.topics) named += t.front() == '^' ? 0 : 1;
    if (named > k.max_topics) {
      fail(m.child("max_topics"),
           fmt::format("{} topics are listed by name; max_topics ({}) must hold them", named, k.max_topics));
    }
  } else if (m.has("max_topics")) {
    fail(m.child("max_topics"), "only with a regex in kafka.topics (listed topics each have their own range)");
  }
  if (const std::optional<int64_t> ms = duration_ms(m, "metadata_interval")) k.metadata_interval_ms = *ms;
  if (k.metadata_interval_ms < 10) fail(m.child("metadata_interval"), "must be at least 10ms");
  k.max_in_flight = static_cast<uint32_t>(m.integer("max_in_flight", 1000, 1, 1'000'000));
  if (const std::optional<int64_t> ms = duration_ms(m, "commit_interval")) k.commit_interval_ms = *ms;
  k.drain_timeout_s = m.number("drain_timeout_s", 10.0, 0.0, 600.0);
  k.client_id = m.str("client_id", "larder-sidecar " + segment_name);
  if (m.has("properties")) {
    const YAML::Node props = m.node("properties");
    if (!props.IsMap()) fail(m.child("properties"), "expected a mapping of librdkafka settings (name: value)");
    for (const auto& kv : props) {
      const std::string key = kv.first.as<std::string>();
      const std::string path = m.child("properties") + "." + key;
      if (!kv.second.IsScalar()) fail(path, "expected a single value");
      if (kafka_owned_property(key)) {
        fail(path, "set by Larder (use the kafka block's own keys; offsets are committed only after the apply)");
      }
      if (key == "sasl.password" || key == "ssl.key.password" || key == "ssl.keystore.password") {
        fail(path,
             "no secrets in the config file: use kafka.sasl_password_env or kafka.sasl_password_file for "
             "sasl.password, and a key file without a passphrase for TLS");
      }
      k.properties.emplace_back(key, kv.second.Scalar());
    }
  }
  if (m.has("sasl_password_env") && m.has("sasl_password_file")) {
    fail("kafka", "set sasl_password_env or sasl_password_file, not both");
  }
  if (m.has("sasl_password_env")) {
    const std::string var = m.scalar("sasl_password_env");
    const char* value = std::getenv(var.c_str());
    if (value == nullptr && secrets.required) {
      fail(m.child("sasl_password_env"), fmt::format("environment variable {} is not set", var));
    }
    if (value == nullptr) {
      secrets.warnings->push_back(fmt::format("{}: environment variable {} is not set (the sidecar needs it to start)",
                                              m.child("sasl_password_env"), var));
    }
    k.sasl_password = value != nullptr ? value : "";
    k.sasl_password_source = "env " + var;
  } else if (m.has("sasl_password_file")) {
    const std::string file = m.scalar("sasl_password_file");
    if (secrets.available(file, m.child("sasl_password_file"))) {
      k.sasl_password = read_file_trimmed(file, m.child("sasl_password_file"));
    }
    k.sasl_password_source = "file " + file;
  }
  return k;
}

// A password from `<prefix>_env` or `<prefix>_file` (never the file itself).
void parse_password(const MapNode& m, const char* env_key, const char* file_key, const Secrets& secrets,
                    std::string* password, std::string* source) {
  if (m.has(env_key) && m.has(file_key)) fail(m.path(), fmt::format("set {} or {}, not both", env_key, file_key));
  if (m.has(env_key)) {
    const std::string var = m.scalar(env_key);
    const char* value = std::getenv(var.c_str());
    if (value == nullptr && secrets.required) {
      fail(m.child(env_key), fmt::format("environment variable {} is not set", var));
    }
    if (value == nullptr) {
      secrets.warnings->push_back(
          fmt::format("{}: environment variable {} is not set (the sidecar needs it to start)", m.child(env_key), var));
    }
    *password = value != nullptr ? value : "";
    *source = "env " + var;
  } else if (m.has(file_key)) {
    const std::string file = m.scalar(file_key);
    if (secrets.available(file, m.child(file_key))) *password = read_file_trimmed(file, m.child(file_key));
    *source = "file " + file;
  }
}

PolledTableConfig parse_polled_table(const YAML::Node& node, const std::string& path, const Config& c) {
  MapNode m(node, path, {"table", "query", "key", "cursor", "tie", "event_time", "deleted", "columns", "page_rows"});
  PolledTableConfig t;
  t.path = path;
  t.table = m.str("table");
  bool known = false;
  for (const TableConfig& tc : c.tables) known = known || tc.spec.name == t.table;
  if (!known) fail(m.child("table"), fmt::format("no table \"{}\" in tables", t.table));
  t.query = m.str("query");
  {
    std::string_view q = t.query;
    while (!q.empty() && (q.back() == ';' || q.back() == ' ' || q.back() == '\n')) q.remove_suffix(1);
    t.query = std::string(q);
  }
  if (t.query.empty()) fail(m.child("query"), "must be a SELECT");
  if (t.query.find(';') != std::string::npos) fail(m.child("query"), "must be one SELECT (no ';')");
  t.key_column = m.str("key");
  t.cursor_column = m.str("cursor");
  t.tie_column = m.str("tie", "");
  t.event_time_column = m.str("event_time", "");
  t.deleted_column = m.str("deleted", "");
  for (const std::string* col : {&t.key_column, &t.cursor_column}) {
    if (col->empty()) fail(path, "key and cursor must name columns");
  }
  if (m.has("columns")) {
    const YAML::Node cols = m.node("columns");
    if (!cols.IsMap()) fail(m.child("columns"), "expected a mapping of column: field");
    std::set<std::string> inputs;
    for (const auto& kv : cols) {
      const std::string column = kv.first.as<std::string>();
      if (!kv.second.IsScalar() || kv.second.Scalar().empty()) {
        fail(m.child("columns") + "." + column, "expected the name of a field (or event member) of the table");
      }
      if (!inputs.insert(kv.second.Scalar()).second) {
        fail(m.child("columns") + "." + column, fmt::format("\"{}\" is fed by two columns", kv.second.Scalar()));
      }
      t.columns.emplace_back(column, kv.second.Scalar());
    }
  }
  t.page_rows = static_cast<uint32_t>(m.integer("page_rows", 1000, 1, 100000));
  return t;
}

DatabaseConfig parse_database(const YAML::Node& node, const std::string& path, const Config& c,
                              const Secrets& secrets) {
  MapNode m(node, path,
            {"driver", "url", "password_env", "password_file", "poll_interval", "settle", "connect_timeout_s",
             "reconnect", "tables"});
  DatabaseConfig d;
  d.path = path;
  const std::string driver = m.str("driver");
  if (driver == "postgres" || driver == "postgresql") {
    d.driver = SqlDriver::kPostgres;
  } else if (driver == "mariadb" || driver == "mysql") {
    d.driver = SqlDriver::kMariadb;
  } else {
    fail(m.child("driver"), fmt::format("unknown driver \"{}\" (expected postgres or mariadb)", driver));
  }
  d.url = m.str("url");
  const std::string_view scheme = d.driver == SqlDriver::kPostgres ? "postgres" : "m";
  if (!(d.url.starts_with(scheme) && d.url.find("://") != std::string::npos)) {
    fail(m.child("url"), d.driver == SqlDriver::kPostgres ? "expected postgresql://user@host:port/db"
                                                          : "expected mysql://user@host:port/db");
  }
  {
    // user:password@ in the url would be logged and kept in the config file.
    const size_t at = d.url.find('@'), scheme_end = d.url.find("://") + 3;
    if (at != std::string::npos && d.url.find(':', scheme_end) < at) {
      fail(m.child("url"), "no password in the url: use password_env or password_file");
    }
    if (d.url.find("password=") != std::string::npos) {
      fail(m.child("url"), "no password in the url: use password_env or password_file");
    }
  }
  parse_password(m, "password_env", "password_file", secrets, &d.password, &d.password_source);
  if (const std::optional<int64_t> ms = duration_ms(m, "poll_interval")) {
    if (*ms <= 0) fail(m.child("poll_interval"), "must be > 0");
    d.poll_interval_ms = *ms;
  }
  if (const std::optional<int64_t> ms = duration_ms(m, "settle")) d.settle_ms = *ms;
  d.connect_timeout_s = static_cast<int>(m.integer("connect_timeout_s", 5, 1, 600));
  {
    MapNode rc(m.node("reconnect"), m.child("reconnect"), {"base_s", "cap_s"});
    d.reconnect.base_s = rc.number("base_s", 0.5, 0.0, 60.0, true);
    d.reconnect.cap_s = rc.number("cap_s", 30.0, 0.0, 3600.0, true);
    if (d.reconnect.cap_s < d.reconnect.base_s) fail(rc.child("cap_s"), "must be >= base_s");
  }
  each_item(m.node("tables"), m.child("tables"), true, [&](const YAML::Node& t, const std::string& tpath) {
    d.tables.push_back(parse_polled_table(t, tpath, c));
  });
  if (d.tables.empty()) fail(m.child("tables"), "at least one polled table is required");
  return d;
}

MetricsConfig parse_metrics(const YAML::Node& node) {
  MapNode m(node, "metrics", {"enabled", "listen", "ready_max_lag_s"});
  MetricsConfig c;
  c.enabled = m.boolean("enabled", true);
  // A present but empty listen ("") disables the listener.
  const YAML::Node listen = m.node("listen");
  if (listen.IsDefined() && !listen.IsNull()) {
    if (!listen.IsScalar()) fail(m.child("listen"), "expected HOST:PORT, e.g. \"127.0.0.1:9464\"");
    c.listen = listen.Scalar();
  }
  if (c.listen.empty()) c.enabled = false;
  if (c.enabled) {
    // HOST:PORT, or [IPv6]:PORT.
    const size_t colon = c.listen.rfind(':');
    std::string host = colon == std::string::npos ? std::string() : c.listen.substr(0, colon);
    const std::string port = colon == std::string::npos ? std::string() : c.listen.substr(colon + 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    bool ok = !host.empty() && !port.empty() && port.size() <= 5 && host.find_first_of("[] ") == std::string::npos;
    for (char ch : port) ok = ok && ch >= '0' && ch <= '9';
    if (ok && std::stoul(port) > 65535) ok = false;
    if (!ok) {
      fail(m.child("listen"), fmt::format("expected HOST:PORT such as \"127.0.0.1:9464\" (port 0: any free port; "
                                          "\"\" turns the listener off), got \"{}\"",
                                          c.listen));
    }
    c.host = host;
    c.port = static_cast<uint16_t>(std::stoul(port));
  }
  c.ready_max_lag_s = m.number("ready_max_lag_s", 30.0, 0.0, 86400.0, true);
  return c;
}

// A bearer token file: the whole file but trailing newlines, at least 16
// bytes of visible ASCII (what a header carries without escaping).
std::string read_token_file(const std::string& file, const std::string& key) {
  const std::string token = read_file_trimmed(file, key);
  if (token.size() < 16) fail(key, fmt::format("\"{}\" holds {} bytes; a token needs at least 16", file, token.size()));
  for (char c : token) {
    if (c <= ' ' || c > '~') fail(key, fmt::format("\"{}\" holds a space or a non-ASCII byte", file));
  }
  return token;
}

SnapshotConfig parse_snapshot(const YAML::Node& node, const MetricsConfig& metrics, const Secrets& secrets) {
  MapNode m(node, "snapshot", {"dir", "interval", "keep", "serve", "token_file"});
  SnapshotConfig c;
  c.dir = m.str("dir", "");
  if (!c.dir.empty() && c.dir[0] != '/') fail(m.child("dir"), "must be an absolute path");
  if (const std::optional<int64_t> interval = duration_ms(m, "interval")) {
    if (*interval < 1000) fail(m.child("interval"), "must be at least 1s");
    c.interval_ms = *interval;
  }
  c.keep = static_cast<uint32_t>(m.integer("keep", 3, 1, 1000));
  c.serve = m.boolean("serve", false);
  c.token_file = m.str("token_file", "");
  if (c.serve && !metrics.enabled) {
    fail(m.child("serve"), "GET /snapshot is served on the metrics listener, which is off (metrics.listen)");
  }
  if (c.serve && c.token_file.empty() && !is_loopback_host(metrics.host)) {
    fail(m.child("token_file"),
         fmt::format("required when snapshot.serve is true and metrics.listen ({}) is not a loopback address: a "
                     "snapshot holds every feature of every key",
                     metrics.listen));
  }
  if (!c.token_file.empty() && secrets.available(c.token_file, m.child("token_file"))) {
    c.token = read_token_file(c.token_file, m.child("token_file"));
  }
  return c;
}

BootstrapConfig parse_bootstrap(const YAML::Node& node, const Secrets& secrets) {
  MapNode m(node, "bootstrap", {"restore", "peer", "peer_token_file", "peer_timeout_s"});
  BootstrapConfig c;
  const std::string restore = m.str("restore", "latest");
  if (restore == "latest") {
    c.restore = RestoreMode::kLatest;
  } else if (restore == "never") {
    c.restore = RestoreMode::kNever;
  } else if (!restore.empty() && restore[0] == '/') {
    c.restore = RestoreMode::kFile;
    c.restore_file = restore;
  } else {
    fail(m.child("restore"),
         fmt::format("expected latest, never or an absolute snapshot file path, got \"{}\"", restore));
  }
  c.peer = m.str("peer", "");
  if (!c.peer.empty()) {
    HttpUrl url;
    std::string error;
    if (!parse_http_url(c.peer, &url, &error)) fail(m.child("peer"), error);
  }
  c.peer_token_file = m.str("peer_token_file", "");
  if (!c.peer_token_file.empty() && secrets.available(c.peer_token_file, m.child("peer_token_file"))) {
    c.peer_token = read_token_file(c.peer_token_file, m.child("peer_token_file"));
  }
  c.peer_timeout_s = m.number("peer_timeout_s", 600.0, 0.0, 86400.0, true);
  return c;
}

ReadinessConfig parse_readiness(const YAML::Node& node) {
  MapNode m(node, "readiness", {"max_lag"});
  ReadinessConfig c;
  if (const std::optional<int64_t> lag = duration_ms(m, "max_lag")) c.max_lag_ms = *lag;
  return c;
}

Config parse_root(const YAML::Node& root, const ConfigLoad& load) {
  if (!present(root)) fail("config", "empty file");
  MapNode m(root, "",
            {"segment", "event_time", "tables", "rabbitmq", "kafka", "databases", "logging", "metrics", "readiness",
             "snapshot", "bootstrap"});
  Config c;
  const Secrets secrets{load.require_secrets, &c.warnings};
  c.segment = parse_segment(m.node("segment"));
  c.event_time = parse_event_time_bounds(m.node("event_time"), "event_time", c.event_time);
  std::set<std::string> names;
  each_item(m.node("tables"), "tables", true, [&](const YAML::Node& tnode, const std::string& tpath) {
    TableConfig t = parse_table(tnode, tpath, c.event_time);
    if (!names.insert(t.spec.name).second) fail(tpath + ".name", fmt::format("duplicate table \"{}\"", t.spec.name));
    c.tables.push_back(std::move(t));
  });
  if (c.tables.empty()) fail("tables", "at least one table is required");
  if (c.tables.size() > layout::kMaxTables) fail("tables", fmt::format("at most {} tables", layout::kMaxTables));
  c.kafka_enabled = load.sources && m.has("kafka");
  if (load.sources) {
    each_item(m.node("databases"), "databases", false, [&](const YAML::Node& d, const std::string& dpath) {
      c.databases.push_back(parse_database(d, dpath, c, secrets));
    });
  }
  c.rabbitmq_enabled = load.sources && (m.has("rabbitmq") || (!c.kafka_enabled && c.databases.empty()));
  if (c.rabbitmq_enabled) c.rabbitmq = parse_rabbitmq(m.node("rabbitmq"), c.segment.name, secrets);
  if (c.kafka_enabled) {
    c.kafka = parse_kafka(m.node("kafka"), c.segment.name, secrets);
    // A RabbitMQ stream stores its position in partition 0; Kafka's slots follow.
    const uint64_t base = c.rabbitmq_enabled && c.rabbitmq.queue.type == QueueType::kStream ? 1 : 0;
    if (c.kafka.regex && c.kafka.max_topics_default) {
      // The default number of regex ranges leaves room for the other
      // sources' positions (the stream's and one per polled table).
      uint64_t others = base;
      for (const DatabaseConfig& d : c.databases) others += d.tables.size();
      const uint64_t room = others < layout::kMaxSourcePartitions ? layout::kMaxSourcePartitions - others : 0;
      const uint64_t fit = room / c.kafka.partitions_per_topic;
      size_t named = 0;
      for (const std::string& t : c.kafka.topics) named += t.front() == '^' ? 0 : 1;
      if (fit < c.kafka.max_topics && fit >= std::max<uint64_t>(1, named)) {
        c.kafka.max_topics = static_cast<uint32_t>(fit);
      }
    }
    const uint64_t slots = uint64_t{c.kafka.partitions_per_topic} * c.kafka.topic_ranges();
    if (base + slots > layout::kMaxSourcePartitions) {
      fail(c.kafka.regex ? "kafka.max_topics" : "kafka.partitions_per_topic",
           fmt::format("{} topics x {} partitions{} need {} stored positions; the segment holds {}",
                       c.kafka.topic_ranges(), c.kafka.partitions_per_topic,
                       base > 0 ? " + 1 for the RabbitMQ stream" : "", base + slots, layout::kMaxSourcePartitions));
    }
  }
  {
    // Each polled table stores its cursor in one partition, after the others.
    uint64_t used = c.rabbitmq_enabled && c.rabbitmq.queue.type == QueueType::kStream ? 1 : 0;
    if (c.kafka_enabled) used += uint64_t{c.kafka.partitions_per_topic} * c.kafka.topic_ranges();
    for (const DatabaseConfig& d : c.databases) used += d.tables.size();
    if (used > layout::kMaxSourcePartitions) {
      fail("databases", fmt::format("the sources need {} stored positions (one per polled table); the segment holds {}",
                                    used, layout::kMaxSourcePartitions));
    }
  }
  {
    MapNode l(m.node("logging"), "logging", {"level", "json"});
    c.logging.level = l.str("level", "info");
    if (!valid_log_level(c.logging.level)) {
      fail("logging.level",
           fmt::format("unknown level \"{}\" (expected trace, debug, info, warn, error, critical, off)",
                       c.logging.level));
    }
    c.logging.json = l.boolean("json", false);
  }
  c.metrics = parse_metrics(m.node("metrics"));
  c.snapshot = parse_snapshot(m.node("snapshot"), c.metrics, secrets);
  c.bootstrap = parse_bootstrap(m.node("bootstrap"), secrets);
  c.readiness = parse_readiness(m.node("readiness"));
  // The segment layer has the last word on sizes (e.g. a segment too large).
  try {
    c.schema().validate();
  } catch (const Error& e) {
    fail("tables", e.what());
  }
  return c;
}

}  // namespace

const char* sql_driver_name(SqlDriver driver) noexcept {
  switch (driver) {
    case SqlDriver::kPostgres: return "postgres";
    case SqlDriver::kMariadb: return "mariadb";
  }
  return "?";
}

const char* kafka_start_name(KafkaStart start) noexcept {
  switch (start) {
    case KafkaStart::kStored: return "stored";
    case KafkaStart::kEarliest: return "earliest";
    case KafkaStart::kLatest: return "latest";
  }
  return "?";
}

const char* queue_type_name(QueueType type) noexcept {
  switch (type) {
    case QueueType::kQuorum: return "quorum";
    case QueueType::kClassic: return "classic";
    case QueueType::kStream: return "stream";
  }
  return "unknown";
}

bool is_loopback_host(std::string_view host) {
  if (host == "localhost" || host == "::1" || host == "0:0:0:0:0:0:0:1") return true;
  // 127.0.0.0/8 written as a dotted quad.
  if (!host.starts_with("127.")) return false;
  int dots = 0;
  for (char c : host) {
    if (c == '.') {
      ++dots;
    } else if (c < '0' || c > '9') {
      return false;
    }
  }
  return dots == 3;
}

bool valid_log_level(std::string_view level) {
  for (std::string_view l : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
    if (l == level) return true;
  }
  return false;
}

layout::Schema Config::schema() const {
  layout::Schema s;
  for (const TableConfig& t : tables) s.tables.push_back(t.spec);
  return s;
}

std::vector<TableDecodeOptions> Config::decode_options() const {
  std::vector<TableDecodeOptions> out;
  for (const TableConfig& t : tables) out.push_back(TableDecodeOptions{t.allow_unknown_fields, t.ingest, t.event_time});
  return out;
}

Config parse_config(std::string_view yaml_text, const std::string& origin, const ConfigLoad& load) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("{}: line {} column {}: {}", origin, e.mark.line + 1, e.mark.column + 1, e.msg));
  }
  try {
    return parse_root(root, load);
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("{}: line {}: {}", origin, e.mark.line + 1, e.msg));
  }
}

Config load_config_file(const std::string& path, const ConfigLoad& load) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(fmt::format("{}: cannot open the config file", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), path, load);
}

std::string format_duration(int64_t ms) {
  struct Unit {
    int64_t ms;
    const char* suffix;
  };
  for (const Unit u : {Unit{24 * 3600 * 1000, "d"}, Unit{3600 * 1000, "h"}, Unit{60 * 1000, "m"}, Unit{1000, "s"}}) {
    if (ms != 0 && ms % u.ms == 0) return fmt::format("{}{}", ms / u.ms, u.suffix);
  }
  return fmt::format("{}ms", ms);
}

}  // namespace larder::sidecar
