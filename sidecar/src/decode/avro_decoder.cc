// Avro bodies (docs/message-format.md, "Avro"): the schema file is parsed at
// start with the Avro C library and turned into a small tree of nodes that
// drives a hand-rolled walk over the binary encoding, optionally after the
// Confluent wire format's 5-byte header. Every varint, length, union branch
// and block count is checked against the bytes left.
//
// Runs on the consumer thread (decode); built at start on the main thread.
#include <avro.h>
#include <fmt/format.h>

#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <unordered_map>

#include "config/config_error.h"
#include "decode/format_mapping.h"
#include "decode/message_decoder.h"

namespace larder::sidecar {
namespace {

enum class Kind : uint8_t {
  kNull,
  kBool,
  kInt,
  kLong,
  kFloat,
  kDouble,
  kBytes,
  kString,
  kRecord,
  kEnum,
  kArray,
  kMap,
  kUnion,
  kFixed
};

struct Node {
  Kind kind = Kind::kNull;
  std::string name;                                     // named types
  std::vector<std::pair<std::string, int32_t>> fields;  // record: name, node
  std::vector<int32_t> branches;                        // union
  int32_t items = -1;                                   // array items, map values
  int64_t size = 0;                                     // fixed size, enum symbol count
  bool may_be_empty = true;                             // encodes in 0 bytes (bounds block counts)
};

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kNull: return "null";
    case Kind::kBool: return "boolean";
    case Kind::kInt: return "int";
    case Kind::kLong: return "long";
    case Kind::kFloat: return "float";
    case Kind::kDouble: return "double";
    case Kind::kBytes: return "bytes";
    case Kind::kString: return "string";
    case Kind::kRecord: return "record";
    case Kind::kEnum: return "enum";
    case Kind::kArray: return "array";
    case Kind::kMap: return "map";
    case Kind::kUnion: return "union";
    case Kind::kFixed: return "fixed";
  }
  return "?";
}

// The schema as nodes; named types referenced twice (or recursively) are one
// node.
class Tree {
 public:
  std::vector<Node> nodes;

  int32_t add(avro_schema_t s) {
    while (is_avro_link(s)) s = avro_schema_link_target(s);
    if (auto it = seen_.find(s); it != seen_.end()) return it->second;
    const int32_t id = static_cast<int32_t>(nodes.size());
    nodes.emplace_back();
    seen_[s] = id;
    Node n;
    switch (avro_typeof(s)) {
      case AVRO_NULL: n.kind = Kind::kNull; break;
      case AVRO_BOOLEAN: n.kind = Kind::kBool; break;
      case AVRO_INT32: n.kind = Kind::kInt; break;
      case AVRO_INT64: n.kind = Kind::kLong; break;
      case AVRO_FLOAT: n.kind = Kind::kFloat; break;
      case AVRO_DOUBLE: n.kind = Kind::kDouble; break;
      case AVRO_BYTES: n.kind = Kind::kBytes; break;
      case AVRO_STRING: n.kind = Kind::kString; break;
      case AVRO_RECORD:
        n.kind = Kind::kRecord;
        n.name = avro_schema_name(s);
        for (size_t i = 0; i < avro_schema_record_size(s); ++i) {
          const int idx = static_cast<int>(i);
          n.fields.emplace_back(avro_schema_record_field_name(s, idx),
                                add(avro_schema_record_field_get_by_index(s, idx)));
        }
        break;
      case AVRO_ENUM:
        n.kind = Kind::kEnum;
        n.name = avro_schema_name(s);
        n.size = avro_schema_enum_number_of_symbols(s);
        break;
      case AVRO_FIXED:
        n.kind = Kind::kFixed;
        n.name = avro_schema_name(s);
        n.size = avro_schema_fixed_size(s);
        break;
      case AVRO_ARRAY:
        n.kind = Kind::kArray;
        n.items = add(avro_schema_array_items(s));
        break;
      case AVRO_MAP:
        n.kind = Kind::kMap;
        n.items = add(avro_schema_map_values(s));
        break;
      case AVRO_UNION:
        n.kind = Kind::kUnion;
        for (size_t i = 0; i < avro_schema_union_size(s); ++i) {
          n.branches.push_back(add(avro_schema_union_branch(s, static_cast<int>(i))));
        }
        break;
      default: throw ConfigError("unsupported Avro type");
    }
    n.may_be_empty =
        n.kind == Kind::kNull || (n.kind == Kind::kFixed && n.size == 0) || (n.kind == Kind::kRecord && all_empty(n));
    nodes[static_cast<size_t>(id)] = std::move(n);
    return id;
  }

