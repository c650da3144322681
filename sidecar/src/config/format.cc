// The `format:` block of a source (see format.h). Main thread, at start.
#include "config/format.h"

#include <unistd.h>

#include "config/config_yaml.h"

namespace larder::sidecar {

using config_yaml::each_item;
using config_yaml::fail;
using config_yaml::MapNode;

const char* message_format_name(MessageFormat format) noexcept {
  switch (format) {
    case MessageFormat::kJson: return "json";
    case MessageFormat::kProtobuf: return "protobuf";
    case MessageFormat::kAvro: return "avro";
  }
  return "unknown";
}

FormatConfig parse_format(const YAML::Node& node, const std::string& path) {
  FormatConfig f;
  f.path = path;
  MapNode m(node, path, {"type", "proto", "import_paths", "message", "schema", "table", "members", "confluent"});
  const std::string type = m.str("type", "json");
  if (type == "json") {
    f.type = MessageFormat::kJson;
  } else if (type == "protobuf") {
    f.type = MessageFormat::kProtobuf;
  } else if (type == "avro") {
    f.type = MessageFormat::kAvro;
  } else {
    fail(m.child("type"), fmt::format("unknown format \"{}\" (expected json, protobuf or avro)", type));
  }
  // Each key belongs to one format: a key of another is a mistake worth
  // naming rather than ignoring.
  auto only_for = [&](const char* key, MessageFormat format) {
    if (m.has(key) && f.type != format) {
      fail(m.child(key), fmt::format("only for type: {}", message_format_name(format)));
    }
  };
  only_for("proto", MessageFormat::kProtobuf);
  only_for("import_paths", MessageFormat::kProtobuf);
  only_for("message", MessageFormat::kProtobuf);
  only_for("schema", MessageFormat::kAvro);
  only_for("confluent", MessageFormat::kAvro);
  if (f.type == MessageFormat::kJson) {
    for (const char* key : {"table", "members"}) {
      if (m.has(key)) fail(m.child(key), "only for type: protobuf or avro (JSON names its members itself)");
    }
    return f;
  }
  const char* file_key = f.type == MessageFormat::kProtobuf ? "proto" : "schema";
  f.schema_file = m.str(file_key);
  if (::access(f.schema_file.c_str(), R_OK) != 0)
    fail(m.child(file_key), fmt::format("cannot read \"{}\"", f.schema_file));
  if (f.type == MessageFormat::kProtobuf) {
    f.message = m.str("message");
    each_item(m.node("import_paths"), m.child("import_paths"), false,
              [&](const YAML::Node& p, const std::string& ppath) {
                if (!p.IsScalar() || p.Scalar().empty()) fail(ppath, "expected a directory");
                f.import_paths.push_back(p.Scalar());
              });
  }
  f.table = m.str("table", "");
  {
    MapNode mm(m.node("members"), m.child("members"), {"table", "key", "event_time", "op", "id", "fields"});
    EnvelopeMembers& e = f.members;
    for (auto [key, slot] :
         {std::pair{"table", &e.table}, std::pair{"key", &e.key}, std::pair{"event_time", &e.event_time},
          std::pair{"op", &e.op}, std::pair{"id", &e.id}, std::pair{"fields", &e.fields}}) {
      *slot = mm.str(key, *slot);
      if (slot->empty()) fail(mm.child(key), "must not be empty");
    }
  }
  if (m.has("confluent")) {
    MapNode c(m.node("confluent"), m.child("confluent"), {"schema_id"});
    f.confluent_schema_id = static_cast<uint32_t>(c.integer("schema_id", std::nullopt, 0, 0xffffffffu));
  }
  return f;
}

}  // namespace larder::sidecar
