// Message format v1 decoder (see decoder.h and docs/message-format.md).
//
// Runs on the consumer thread. Uses simdjson's On-Demand API: the body is
// copied once into a padded buffer, then walked once; values are typed
// against the schema while they are read, so a bad message stops at its first
// problem. Rejections travel as an internal exception (Reject) that never
// leaves decode(): the happy path pays nothing for it.
#include "decoder.h"

#include <fmt/format.h>
#include <simdjson.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <unordered_map>

#include "event_time.h"

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
  bytes_.clear();
  floats_.clear();
  first_id_.clear();
}

struct Decoder::Impl {
  struct FieldInfo {
    uint32_t index;
    FieldType type;
    uint32_t count;
  };
  struct TableInfo {
    uint32_t index = 0;
    std::string name;
    uint32_t key_max_len = 0;
    bool allow_unknown_fields = false;
    StringMap<FieldInfo> fields;
    std::vector<std::pair<std::string, FieldInfo>> field_list;  // same, for a linear scan
    std::vector<uint64_t> seen;                                 // per field: the update serial that last set it

    // Small tables: a scan of a few short names beats hashing the name.
    const FieldInfo* find_field(std::string_view wanted) const {
      if (field_list.size() <= 16) {
        for (const auto& [n, info] : field_list) {
          if (n == wanted) return &info;
        }
        return nullptr;
      }
      auto it = fields.find(wanted);
      return it == fields.end() ? nullptr : &it->second;
    }
  };

  StringMap<uint32_t> table_by_name;
  std::vector<TableInfo> tables;
  od::parser parser;
  simdjson::dom::parser validator;  // full validation when values were skipped unread
  std::vector<char> padded;
  bool skipped_unread = false;
  uint64_t update_serial = 0;

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
      const FieldInfo* found = table.find_field(name);
      if (found == nullptr) {
        if (table.allow_unknown_fields) {
          skipped_unread = true;
          continue;
        }
        reject(RejectReason::kUnknownField,
               fmt::format("{}: table \"{}\" has no field \"{}\"", at, table.name, clip(name)));
      }
      const FieldInfo& info = *found;
      if (seen[info.index] == update_serial) {
        reject(RejectReason::kDuplicateMember, fmt::format("{}: field \"{}\" appears twice", at, clip(name)));
      }
      seen[info.index] = update_serial;
      const Where what{at.index, at.batch, name};
      od::value& v = f.value();
      const od::json_type t = type_of(v, what);

