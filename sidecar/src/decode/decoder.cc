// Message format v1 decoder (see decoder.h and docs/message-format.md).
//
// Runs on the consumer thread. Uses simdjson's On-Demand API: the body is
// copied once into a padded buffer, then walked once; values are typed
// against the schema while they are read, so a bad message stops at its first
// problem. Rejections travel as an internal exception (Reject) that never
// leaves decode(): the happy path pays nothing for it.
#include "decode/decoder.h"

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <unordered_map>

#include "config/config.h"  // format_duration
#include "decode/event_time.h"
#include "decode/update_builder.h"
#include "larder/layout/clock.h"

namespace larder::sidecar {
namespace {

namespace od = simdjson::ondemand;
using layout::FieldType;

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

struct Reject {
  RejectReason reason;
  std::string detail;
};

[[noreturn]] void reject(RejectReason reason, std::string detail) { throw Reject{reason, std::move(detail)}; }

// Where a value sits, for reject details: "update 3: field \"emb\"[2]". Only
// formatted when a message is rejected, so the happy path never allocates it.
struct Where {
  size_t index = 0;
  bool batch = false;
  std::string_view field;  // points into the parser's buffers; valid during decode()
  int64_t element = -1;    // vector element

  std::string str() const {
    std::string out = batch ? fmt::format("update {}", index) : std::string("update");
    if (!field.empty()) out += fmt::format(": field \"{}\"", field.substr(0, 64));
    if (element >= 0) out += fmt::format("[{}]", element);
    return out;
  }
};

std::string operator+(const Where& w, std::string_view text) { return w.str() + std::string(text); }

}  // namespace
}  // namespace larder::sidecar

template <>
struct fmt::formatter<larder::sidecar::Where> : fmt::formatter<std::string> {
  template <class FormatContext>
  auto format(const larder::sidecar::Where& w, FormatContext& ctx) const -> decltype(ctx.out()) {
    return fmt::formatter<std::string>::format(w.str(), ctx);
  }
};

namespace larder::sidecar {
namespace {

// True when `t` (a raw token, maybe with trailing whitespace) follows the JSON
// number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
bool json_number_syntax(std::string_view t) {
  while (!t.empty() && (t.back() == ' ' || t.back() == '\t' || t.back() == '\n' || t.back() == '\r')) {
    t.remove_suffix(1);
  }
  size_t i = 0;
  auto digit = [&](size_t k) { return k < t.size() && t[k] >= '0' && t[k] <= '9'; };
  if (i < t.size() && t[i] == '-') ++i;
  if (!digit(i)) return false;
  if (t[i] == '0') {
    ++i;
  } else {
    while (digit(i)) ++i;
  }
  if (i < t.size() && t[i] == '.') {
    ++i;
    if (!digit(i)) return false;
    while (digit(i)) ++i;
  }
  if (i < t.size() && (t[i] == 'e' || t[i] == 'E')) {
    ++i;
    if (i < t.size() && (t[i] == '+' || t[i] == '-')) ++i;
    if (!digit(i)) return false;
    while (digit(i)) ++i;
  }
  return i == t.size();
}

// Producer-supplied text in reject details is cut short: logs stay bounded.
std::string_view clip(std::string_view s) { return s.substr(0, 64); }

bool has_fraction_or_exponent(std::string_view t) { return t.find_first_of(".eE") != std::string_view::npos; }

const char* json_type_name(od::json_type t) {
  switch (t) {
    case od::json_type::array: return "an array";
    case od::json_type::object: return "an object";
    case od::json_type::number: return "a number";
    case od::json_type::string: return "a string";
    case od::json_type::boolean: return "a boolean";
    case od::json_type::null: return "null";
  }
  return "an unknown value";
}

od::json_type type_of(od::value& v, const Where& where) {
  od::json_type t;
  if (v.type().get(t) != simdjson::SUCCESS) reject(RejectReason::kBadJson, where + ": malformed value");
  return t;
}

}  // namespace

void DecodedBatch::clear() noexcept {
  updates_.clear();
  values_.clear();
  sources_.clear();
  bytes_.clear();
  floats_.clear();
  first_id_.clear();
}

struct Decoder::Impl {
  // What an input member must hold, from the targets that read it.
  // kScalar: only distinct_counts read it: a string, an integer or a bool.
  enum class InputKind : uint8_t { kNumber, kNumberOrBool, kBool, kString, kArray, kScalar };

  // A declared field computed from an input member.
  struct FieldTarget {
    uint32_t index = 0;  // field index
    FieldType type = FieldType::kInt64;
    uint32_t count = 0;
    const TransformChain* chain = nullptr;  // null: stored as is
    int32_t source = -1;                    // the aggregate source fed with this field's value, or -1
    bool source_distinct = false;           // a distinct_count reads that source: pass its exact hash
  };
  // One member of `fields` and everything computed from it.
  struct InputInfo {
    std::string name;
    uint32_t index = 0;  // into TableInfo::seen
    InputKind kind = InputKind::kNumberOrBool;
    std::vector<FieldTarget> fields;  // in field order
    int32_t raw_source = -1;          // the aggregate source that folds this member's raw value, or -1
    bool raw_distinct = false;        // a distinct_count reads raw_source
    uint32_t array_len = 0;           // kArray: the number of elements every reader takes
    bool takes_null = false;          // every reader is a chain that takes null (a missing value)
    // One field reads it as it comes (no transform, no aggregate source, no
    // projection): the binary formats' setters store it without the loop
    // over targets (UpdateBuilder::input_*).
    bool stored_as_is = false;
    // Projections from several members this member is one element of:
    // (TableInfo::gathers index, element).
    std::vector<std::pair<uint32_t, uint32_t>> gathers;
  };
  // A field projected from several members (`from: [a, b, c]`): their
  // values are collected while the update's fields are decoded, and the
  // projection runs once all are in.
  struct Gather {
    FieldTarget target;
    std::vector<double> values;  // per member, this update's value
    uint64_t serial = 0;         // the update that last set a value
    uint32_t count = 0;          // values set by that update
    std::string members;         // "a, b, c" (details)
  };
  struct TableInfo {
    uint32_t index = 0;
    std::string name;
    uint32_t key_max_len = 0;
    bool allow_unknown_fields = false;
    EventTimeBounds bounds;
    std::vector<std::string> field_names;
    std::vector<TransformChain> chains;  // per field; FieldTarget::chain points here
    std::vector<InputInfo> inputs;
    std::vector<Gather> gathers;
    StringMap<uint32_t> input_by_name;
    std::vector<std::pair<std::string, std::string>> computed;    // field -> its input, when they differ (details)
    std::vector<std::pair<std::string, std::string>> aggregates;  // name -> what folds it (details)
    std::vector<uint64_t> seen;                                   // per input: the update serial that last set it

    // Small tables: a scan of a few short names beats hashing the name.
    const InputInfo* find_input(std::string_view wanted) const {
      if (inputs.size() <= 16) {
        for (const InputInfo& in : inputs) {
          if (in.name == wanted) return &in;
        }
        return nullptr;
      }
      auto it = input_by_name.find(wanted);
      return it == input_by_name.end() ? nullptr : &inputs[it->second];
    }
  };

  StringMap<uint32_t> table_by_name;
  std::vector<TableInfo> tables;          // never resized after construction: pointers into it stay valid
  const TableInfo* last_table = nullptr;  // find_table's cache
  std::string table_list;                 // "the tables are a, b, c" for the unknown-table detail, bounded
  od::parser parser;
  // Scratch for vector transforms: a vector input read as doubles, and a
  // chain's vector output. Sized at construction to the largest of each.
  std::vector<double> vector_in;
  std::vector<double> vector_out;
  simdjson::dom::parser validator;  // full validation when values were skipped unread
  std::vector<char> padded;
  bool skipped_unread = false;
  uint64_t update_serial = 0;
  // The `id` and `key` of the update being decoded, copied as they are read
  // (the parser's strings may be reused by a second walk), for a refusal's
  // DecodeResult. Capacity is kept across messages.
  std::string current_id;
  std::string current_key;
  // The clock for event-time bounds: kClockUnread until the first update of
  // a message that needs it reads CLOCK_REALTIME (or a test's value).
  static constexpr int64_t kClockUnread = -1;
  int64_t now_ms = kClockUnread;

  int64_t clock_ms() {
    if (now_ms == kClockUnread) now_ms = layout::now_unix_ns() / 1'000'000;
    return now_ms;
  }

  // Rejects an event time outside the table's bounds. The message is
  // rejected whole, so nothing of it is applied.
  void check_event_time(const TableInfo& table, int64_t event_time_ms, const Where& at) {
    if (event_time_ms < table.bounds.min_event_time_ms) [[unlikely]]
      reject_too_old(table, event_time_ms, at);
    if (table.bounds.max_future_skew_ms == EventTimeBounds::kOff) return;
    if (event_time_ms - clock_ms() > table.bounds.max_future_skew_ms) [[unlikely]]
      reject_in_future(table, event_time_ms, at);
  }
  // The reject details, kept out of the decoding loop.
  [[noreturn, gnu::cold, gnu::noinline]] static void reject_too_old(const TableInfo& table, int64_t event_time_ms,
                                                                    const Where& at) {
    reject(RejectReason::kEventTimeTooOld,
           fmt::format("{}: event_time {} ({}) is before min_event_time {} of table \"{}\" (seconds for ms?)", at,
                       event_time_ms, format_rfc3339_ms(event_time_ms),
                       format_rfc3339_ms(table.bounds.min_event_time_ms), table.name));
  }
  [[noreturn, gnu::cold, gnu::noinline]] void reject_in_future(const TableInfo& table, int64_t event_time_ms,
                                                               const Where& at) {
    const int64_t now = clock_ms();
    reject(RejectReason::kEventTimeInFuture,
           fmt::format("{}: event_time {} ({}) is {} ms ahead of the sidecar's clock ({}), table \"{}\" allows {} ms",
                       at, event_time_ms, format_rfc3339_ms(event_time_ms), event_time_ms - now, format_rfc3339_ms(now),
                       table.name, table.bounds.max_future_skew_ms));
  }