  std::string type_name(int32_t id) const {
    const Node& n = nodes[static_cast<size_t>(id)];
    switch (n.kind) {
      case Kind::kArray: return "array of " + type_name(n.items);
      case Kind::kUnion: {
        std::string out = "[";
        for (size_t i = 0; i < n.branches.size(); ++i) out += (i ? ", " : "") + type_name(n.branches[i]);
        return out + "]";
      }
      default: return n.name.empty() ? kind_name(n.kind) : n.name;
    }
  }

 private:
  bool all_empty(const Node& n) const {
    for (const auto& [name, child] : n.fields) {
      // A child still being built (a recursive record) is not empty-able.
      if (static_cast<size_t>(child) >= nodes.size() || !nodes[static_cast<size_t>(child)].may_be_empty) return false;
    }
    return true;
  }
  std::unordered_map<avro_schema_t, int32_t> seen_;
};

// A member as it is read: its node, or the non-null branch of a
// [null, T] union (`optional`: the null branch means absent).
struct Member {
  int32_t node = -1;         // T
  int32_t null_branch = -1;  // the index of the null branch, or -1: not optional
  int32_t union_node = -1;   // the union, when optional
};

enum class Envelope : uint8_t { kTable, kKey, kEventTime, kOp, kId, kFields, kIgnored };

struct EnvelopeSlot {
  Envelope what;
  Member member;
  const char* name;
};

struct FieldSlot {
  Member member;
  std::string name;
  std::vector<int32_t> input_by_table;
};

class AvroDecoder final : public MessageDecoder {
 public:
  AvroDecoder(const layout::Schema& schema, const std::vector<TableDecodeOptions>& options, const FormatConfig& format)
      : builder_(schema, options), confluent_id_(format.confluent_schema_id) {
    load(format);
  }

  DecodeResult decode(std::string_view body, DecodedBatch& out, int64_t now_unix_ms) override {
    body_ = body;
    return builder_.run(
        out, now_unix_ms, RejectReason::kBadAvro, [](void* self) { static_cast<AvroDecoder*>(self)->walk(); }, this);
  }

  std::string describe() const override { return description_; }

 private:
  struct Cursor {
    const uint8_t* p;
    const uint8_t* end;
    size_t left() const { return static_cast<size_t>(end - p); }
  };

  const Node& node(int32_t id) const { return tree_.nodes[static_cast<size_t>(id)]; }

  Member member_of(int32_t id) const {
    const Node& n = node(id);
    if (n.kind == Kind::kUnion && n.branches.size() == 2) {
      for (int32_t b = 0; b < 2; ++b) {
        if (node(n.branches[static_cast<size_t>(b)]).kind == Kind::kNull) {
          return Member{n.branches[static_cast<size_t>(1 - b)], b, id};
        }
      }
    }
    return Member{id, -1, -1};
  }

  WireValue wire_value(const Member& m) const {
    const Node& n = node(m.node);
    switch (n.kind) {
      case Kind::kInt:
      case Kind::kLong: return WireValue::kInteger;
      case Kind::kFloat:
      case Kind::kDouble: return WireValue::kFloat;
      case Kind::kBool: return WireValue::kBool;
      case Kind::kString: return WireValue::kString;
      case Kind::kArray: {
        const Kind items = node(n.items).kind;
        return items == Kind::kFloat || items == Kind::kDouble ? WireValue::kFloatList : WireValue::kOther;
      }
      default: return WireValue::kOther;
    }
  }