      FieldValue fv;
      fv.field = info.index;
      fv.type = info.type;
      switch (info.type) {
        case FieldType::kInt64:
          if (t != od::json_type::number)
            reject(RejectReason::kWrongType, fmt::format("{}: expected an integer, got {}", what, json_type_name(t)));
          fv.i64 = read_int64(v, what);
          break;
        case FieldType::kFloat64:
          if (t != od::json_type::number)
            reject(RejectReason::kWrongType, fmt::format("{}: expected a number, got {}", what, json_type_name(t)));
          fv.f64 = read_double(v, what);
          break;
        case FieldType::kFloat32:
          if (t != od::json_type::number)
            reject(RejectReason::kWrongType, fmt::format("{}: expected a number, got {}", what, json_type_name(t)));
          fv.f64 = read_float32(v, what);
          break;
        case FieldType::kBool: {
          if (t != od::json_type::boolean)
            reject(RejectReason::kWrongType,
                   fmt::format("{}: expected true or false, got {}", what, json_type_name(t)));
          bool b;
          if (v.get_bool().get(b) != simdjson::SUCCESS) reject(RejectReason::kBadJson, what + ": malformed boolean");
          fv.i64 = b ? 1 : 0;
          break;
        }
        case FieldType::kString: {
          if (t != od::json_type::string)
            reject(RejectReason::kWrongType, fmt::format("{}: expected a string, got {}", what, json_type_name(t)));
          std::string_view s;
          if (v.get_string().get(s) != simdjson::SUCCESS) reject(RejectReason::kBadJson, what + ": malformed string");
          if (s.size() > info.count) {
            reject(RejectReason::kStringTooLong,
                   fmt::format("{}: {} bytes, max_len is {}", what, s.size(), info.count));
          }
          fv.i64 = static_cast<int64_t>(out.bytes_.size());  // fixed up to a pointer in finish()
          fv.length = static_cast<uint32_t>(s.size());
          out.bytes_.insert(out.bytes_.end(), s.begin(), s.end());
          break;
        }
        case FieldType::kFloat32Vector: {
          if (t != od::json_type::array)
            reject(RejectReason::kWrongType,
                   fmt::format("{}: expected an array of {} numbers, got {}", what, info.count, json_type_name(t)));
          od::array arr;
          if (v.get_array().get(arr) != simdjson::SUCCESS) reject(RejectReason::kBadJson, what + ": malformed array");
          const size_t begin = out.floats_.size();
          uint32_t n = 0;
          for (auto element : arr) {
            od::value ev;
            if (std::move(element).get(ev) != simdjson::SUCCESS)
              reject(RejectReason::kBadJson, what + ": malformed array");
            if (n == info.count) {
              reject(RejectReason::kVectorLength, fmt::format("{}: more than {} elements", what, info.count));
            }
            Where ewhat = what;
            ewhat.element = n;
            const od::json_type et = type_of(ev, ewhat);
            if (et != od::json_type::number)
              reject(RejectReason::kWrongType, fmt::format("{}: expected a number, got {}", ewhat, json_type_name(et)));
            out.floats_.push_back(read_float32(ev, ewhat));
            ++n;
          }
          if (n != info.count) {
            reject(RejectReason::kVectorLength, fmt::format("{}: {} elements, dims is {}", what, n, info.count));
          }
          fv.i64 = static_cast<int64_t>(begin);  // fixed up to a pointer in finish()
          fv.length = n;
          break;
        }
      }
      out.values_.push_back(fv);
    }
  }

  void decode_update(od::object& obj, size_t index, bool batch, DecodedBatch& out) {
    const Where at{index, batch};
    ++update_serial;
    bool have_table = false, have_key = false, have_time = false, have_op = false, have_fields = false, have_id = false,
         fields_done = false;
    const TableInfo* table = nullptr;
    std::string_view key;
    int64_t event_time_ms = 0;
    UpdateOp op = UpdateOp::kUpsert;
    const size_t values_begin = out.values_.size();

    auto once = [&](bool& flag, std::string_view name) {
      if (flag) reject(RejectReason::kDuplicateMember, fmt::format("{}: \"{}\" appears twice", at, name));
      flag = true;
    };
    auto string_member = [&](od::value& v, std::string_view name) {
      if (type_of(v, at) != od::json_type::string) {
        reject(RejectReason::kWrongMemberType, fmt::format("{}: \"{}\" must be a string", at, name));
      }
      std::string_view s;
      if (v.get_string().get(s) != simdjson::SUCCESS) reject(RejectReason::kBadJson, at + ": malformed string");
      return s;
    };

    for (auto member : obj) {
      od::field f;
      if (std::move(member).get(f) != simdjson::SUCCESS) reject(RejectReason::kBadJson, at + ": malformed object");
      std::string_view name;
      if (f.unescaped_key().get(name) != simdjson::SUCCESS)
        reject(RejectReason::kBadJson, at + ": malformed member name");
      od::value& v = f.value();
      if (name == "table") {
        once(have_table, name);
        const std::string_view t = string_member(v, name);
        auto it = table_by_name.find(t);
        if (it == table_by_name.end())
          reject(RejectReason::kUnknownTable, fmt::format("{}: no table \"{}\"", at, clip(t)));
        table = &tables[it->second];
      } else if (name == "key") {
        once(have_key, name);
        key = string_member(v, name);
      } else if (name == "event_time") {
        once(have_time, name);
        event_time_ms = read_event_time(v, at);
      } else if (name == "op") {
        once(have_op, name);
        if (type_of(v, at) != od::json_type::string)
          reject(RejectReason::kBadOp, at + ": \"op\" must be \"upsert\" or \"delete\"");
        std::string_view o;
        if (v.get_string().get(o) != simdjson::SUCCESS) reject(RejectReason::kBadJson, at + ": malformed string");
        if (o == "upsert") {
          op = UpdateOp::kUpsert;
        } else if (o == "delete") {
          op = UpdateOp::kDelete;
        } else {
          reject(RejectReason::kBadOp, fmt::format("{}: op \"{}\" (expected \"upsert\" or \"delete\")", at, clip(o)));
        }
      } else if (name == "id") {
        once(have_id, name);
        const std::string_view id = string_member(v, name);
        if (out.first_id_.empty()) out.first_id_.assign(id.substr(0, 128));
      } else if (name == "fields") {
        once(have_fields, name);
        // Decoded in place when the table is already known (the usual order);
        // otherwise after the walk, by finding the member again.
        if (table != nullptr && !(have_op && op == UpdateOp::kDelete)) {
          decode_fields(v, *table, at, out);
          fields_done = true;
        }
      } else {
        skipped_unread = true;  // any other member is ignored (forward compatibility)
      }
    }
    if (!have_table) reject(RejectReason::kMissingMember, at + ": missing \"table\"");
    if (!have_key) reject(RejectReason::kMissingMember, at + ": missing \"key\"");
    if (!have_time) reject(RejectReason::kMissingMember, at + ": missing \"event_time\"");
    if (op == UpdateOp::kUpsert && !have_fields)
      reject(RejectReason::kMissingMember, at + ": missing \"fields\" (required for an upsert)");
    if (key.empty()) reject(RejectReason::kEmptyKey, at + ": \"key\" is empty");
    if (key.size() > table->key_max_len) {
      reject(RejectReason::kKeyTooLong, fmt::format("{}: key of {} bytes, table \"{}\" allows {}", at, key.size(),
                                                    table->name, table->key_max_len));
    }
    // Copy the key now: it points into the parser's string buffer, which a
    // second walk of the object may reuse.
    DecodedUpdate u;
    u.key_offset = static_cast<uint32_t>(out.bytes_.size());
    u.key_length = static_cast<uint32_t>(key.size());
    out.bytes_.insert(out.bytes_.end(), key.begin(), key.end());
    if (op == UpdateOp::kDelete) {
      out.values_.resize(values_begin);  // a delete ignores fields
      if (have_fields && !fields_done) skipped_unread = true;
    } else if (!fields_done) {
      if (obj.reset().error() != simdjson::SUCCESS) reject(RejectReason::kBadJson, at + ": malformed object");
      od::value v;
      if (obj.find_field("fields").get(v) != simdjson::SUCCESS)
        reject(RejectReason::kBadJson, at + ": malformed object");
      decode_fields(v, *table, at, out);
      // Walk to the end of the object so the document iterator is past it.
      if (obj.reset().error() != simdjson::SUCCESS) reject(RejectReason::kBadJson, at + ": malformed object");
      for (auto member : obj) {
        if (member.error() != simdjson::SUCCESS) reject(RejectReason::kBadJson, at + ": malformed object");
      }
    }

    u.table = table->index;
    u.op = op;
    u.event_time_ms = event_time_ms;
    u.values_begin = static_cast<uint32_t>(values_begin);
    u.values_count = static_cast<uint32_t>(out.values_.size() - values_begin);
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

Decoder::Decoder(const layout::Schema& schema, std::vector<TableDecodeOptions> options)
    : impl_(std::make_unique<Impl>()) {
  impl_->tables.resize(schema.tables.size());
  for (size_t t = 0; t < schema.tables.size(); ++t) {
    const layout::TableSpec& spec = schema.tables[t];
    Impl::TableInfo& info = impl_->tables[t];
    info.index = static_cast<uint32_t>(t);
    info.name = spec.name;
    info.key_max_len = spec.key_max_len;
    info.allow_unknown_fields = t < options.size() && options[t].allow_unknown_fields;
    for (size_t f = 0; f < spec.fields.size(); ++f) {
      const Impl::FieldInfo field{static_cast<uint32_t>(f), spec.fields[f].type, spec.fields[f].count};
      info.fields.emplace(spec.fields[f].name, field);
      info.field_list.emplace_back(spec.fields[f].name, field);
    }
    info.seen.assign(spec.fields.size(), 0);
    impl_->table_by_name.emplace(spec.name, static_cast<uint32_t>(t));
  }
}

Decoder::~Decoder() = default;

DecodeResult Decoder::decode(std::string_view body, DecodedBatch& out) {
  out.clear();
  try {
    impl_->decode(body, out);
    return DecodeResult::success();
  } catch (Reject& r) {
    out.clear();
    return DecodeResult{false, r.reason, std::move(r.detail)};
  } catch (const std::exception& e) {  // allocation failure or a simdjson surprise
    out.clear();
    return DecodeResult{false, RejectReason::kBadJson, std::string("decoder error: ") + e.what()};
  }
}

}  // namespace larder::sidecar
