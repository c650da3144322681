// Protocol Buffers bodies (docs/message-format.md, "Protocol Buffers"): the
// .proto file is parsed at start with the protobuf compiler library, and its
// descriptors drive a hand-rolled walk over the wire format, so no generated
// code and no DynamicMessage (which would allocate per message) is needed.
// Every tag, varint and length is checked against the bytes left.
//
// Runs on the consumer thread (decode); built at start on the main thread.
#include <fmt/format.h>
#include <google/protobuf/compiler/importer.h>
#include <google/protobuf/descriptor.h>

#include <cstring>
#include <filesystem>
#include <limits>
#include <unordered_map>

#include "config/config_error.h"
#include "decode/format_mapping.h"
#include "decode/message_decoder.h"

namespace larder::sidecar {
namespace {

namespace pb = google::protobuf;

enum WireType : uint32_t {
  kVarint = 0,
  kFixed64 = 1,
  kLengthDelimited = 2,
  kStartGroup = 3,
  kEndGroup = 4,
  kFixed32 = 5
};

// How one member's value is read from the wire.
enum class Read : uint8_t {
  kInt32,     // int32: a varint, truncated to 32 bits
  kInt64,     // int64
  kUInt32,    // uint32
  kUInt64,    // uint64 (above int64: out_of_range)
  kSInt32,    // zigzag
  kSInt64,    // zigzag
  kFixed32,   // uint32, 4 bytes
  kSFixed32,  // int32, 4 bytes
  kFixed64,   // uint64, 8 bytes
  kSFixed64,  // int64, 8 bytes
  kFloat,
  kDouble,
  kBool,
  kString,
  kPackedFloat,
  kPackedDouble,
  kMessage,
};

WireType wire_type_of(Read r) {
  switch (r) {
    case Read::kFixed32:
    case Read::kSFixed32:
    case Read::kFloat: return kFixed32;
    case Read::kFixed64:
    case Read::kSFixed64:
    case Read::kDouble: return kFixed64;
    case Read::kString:
    case Read::kPackedFloat:
    case Read::kPackedDouble:
    case Read::kMessage: return kLengthDelimited;
    default: return kVarint;
  }
}

bool integer_read(Read r) { return r <= Read::kSFixed64; }

// The Read of a field, or false when no Larder value reads from it.
bool read_of(const pb::FieldDescriptor* f, Read* out) {
  using T = pb::FieldDescriptor;
  if (f->is_repeated()) {
    if (!f->is_packed()) return false;
    if (f->type() == T::TYPE_FLOAT) return *out = Read::kPackedFloat, true;
    if (f->type() == T::TYPE_DOUBLE) return *out = Read::kPackedDouble, true;
    return false;
  }
  switch (f->type()) {
    case T::TYPE_INT32: *out = Read::kInt32; return true;
    case T::TYPE_INT64: *out = Read::kInt64; return true;
    case T::TYPE_UINT32: *out = Read::kUInt32; return true;
    case T::TYPE_UINT64: *out = Read::kUInt64; return true;
    case T::TYPE_SINT32: *out = Read::kSInt32; return true;
    case T::TYPE_SINT64: *out = Read::kSInt64; return true;
    case T::TYPE_FIXED32: *out = Read::kFixed32; return true;
    case T::TYPE_SFIXED32: *out = Read::kSFixed32; return true;
    case T::TYPE_FIXED64: *out = Read::kFixed64; return true;
    case T::TYPE_SFIXED64: *out = Read::kSFixed64; return true;
    case T::TYPE_FLOAT: *out = Read::kFloat; return true;
    case T::TYPE_DOUBLE: *out = Read::kDouble; return true;
    case T::TYPE_BOOL: *out = Read::kBool; return true;
    case T::TYPE_STRING: *out = Read::kString; return true;
    case T::TYPE_MESSAGE: *out = Read::kMessage; return true;
    default: return false;
  }
}

WireValue wire_value_of(const pb::FieldDescriptor* f) {
  Read r;
  if (!read_of(f, &r)) return WireValue::kOther;
  if (integer_read(r)) return WireValue::kInteger;
  switch (r) {
    case Read::kFloat:
    case Read::kDouble: return WireValue::kFloat;
    case Read::kBool: return WireValue::kBool;
    case Read::kString: return WireValue::kString;
    case Read::kPackedFloat:
    case Read::kPackedDouble: return WireValue::kFloatList;
    default: return WireValue::kOther;
  }
}

std::string type_name_of(const pb::FieldDescriptor* f) {
  std::string t = f->type() == pb::FieldDescriptor::TYPE_MESSAGE ? f->message_type()->full_name() : f->type_name();
  if (f->is_repeated()) t = (f->is_packed() ? "repeated " : "repeated (unpacked) ") + t;
  return t;
}

// Field number -> slot. Field numbers are small in practice: a dense array;
// a hash map beyond kDenseLimit.
class NumberIndex {
 public:
  static constexpr uint32_t kDenseLimit = 4096;
  void add(uint32_t number, int32_t slot) {
    if (number < kDenseLimit) {
      if (dense_.size() <= number) dense_.resize(number + 1, -1);
      dense_[number] = slot;
    } else {
      sparse_[number] = slot;
    }
  }
  int32_t find(uint32_t number) const {
    if (number < dense_.size()) return dense_[number];
    if (number < kDenseLimit || sparse_.empty()) return -1;
    auto it = sparse_.find(number);
    return it == sparse_.end() ? -1 : it->second;
  }