  double read_double(od::value& v, const Where& what) {
    double d;
    if (v.get_double().get(d) != simdjson::SUCCESS) {
      const std::string_view tok = v.raw_json_token();
      if (json_number_syntax(tok)) {
        reject(RejectReason::kNonFinite, what + ": number does not fit a finite double");
      }
      reject(RejectReason::kBadJson, what + ": malformed number");
    }
    if (!std::isfinite(d)) reject(RejectReason::kNonFinite, what + ": not a finite number");
    return d;
  }

  float read_float32(od::value& v, const Where& what) {
    const double d = read_double(v, what);
    if (d > static_cast<double>(FLT_MAX) || d < -static_cast<double>(FLT_MAX)) {
      reject(RejectReason::kOutOfRange, fmt::format("{}: {} is outside the float32 range", what, d));
    }
    return static_cast<float>(d);
  }

  int64_t read_int64(od::value& v, const Where& what) {
    const std::string_view tok = v.raw_json_token();
    if (!json_number_syntax(tok)) {
      reject(RejectReason::kBadJson, what + ": malformed number");
    }
    if (has_fraction_or_exponent(tok)) {
      reject(RejectReason::kWrongType, what + ": expected an integer (no fraction or exponent)");
    }
    int64_t i;
    if (v.get_int64().get(i) != simdjson::SUCCESS) {
      reject(RejectReason::kOutOfRange, what + ": integer outside the int64 range");
    }
    return i;
  }

  // " (for field \"x\")" when the field is not the member itself.
  static std::string for_field(const TableInfo& table, const FieldTarget& target, std::string_view member) {
    const std::string& name = table.field_names[target.index];
    return name == member ? std::string() : fmt::format(" (for field \"{}\")", name);
  }

  static void push_value(DecodedBatch& out, const FieldValue& fv) { out.values_.push_back(fv); }

  static void add_source(DecodedBatch& out, int32_t source, double value, uint64_t distinct = 0) {
    if (source >= 0) out.sources_.push_back(SourceValue{static_cast<uint32_t>(source), value, distinct});
  }

  // A number a distinct_count reads: an integer by its exact int64 (a double
  // holds integers exactly only up to 2^53), other numbers by their double.
  uint64_t number_distinct(od::value& v, const Where& what, bool integers_only) {
    if (!has_fraction_or_exponent(v.raw_json_token())) return distinct_hash_int64(read_int64(v, what));
    if (integers_only) {
      reject(RejectReason::kWrongType, what + ": expected a string, an integer or true/false (distinct_count)");
    }
    return distinct_hash_number(read_double(v, what));
  }

  // A member only distinct_counts read: any scalar.
  void decode_scalar_input(od::value& v, od::json_type t, const InputInfo& in, const Where& what, DecodedBatch& out) {
    switch (t) {
      case od::json_type::string: {
        std::string_view s;
        if (v.get_string().get(s) != simdjson::SUCCESS) reject(RejectReason::kBadJson, what + ": malformed string");
        add_source(out, in.raw_source, 0.0, distinct_hash_string(s));
        return;
      }
      case od::json_type::number: {
        if (!json_number_syntax(v.raw_json_token())) reject(RejectReason::kBadJson, what + ": malformed number");
        add_source(out, in.raw_source, 0.0, number_distinct(v, what, true));
        return;
      }
      case od::json_type::boolean: {
        bool b;
        if (v.get_bool().get(b) != simdjson::SUCCESS) reject(RejectReason::kBadJson, what + ": malformed boolean");
        add_source(out, in.raw_source, b ? 1.0 : 0.0);
        return;
      }
      default:
        reject(RejectReason::kWrongType,
               fmt::format("{}: expected a string, an integer or true/false, got {}", what, json_type_name(t)));
    }
  }

  // Stores a transform's result in `target`'s type; returns the stored value
  // as the double an aggregate source sees, and in `distinct` (when the
  // target feeds a distinct_count) its exact hash, or 0 to derive it.
  double store_transformed(const TransformResult& r, const FieldTarget& target, const TableInfo& table,
                           const Where& what, DecodedBatch& out, uint64_t* distinct) {
    *distinct = 0;
    FieldValue fv;
    fv.field = target.index;
    fv.type = target.type;
    double seen_by_source = r.f64;
    switch (target.type) {
      case FieldType::kInt64:  // Config allows only int64 output here
        fv.i64 = r.i64;
        seen_by_source = static_cast<double>(r.i64);
        if (target.source_distinct) *distinct = distinct_hash_int64(r.i64);
        break;
      case FieldType::kFloat64: fv.f64 = r.f64; break;
      case FieldType::kFloat32:
        if (r.f64 > static_cast<double>(FLT_MAX) || r.f64 < -static_cast<double>(FLT_MAX)) {
          reject(RejectReason::kOutOfRange, fmt::format("{}: {} after transform is outside the float32 range{}", what,
                                                        r.f64, for_field(table, target, what.field)));
        }
        fv.f64 = static_cast<float>(r.f64);
        seen_by_source = fv.f64;
        break;
      case FieldType::kBool:  // one_hot with index
        fv.i64 = r.i64 != 0 ? 1 : 0;
        seen_by_source = static_cast<double>(fv.i64);
        break;
      case FieldType::kFloat32Vector: {  // one_hot, project: r.vector is vector_out
        const size_t begin = out.floats_.size();
        for (uint32_t k = 0; k < target.count; ++k) {
          const double x = r.vector[k];
          if (x > static_cast<double>(FLT_MAX) || x < -static_cast<double>(FLT_MAX)) {
            reject(RejectReason::kOutOfRange,
                   fmt::format("{}: element {} is {} after transform, outside the float32 range{}", what, k, x,
                               for_field(table, target, what.field)));
          }
          out.floats_.push_back(static_cast<float>(x));
        }
        fv.i64 = static_cast<int64_t>(begin);  // fixed up to a pointer in finish()
        fv.length = target.count;
        break;
      }
      default: break;  // the constructor refuses transforms on strings
    }
    out.values_.push_back(fv);
    return seen_by_source;
  }

  [[noreturn]] void reject_transform(const TransformFailure& why, const FieldTarget& target, const TableInfo& table,
                                     const Where& what) {
    reject(RejectReason::kBadValue, fmt::format("{}: {}{}", what, why.str(), for_field(table, target, what.field)));
  }

  // A member read as a number by fields, transforms and sources.
  void decode_number_input(od::value& v, od::json_type t, const InputInfo& in, const TableInfo& table,
                           const Where& what, DecodedBatch& out) {
    if (t == od::json_type::boolean && in.kind == InputKind::kNumberOrBool) {
      bool b;  // only a source reads it: true/false count as 1/0
      if (v.get_bool().get(b) != simdjson::SUCCESS) reject(RejectReason::kBadJson, what + ": malformed boolean");
      add_source(out, in.raw_source, b ? 1.0 : 0.0);
      return;
    }
    if (t != od::json_type::number) {
      const FieldType first = in.fields.empty() ? FieldType::kFloat64 : in.fields.front().type;
      const char* expected = in.fields.empty() && in.raw_source < 0                   ? "a number"
                             : in.fields.empty()                                      ? "a number (or true/false)"
                             : first == FieldType::kInt64 && !in.fields.front().chain ? "an integer"
                                                                                      : "a number";
      reject(RejectReason::kWrongType, fmt::format("{}: expected {}, got {}", what, expected, json_type_name(t)));
    }
    for (const FieldTarget& target : in.fields) {
      double seen_by_source = 0;
      uint64_t distinct = 0;
      if (target.chain != nullptr) {
        TransformResult r;
        r.vector = vector_out.data();
        TransformFailure why;
        if (!target.chain->apply(read_double(v, what), &r, &why)) reject_transform(why, target, table, what);
        seen_by_source = store_transformed(r, target, table, what, out, &distinct);
      } else {
        FieldValue fv;
        fv.field = target.index;
        fv.type = target.type;
        switch (target.type) {
          case FieldType::kInt64:
            fv.i64 = read_int64(v, what);
            seen_by_source = static_cast<double>(fv.i64);
            if (target.source_distinct) distinct = distinct_hash_int64(fv.i64);
            break;
          case FieldType::kFloat64: seen_by_source = fv.f64 = read_double(v, what); break;
          case FieldType::kFloat32: seen_by_source = fv.f64 = read_float32(v, what); break;
          default: break;  // not a number input
        }
        out.values_.push_back(fv);
      }
      add_source(out, target.source, seen_by_source, distinct);
    }
    if (in.raw_source >= 0) {
      add_source(out, in.raw_source, read_double(v, what), in.raw_distinct ? number_distinct(v, what, false) : 0);
    }
    for (const auto& [index, element] : in.gathers) {
      Gather& g = const_cast<TableInfo&>(table).gathers[index];
      if (g.serial != update_serial) {
        g.serial = update_serial;
        g.count = 0;
      }
      g.values[element] = read_double(v, what);
      ++g.count;  // a member appears once per update (kDuplicateMember)
    }
  }

  // The projections from several members, once the update's fields are
  // decoded: all members present, or none.
  void finish_gathers(const TableInfo& table, const Where& at, DecodedBatch& out) {
    for (const Gather& g : table.gathers) {
      if (g.serial != update_serial) continue;
      if (g.count != g.values.size()) {
        reject(RejectReason::kBadValue,
               fmt::format("{}: field \"{}\" is projected from {}: an update sets all of them or none ({} of {} "
                           "here)",
                           at, table.field_names[g.target.index], g.members, g.count, g.values.size()));
      }
      TransformResult r;
      r.vector = vector_out.data();
      TransformFailure why;
      const Where what{at.index, at.batch, table.field_names[g.target.index]};
      if (!g.target.chain->apply(g.values.data(), g.values.size(), &r, &why)) {
        reject_transform(why, g.target, table, what);
      }
      uint64_t distinct = 0;
      store_transformed(r, g.target, table, what, out, &distinct);
    }
  }

