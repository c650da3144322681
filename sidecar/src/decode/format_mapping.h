// How the binary formats (Protobuf, Avro) map a schema file's members onto
// the tables' inputs, checked once at start (docs/message-format.md,
// "Protocol Buffers and Avro"). Main thread, at start.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/format.h"
#include "decode/update_builder.h"

namespace larder::sidecar {

// What a member of the schema file carries on the wire.
enum class WireValue : uint8_t { kInteger, kFloat, kBool, kString, kFloatList, kOther };

struct FieldsMember {
  std::string name;
  WireValue value = WireValue::kOther;
  std::string type_name;  // as the schema file spells it, for errors
};

// The tables an update may name: the configured one, or all of them.
std::vector<uint32_t> candidate_tables(const UpdateBuilder& builder, const FormatConfig& format);

// For each member of the fields message, its input index in each table
// (indexed by table; -1: not an input of that table). Throws ConfigError
// when a table reads an input the message lacks, when a member is no input
// of any candidate table (unless they all allow unknown fields), or when a
// member's type cannot feed its input.
std::vector<std::vector<int32_t>> map_fields_members(const UpdateBuilder& builder, const std::vector<uint32_t>& tables,
                                                     const std::vector<FieldsMember>& members,
                                                     const std::string& message_name, const FormatConfig& format);

// The big-endian schema id of a Confluent wire-format header (magic byte 0).
inline constexpr size_t kConfluentHeaderBytes = 5;

}  // namespace larder::sidecar