  void load(const FormatConfig& format) {
    std::ifstream in(format.schema_file, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    avro_schema_t schema = nullptr;
    if (avro_schema_from_json_length(text.data(), text.size(), &schema) != 0) {
      throw ConfigError(
          fmt::format("{}.schema: \"{}\" is not an Avro schema: {}", format.path, format.schema_file, avro_strerror()));
    }
    try {
      root_ = tree_.add(schema);
    } catch (...) {
      avro_schema_decref(schema);
      throw;
    }
    avro_schema_decref(schema);
    int32_t update = root_;
    const Node& top = node(root_);
    if (top.kind != Kind::kRecord) {
      throw ConfigError(
          fmt::format("{}.schema: the top-level type is {}, expected a record (an update, or a batch "
                      "record with one array of updates)",
                      format.path, tree_.type_name(root_)));
    }
    if (top.fields.size() == 1 && node(top.fields[0].second).kind == Kind::kArray &&
        node(node(top.fields[0].second).items).kind == Kind::kRecord && top.fields[0].first != format.members.key) {
      batch_ = true;
      update = node(top.fields[0].second).items;
    }
    description_ =
        fmt::format("avro {}{}{}", top.name, batch_ ? fmt::format(" (a batch of {})", node(update).name) : "",
                    confluent_id_ ? fmt::format(", Confluent schema id {}", *confluent_id_) : "");
    map_envelope(update, format);
  }

  void map_envelope(int32_t update, const FormatConfig& format) {
    const Node& rec = node(update);
    const EnvelopeMembers& m = format.members;
    const std::string where = fmt::format("{}: record {}", format.path, rec.name);
    auto find = [&](const std::string& name) -> int32_t {
      for (const auto& [fname, child] : rec.fields) {
        if (fname == name) return child;
      }
      return -1;
    };
    for (const auto& field : rec.fields) {
      const std::string& fname = field.first;  // named, not bound: lambdas capture them below
      const int32_t child = field.second;
      EnvelopeSlot slot{Envelope::kIgnored, member_of(child), ""};
      const Kind k = node(slot.member.node).kind;
      auto need = [&](bool ok, const char* json_name, bool optional_ok) {
        if (!ok || (slot.member.null_branch >= 0 && !optional_ok)) {
          throw ConfigError(fmt::format("{}: member \"{}\" is {}, which cannot carry `{}`", where, fname,
                                        tree_.type_name(child), json_name));
        }
        slot.name = json_name;
      };
      if (fname == m.table) {
        need(k == Kind::kString, "table", false);
        slot.what = Envelope::kTable;
      } else if (fname == m.key) {
        need(k == Kind::kString, "key", false);
        slot.what = Envelope::kKey;
      } else if (fname == m.event_time) {
        need(k == Kind::kLong || k == Kind::kString, "event_time", false);
        slot.what = Envelope::kEventTime;
      } else if (fname == m.op) {
        need(k == Kind::kString, "op", true);
        slot.what = Envelope::kOp;
      } else if (fname == m.id) {
        need(k == Kind::kString, "id", true);
        slot.what = Envelope::kId;
      } else if (fname == m.fields) {
        need(k == Kind::kRecord, "fields", false);
        slot.what = Envelope::kFields;
      }
      envelope_.push_back(slot);
    }
    const bool has_table = find(m.table) >= 0;
    if (has_table && !format.table.empty()) {
      throw ConfigError(fmt::format("{}.table: record {} names its table in \"{}\"; remove one of them", format.path,
                                    rec.name, m.table));
    }
    if (!has_table && format.table.empty()) {
      throw ConfigError(fmt::format("{} has no member \"{}\": set {}.table to the table its updates go to", where,
                                    m.table, format.path));
    }
    for (const std::string* name : {&m.key, &m.event_time, &m.fields}) {
      if (find(*name) < 0)
        throw ConfigError(fmt::format("{} has no member \"{}\" (members: can rename it)", where, *name));
    }
    map_fields(member_of(find(m.fields)).node, format);
  }

  void map_fields(int32_t fields, const FormatConfig& format) {
    const Node& rec = node(fields);
    std::vector<FieldsMember> members;
    for (const auto& [fname, child] : rec.fields) {
      members.push_back(FieldsMember{fname, wire_value(member_of(child)), tree_.type_name(child)});
    }
    const std::vector<uint32_t> tables = candidate_tables(builder_, format);
    const std::vector<std::vector<int32_t>> inputs =
        map_fields_members(builder_, tables, members, "record " + rec.name, format);
    for (size_t i = 0; i < rec.fields.size(); ++i) {
      fields_.push_back(FieldSlot{member_of(rec.fields[i].second), rec.fields[i].first, inputs[i]});
    }
    fixed_table_ = format.table.empty() ? -1 : static_cast<int32_t>(tables[0]);
  }

  // --- The walk (consumer thread).

  [[noreturn]] void malformed(const std::string& what) {
    builder_.reject(RejectReason::kBadAvro, fmt::format("{}: {}", builder_.where(), what));
  }

  static int64_t unzigzag(uint64_t v) { return static_cast<int64_t>((v >> 1) ^ (~(v & 1) + 1)); }

  int64_t read_long(Cursor& c) {
    if (c.p != c.end && *c.p < 0x80) [[likely]]
      return unzigzag(*c.p++);  // lengths, union branches, small values: one byte
    if (c.left() < 10) [[unlikely]]
      return read_long_near_end(c);
    // Ten bytes are there, the most a long takes: no end check per byte.
    const uint8_t* p = c.p;
    uint64_t v = 0;
    for (int i = 0; i < 10; ++i) {
      const uint8_t b = p[i];
      if (i == 9 && b > 1) malformed("long longer than 64 bits");
      v |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
      if (!(b & 0x80)) {
        c.p = p + i + 1;
        return unzigzag(v);
      }
    }
    malformed("long longer than 10 bytes");  // not reached: the tenth byte ends it or is refused
  }

  [[gnu::noinline]] int64_t read_long_near_end(Cursor& c) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (c.p == c.end) malformed("truncated long");
      const uint8_t b = *c.p++;
      if (shift == 63 && b > 1) malformed("long longer than 64 bits");
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return unzigzag(v);
    }
    malformed("long longer than 10 bytes");
  }

  int32_t read_int(Cursor& c) {
    const int64_t v = read_long(c);
    if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
      malformed(fmt::format("int {} outside 32 bits", v));
    }
    return static_cast<int32_t>(v);
  }

  template <class T>
  T read_fixed(Cursor& c) {
    if (c.left() < sizeof(T)) malformed("truncated float or double");
    T v;
    std::memcpy(&v, c.p, sizeof(T));  // little-endian on every target Larder builds for
    c.p += sizeof(T);
    return v;
  }

  bool read_bool(Cursor& c) {
    if (c.p == c.end) malformed("truncated boolean");
    const uint8_t b = *c.p++;
    if (b > 1) malformed(fmt::format("boolean byte {}", b));
    return b == 1;
  }

  std::string_view read_bytes(Cursor& c) {
    const int64_t n = read_long(c);
    if (n < 0 || static_cast<uint64_t>(n) > c.left()) {
      malformed(fmt::format("length {} outside the {} bytes left", n, c.left()));
    }
    const std::string_view s(reinterpret_cast<const char*>(c.p), static_cast<size_t>(n));
    c.p += n;
    return s;
  }

  // The next block's item count of an array or map, 0 at the end. Items
  // that may take no bytes are bounded by kMaxEmptyItems, others by the
  // bytes left, so a forged count cannot spin.
  static constexpr int64_t kMaxEmptyItems = 65536;
  int64_t block(Cursor& c, bool items_may_be_empty) {
    int64_t n = read_long(c);
    if (n < 0) {
      if (n == std::numeric_limits<int64_t>::min()) malformed("block count out of range");
      n = -n;
      const int64_t size = read_long(c);
      if (size < 0 || static_cast<uint64_t>(size) > c.left()) malformed(fmt::format("block size {}", size));
    }
    if (items_may_be_empty ? n > kMaxEmptyItems : static_cast<uint64_t>(n) > c.left()) {
      malformed(fmt::format("block of {} items in {} bytes", n, c.left()));
    }
    return n;
  }

  // The branch of an optional member: false for null.
  bool present(Cursor& c, const Member& m) {
    if (m.null_branch < 0) return true;
    const int64_t b = read_long(c);
    if (b != 0 && b != 1) malformed(fmt::format("union branch {} of 2", b));
    return b != m.null_branch;
  }

  static constexpr int kMaxDepth = 64;

  void skip(Cursor& c, int32_t id, int depth = 0) {
    if (depth > kMaxDepth) malformed("nested deeper than 64 levels");
    const Node& n = node(id);
    switch (n.kind) {
      case Kind::kNull: return;
      case Kind::kBool: read_bool(c); return;
      case Kind::kInt:
      case Kind::kLong: read_long(c); return;
      case Kind::kFloat: read_fixed<float>(c); return;
      case Kind::kDouble: read_fixed<double>(c); return;
      case Kind::kBytes:
      case Kind::kString: read_bytes(c); return;
      case Kind::kFixed:
        if (static_cast<uint64_t>(n.size) > c.left()) malformed("truncated fixed");
        c.p += n.size;
        return;
      case Kind::kEnum: {
        const int64_t v = read_long(c);
        if (v < 0 || v >= n.size) malformed(fmt::format("enum index {} of {}", v, n.size));
        return;
      }
      case Kind::kRecord:
        for (const auto& [fname, child] : n.fields) skip(c, child, depth + 1);
        return;
      case Kind::kUnion: {
        const int64_t b = read_long(c);
        if (b < 0 || static_cast<uint64_t>(b) >= n.branches.size()) {
          malformed(fmt::format("union branch {} of {}", b, n.branches.size()));
        }
        skip(c, n.branches[static_cast<size_t>(b)], depth + 1);
        return;
      }
      case Kind::kArray:
      case Kind::kMap: {
        const bool map = n.kind == Kind::kMap;
        const bool empty = !map && node(n.items).may_be_empty;
        while (const int64_t count = block(c, empty)) {
          for (int64_t i = 0; i < count; ++i) {
            if (map) read_bytes(c);
            skip(c, n.items, depth + 1);
          }
        }
        return;
      }
    }
  }

  void walk() {
    Cursor c{reinterpret_cast<const uint8_t*>(body_.data()),
             reinterpret_cast<const uint8_t*>(body_.data()) + body_.size()};
    if (confluent_id_) {
      if (c.left() < kConfluentHeaderBytes || c.p[0] != 0) {
        builder_.reject(RejectReason::kBadAvro, "no Confluent wire-format header (magic byte 0 and a schema id)");
      }
      const uint32_t id = (uint32_t{c.p[1]} << 24) | (uint32_t{c.p[2]} << 16) | (uint32_t{c.p[3]} << 8) | c.p[4];
      if (id != *confluent_id_) {
        builder_.reject(RejectReason::kUnknownSchemaId,
                        fmt::format("schema id {}, this sidecar reads schema id {}", id, *confluent_id_));
      }
      c.p += kConfluentHeaderBytes;
    }
    if (!batch_) {
      update(c, 0, false);
    } else {
      size_t index = 0;
      while (const int64_t count = block(c, false)) {
        for (int64_t i = 0; i < count; ++i) update(c, index++, true);
      }
      if (index == 0) builder_.reject(RejectReason::kEmptyBatch, "empty batch");
    }
    if (c.p != c.end) builder_.reject(RejectReason::kBadAvro, fmt::format("{} bytes after the datum", c.left()));
  }

  void update(Cursor& c, size_t index, bool batch) {
    builder_.begin_update(index, batch);
    if (fixed_table_ >= 0) builder_.set_table(static_cast<uint32_t>(fixed_table_));
    const uint8_t* deferred = nullptr;  // `fields` read before the table
    for (const EnvelopeSlot& e : envelope_) {
      if (e.what == Envelope::kIgnored) {
        skip(c, e.member.union_node >= 0 ? e.member.union_node : e.member.node);
        continue;
      }
      if (!present(c, e.member)) continue;
      switch (e.what) {
        case Envelope::kTable: builder_.set_table_name(read_bytes(c)); break;
        case Envelope::kKey: builder_.set_key(read_bytes(c)); break;
        case Envelope::kEventTime:
          if (node(e.member.node).kind == Kind::kString) {
            builder_.set_event_time_text(read_bytes(c));
          } else {
            builder_.set_event_time_ms(read_long(c));
          }
          break;
        case Envelope::kOp: builder_.set_op(read_bytes(c)); break;
        case Envelope::kId: builder_.set_id(read_bytes(c)); break;
        case Envelope::kFields:
          builder_.set_fields_present();
          if (builder_.has_table() && builder_.is_upsert()) {
            decode_fields(c);
          } else {
            deferred = c.p;
            skip(c, e.member.node);
          }
          break;
        case Envelope::kIgnored: break;
      }
    }
    if (deferred != nullptr && builder_.has_table() && builder_.is_upsert()) {
      Cursor again{deferred, c.end};
      decode_fields(again);
    }
    builder_.end_update();
  }

  void decode_fields(Cursor& c) {
    const uint32_t table = builder_.current_table();
    for (const FieldSlot& f : fields_) {
      const int32_t input = f.input_by_table[table];
      if (input < 0) {
        if (!present(c, f.member)) continue;
        builder_.unknown_input(f.name);  // rejects unless allow_unknown_fields
        skip(c, f.member.node);
        continue;
      }
      if (!present(c, f.member)) continue;
      const uint32_t in = static_cast<uint32_t>(input);
      const Node& n = node(f.member.node);
      switch (n.kind) {
        case Kind::kInt: builder_.input_integer(in, read_int(c)); break;
        case Kind::kLong: builder_.input_integer(in, read_long(c)); break;
        case Kind::kFloat: builder_.input_double(in, read_fixed<float>(c)); break;
        case Kind::kDouble: builder_.input_double(in, read_fixed<double>(c)); break;
        case Kind::kBool: builder_.input_bool(in, read_bool(c)); break;
        case Kind::kString: builder_.input_string(in, read_bytes(c)); break;
        case Kind::kArray: {
          const bool is_float = node(n.items).kind == Kind::kFloat;
          builder_.vector_begin(in);
          while (const int64_t count = block(c, false)) {
            for (int64_t i = 0; i < count; ++i)
              builder_.vector_push(is_float ? read_fixed<float>(c) : read_fixed<double>(c));
          }
          builder_.vector_end();
          break;
        }
        default: skip(c, f.member.node);  // map_fields_members refused other types
      }
    }
  }

  UpdateBuilder builder_;
  std::optional<uint32_t> confluent_id_;
  Tree tree_;
  int32_t root_ = -1;
  bool batch_ = false;
  int32_t fixed_table_ = -1;
  std::vector<EnvelopeSlot> envelope_;  // every member of the update record, in order
  std::vector<FieldSlot> fields_;       // every member of the fields record, in order
  std::string description_;
  std::string_view body_;
};

}  // namespace

std::unique_ptr<MessageDecoder> make_avro_decoder(const layout::Schema& schema,
                                                  const std::vector<TableDecodeOptions>& options,
                                                  const FormatConfig& format) {
  return std::make_unique<AvroDecoder>(schema, options, format);
}

}  // namespace larder::sidecar