  // A member read as a string by string fields and vocabulary transforms.
  void decode_string_input(od::value& v, od::json_type t, const InputInfo& in, const TableInfo& table,
                           const Where& what, DecodedBatch& out) {
    if (t != od::json_type::string)
      reject(RejectReason::kWrongType, fmt::format("{}: expected a string, got {}", what, json_type_name(t)));
    std::string_view s;  // read once: a second read would unescape it again into the parser's buffer
    if (v.get_string().get(s) != simdjson::SUCCESS) reject(RejectReason::kBadJson, what + ": malformed string");
    int64_t stored_at = -1;  // string fields sharing the member share its bytes
    for (const FieldTarget& target : in.fields) {
      if (target.type == FieldType::kString) {
        if (s.size() > target.count) {
          reject(RejectReason::kStringTooLong, fmt::format("{}: {} bytes, max_len is {}{}", what, s.size(),
                                                           target.count, for_field(table, target, what.field)));
        }
        if (stored_at < 0) {
          stored_at = static_cast<int64_t>(out.bytes_.size());
          out.bytes_.append(s.data(), s.size());
        }
        FieldValue fv;
        fv.field = target.index;
        fv.type = target.type;
        fv.i64 = stored_at;  // fixed up to a pointer in finish()
        fv.length = static_cast<uint32_t>(s.size());
        out.values_.push_back(fv);
        if (target.source >= 0) add_source(out, target.source, 0.0, distinct_hash_string(s));  // distinct_count only
      } else {
        TransformResult r;
        r.vector = vector_out.data();
        TransformFailure why;
        if (!target.chain->apply(s, &r, &why)) reject_transform(why, target, table, what);
        uint64_t distinct = 0;
        const double seen_by_source = store_transformed(r, target, table, what, out, &distinct);
        add_source(out, target.source, seen_by_source, distinct);
      }
    }
    if (in.raw_source >= 0) add_source(out, in.raw_source, 0.0, distinct_hash_string(s));  // distinct_count only
  }

  void decode_bool_input(od::value& v, od::json_type t, const InputInfo& in, const Where& what, DecodedBatch& out) {
    if (t != od::json_type::boolean)
      reject(RejectReason::kWrongType, fmt::format("{}: expected true or false, got {}", what, json_type_name(t)));
    bool b;
    if (v.get_bool().get(b) != simdjson::SUCCESS) reject(RejectReason::kBadJson, what + ": malformed boolean");
    for (const FieldTarget& target : in.fields) {
      FieldValue fv;
      fv.field = target.index;
      fv.type = target.type;
      fv.i64 = b ? 1 : 0;
      out.values_.push_back(fv);
      add_source(out, target.source, b ? 1.0 : 0.0);
    }
    add_source(out, in.raw_source, b ? 1.0 : 0.0);
  }

  // A null member (JSON `null`, or a typed decoder's null: the offline
  // engine's "sent as null"). Where every reader is a chain that takes one
  // (it starts with an impute or a category step) it is a missing value,
  // which the chains turn into values; returns true. Else returns false,
  // nothing added: the caller refuses it as wrong_type, in its own words.
  // The one place that says what a null means, for every decoder.
  bool decode_null_input(const InputInfo& in, const TableInfo& table, const Where& what, DecodedBatch& out) {
    if (!in.takes_null) return false;
    for (const FieldTarget& target : in.fields) {
      TransformResult r;
      r.vector = vector_out.data();
      TransformFailure why;
      if (!target.chain->apply_null(&r, &why)) reject_transform(why, target, table, what);
      uint64_t distinct = 0;
      const double seen_by_source = store_transformed(r, target, table, what, out, &distinct);
      add_source(out, target.source, seen_by_source, distinct);
    }
    return true;
  }

  void decode_vector_input(od::value& v, od::json_type t, const InputInfo& in, const TableInfo& table,
                           const Where& what, DecodedBatch& out) {
    const FieldTarget& first = in.fields.front();
    const uint32_t len = in.array_len;
    if (t != od::json_type::array)
      reject(RejectReason::kWrongType,
             fmt::format("{}: expected an array of {} numbers, got {}", what, len, json_type_name(t)));
    od::array arr;
    if (v.get_array().get(arr) != simdjson::SUCCESS) reject(RejectReason::kBadJson, what + ": malformed array");
    // Plain vector fields store the elements as float32; a projection reads
    // them as doubles, as the offline transform did.
    bool plain = false, projected = false;
    for (const FieldTarget& target : in.fields) (target.chain != nullptr ? projected : plain) = true;
    const size_t begin = out.floats_.size();
    uint32_t n = 0;
    for (auto element : arr) {
      od::value ev;
      if (std::move(element).get(ev) != simdjson::SUCCESS) reject(RejectReason::kBadJson, what + ": malformed array");
      if (n == len) {
        reject(RejectReason::kVectorLength,
               fmt::format("{}: more than {} elements{}", what, len, for_field(table, first, what.field)));
      }
      Where ewhat = what;
      ewhat.element = n;
      const od::json_type et = type_of(ev, ewhat);
      if (et != od::json_type::number)
        reject(RejectReason::kWrongType, fmt::format("{}: expected a number, got {}", ewhat, json_type_name(et)));
      if (plain) {
        out.floats_.push_back(read_float32(ev, ewhat));
        if (projected) vector_in[n] = out.floats_.back();
      } else {
        vector_in[n] = read_double(ev, ewhat);
      }
      ++n;
    }
    if (n != len) {
      reject(RejectReason::kVectorLength, fmt::format("{}: {} elements, {} {}{}", what, n,
                                                      first.chain != nullptr ? "the projection takes" : "dims is", len,
                                                      for_field(table, first, what.field)));
    }
    // Vector fields sharing the member share its floats.
    for (const FieldTarget& target : in.fields) {
      if (target.chain != nullptr) {
        TransformResult r;
        r.vector = vector_out.data();
        TransformFailure why;
        if (!target.chain->apply(vector_in.data(), n, &r, &why)) reject_transform(why, target, table, what);
        uint64_t distinct = 0;
        store_transformed(r, target, table, what, out, &distinct);
        continue;
      }
      FieldValue fv;
      fv.field = target.index;
      fv.type = target.type;
      fv.i64 = static_cast<int64_t>(begin);  // fixed up to a pointer in finish()
      fv.length = n;
      out.values_.push_back(fv);
    }
  }

  [[noreturn]] void reject_unknown(const TableInfo& table, std::string_view name, const Where& at) {
    for (const auto& [field, input] : table.computed) {
      if (field == name) {
        reject(RejectReason::kUnknownField,
               fmt::format("{}: field \"{}\" of table \"{}\" is computed from \"{}\"; send \"{}\" instead", at,
                           clip(name), table.name, input, input));
      }
    }
    for (const auto& [aggregate, what] : table.aggregates) {
      if (aggregate == name) {
        reject(RejectReason::kUnknownField,
               fmt::format("{}: field \"{}\" of table \"{}\" is an aggregate the sidecar computes ({}); messages "
                           "carry events, not aggregates",
                           at, clip(name), table.name, what));
      }
    }
    reject(RejectReason::kUnknownField,
           fmt::format("{}: table \"{}\" has no field \"{}\"", at, table.name, clip(name)));
  }

  void decode_fields(od::value& fields_value, const TableInfo& table, const Where& at, DecodedBatch& out) {
    if (type_of(fields_value, at) != od::json_type::object) {
      reject(RejectReason::kWrongMemberType, at + ": fields must be an object");
    }
    od::object obj;
    if (fields_value.get_object().get(obj) != simdjson::SUCCESS) {
      reject(RejectReason::kBadJson, at + ": malformed fields object");
    }
    auto& seen = const_cast<TableInfo&>(table).seen;
    for (auto member : obj) {
      od::field f;
      if (std::move(member).get(f) != simdjson::SUCCESS)
        reject(RejectReason::kBadJson, at + ": malformed fields object");
      std::string_view name;
      if (f.unescaped_key().get(name) != simdjson::SUCCESS)
        reject(RejectReason::kBadJson, at + ": malformed field name");
      const InputInfo* found = table.find_input(name);
      if (found == nullptr) {
        if (table.allow_unknown_fields) {
          skipped_unread = true;
          continue;
        }
        reject_unknown(table, name, at);
      }
      const InputInfo& in = *found;
      if (seen[in.index] == update_serial) {
        reject(RejectReason::kDuplicateMember, fmt::format("{}: field \"{}\" appears twice", at, clip(name)));
      }
      seen[in.index] = update_serial;
      const Where what{at.index, at.batch, name};
      od::value& v = f.value();
      const od::json_type t = type_of(v, what);
      // A null that no reader takes falls through: each kind refuses it.
      if (t == od::json_type::null && decode_null_input(in, table, what, out)) continue;
      switch (in.kind) {
        case InputKind::kNumber:
        case InputKind::kNumberOrBool: decode_number_input(v, t, in, table, what, out); break;
        case InputKind::kString: decode_string_input(v, t, in, table, what, out); break;
        case InputKind::kBool: decode_bool_input(v, t, in, what, out); break;
        case InputKind::kArray: decode_vector_input(v, t, in, table, what, out); break;
        case InputKind::kScalar: decode_scalar_input(v, t, in, what, out); break;
      }
    }
    if (!table.gathers.empty()) finish_gathers(table, at, out);
  }

  // The envelope members of one update as the walk over its object finds
  // them. `key` points into the parser's string buffer until copied.
  struct Envelope {
    bool have_table = false, have_key = false, have_time = false, have_op = false, have_fields = false, have_id = false;
    bool fields_done = false;  // `fields` decoded in place during the walk
    const TableInfo* table = nullptr;
    std::string_view key;
    int64_t event_time_ms = 0;
    UpdateOp op = UpdateOp::kUpsert;
    uint64_t event_id = 0;
    uint32_t id_offset = 0;  // into the batch's bytes
    uint32_t id_length = 0;
  };

  // Rejects a member that appears twice in one update.
  static void mark_once(bool& flag, std::string_view name, const Where& at) {
    if (flag) [[unlikely]]
      reject_twice(name, at);
    flag = true;
  }
  [[noreturn, gnu::cold, gnu::noinline]] static void reject_twice(std::string_view name, const Where& at) {
    reject(RejectReason::kDuplicateMember, fmt::format("{}: \"{}\" appears twice", at, name));
  }