 private:
  std::vector<int32_t> dense_;
  std::unordered_map<uint32_t, int32_t> sparse_;
};

struct ErrorCollector final : pb::compiler::MultiFileErrorCollector {
  std::string errors;
  void AddError(const std::string& filename, int line, int column, const std::string& message) override {
    if (errors.size() < 2000) errors += fmt::format("\n  {}:{}:{}: {}", filename, line + 1, column + 1, message);
  }
};

enum class Envelope : uint8_t { kTable, kKey, kEventTime, kOp, kId, kFields };

// Each slot keeps the wire type its Read expects, resolved at start: the
// check per member is then one compare, not a switch.
struct EnvelopeSlot {
  Envelope what;
  Read read;
  const char* name;  // the JSON name, for details
  uint32_t wire;     // wire_type_of(read)
};

struct FieldSlot {
  Read read;
  uint32_t wire;  // wire_type_of(read)
  std::string name;
  std::vector<int32_t> input_by_table;  // -1: no input of that table
};

// A member of the fields message as one table reads it, by field number:
// what decode_fields needs per member in one load, instead of the number's
// slot, then the slot, then its input_by_table.
struct MemberInput {
  int32_t input = -1;  // -1: not an input of this table (or no such member): the general path
  uint16_t slot = 0;   // into fields_
  Read read = Read::kMessage;
  uint8_t wire = 0;
};

class ProtobufDecoder final : public MessageDecoder {
 public:
  ProtobufDecoder(const layout::Schema& schema, const std::vector<TableDecodeOptions>& options,
                  const FormatConfig& format)
      : builder_(schema, options) {
    load(format);
  }

  DecodeResult decode(std::string_view body, DecodedBatch& out, int64_t now_unix_ms) override {
    body_ = body;
    return builder_.run(
        out, now_unix_ms, RejectReason::kBadProtobuf, [](void* self) { static_cast<ProtobufDecoder*>(self)->walk(); },
        this);
  }

  std::string describe() const override { return description_; }

 private:
  struct Cursor {
    const uint8_t* p;
    const uint8_t* end;
    size_t left() const { return static_cast<size_t>(end - p); }
  };

  void load(const FormatConfig& format) {
    namespace fs = std::filesystem;
    const fs::path file(format.schema_file);
    tree_.MapPath("", file.parent_path().empty() ? "." : file.parent_path().string());
    for (const std::string& dir : format.import_paths) tree_.MapPath("", dir);
    tree_.MapPath("", "/usr/include");  // google/protobuf/*.proto, the well-known types
    importer_ = std::make_unique<pb::compiler::Importer>(&tree_, &errors_);
    const pb::FileDescriptor* fd = importer_->Import(file.filename().string());
    if (fd == nullptr) {
      throw ConfigError(
          fmt::format("{}.proto: cannot parse \"{}\":{}", format.path, format.schema_file, errors_.errors));
    }
    const pb::Descriptor* top = importer_->pool()->FindMessageTypeByName(format.message);
    if (top == nullptr) {
      std::string names;
      for (int i = 0; i < fd->message_type_count() && names.size() < 200; ++i) {
        names += (i ? ", " : "") + fd->message_type(i)->full_name();
      }
      throw ConfigError(fmt::format("{}.message: no message type \"{}\" in \"{}\" (its messages: {})", format.path,
                                    format.message, format.schema_file, names.empty() ? "none" : names));
    }
    // A message with a single repeated message member, and no key member of
    // its own, wraps a batch of updates.
    const pb::Descriptor* update = top;
    if (top->field_count() == 1 && top->field(0)->is_repeated() &&
        top->field(0)->type() == pb::FieldDescriptor::TYPE_MESSAGE &&
        top->FindFieldByName(format.members.key) == nullptr) {
      batch_number_ = static_cast<uint32_t>(top->field(0)->number());
      update = top->field(0)->message_type();
    }
    description_ = fmt::format("protobuf {}{}", top->full_name(),
                               batch_number_ != 0 ? fmt::format(" (a batch of {})", update->full_name()) : "");
    map_envelope(update, format);
  }

