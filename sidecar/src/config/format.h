// The message format of a source (docs/message-format.md, docs/sidecar.md
// `format`): JSON v1 (the default), Protocol Buffers or Avro, with the names
// of the members that carry an update's envelope. A source's YAML block holds
// it as `format:`; parse_format() reads it for any source, so every source
// type selects its format the same way. The decoders themselves
// (decode/message_decoder.h) check the schema file against the tables.
// Plain data: read on the main thread at start, read-only afterwards.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace YAML {
class Node;
}

namespace larder::sidecar {

enum class MessageFormat : uint8_t { kJson = 0, kProtobuf = 1, kAvro = 2 };
const char* message_format_name(MessageFormat format) noexcept;

// The names of an update's members in a Protobuf message or Avro record.
// The defaults are the JSON v1 names.
struct EnvelopeMembers {
  std::string table = "table";
  std::string key = "key";
  std::string event_time = "event_time";
  std::string op = "op";
  std::string id = "id";
  std::string fields = "fields";
};

struct FormatConfig {
  MessageFormat type = MessageFormat::kJson;
  // Protobuf: the .proto file and the directories its imports are found in
  // (the file's own directory is always one). Avro: the .avsc file.
  std::string schema_file;
  std::vector<std::string> import_paths;
  // Protobuf: the full name of the message type of a body (e.g.
  // "shop.UserUpdate", or a batch wrapper around it).
  std::string message;
  // The table of every update, for a message without a table member.
  std::string table;
  EnvelopeMembers members;
  // Avro: the body starts with the Confluent wire format's header (magic 0,
  // then this schema id as 4 big-endian bytes); another id is rejected.
  std::optional<uint32_t> confluent_schema_id;
  // The key path of the block, for errors found later against the schema
  // file (e.g. "rabbitmq.format").
  std::string path;
};

// Reads a `format:` block at key path `path`; an absent block is JSON.
// Throws ConfigError. Checks the keys and that the files can be read; the
// decoder factory checks their content against the tables.
FormatConfig parse_format(const YAML::Node& node, const std::string& path);

}  // namespace larder::sidecar
