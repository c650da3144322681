// The format factory and the mapping checks shared by Protobuf and Avro (see
// message_decoder.h, format_mapping.h). Main thread, at start.
#include "decode/message_decoder.h"

#include <fmt/format.h>

#include <stdexcept>

#include "config/config_error.h"
#include "decode/format_mapping.h"

namespace larder::sidecar {

std::unique_ptr<MessageDecoder> make_protobuf_decoder(const layout::Schema& schema,
                                                      const std::vector<TableDecodeOptions>& options,
                                                      const FormatConfig& format);
std::unique_ptr<MessageDecoder> make_avro_decoder(const layout::Schema& schema,
                                                  const std::vector<TableDecodeOptions>& options,
                                                  const FormatConfig& format);

namespace {

class JsonDecoder final : public MessageDecoder {
 public:
  JsonDecoder(const layout::Schema& schema, const std::vector<TableDecodeOptions>& options)
      : decoder_(schema, options) {}
  DecodeResult decode(std::string_view body, DecodedBatch& out, int64_t now_unix_ms) override {
    return decoder_.decode(body, out, now_unix_ms);
  }
  std::string describe() const override { return "json"; }

 private:
  Decoder decoder_;
};

bool accepts(InputType input, WireValue value) {
  switch (input) {
    case InputType::kInteger: return value == WireValue::kInteger;
    case InputType::kNumber: return value == WireValue::kInteger || value == WireValue::kFloat;
    case InputType::kNumberOrBool:
      return value == WireValue::kInteger || value == WireValue::kFloat || value == WireValue::kBool;
    case InputType::kBool: return value == WireValue::kBool;
    case InputType::kString: return value == WireValue::kString;
    case InputType::kVector: return value == WireValue::kFloatList;
    case InputType::kScalar:
      return value == WireValue::kString || value == WireValue::kInteger || value == WireValue::kBool;
  }
  return false;
}

const char* wanted_types(InputType input) {
  switch (input) {
    case InputType::kInteger: return "an integer type";
    case InputType::kNumber: return "an integer or floating-point type";
    case InputType::kNumberOrBool: return "a number or bool type";
    case InputType::kBool: return "bool";
    case InputType::kString: return "string";
    case InputType::kVector: return "a list of float or double";
    case InputType::kScalar: return "string, an integer type or bool";
  }
  return "?";
}

}  // namespace

std::vector<uint32_t> candidate_tables(const UpdateBuilder& builder, const FormatConfig& format) {
  std::vector<uint32_t> out;
  if (!format.table.empty()) {
    const std::optional<uint32_t> t = builder.find_table(format.table);
    if (!t) throw ConfigError(fmt::format("{}.table: no table \"{}\"", format.path, format.table));
    out.push_back(*t);
  } else {
    for (uint32_t t = 0; t < builder.table_count(); ++t) out.push_back(t);
  }
  return out;
}

std::vector<std::vector<int32_t>> map_fields_members(const UpdateBuilder& builder, const std::vector<uint32_t>& tables,
                                                     const std::vector<FieldsMember>& members,
                                                     const std::string& message_name, const FormatConfig& format) {
  std::vector<std::vector<int32_t>> out(members.size(), std::vector<int32_t>(builder.table_count(), -1));
  std::vector<bool> used(members.size(), false);
  bool all_allow_unknown = true;
  for (uint32_t t : tables) {
    all_allow_unknown = all_allow_unknown && builder.allow_unknown_fields(t);
    const std::vector<UpdateBuilder::Input> inputs = builder.inputs(t);
    for (size_t i = 0; i < inputs.size(); ++i) {
      const UpdateBuilder::Input& in = inputs[i];
      size_t m = 0;
      while (m < members.size() && members[m].name != in.name) ++m;
      if (m == members.size()) {
        throw ConfigError(fmt::format("{}: table \"{}\" reads \"{}\", but {} has no member \"{}\" (add it as {})",
                                      format.path, builder.table_name(t), in.name, message_name, in.name,
                                      wanted_types(in.type)));
      }
      if (!accepts(in.type, members[m].value)) {
        throw ConfigError(fmt::format("{}: member \"{}\" of {} is {}, but table \"{}\" reads it as {} (expected {})",
                                      format.path, in.name, message_name, members[m].type_name, builder.table_name(t),
                                      input_type_name(in.type), wanted_types(in.type)));
      }
      out[m][t] = static_cast<int32_t>(i);
      used[m] = true;
    }
  }
  if (!all_allow_unknown) {
    for (size_t m = 0; m < members.size(); ++m) {
      if (used[m]) continue;
      std::string why;
      for (uint32_t t : tables) {
        if (const std::optional<std::string> reason = builder.why_not_an_input(t, members[m].name)) {
          why = fmt::format(": in table \"{}\", {}", builder.table_name(t), *reason);
        }
      }
      throw ConfigError(fmt::format(
          "{}: member \"{}\" of {} is no field or input of {}{}", format.path, members[m].name, message_name,
          tables.size() == 1 ? fmt::format("table \"{}\"", builder.table_name(tables[0])) : std::string("any table"),
          why));
    }
  }
  return out;
}

std::unique_ptr<MessageDecoder> make_message_decoder(const layout::Schema& schema,
                                                     const std::vector<TableDecodeOptions>& options,
                                                     const FormatConfig& format) {
  try {
    switch (format.type) {
      case MessageFormat::kJson: return std::make_unique<JsonDecoder>(schema, options);
      case MessageFormat::kProtobuf: return make_protobuf_decoder(schema, options, format);
      case MessageFormat::kAvro: return make_avro_decoder(schema, options, format);
    }
  } catch (const std::invalid_argument& e) {  // the tables' own options (Config checks them first)
    throw ConfigError(fmt::format("{}: {}", format.path, e.what()));
  }
  throw ConfigError(format.path + ".type: unknown format");
}

}  // namespace larder::sidecar