  void map_envelope(const pb::Descriptor* update, const FormatConfig& format) {
    const EnvelopeMembers& m = format.members;
    const std::string where = fmt::format("{}: message {}", format.path, update->full_name());
    auto member = [&](const std::string& name, bool required) -> const pb::FieldDescriptor* {
      const pb::FieldDescriptor* f = update->FindFieldByName(name);
      if (f == nullptr && required) {
        throw ConfigError(fmt::format("{} has no member \"{}\" (members: can rename it)", where, name));
      }
      if (f != nullptr && f->is_repeated())
        throw ConfigError(fmt::format("{}: \"{}\" must not be repeated", where, name));
      return f;
    };
    auto add = [&](const pb::FieldDescriptor* f, Envelope what, const char* json_name, bool ok_type) {
      if (!ok_type) {
        throw ConfigError(fmt::format("{}: member \"{}\" is {}, which cannot carry `{}`", where, f->name(),
                                      type_name_of(f), json_name));
      }
      Read r;
      read_of(f, &r);
      envelope_index_.add(static_cast<uint32_t>(f->number()), static_cast<int32_t>(envelope_.size()));
      envelope_.push_back(EnvelopeSlot{what, r, json_name, wire_type_of(r)});
    };
    using T = pb::FieldDescriptor;
    auto is_string = [](const T* f) { return f->type() == T::TYPE_STRING; };
    const T* table = member(m.table, false);
    if (table != nullptr && !format.table.empty()) {
      throw ConfigError(fmt::format("{}.table: message {} names its table in \"{}\"; remove one of them", format.path,
                                    update->full_name(), m.table));
    }
    if (table == nullptr && format.table.empty()) {
      throw ConfigError(fmt::format("{} has no member \"{}\": set {}.table to the table its updates go to", where,
                                    m.table, format.path));
    }
    if (table != nullptr) add(table, Envelope::kTable, "table", is_string(table));
    const T* key = member(m.key, true);
    add(key, Envelope::kKey, "key", is_string(key));
    const T* time = member(m.event_time, true);
    Read tr;
    add(time, Envelope::kEventTime, "event_time",
        read_of(time, &tr) &&
            (tr == Read::kString || (integer_read(tr) && tr != Read::kInt32 && tr != Read::kUInt32 &&
                                     tr != Read::kSInt32 && tr != Read::kFixed32 && tr != Read::kSFixed32)));
    if (const T* op = member(m.op, false)) add(op, Envelope::kOp, "op", is_string(op));
    if (const T* id = member(m.id, false)) add(id, Envelope::kId, "id", is_string(id));
    const T* fields = member(m.fields, true);
    add(fields, Envelope::kFields, "fields", fields->type() == T::TYPE_MESSAGE);
    map_fields(fields->message_type(), format);
  }

