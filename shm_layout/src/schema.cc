// Schema validation, fingerprint and the layout plan.
#include "larder/layout/schema.h"

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
    if (t.fields.empty()) invalid(where + ": at least one field is required");
    if (t.fields.size() > kMaxFields) invalid(where + ": more than " + std::to_string(kMaxFields) + " fields");
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
  }
}

uint64_t Schema::fingerprint() const {
  std::string canon = "larder-schema-v1\n";
  for (const TableSpec& t : tables) {
    canon += "table " + t.name + " key " + std::to_string(t.key_max_len) + " capacity " + std::to_string(t.capacity) +
             " load " + std::to_string(static_cast<uint64_t>(std::llround(t.max_load_factor * 1e6))) + "\n";
    for (const FieldSpec& f : t.fields) {
      canon += " field " + f.name + " " + field_type_name(f.type) + " " + std::to_string(f.count) + "\n";
    }
  }
  return XXH3_64bits(canon.data(), canon.size());
}

LayoutPlan plan_layout(const Schema& schema) {
  LayoutPlan plan;
  plan.header_bytes = kSegmentHeaderBytes;
  uint64_t at = kSegmentHeaderBytes + kTableDescriptorBytes * schema.tables.size();
  uint64_t max_slot_bytes = 0;
  for (const TableSpec& t : schema.tables) {
    TablePlan tp;
    tp.fields_offset = round_up(at, 8);
    at = tp.fields_offset + kFieldDescriptorBytes * t.fields.size();
    uint32_t row = 0;
    for (const FieldSpec& f : t.fields) {
      const uint32_t count = (f.type == FieldType::kFloat32Vector || f.type == FieldType::kString) ? f.count : 1;
      FieldPlan fp;
      fp.bytes = field_bytes(f.type, count);
      fp.offset = static_cast<uint32_t>(round_up(row, field_align(f.type)));
      row = fp.offset + fp.bytes;
      tp.fields.push_back(fp);
    }
    tp.row_bytes = static_cast<uint32_t>(round_up(row, 8));
    tp.validity_words = static_cast<uint32_t>((t.fields.size() + 63) / 64);
    tp.key_words = static_cast<uint32_t>((t.key_max_len + 7) / 8);
    tp.slot_bytes = static_cast<uint32_t>(
        round_up(8 * (kSlotHeaderWords + tp.validity_words + tp.key_words) + tp.row_bytes, kSlotAlign));
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
  for (TablePlan& tp : plan.tables) {
    tp.slots_offset = round_up(at, kSlotArrayAlign);
    at = tp.slots_offset + tp.slots_bytes;
  }
  plan.segment_bytes = round_up(at, kSlotArrayAlign);
  return plan;
}

}  // namespace larder::layout