  // The table an update names. The updates of a message mostly name the
  // same table: a one-entry cache saves hashing the name each time.
  const TableInfo* find_table(std::string_view name) {
    if (last_table != nullptr && last_table->name == name) return last_table;
    auto it = table_by_name.find(name);
    if (it == table_by_name.end()) return nullptr;
    return last_table = &tables[it->second];
  }

  std::string_view read_string_member(od::value& v, std::string_view name, const Where& at) {
    if (type_of(v, at) != od::json_type::string) {
      reject(RejectReason::kWrongMemberType, fmt::format("{}: \"{}\" must be a string", at, name));
    }
    std::string_view s;
    if (v.get_string().get(s) != simdjson::SUCCESS) reject(RejectReason::kBadJson, at + ": malformed string");
    return s;
  }

  UpdateOp read_op(od::value& v, const Where& at) {
    if (type_of(v, at) != od::json_type::string)
      reject(RejectReason::kBadOp, at + ": \"op\" must be \"upsert\", \"delete\" or \"unpin\"");
    std::string_view o;
    if (v.get_string().get(o) != simdjson::SUCCESS) reject(RejectReason::kBadJson, at + ": malformed string");
    if (o == "upsert") return UpdateOp::kUpsert;
    if (o == "delete") return UpdateOp::kDelete;
    if (o == "unpin") return UpdateOp::kUnpin;
    reject(RejectReason::kBadOp,
           fmt::format("{}: op \"{}\" (expected \"upsert\", \"delete\" or \"unpin\")", at, clip(o)));
  }

  // One member of an update object, named `name`, into `e` (and, for
  // `fields` once the table is known, into `out`).
  void read_envelope_member(od::value& v, std::string_view name, const Where& at, Envelope& e, DecodedBatch& out) {
    if (name == "table") {
      mark_once(e.have_table, name, at);
      const std::string_view t = read_string_member(v, name, at);
      e.table = find_table(t);
      if (e.table == nullptr)
        reject(RejectReason::kUnknownTable, fmt::format("{}: no table \"{}\"; {}", at, clip(t), table_list));
    } else if (name == "key") {
      mark_once(e.have_key, name, at);
      e.key = read_string_member(v, name, at);
      current_key.assign(e.key.substr(0, kMaxLoggedIdBytes));
    } else if (name == "event_time") {
      mark_once(e.have_time, name, at);
      e.event_time_ms = read_event_time(v, at);
    } else if (name == "op") {
      mark_once(e.have_op, name, at);
      e.op = read_op(v, at);
    } else if (name == "id") {
      mark_once(e.have_id, name, at);
      const std::string_view id = read_string_member(v, name, at);
      const std::string_view kept = id.substr(0, kMaxLoggedIdBytes);
      if (out.first_id_.empty()) out.first_id_.assign(kept);
      current_id.assign(kept);
      e.id_offset = static_cast<uint32_t>(out.bytes_.size());
      e.id_length = static_cast<uint32_t>(kept.size());
      out.bytes_.append(kept.data(), kept.size());
      // Hashed now: `id` points into the parser's string buffer, which a
      // second walk of the object may reuse. "" is no id: a producer that
      // fills it with an empty default must not have every event after
      // the first dropped as a duplicate.
      e.event_id = id.empty() ? 0 : event_id_hash(id);
    } else if (name == "fields") {
      mark_once(e.have_fields, name, at);
      // Decoded in place when the table is already known (the usual order);
      // otherwise after the walk, by finding the member again.
      if (e.table != nullptr && !(e.have_op && e.op != UpdateOp::kUpsert)) {
        decode_fields(v, *e.table, at, out);
        e.fields_done = true;
      }
    } else {
      skipped_unread = true;  // any other member is ignored (forward compatibility)
    }
  }

  // The members every update needs, and its key within the table's limit.
  static void check_envelope(const Envelope& e, const Where& at) {
    if (!e.have_table) reject(RejectReason::kMissingMember, at + ": missing \"table\"");
    if (!e.have_key) reject(RejectReason::kMissingMember, at + ": missing \"key\"");
    if (!e.have_time) reject(RejectReason::kMissingMember, at + ": missing \"event_time\"");
    if (e.op == UpdateOp::kUpsert && !e.have_fields)
      reject(RejectReason::kMissingMember, at + ": missing \"fields\" (required for an upsert)");
    if (e.key.empty()) reject(RejectReason::kEmptyKey, at + ": \"key\" is empty");
    if (e.key.size() > e.table->key_max_len) {
      reject(RejectReason::kKeyTooLong, fmt::format("{}: key of {} bytes, table \"{}\" allows {}", at, e.key.size(),
                                                    e.table->name, e.table->key_max_len));
    }
  }

  // `fields` came before `table`: a second walk finds it, decodes it, then
  // walks to the end of the object so the document iterator is past it.
  void decode_fields_after_walk(od::object& obj, const TableInfo& table, const Where& at, DecodedBatch& out) {
    if (obj.reset().error() != simdjson::SUCCESS) reject(RejectReason::kBadJson, at + ": malformed object");
    od::value v;
    if (obj.find_field("fields").get(v) != simdjson::SUCCESS) reject(RejectReason::kBadJson, at + ": malformed object");
    decode_fields(v, table, at, out);
    if (obj.reset().error() != simdjson::SUCCESS) reject(RejectReason::kBadJson, at + ": malformed object");
    for (auto member : obj) {
      if (member.error() != simdjson::SUCCESS) reject(RejectReason::kBadJson, at + ": malformed object");
    }
  }

  void decode_update(od::object& obj, size_t index, bool batch, DecodedBatch& out) {
    const Where at{index, batch};
    ++update_serial;
    current_id.clear();
    current_key.clear();
    Envelope e;
    const size_t values_begin = out.values_.size();
    const size_t sources_begin = out.sources_.size();

    for (auto member : obj) {
      od::field f;
      if (std::move(member).get(f) != simdjson::SUCCESS) reject(RejectReason::kBadJson, at + ": malformed object");
      std::string_view name;
      if (f.unescaped_key().get(name) != simdjson::SUCCESS)
        reject(RejectReason::kBadJson, at + ": malformed member name");
      read_envelope_member(f.value(), name, at, e, out);
    }
    check_envelope(e, at);
    // Copy the key now: it points into the parser's string buffer, which a
    // second walk of the object may reuse.
    DecodedUpdate u;
    u.key_offset = static_cast<uint32_t>(out.bytes_.size());
    u.key_length = static_cast<uint32_t>(e.key.size());
    out.bytes_.append(e.key.data(), e.key.size());
    if (e.op != UpdateOp::kUpsert) {
      out.values_.truncate(values_begin);  // a delete or unpin ignores fields
      out.sources_.truncate(sources_begin);
      if (e.have_fields && !e.fields_done) skipped_unread = true;
    } else if (!e.fields_done) {
      decode_fields_after_walk(obj, *e.table, at, out);
    }

    u.table = e.table->index;
    u.op = e.op;
    u.event_time_ms = e.event_time_ms;
    u.values_begin = static_cast<uint32_t>(values_begin);
    u.values_count = static_cast<uint32_t>(out.values_.size() - values_begin);
    u.sources_begin = static_cast<uint32_t>(sources_begin);
    u.sources_count = static_cast<uint32_t>(out.sources_.size() - sources_begin);
    u.event_id = e.event_id;
    u.id_offset = e.id_offset;
    u.id_length = e.id_length;
    // Last, so that every other problem of the update is reported first.
    check_event_time(*e.table, e.event_time_ms, at);
    if (e.op == UpdateOp::kUnpin) {
      if (e.table->bounds.max_future_skew_ms == EventTimeBounds::kOff) {
        reject(RejectReason::kBadOp,
               fmt::format("{}: op \"unpin\" needs max_future_skew on table \"{}\" (it is off)", at, e.table->name));
      }
      u.pinned_after_ms = clock_ms() + e.table->bounds.max_future_skew_ms;
    }
    out.updates_.push_back(u);
  }

  int64_t read_event_time(od::value& v, const Where& at) {
    const od::json_type t = type_of(v, at);
    if (t == od::json_type::number) {
      const std::string_view tok = v.raw_json_token();
      if (!json_number_syntax(tok)) {
        reject(RejectReason::kBadJson, at + ": malformed event_time");
      }
      int64_t ms;
      if (has_fraction_or_exponent(tok) || v.get_int64().get(ms) != simdjson::SUCCESS || ms < 0 ||
          ms > kMaxEventTimeMs) {
        reject(RejectReason::kBadEventTime, fmt::format("{}: event_time {} is not an integer count of ms in [0, {}]",
                                                        at, clip(tok), kMaxEventTimeMs));
      }
      return ms;
    }
    if (t == od::json_type::string) {
      std::string_view s;
      if (v.get_string().get(s) != simdjson::SUCCESS) reject(RejectReason::kBadJson, at + ": malformed string");
      int64_t ms;
      if (!parse_rfc3339_ms(s, &ms)) {
        reject(RejectReason::kBadEventTime,
               fmt::format("{}: event_time \"{}\" is not an RFC 3339 timestamp with an offset", at, clip(s)));
      }
      return ms;
    }
    reject(
        RejectReason::kBadEventTime,
        fmt::format("{}: event_time must be ms since the epoch or an RFC 3339 string, got {}", at, json_type_name(t)));
  }

  // Points string and vector values at the batch's arenas (final addresses).
  static void finish(DecodedBatch& out) {
    for (FieldValue& fv : out.values_) {
      if (fv.type == FieldType::kString) {
        fv.data = out.bytes_.data() + fv.i64;
        fv.i64 = 0;
      } else if (fv.type == FieldType::kFloat32Vector) {
        fv.data = out.floats_.data() + fv.i64;
        fv.i64 = 0;
      }
    }
  }