  void map_fields(const pb::Descriptor* fields, const FormatConfig& format) {
    std::vector<FieldsMember> members;
    for (int i = 0; i < fields->field_count(); ++i) {
      const pb::FieldDescriptor* f = fields->field(i);
      // Without presence a zero is not sent, and the row would keep its old
      // value: every scalar member must be `optional` (proto3) or proto2.
      if (!f->is_repeated() && !f->has_presence()) {
        throw ConfigError(
            fmt::format("{}: member \"{}\" of {} has no presence, so a zero or \"\" would never be sent: "
                        "declare it `optional {} {} = {};`",
                        format.path, f->name(), fields->full_name(), f->type_name(), f->name(), f->number()));
      }
      members.push_back(FieldsMember{f->name(), wire_value_of(f), type_name_of(f)});
    }
    const std::vector<uint32_t> tables = candidate_tables(builder_, format);
    const std::vector<std::vector<int32_t>> inputs =
        map_fields_members(builder_, tables, members, fields->full_name(), format);
    for (int i = 0; i < fields->field_count(); ++i) {
      const pb::FieldDescriptor* f = fields->field(i);
      Read r = Read::kMessage;
      read_of(f, &r);
      field_index_.add(static_cast<uint32_t>(f->number()), static_cast<int32_t>(fields_.size()));
      fields_.push_back(FieldSlot{r, wire_type_of(r), f->name(), inputs[static_cast<size_t>(i)]});
    }
    fixed_table_ = format.table.empty() ? -1 : static_cast<int32_t>(tables[0]);
    // Per table, the members numbered below kDenseLimit (all, in practice)
    // that are its inputs.
    inputs_by_number_.assign(builder_.table_count(), {});
    for (size_t slot = 0; slot < fields_.size() && slot <= std::numeric_limits<uint16_t>::max(); ++slot) {
      const uint32_t number = static_cast<uint32_t>(fields->field(static_cast<int>(slot))->number());
      if (number >= NumberIndex::kDenseLimit) continue;
      const FieldSlot& f = fields_[slot];
      for (size_t t = 0; t < inputs_by_number_.size(); ++t) {
        if (f.input_by_table[t] < 0) continue;
        std::vector<MemberInput>& dense = inputs_by_number_[t];
        if (dense.size() <= number) dense.resize(number + 1);
        dense[number] =
            MemberInput{f.input_by_table[t], static_cast<uint16_t>(slot), f.read, static_cast<uint8_t>(f.wire)};
      }
    }
  }

  // --- The walk (consumer thread).

  [[noreturn]] void malformed(const std::string& what) {
    builder_.reject(RejectReason::kBadProtobuf, fmt::format("{}: {}", builder_.where(), what));
  }

  uint64_t varint(Cursor& c) {
    if (c.p != c.end && *c.p < 0x80) [[likely]]
      return *c.p++;  // most tags and small values are one byte
    return varint_long(c);
  }

  // Two bytes or more (event times, ids, lengths from 128 on).
  uint64_t varint_long(Cursor& c) {
    if (c.left() < 10) [[unlikely]]
      return varint_near_end(c);
    // Ten bytes are there, the most a varint takes: no end check per byte.
    const uint8_t* p = c.p;
    uint64_t v = 0;
    for (int i = 0; i < 10; ++i) {
      const uint8_t b = p[i];
      if (i == 9 && b > 1) malformed("varint longer than 64 bits");
      v |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
      if (!(b & 0x80)) {
        c.p = p + i + 1;
        return v;
      }
    }
    malformed("varint longer than 10 bytes");  // not reached: the tenth byte ends it or is refused
  }

  [[gnu::noinline]] uint64_t varint_near_end(Cursor& c) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (c.p == c.end) malformed("truncated varint");
      const uint8_t b = *c.p++;
      if (shift == 63 && b > 1) malformed("varint longer than 64 bits");
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    malformed("varint longer than 10 bytes");
  }

  template <class T>
  T fixed(Cursor& c) {
    if (c.left() < sizeof(T)) malformed("truncated fixed-width value");
    T v;
    std::memcpy(&v, c.p, sizeof(T));  // little-endian on every target Larder builds for
    c.p += sizeof(T);
    return v;
  }

  std::string_view bytes(Cursor& c) {
    const uint64_t n = varint(c);
    if (n > c.left()) malformed(fmt::format("length {} beyond the {} bytes left", n, c.left()));
    const std::string_view s(reinterpret_cast<const char*>(c.p), n);
    c.p += n;
    return s;
  }

  // Reads a tag; false at the end of the message.
  bool tag(Cursor& c, uint32_t* number, uint32_t* wire) {
    if (c.p == c.end) return false;
    const uint64_t t = varint(c);
    if (t > std::numeric_limits<uint32_t>::max() || (t >> 3) == 0) malformed(fmt::format("bad tag {}", t));
    *number = static_cast<uint32_t>(t >> 3);
    *wire = static_cast<uint32_t>(t & 7);
    return true;
  }

  void skip(Cursor& c, uint32_t wire) {
    switch (wire) {
      case kVarint: varint(c); return;
      case kFixed64: fixed<uint64_t>(c); return;
      case kLengthDelimited: bytes(c); return;
      case kFixed32: fixed<uint32_t>(c); return;
      default: malformed(fmt::format("wire type {} (groups are not supported)", wire));
    }
  }

