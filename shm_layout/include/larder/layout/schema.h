// Schemas: what the writer is asked to create, and how it maps to bytes.
//
// A Schema is a list of tables; a table has a key length limit, a capacity in
// live keys and typed fields. plan_layout() turns a Schema into the offsets of
// every structure in the segment; it is the only place that decides them, so
// the writer, `larderctl size` and the docs agree.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "larder/layout/format.h"

namespace larder::layout {

struct FieldSpec {
  std::string name;
  FieldType type = FieldType::kFloat64;
  uint32_t count = 1;  // dimensions for kFloat32Vector, max bytes for kString
};

struct TableSpec {
  std::string name;
  uint32_t key_max_len = 64;
  uint64_t capacity = 1024;       // live keys
  double max_load_factor = 0.75;  // live keys / slots; in (0, 0.95]
  std::vector<FieldSpec> fields;
};

struct Schema {
  std::vector<TableSpec> tables;

  // Throws Error(kInvalidArgument) naming the table/field and the problem.
  void validate() const;
  // XXH3 of a canonical text of every table and field, including capacities:
  // two schemas with the same fingerprint produce the same layout.
  uint64_t fingerprint() const;
};

const char* field_type_name(FieldType type);
// Parses "int64", "float64", "float32", "bool", "vector" and "string".
bool parse_field_type(std::string_view text, FieldType* out);
// True for names of [A-Za-z0-9_.-], 1..63 bytes, not starting with '.' or '-'.
bool valid_identifier(std::string_view name);

struct FieldPlan {
  uint32_t offset = 0;
  uint32_t bytes = 0;
};

struct TablePlan {
  uint64_t slot_count = 0;
  uint32_t slot_bytes = 0;
  uint32_t row_bytes = 0;
  uint32_t validity_words = 0;
  uint32_t key_words = 0;
  uint64_t fields_offset = 0;
  uint64_t slots_offset = 0;
  uint64_t slots_bytes = 0;
  std::vector<FieldPlan> fields;
};

struct LayoutPlan {
  uint64_t header_bytes = kSegmentHeaderBytes;
  uint64_t undo_offset = 0;
  uint64_t undo_bytes = 0;
  uint64_t segment_bytes = 0;
  std::vector<TablePlan> tables;
};

// Deterministic for a given (validated) schema.
LayoutPlan plan_layout(const Schema& schema);

// Bytes a field of this type and count occupies in a row, and its alignment.
uint32_t field_bytes(FieldType type, uint32_t count);
uint32_t field_align(FieldType type);

}  // namespace larder::layout