  void decode(std::string_view body, DecodedBatch& out) {
    skipped_unread = false;
    const size_t need = body.size() + simdjson::SIMDJSON_PADDING;
    if (padded.size() < need) padded.resize(need);
    if (!body.empty()) std::memcpy(padded.data(), body.data(), body.size());
    std::memset(padded.data() + body.size(), 0, simdjson::SIMDJSON_PADDING);

    od::document doc;
    if (parser.iterate(padded.data(), body.size(), padded.size()).get(doc) != simdjson::SUCCESS) {
      reject(RejectReason::kBadJson, "not JSON");
    }
    od::json_type t;
    if (doc.type().get(t) != simdjson::SUCCESS) reject(RejectReason::kBadJson, "not JSON");
    if (t == od::json_type::object) {
      od::object obj;
      if (doc.get_object().get(obj) != simdjson::SUCCESS) reject(RejectReason::kBadJson, "malformed object");
      decode_update(obj, 0, false, out);
    } else if (t == od::json_type::array) {
      od::array arr;
      if (doc.get_array().get(arr) != simdjson::SUCCESS) reject(RejectReason::kBadJson, "malformed array");
      size_t index = 0;
      for (auto element : arr) {
        od::value ev;
        if (std::move(element).get(ev) != simdjson::SUCCESS) reject(RejectReason::kBadJson, "malformed array");
        od::json_type et;
        if (ev.type().get(et) != simdjson::SUCCESS)
          reject(RejectReason::kBadJson, fmt::format("update {}: malformed value", index));
        if (et != od::json_type::object) {
          reject(RejectReason::kNotObject,
                 fmt::format("update {}: expected an object, got {}", index, json_type_name(et)));
        }
        od::object obj;
        if (ev.get_object().get(obj) != simdjson::SUCCESS) reject(RejectReason::kBadJson, "malformed object");
        decode_update(obj, index, true, out);
        ++index;
      }
      if (index == 0) reject(RejectReason::kEmptyBatch, "empty batch");
    } else {
      reject(RejectReason::kNotObject,
             fmt::format("body must be an object or an array of objects, got {}", json_type_name(t)));
    }
    // Nothing but whitespace may follow the top-level value.
    const char* rest = nullptr;
    if (doc.current_location().get(rest) == simdjson::SUCCESS) {
      reject(RejectReason::kBadJson, "trailing content after the JSON value");
    }
    // On-Demand checks only the structure of values it skips; when it skipped
    // some (ignored members or fields), validate the whole document so that
    // malformed JSON is rejected wherever it hides. Rare, so the second parse
    // costs nothing on the usual path.
    if (skipped_unread) {
      simdjson::dom::element root;
      if (validator.parse(padded.data(), body.size(), false).get(root) != simdjson::SUCCESS) {
        reject(RejectReason::kBadJson, "malformed JSON inside an ignored member");
      }
    }
    finish(out);
  }
};

namespace {

// Resolves the schema and the ingest options into `impl`'s per-table maps
// (shared by the JSON decoder and the UpdateBuilder of the binary formats).
void build_tables(Decoder::Impl& impl, const layout::Schema& schema, const std::vector<TableDecodeOptions>& options) {
  using Impl = Decoder::Impl;
  using InputKind = Impl::InputKind;
  // The JSON value one more reader of an input needs, merged into what the
  // earlier readers need; false when they cannot agree.
  auto merge = [](Impl::InputInfo& in, InputKind k) {
    const bool fresh = in.fields.empty() && in.raw_source < 0 && in.gathers.empty();
    if (k == InputKind::kScalar) {  // the other readers decide what the member holds
      if (fresh) in.kind = k;
      return in.kind != InputKind::kArray;
    }
    if (in.kind == InputKind::kScalar && !fresh) {
      in.kind = k;
      return k != InputKind::kArray;
    }
    if (fresh || in.kind == k ||
        (in.kind == InputKind::kNumberOrBool && (k == InputKind::kNumber || k == InputKind::kBool))) {
      in.kind = k;
      return true;
    }
    return k == InputKind::kNumberOrBool && (in.kind == InputKind::kNumber || in.kind == InputKind::kBool);
  };
  impl.tables.resize(schema.tables.size());
  for (size_t t = 0; t < schema.tables.size(); ++t) {
    const layout::TableSpec& spec = schema.tables[t];
    const TableDecodeOptions* opt = t < options.size() ? &options[t] : nullptr;
    Impl::TableInfo& info = impl.tables[t];
    info.index = static_cast<uint32_t>(t);
    info.name = spec.name;
    info.key_max_len = spec.key_max_len;
    info.allow_unknown_fields = opt != nullptr && opt->allow_unknown_fields;
    if (opt != nullptr) info.bounds = opt->event_time;
    info.chains.resize(spec.fields.size());  // never resized again: targets point into it
    auto input_for = [&](const std::string& name) -> Impl::InputInfo& {
      const auto [it, added] = info.input_by_name.emplace(name, static_cast<uint32_t>(info.inputs.size()));
      if (added) {
        info.inputs.emplace_back();
        info.inputs.back().name = name;
        info.inputs.back().index = it->second;
      }
      return info.inputs[it->second];
    };
    auto bad = [&](const std::string& what) {
      throw std::invalid_argument(fmt::format("decoder: table \"{}\": {}", spec.name, what));
    };

    for (size_t f = 0; f < spec.fields.size(); ++f) {
      const layout::FieldSpec& field = spec.fields[f];
      info.field_names.push_back(field.name);
      const FieldIngest* ingest = opt != nullptr && f < opt->fields.size() ? &opt->fields[f] : nullptr;
      const std::string& input = ingest != nullptr && !ingest->from.empty() ? ingest->from : field.name;
      Impl::FieldTarget target{static_cast<uint32_t>(f), field.type, field.count, nullptr, -1};
      if (ingest != nullptr && !ingest->from_members.empty()) {
        const TransformChain& chain = ingest->transform;
        const std::vector<std::string>& members = ingest->from_members;
        if (chain.input() != TransformInput::kVector || chain.input_dims() != members.size() ||
            field.type != FieldType::kFloat32Vector || chain.output_dims() != field.count) {
          bad(
              fmt::format("field \"{}\": a list of members needs a project step of as many columns, into a vector "
                          "field of its rows",
                          field.name));
        }
        info.chains[f] = chain;
        target.chain = &info.chains[f];
        Impl::Gather g;
        g.target = target;
        g.values.assign(members.size(), 0);
        for (size_t k = 0; k < members.size(); ++k) {
          Impl::InputInfo& in = input_for(members[k]);
          if (!merge(in, InputKind::kNumber)) bad(fmt::format("member \"{}\" is read as two JSON types", members[k]));
          in.gathers.emplace_back(static_cast<uint32_t>(info.gathers.size()), static_cast<uint32_t>(k));
          in.takes_null = false;
          g.members += (k ? ", " : "") + members[k];
        }
        info.computed.emplace_back(field.name, g.members);
        info.gathers.push_back(std::move(g));
        impl.vector_out.resize(std::max(impl.vector_out.size(), chain.output_dims()));
        continue;
      }
      InputKind kind = field.type == FieldType::kString          ? InputKind::kString
                       : field.type == FieldType::kFloat32Vector ? InputKind::kArray
                       : field.type == FieldType::kBool          ? InputKind::kBool
                                                                 : InputKind::kNumber;
      uint32_t array_len = field.type == FieldType::kFloat32Vector ? field.count : 0;
      bool takes_null = false;
      if (ingest != nullptr && !ingest->transform.empty()) {
        const TransformChain& chain = ingest->transform;
        const TransformOutput output = chain.output();
        const bool fits = output == TransformOutput::kVector
                              ? field.type == FieldType::kFloat32Vector && chain.output_dims() == field.count
                          : output == TransformOutput::kBool ? field.type == FieldType::kBool
                          : output == TransformOutput::kInt64
                              ? kind == InputKind::kNumber
                              : kind == InputKind::kNumber && field.type != FieldType::kInt64;
        if (!fits) bad(fmt::format("field \"{}\": its transform's output does not fit its type", field.name));
        info.chains[f] = chain;
        target.chain = &info.chains[f];
        kind = chain.input() == TransformInput::kString   ? InputKind::kString
               : chain.input() == TransformInput::kVector ? InputKind::kArray
                                                          : InputKind::kNumber;
        array_len = static_cast<uint32_t>(chain.input_dims());
        takes_null = chain.takes_null();
        impl.vector_out.resize(std::max(impl.vector_out.size(), chain.output_dims()));
        impl.vector_in.resize(std::max(impl.vector_in.size(), chain.input_dims()));
      }
      Impl::InputInfo& in = input_for(input);
      const bool fresh = in.fields.empty() && in.raw_source < 0 && in.gathers.empty();
      if (!merge(in, kind)) bad(fmt::format("member \"{}\" is read as two JSON types", input));
      if (kind == InputKind::kArray) {
        if (!fresh && in.array_len != array_len) {
          bad(fmt::format("member \"{}\" is read as arrays of {} and of {} numbers", input, in.array_len, array_len));
        }
        in.array_len = array_len;
      }
      in.takes_null = takes_null && (fresh || in.takes_null);
      in.fields.push_back(target);
      if (input != field.name) info.computed.emplace_back(field.name, input);
    }

    if (!spec.aggregates.empty()) {
      const layout::AggregatePlan plan = layout::plan_aggregates(spec);
      for (size_t k = 0; k < plan.sources.size(); ++k) {
        const std::string& source = plan.sources[k];
        Impl::FieldTarget* field_target = nullptr;
        for (Impl::InputInfo& in : info.inputs) {
          for (Impl::FieldTarget& target : in.fields) {
            if (info.field_names[target.index] == source) field_target = &target;
          }
        }
        // Only distinct_count and count take a string; a member read by
        // nothing else may hold any scalar.
        bool distinct = false, any_scalar = true;
        for (const layout::AggregateSpec& a : spec.aggregates) {
          if (a.source != source) continue;
          distinct |= a.fn == layout::AggregateFn::kDistinctCount;
          any_scalar &= a.fn == layout::AggregateFn::kDistinctCount || a.fn == layout::AggregateFn::kCount;
        }
        const bool only_distinct = distinct && any_scalar;
        if (field_target != nullptr) {  // the field's value, after its transform
          const bool string_field = field_target->type == FieldType::kString;
          if ((string_field && !any_scalar) || field_target->type == FieldType::kFloat32Vector) {
            bad(fmt::format("aggregate source \"{}\" is not a numeric field", source));
          }
          field_target->source = static_cast<int32_t>(k);
          field_target->source_distinct = distinct;
        } else {  // a member the row does not store: its raw value
          Impl::InputInfo& in = input_for(source);
          if (!merge(in, only_distinct ? InputKind::kScalar : InputKind::kNumberOrBool)) {
            bad(fmt::format("member \"{}\" is read as two JSON types", source));
          }
          in.raw_source = static_cast<int32_t>(k);
          in.raw_distinct = distinct;
          in.takes_null = false;  // the raw value is folded as it is: null is no value
        }
      }
    }
    for (const layout::AggregateSpec& a : spec.aggregates) {
      const std::string over = " over " + format_duration(a.window_ms);
      info.aggregates.emplace_back(
          a.name, a.source.empty() ? "count of the key's events" + over + ": send the events"
                                   : fmt::format("{} of \"{}\"{}: send \"{}\" with each event",
                                                 layout::aggregate_fn_name(a.fn), a.source, over, a.source));
    }
    info.seen.assign(info.inputs.size(), 0);
    for (Impl::InputInfo& in : info.inputs) {
      in.stored_as_is = in.fields.size() == 1 && in.fields[0].chain == nullptr && in.fields[0].source < 0 &&
                        in.raw_source < 0 && in.gathers.empty();
    }
    impl.table_by_name.emplace(spec.name, static_cast<uint32_t>(t));
  }
  // A detail is bounded (a reject reason travels in a header): at most
  // kTableListBytes of names, then how many more there are.
  constexpr size_t kTableListBytes = 200;
  std::string& list = impl.table_list;
  list = "the tables are ";
  for (size_t t = 0; t < schema.tables.size(); ++t) {
    const std::string& name = schema.tables[t].name;
    if (list.size() + name.size() > kTableListBytes) {
      list += fmt::format("... ({} more)", schema.tables.size() - t);
      break;
    }
    list += (t ? ", " : "") + name;
  }
}

}  // namespace

Decoder::Decoder(const layout::Schema& schema, std::vector<TableDecodeOptions> options)
    : impl_(std::make_unique<Impl>()) {
  build_tables(*impl_, schema, options);
}

Decoder::~Decoder() = default;

DecodeResult Decoder::decode(std::string_view body, DecodedBatch& out) { return decode(body, out, Impl::kClockUnread); }

DecodeResult Decoder::decode(std::string_view body, DecodedBatch& out, int64_t now_unix_ms) {
  out.clear();
  impl_->now_ms = now_unix_ms;
  impl_->current_id.clear();
  impl_->current_key.clear();
  try {
    impl_->decode(body, out);
    return DecodeResult::success();
  } catch (Reject& r) {
    out.clear();
    return DecodeResult{false, r.reason, std::move(r.detail), impl_->current_id, impl_->current_key};
  } catch (const std::exception& e) {  // allocation failure or a simdjson surprise
    out.clear();
    return DecodeResult{false, RejectReason::kBadJson, std::string("decoder error: ") + e.what(), impl_->current_id,
                        impl_->current_key};
  }
}

// ---------------------------------------------------------------------------
// UpdateBuilder (update_builder.h): the rules above, for typed values.

const char* input_type_name(InputType type) noexcept {
  switch (type) {
    case InputType::kInteger: return "an integer";
    case InputType::kNumber: return "a number";
    case InputType::kNumberOrBool: return "a number or a bool";
    case InputType::kBool: return "a bool";
    case InputType::kString: return "a string";
    case InputType::kVector: return "a list of numbers";
    case InputType::kScalar: return "a string, an integer or a bool";
  }
  return "an unknown type";
}

struct UpdateBuilder::State {
  using Impl = Decoder::Impl;
  DecodedBatch* out = nullptr;
  Impl::Envelope e;
  Where at;
  size_t values_begin = 0;
  size_t sources_begin = 0;
  // The vector being read (vector_begin .. vector_end).
  // As the JSON decoder reads a list: plain targets store the elements as
  // float32 in the batch; projections read them (as doubles, or as the
  // float32 a plain target stored) from Impl::vector_in, run at vector_end.
  const Impl::InputInfo* vector = nullptr;
  Where vector_where;
  size_t vector_begin = 0;
  uint32_t vector_count = 0;
  bool vector_plain = false;
  bool vector_projected = false;
};

namespace {

InputType input_type_of(const Decoder::Impl::InputInfo& in) {
  using Kind = Decoder::Impl::InputKind;
  switch (in.kind) {
    case Kind::kNumber:
      for (const auto& target : in.fields) {
        if (target.type == FieldType::kInt64 && target.chain == nullptr) return InputType::kInteger;
      }
      return InputType::kNumber;
    case Kind::kNumberOrBool: return InputType::kNumberOrBool;
    case Kind::kBool: return InputType::kBool;
    case Kind::kString: return InputType::kString;
    case Kind::kArray: return InputType::kVector;
    case Kind::kScalar: return InputType::kScalar;
  }
  return InputType::kNumber;
}

}  // namespace

UpdateBuilder::UpdateBuilder(const layout::Schema& schema, const std::vector<TableDecodeOptions>& options)
    : impl_(std::make_unique<Decoder::Impl>()), state_(std::make_unique<State>()) {
  build_tables(*impl_, schema, options);
}

UpdateBuilder::~UpdateBuilder() = default;

size_t UpdateBuilder::table_count() const noexcept { return impl_->tables.size(); }

const std::string& UpdateBuilder::table_name(uint32_t table) const { return impl_->tables.at(table).name; }

std::optional<uint32_t> UpdateBuilder::find_table(std::string_view name) const {
  auto it = impl_->table_by_name.find(name);
  if (it == impl_->table_by_name.end()) return std::nullopt;
  return it->second;
}

bool UpdateBuilder::allow_unknown_fields(uint32_t table) const { return impl_->tables.at(table).allow_unknown_fields; }

std::vector<UpdateBuilder::Input> UpdateBuilder::inputs(uint32_t table) const {
  std::vector<Input> out;
  for (const auto& in : impl_->tables.at(table).inputs) out.push_back(Input{in.name, input_type_of(in)});
  return out;
}

std::optional<std::string> UpdateBuilder::why_not_an_input(uint32_t table, std::string_view name) const {
  const auto& info = impl_->tables.at(table);
  for (const auto& [field, input] : info.computed) {
    if (field == name) return fmt::format("field \"{}\" is computed from \"{}\"", field, input);
  }
  for (const auto& [aggregate, what] : info.aggregates) {
    if (aggregate == name) return fmt::format("\"{}\" is an aggregate the sidecar computes ({})", aggregate, what);
  }
  return std::nullopt;
}

DecodeResult UpdateBuilder::run(DecodedBatch& out, int64_t now_unix_ms, RejectReason malformed, void (*walk)(void* ctx),
                                void* ctx) {
  out.clear();
  impl_->now_ms = now_unix_ms < 0 ? Decoder::Impl::kClockUnread : now_unix_ms;
  impl_->current_id.clear();
  impl_->current_key.clear();
  state_->out = &out;
  state_->vector = nullptr;
  try {
    walk(ctx);
    Decoder::Impl::finish(out);
    return DecodeResult::success();
  } catch (Reject& r) {
    out.clear();
    return DecodeResult{false, r.reason, std::move(r.detail), impl_->current_id, impl_->current_key};
  } catch (const std::exception& e) {  // allocation failure
    out.clear();
    return DecodeResult{false, malformed, std::string("decoder error: ") + e.what(), impl_->current_id,
                        impl_->current_key};
  }
}

DecodeResult UpdateBuilder::append(DecodedBatch& out, int64_t now_unix_ms, RejectReason malformed,
                                   void (*walk)(void* ctx), void* ctx) {
  // What `out` held before: a rejection truncates back to it. Values are
  // not finished yet (their data offsets still index bytes_ and floats_),
  // so truncating keeps the earlier records whole.
  const size_t updates = out.updates_.size(), values = out.values_.size(), sources = out.sources_.size(),
               bytes = out.bytes_.size(), floats = out.floats_.size();
  const bool had_id = !out.first_id_.empty();
  impl_->now_ms = now_unix_ms < 0 ? Decoder::Impl::kClockUnread : now_unix_ms;
  impl_->current_id.clear();
  impl_->current_key.clear();
  state_->out = &out;
  state_->vector = nullptr;
  auto undo = [&] {
    out.updates_.truncate(updates);
    out.values_.truncate(values);
    out.sources_.truncate(sources);
    out.bytes_.truncate(bytes);
    out.floats_.truncate(floats);
    if (!had_id) out.first_id_.clear();
  };
  try {
    walk(ctx);
    return DecodeResult::success();
  } catch (Reject& r) {
    undo();
    return DecodeResult{false, r.reason, std::move(r.detail), impl_->current_id, impl_->current_key};
  } catch (const std::exception& e) {  // allocation failure
    undo();
    return DecodeResult{false, malformed, std::string("decoder error: ") + e.what(), impl_->current_id,
                        impl_->current_key};
  }
}

void UpdateBuilder::finish(DecodedBatch& out) noexcept { Decoder::Impl::finish(out); }

void UpdateBuilder::reject(RejectReason reason, std::string detail) {
  ::larder::sidecar::reject(reason, std::move(detail));
}

std::string UpdateBuilder::where() const { return state_->at.str(); }

void UpdateBuilder::begin_update(size_t index, bool batch) {
  State& s = *state_;
  ++impl_->update_serial;
  impl_->current_id.clear();
  impl_->current_key.clear();
  s.e = State::Impl::Envelope{};
  s.at = Where{index, batch};
  s.values_begin = s.out->values_.size();
  s.sources_begin = s.out->sources_.size();
  s.vector = nullptr;
}

void UpdateBuilder::set_table(uint32_t table) {
  state_->e.have_table = true;
  state_->e.table = &impl_->tables.at(table);
}

void UpdateBuilder::set_table_name(std::string_view name) {
  State& s = *state_;
  Decoder::Impl::mark_once(s.e.have_table, "table", s.at);
  s.e.table = impl_->find_table(name);
  if (s.e.table == nullptr) {
    ::larder::sidecar::reject(RejectReason::kUnknownTable,
                              fmt::format("{}: no table \"{}\"; {}", s.at, clip(name), impl_->table_list));
  }
}

bool UpdateBuilder::has_table() const noexcept { return state_->e.table != nullptr; }

uint32_t UpdateBuilder::current_table() const noexcept { return state_->e.table->index; }

void UpdateBuilder::set_key(std::string_view key) {
  State& s = *state_;
  Decoder::Impl::mark_once(s.e.have_key, "key", s.at);
  s.e.key = key;  // the body outlives the update
  impl_->current_key.assign(key.substr(0, kMaxLoggedIdBytes));
}

void UpdateBuilder::set_event_time_ms(int64_t ms) {
  State& s = *state_;
  Decoder::Impl::mark_once(s.e.have_time, "event_time", s.at);
  if (ms < 0 || ms > kMaxEventTimeMs) {
    ::larder::sidecar::reject(
        RejectReason::kBadEventTime,
        fmt::format("{}: event_time {} is not a count of ms in [0, {}]", s.at, ms, kMaxEventTimeMs));
  }
  s.e.event_time_ms = ms;
}

void UpdateBuilder::set_event_time_text(std::string_view text) {
  State& s = *state_;
  Decoder::Impl::mark_once(s.e.have_time, "event_time", s.at);
  if (!parse_rfc3339_ms(text, &s.e.event_time_ms)) {
    ::larder::sidecar::reject(
        RejectReason::kBadEventTime,
        fmt::format("{}: event_time \"{}\" is not an RFC 3339 timestamp with an offset", s.at, clip(text)));
  }
}

void UpdateBuilder::set_op(std::string_view op) {
  State& s = *state_;
  Decoder::Impl::mark_once(s.e.have_op, "op", s.at);
  if (op == "upsert") {
    s.e.op = UpdateOp::kUpsert;
  } else if (op == "delete") {
    s.e.op = UpdateOp::kDelete;
  } else if (op == "unpin") {
    s.e.op = UpdateOp::kUnpin;
  } else {
    ::larder::sidecar::reject(
        RejectReason::kBadOp,
        fmt::format("{}: op \"{}\" (expected \"upsert\", \"delete\" or \"unpin\")", s.at, clip(op)));
  }
}

void UpdateBuilder::set_id(std::string_view id) {
  State& s = *state_;
  Decoder::Impl::mark_once(s.e.have_id, "id", s.at);
  DecodedBatch& out = *s.out;
  const std::string_view kept = id.substr(0, kMaxLoggedIdBytes);
  if (out.first_id_.empty()) out.first_id_.assign(kept);
  impl_->current_id.assign(kept);
  s.e.id_offset = static_cast<uint32_t>(out.bytes_.size());
  s.e.id_length = static_cast<uint32_t>(kept.size());
  out.bytes_.append(kept.data(), kept.size());
  s.e.event_id = id.empty() ? 0 : event_id_hash(id);  // "" is no id (see the JSON decoder)
}

void UpdateBuilder::set_fields_present() { Decoder::Impl::mark_once(state_->e.have_fields, "fields", state_->at); }

bool UpdateBuilder::is_upsert() const noexcept { return state_->e.op == UpdateOp::kUpsert; }

namespace {

using Impl = Decoder::Impl;

[[noreturn, gnu::cold, gnu::noinline]] void reject_no_input(const Where& at) {
  reject(RejectReason::kInternal, at + ": a value for no input of the table");
}

[[noreturn, gnu::cold, gnu::noinline]] void reject_input_twice(const Impl::InputInfo& in, const Where& at) {
  reject(RejectReason::kDuplicateMember, fmt::format("{}: field \"{}\" appears twice", at, in.name));
}

// The input `index` of the update's table, marked as seen. Inlined into
// every setter: it runs once per member of every update.
[[gnu::always_inline]] inline const Impl::InputInfo& take_input(Impl& impl, const Impl::TableInfo* table,
                                                                uint32_t index, const Where& at) {
  if (table == nullptr || index >= table->inputs.size()) [[unlikely]]
    reject_no_input(at);
  const Impl::InputInfo& in = table->inputs[index];
  auto& seen = const_cast<Impl::TableInfo*>(table)->seen;
  if (seen[in.index] == impl.update_serial) [[unlikely]]
    reject_input_twice(in, at);
  seen[in.index] = impl.update_serial;
  return in;
}

[[noreturn]] void reject_type(const Impl::InputInfo& in, const Where& what, const char* got) {
  reject(RejectReason::kWrongType,
         fmt::format("{}: expected {}, got {}", what, input_type_name(input_type_of(in)), got));
}

// A number for the fields, transforms and sources that read `in`: an
// integer (`is_int`, exactly `i`) or a floating-point `d`.
void typed_number(Impl& impl, const Impl::InputInfo& in, const Impl::TableInfo& table, const Where& what, bool is_int,
                  int64_t i, double d, DecodedBatch& out) {
  for (const Impl::FieldTarget& target : in.fields) {
    double seen_by_source = 0;
    uint64_t distinct = 0;
    if (target.chain != nullptr) {
      TransformResult r;
      r.vector = impl.vector_out.data();  // a one_hot's output, as the JSON decoder gives it
      TransformFailure why;
      if (!target.chain->apply(d, &r, &why)) impl.reject_transform(why, target, table, what);
      seen_by_source = impl.store_transformed(r, target, table, what, out, &distinct);
    } else {
      FieldValue fv;
      fv.field = target.index;
      fv.type = target.type;
      switch (target.type) {
        case FieldType::kInt64:
          if (!is_int) reject_type(in, what, "a floating-point number");
          fv.i64 = i;
          seen_by_source = static_cast<double>(i);
          if (target.source_distinct) distinct = distinct_hash_int64(i);
          break;
        case FieldType::kFloat64: seen_by_source = fv.f64 = d; break;
        case FieldType::kFloat32:
          if (d > static_cast<double>(FLT_MAX) || d < -static_cast<double>(FLT_MAX)) {
            reject(RejectReason::kOutOfRange, fmt::format("{}: {} is outside the float32 range", what, d));
          }
          seen_by_source = fv.f64 = static_cast<float>(d);
          break;
        default: break;  // not a number input
      }
      Impl::push_value(out, fv);
    }
    Impl::add_source(out, target.source, seen_by_source, distinct);
  }
  if (in.raw_source >= 0) {
    Impl::add_source(out, in.raw_source, d,
                     in.raw_distinct ? (is_int ? distinct_hash_int64(i) : distinct_hash_number(d)) : 0);
  }
}

}  // namespace

void UpdateBuilder::input_integer(uint32_t input, int64_t v) {
  State& s = *state_;
  const Impl::InputInfo& in = take_input(*impl_, s.e.table, input, s.at);
  if (in.stored_as_is && in.kind == Impl::InputKind::kNumber && in.fields[0].type == FieldType::kInt64) [[likely]] {
    // typed_number's work for its one plain int64 target.
    FieldValue fv;
    fv.field = in.fields[0].index;
    fv.type = FieldType::kInt64;
    fv.i64 = v;
    s.out->values_.push_back(fv);
    return;
  }
  const Where what{s.at.index, s.at.batch, in.name};
  switch (in.kind) {
    case Impl::InputKind::kNumber:
    case Impl::InputKind::kNumberOrBool:
      typed_number(*impl_, in, *s.e.table, what, true, v, static_cast<double>(v), *s.out);
      return;
    case Impl::InputKind::kScalar: Impl::add_source(*s.out, in.raw_source, 0.0, distinct_hash_int64(v)); return;
    default: reject_type(in, what, "an integer");
  }
}

void UpdateBuilder::input_double(uint32_t input, double v) {
  State& s = *state_;
  const Impl::InputInfo& in = take_input(*impl_, s.e.table, input, s.at);
  const Where what{s.at.index, s.at.batch, in.name};
  if (in.kind != Impl::InputKind::kNumber && in.kind != Impl::InputKind::kNumberOrBool) {
    reject_type(in, what, "a floating-point number");
  }
  if (!std::isfinite(v)) ::larder::sidecar::reject(RejectReason::kNonFinite, what + ": not a finite number");
  const FieldType type = in.fields.empty() ? FieldType::kInt64 : in.fields[0].type;
  if (in.stored_as_is && (type == FieldType::kFloat64 || type == FieldType::kFloat32)) [[likely]] {
    // typed_number's work for its one plain float64 or float32 target.
    FieldValue fv;
    fv.field = in.fields[0].index;
    fv.type = type;
    fv.f64 = v;
    if (type == FieldType::kFloat32) {
      if (v > static_cast<double>(FLT_MAX) || v < -static_cast<double>(FLT_MAX)) {
        ::larder::sidecar::reject(RejectReason::kOutOfRange,
                                  fmt::format("{}: {} is outside the float32 range", what, v));
      }
      fv.f64 = static_cast<float>(v);
    }
    s.out->values_.push_back(fv);
    return;
  }
  typed_number(*impl_, in, *s.e.table, what, false, 0, v, *s.out);
}

void UpdateBuilder::input_bool(uint32_t input, bool v) {
  State& s = *state_;
  const Impl::InputInfo& in = take_input(*impl_, s.e.table, input, s.at);
  if (in.stored_as_is && in.kind == Impl::InputKind::kBool) [[likely]] {
    // The loop below for its one plain bool target.
    FieldValue fv;
    fv.field = in.fields[0].index;
    fv.type = in.fields[0].type;
    fv.i64 = v ? 1 : 0;
    s.out->values_.push_back(fv);
    return;
  }
  const Where what{s.at.index, s.at.batch, in.name};
  DecodedBatch& out = *s.out;
  switch (in.kind) {
    case Impl::InputKind::kBool:
      for (const Impl::FieldTarget& target : in.fields) {
        FieldValue fv;
        fv.field = target.index;
        fv.type = target.type;
        fv.i64 = v ? 1 : 0;
        out.values_.push_back(fv);
        Impl::add_source(out, target.source, v ? 1.0 : 0.0);
      }
      Impl::add_source(out, in.raw_source, v ? 1.0 : 0.0);
      return;
    case Impl::InputKind::kNumberOrBool:
    case Impl::InputKind::kScalar: Impl::add_source(out, in.raw_source, v ? 1.0 : 0.0); return;
    default: reject_type(in, what, "a bool");
  }
}

void UpdateBuilder::input_string(uint32_t input, std::string_view v) {
  State& s = *state_;
  const Impl::InputInfo& in = take_input(*impl_, s.e.table, input, s.at);
  if (in.stored_as_is && in.kind == Impl::InputKind::kString && in.fields[0].type == FieldType::kString &&
      v.size() <= in.fields[0].count) [[likely]] {
    // The loop below for its one plain string target that fits (a longer
    // one is refused there).
    DecodedBatch& out = *s.out;
    FieldValue fv;
    fv.field = in.fields[0].index;
    fv.type = FieldType::kString;
    fv.i64 = static_cast<int64_t>(out.bytes_.size());  // fixed up to a pointer in finish()
    fv.length = static_cast<uint32_t>(v.size());
    out.bytes_.append(v.data(), v.size());
    out.values_.push_back(fv);
    return;
  }
  const Where what{s.at.index, s.at.batch, in.name};
  const Impl::TableInfo& table = *s.e.table;
  DecodedBatch& out = *s.out;
  if (in.kind == Impl::InputKind::kScalar) {
    Impl::add_source(out, in.raw_source, 0.0, distinct_hash_string(v));
    return;
  }
  if (in.kind != Impl::InputKind::kString) reject_type(in, what, "a string");
  int64_t stored_at = -1;  // string fields sharing the member share its bytes
  for (const Impl::FieldTarget& target : in.fields) {
    if (target.type == FieldType::kString) {
      if (v.size() > target.count) {
        ::larder::sidecar::reject(RejectReason::kStringTooLong,
                                  fmt::format("{}: {} bytes, max_len is {}{}", what, v.size(), target.count,
                                              Impl::for_field(table, target, what.field)));
      }
      if (stored_at < 0) {
        stored_at = static_cast<int64_t>(out.bytes_.size());
        out.bytes_.append(v.data(), v.size());
      }
      FieldValue fv;
      fv.field = target.index;
      fv.type = target.type;
      fv.i64 = stored_at;  // fixed up to a pointer in finish()
      fv.length = static_cast<uint32_t>(v.size());
      out.values_.push_back(fv);
      if (target.source >= 0) Impl::add_source(out, target.source, 0.0, distinct_hash_string(v));
    } else {
      TransformResult r;
      r.vector = impl_->vector_out.data();  // a one_hot's output, as the JSON decoder gives it
      TransformFailure why;
      if (!target.chain->apply(v, &r, &why)) impl_->reject_transform(why, target, table, what);
      uint64_t distinct = 0;
      const double seen_by_source = impl_->store_transformed(r, target, table, what, out, &distinct);
      Impl::add_source(out, target.source, seen_by_source, distinct);
    }
  }
  if (in.raw_source >= 0) Impl::add_source(out, in.raw_source, 0.0, distinct_hash_string(v));
}

void UpdateBuilder::input_null(uint32_t input) {
  State& s = *state_;
  const Impl::InputInfo& in = take_input(*impl_, s.e.table, input, s.at);
  const Where what{s.at.index, s.at.batch, in.name};
  if (!impl_->decode_null_input(in, *s.e.table, what, *s.out)) reject_type(in, what, "null");
}

void UpdateBuilder::vector_begin(uint32_t input) {
  State& s = *state_;
  const Impl::InputInfo& in = take_input(*impl_, s.e.table, input, s.at);
  s.vector_where = Where{s.at.index, s.at.batch, in.name};
  if (in.kind != Impl::InputKind::kArray) reject_type(in, s.vector_where, "a list");
  s.vector = &in;
  s.vector_begin = s.out->floats_.size();
  s.vector_count = 0;
  s.vector_plain = s.vector_projected = false;
  for (const Impl::FieldTarget& target : in.fields)
    (target.chain != nullptr ? s.vector_projected : s.vector_plain) = true;
}

namespace {

[[noreturn]] void reject_too_long(const Decoder::Impl::TableInfo& table, const Decoder::Impl::InputInfo& in,
                                  const Where& what) {
  ::larder::sidecar::reject(RejectReason::kVectorLength,
                            fmt::format("{}: more than {} elements{}", what, in.array_len,
                                        Decoder::Impl::for_field(table, in.fields.front(), what.field)));
}

}  // namespace

void UpdateBuilder::vector_push(double v) {
  State& s = *state_;
  Where what = s.vector_where;
  if (s.vector_count == s.vector->array_len) reject_too_long(*s.e.table, *s.vector, what);
  what.element = s.vector_count;
  if (!std::isfinite(v)) ::larder::sidecar::reject(RejectReason::kNonFinite, what + ": not a finite number");
  if (s.vector_plain) {
    if (v > static_cast<double>(FLT_MAX) || v < -static_cast<double>(FLT_MAX)) {
      ::larder::sidecar::reject(RejectReason::kOutOfRange, fmt::format("{}: {} is outside the float32 range", what, v));
    }
    s.out->floats_.push_back(static_cast<float>(v));
    if (s.vector_projected) impl_->vector_in[s.vector_count] = s.out->floats_.back();
  } else {
    impl_->vector_in[s.vector_count] = v;
  }
  ++s.vector_count;
}

void UpdateBuilder::vector_push_floats(const char* le, size_t n) {
  State& s = *state_;
  if (n > s.vector->array_len - s.vector_count) reject_too_long(*s.e.table, *s.vector, s.vector_where);
  for (size_t k = 0; k < n; ++k) {
    float f;
    std::memcpy(&f, le + k * sizeof(float), sizeof f);  // little-endian on every target Larder builds for
    if (!std::isfinite(f)) [[unlikely]] {
      Where what = s.vector_where;
      what.element = s.vector_count + static_cast<int64_t>(k);
      ::larder::sidecar::reject(RejectReason::kNonFinite, what + ": not a finite number");
    }
    if (s.vector_projected) impl_->vector_in[s.vector_count + k] = f;
  }
  if (s.vector_plain && n != 0) std::memcpy(s.out->floats_.extend(n), le, n * sizeof(float));
  s.vector_count += static_cast<uint32_t>(n);
}

void UpdateBuilder::vector_end() {
  State& s = *state_;
  const Impl::InputInfo& in = *s.vector;
  const Impl::FieldTarget& first = in.fields.front();
  if (s.vector_count != in.array_len) {
    ::larder::sidecar::reject(RejectReason::kVectorLength,
                              fmt::format("{}: {} elements, {} {}{}", s.vector_where, s.vector_count,
                                          first.chain != nullptr ? "the projection takes" : "dims is", in.array_len,
                                          Impl::for_field(*s.e.table, first, s.vector_where.field)));
  }
  // Vector fields sharing the input share its floats.
  for (const Impl::FieldTarget& target : in.fields) {
    if (target.chain != nullptr) {
      TransformResult r;
      r.vector = impl_->vector_out.data();
      TransformFailure why;
      if (!target.chain->apply(impl_->vector_in.data(), s.vector_count, &r, &why)) {
        impl_->reject_transform(why, target, *s.e.table, s.vector_where);
      }
      uint64_t distinct = 0;
      impl_->store_transformed(r, target, *s.e.table, s.vector_where, *s.out, &distinct);
      continue;
    }
    FieldValue fv;
    fv.field = target.index;
    fv.type = target.type;
    fv.i64 = static_cast<int64_t>(s.vector_begin);  // fixed up to a pointer in finish()
    fv.length = s.vector_count;
    s.out->values_.push_back(fv);
  }
  s.vector = nullptr;
}

void UpdateBuilder::unknown_input(std::string_view name) {
  State& s = *state_;
  if (s.e.table == nullptr) ::larder::sidecar::reject(RejectReason::kInternal, s.at + ": fields before the table");
  if (s.e.table->allow_unknown_fields) return;
  impl_->reject_unknown(*s.e.table, name, s.at);
}

void UpdateBuilder::end_update() {
  State& s = *state_;
  Decoder::Impl::check_envelope(s.e, s.at);
  DecodedBatch& out = *s.out;
  DecodedUpdate u;
  u.key_offset = static_cast<uint32_t>(out.bytes_.size());
  u.key_length = static_cast<uint32_t>(s.e.key.size());
  out.bytes_.append(s.e.key.data(), s.e.key.size());
  if (s.e.op != UpdateOp::kUpsert) {  // a delete or unpin ignores fields
    out.values_.truncate(s.values_begin);
    out.sources_.truncate(s.sources_begin);
  }
  u.table = s.e.table->index;
  u.op = s.e.op;
  u.event_time_ms = s.e.event_time_ms;
  u.values_begin = static_cast<uint32_t>(s.values_begin);
  u.values_count = static_cast<uint32_t>(out.values_.size() - s.values_begin);
  u.sources_begin = static_cast<uint32_t>(s.sources_begin);
  u.sources_count = static_cast<uint32_t>(out.sources_.size() - s.sources_begin);
  u.event_id = s.e.event_id;
  u.id_offset = s.e.id_offset;
  u.id_length = s.e.id_length;
  impl_->check_event_time(*s.e.table, s.e.event_time_ms, s.at);
  if (s.e.op == UpdateOp::kUnpin) {
    if (s.e.table->bounds.max_future_skew_ms == EventTimeBounds::kOff) {
      ::larder::sidecar::reject(
          RejectReason::kBadOp,
          fmt::format("{}: op \"unpin\" needs max_future_skew on table \"{}\" (it is off)", s.at, s.e.table->name));
    }
    u.pinned_after_ms = impl_->clock_ms() + s.e.table->bounds.max_future_skew_ms;
  }
  out.updates_.push_back(u);
}

}  // namespace larder::sidecar