  // `name` stays a C string until a refusal needs it (no strlen per member).
  void expect_wire(uint32_t wire, uint32_t expected, Read r, const char* name) {
    if (wire != expected) [[unlikely]]
      bad_wire(wire, r, name);
  }

  [[noreturn, gnu::cold, gnu::noinline]] void bad_wire(uint32_t wire, Read r, const char* name) {
    if (wire != kVarint && wire != kFixed64 && wire != kLengthDelimited && wire != kFixed32) {
      malformed(fmt::format("member \"{}\": wire type {} (groups are not supported)", name, wire));
    }
    builder_.reject(RejectReason::kWrongType,
                    fmt::format("{}: member \"{}\" has wire type {}, the .proto says {} (does the producer use "
                                "another .proto?)",
                                builder_.where(), name, wire, static_cast<uint32_t>(wire_type_of(r))));
  }

  // An integer of any integer Read; false when it does not fit int64.
  bool integer(Cursor& c, Read r, int64_t* out) {
    switch (r) {
      case Read::kInt32: *out = static_cast<int32_t>(varint(c)); return true;
      case Read::kInt64: *out = static_cast<int64_t>(varint(c)); return true;
      case Read::kUInt32: *out = static_cast<uint32_t>(varint(c)); return true;
      case Read::kUInt64: {
        const uint64_t v = varint(c);
        *out = static_cast<int64_t>(v);
        return v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
      }
      case Read::kSInt32: {
        const uint32_t v = static_cast<uint32_t>(varint(c));
        *out = static_cast<int32_t>((v >> 1) ^ (~(v & 1) + 1));
        return true;
      }
      case Read::kSInt64: {
        const uint64_t v = varint(c);
        *out = static_cast<int64_t>((v >> 1) ^ (~(v & 1) + 1));
        return true;
      }
      case Read::kFixed32: *out = fixed<uint32_t>(c); return true;
      case Read::kSFixed32: *out = fixed<int32_t>(c); return true;
      case Read::kFixed64: {
        const uint64_t v = fixed<uint64_t>(c);
        *out = static_cast<int64_t>(v);
        return v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
      }
      case Read::kSFixed64: *out = fixed<int64_t>(c); return true;
      default: return false;
    }
  }

  void walk() {
    Cursor c{reinterpret_cast<const uint8_t*>(body_.data()),
             reinterpret_cast<const uint8_t*>(body_.data()) + body_.size()};
    if (batch_number_ == 0) {
      update(c, 0, false);
      return;
    }
    size_t index = 0;
    uint32_t number, wire;
    while (tag(c, &number, &wire)) {
      if (number != batch_number_) {
        skip(c, wire);
        continue;
      }
      if (wire != kLengthDelimited) malformed(fmt::format("update {}: not a length-delimited message", index));
      const std::string_view u = bytes(c);
      Cursor uc{reinterpret_cast<const uint8_t*>(u.data()), reinterpret_cast<const uint8_t*>(u.data()) + u.size()};
      update(uc, index++, true);
    }
    if (index == 0) builder_.reject(RejectReason::kEmptyBatch, "empty batch");
  }

  void update(Cursor& c, size_t index, bool batch) {
    builder_.begin_update(index, batch);
    if (fixed_table_ >= 0) builder_.set_table(static_cast<uint32_t>(fixed_table_));
    std::string_view fields;
    bool have_fields = false;
    uint32_t number, wire;
    while (tag(c, &number, &wire)) {
      const int32_t slot = envelope_index_.find(number);
      if (slot < 0) {
        skip(c, wire);  // forward compatibility, as JSON ignores other members
        continue;
      }
      const EnvelopeSlot& e = envelope_[static_cast<size_t>(slot)];
      expect_wire(wire, e.wire, e.read, e.name);
      switch (e.what) {
        case Envelope::kTable: builder_.set_table_name(bytes(c)); break;
        case Envelope::kKey: builder_.set_key(bytes(c)); break;
        case Envelope::kEventTime:
          if (e.read == Read::kString) {
            builder_.set_event_time_text(bytes(c));
          } else {
            int64_t ms;
            if (!integer(c, e.read, &ms)) ms = -1;  // beyond int64: out of the event-time range
            builder_.set_event_time_ms(ms);
          }
          break;
        case Envelope::kOp: builder_.set_op(bytes(c)); break;
        case Envelope::kId: builder_.set_id(bytes(c)); break;
        case Envelope::kFields:
          builder_.set_fields_present();
          fields = bytes(c);
          have_fields = true;
          // Decoded in place when the table is known (a configured table, or
          // `table` numbered before `fields`); else after the walk.
          if (builder_.has_table() && builder_.is_upsert()) {
            decode_fields(fields);
            have_fields = false;
          }
          break;
      }
    }
    if (have_fields && builder_.has_table() && builder_.is_upsert()) decode_fields(fields);
    builder_.end_update();
  }

  void decode_fields(std::string_view body) {
    Cursor c{reinterpret_cast<const uint8_t*>(body.data()),
             reinterpret_cast<const uint8_t*>(body.data()) + body.size()};
    const uint32_t table = builder_.current_table();
    const std::vector<MemberInput>& dense = inputs_by_number_[table];
    uint32_t number, wire;
    while (tag(c, &number, &wire)) {
      // An input of the table: one load tells how to read it.
      if (number < dense.size() && dense[number].input >= 0) [[likely]] {
        const MemberInput m = dense[number];
        if (wire != m.wire) [[unlikely]]
          bad_wire(wire, m.read, fields_[m.slot].name.c_str());
        read_member(c, m.read, static_cast<uint32_t>(m.input), fields_[m.slot]);
        continue;
      }
      const int32_t slot = field_index_.find(number);
      if (slot < 0) {
        skip(c, wire);  // a member of a newer .proto
        continue;
      }
      const FieldSlot& f = fields_[static_cast<size_t>(slot)];
      const int32_t input = f.input_by_table[table];
      if (input < 0) {
        builder_.unknown_input(f.name);  // rejects unless allow_unknown_fields
        skip(c, wire);
        continue;
      }
      expect_wire(wire, f.wire, f.read, f.name.c_str());
      read_member(c, f.read, static_cast<uint32_t>(input), f);
    }
  }

  // Reads one member's value (its wire type checked) into input `in`.
  void read_member(Cursor& c, Read read, uint32_t in, const FieldSlot& f) {
    switch (read) {
      case Read::kFloat: builder_.input_double(in, fixed<float>(c)); break;
      case Read::kDouble: builder_.input_double(in, fixed<double>(c)); break;
      case Read::kBool: {
        const uint64_t v = varint(c);
        builder_.input_bool(in, v != 0);
        break;
      }
      case Read::kString: builder_.input_string(in, bytes(c)); break;
      case Read::kPackedFloat:
      case Read::kPackedDouble: {
        const std::string_view packed = bytes(c);
        const size_t width = read == Read::kPackedFloat ? 4 : 8;
        if (packed.size() % width != 0)
          malformed(fmt::format("member \"{}\": packed length {}", f.name, packed.size()));
        builder_.vector_begin(in);
        if (width == 4) {
          builder_.vector_push_floats(packed.data(), packed.size() / 4);
        } else {
          for (size_t k = 0; k < packed.size(); k += 8) {
            double x;
            std::memcpy(&x, packed.data() + k, 8);
            builder_.vector_push(x);
          }
        }
        builder_.vector_end();
        break;
      }
      default: {
        int64_t v;
        if (!integer(c, read, &v)) {
          builder_.reject(RejectReason::kOutOfRange,
                          fmt::format("{}: field \"{}\": integer outside the int64 range", builder_.where(), f.name));
        }
        builder_.input_integer(in, v);
      }
    }
  }

  UpdateBuilder builder_;
  pb::compiler::DiskSourceTree tree_;
  ErrorCollector errors_;
  std::unique_ptr<pb::compiler::Importer> importer_;
  std::string description_;
  uint32_t batch_number_ = 0;  // the wrapper's repeated member, or 0: one update per body
  int32_t fixed_table_ = -1;
  NumberIndex envelope_index_;
  std::vector<EnvelopeSlot> envelope_;
  NumberIndex field_index_;
  std::vector<FieldSlot> fields_;
  std::vector<std::vector<MemberInput>> inputs_by_number_;  // per table, by field number
  std::string_view body_;
};

}  // namespace

std::unique_ptr<MessageDecoder> make_protobuf_decoder(const layout::Schema& schema,
                                                      const std::vector<TableDecodeOptions>& options,
                                                      const FormatConfig& format) {
  return std::make_unique<ProtobufDecoder>(schema, options, format);
}

}  // namespace larder::sidecar
