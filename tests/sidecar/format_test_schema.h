// The tables and schema files shared by the Protobuf and Avro tests, the
// fuzzers and the benchmark (tests/sidecar/formats/). Header-only.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "config/format.h"
#include "config/ingest.h"
#include "larder/layout/schema.h"

namespace larder::sidecar::format_test {

// "users": every field type and a computed field (amount_log = log1p(amount));
// "items": one field, so that a member of the other table is unknown there.
inline layout::Schema schema() {
  using layout::FieldType;
  layout::Schema s;
  layout::TableSpec users;
  users.name = "users";
  users.key_max_len = 16;
  users.capacity = 1024;
  users.fields = {{"clicks", FieldType::kInt64, 1},      {"ctr", FieldType::kFloat64, 1},
                  {"score", FieldType::kFloat32, 1},     {"premium", FieldType::kBool, 1},
                  {"country", FieldType::kString, 2},    {"embedding", FieldType::kFloat32Vector, 3},
                  {"amount_log", FieldType::kFloat64, 1}};
  s.tables.push_back(users);
  layout::TableSpec items;
  items.name = "items";
  items.key_max_len = 16;
  items.capacity = 1024;
  items.fields = {{"price", FieldType::kFloat64, 1}};
  s.tables.push_back(items);
  return s;
}

inline std::vector<TableDecodeOptions> options() {
  std::vector<TableDecodeOptions> o(2);
  o[0].fields.resize(7);
  o[0].fields[6].from = "amount";
  o[0].fields[6].transform = TransformChain::parse_yaml("[log1p]");
  return o;
}

inline FormatConfig protobuf(const std::string& dir, const std::string& message = "larder.test.Update") {
  FormatConfig f;
  f.type = MessageFormat::kProtobuf;
  f.schema_file = dir + "/features.proto";
  f.message = message;
  f.path = "rabbitmq.format";
  return f;
}

inline FormatConfig avro(const std::string& dir, const std::string& file = "update.avsc") {
  FormatConfig f;
  f.type = MessageFormat::kAvro;
  f.schema_file = dir + "/" + file;
  f.path = "rabbitmq.format";
  return f;
}

// A small Avro binary encoder for tests (the Avro specification's encoding:
// zigzag varints, little-endian floats, length-prefixed strings).
struct AvroWriter {
  std::string out;
  AvroWriter& lng(int64_t v) {
    uint64_t z = (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63);
    while (z >= 0x80) {
      out += static_cast<char>((z & 0x7f) | 0x80);
      z >>= 7;
    }
    out += static_cast<char>(z);
    return *this;
  }
  AvroWriter& str(std::string_view s) {
    lng(static_cast<int64_t>(s.size()));
    out.append(s);
    return *this;
  }
  AvroWriter& dbl(double d) {
    out.append(reinterpret_cast<const char*>(&d), 8);
    return *this;
  }
  AvroWriter& flt(float f) {
    out.append(reinterpret_cast<const char*>(&f), 4);
    return *this;
  }
  AvroWriter& boolean(bool b) {
    out += static_cast<char>(b ? 1 : 0);
    return *this;
  }
  AvroWriter& null() { return lng(0); }  // the null branch of ["null", T]
  AvroWriter& some() { return lng(1); }  // the T branch
};

// One update of update.avsc; fields unset are null. `fields` writes the
// Fields record (8 optional members in order).
struct AvroUpdate {
  std::string table = "users";
  std::string key = "u1";
  int64_t event_time = 1000;
  const char* op = nullptr;
  const char* id = nullptr;
  // clicks, ctr, score, premium, country, embedding, amount, price
  const int64_t* clicks = nullptr;
  const double* ctr = nullptr;
  const float* score = nullptr;
  const bool* premium = nullptr;
  const char* country = nullptr;
  std::vector<float> embedding;  // empty: null
  const double* amount = nullptr;
  const double* price = nullptr;

  void write(AvroWriter& w) const {
    w.str(table).str(key).lng(event_time);
    if (op)
      w.some().str(op);
    else
      w.null();
    if (id)
      w.some().str(id);
    else
      w.null();
    if (clicks)
      w.some().lng(*clicks);
    else
      w.null();
    if (ctr)
      w.some().dbl(*ctr);
    else
      w.null();
    if (score)
      w.some().flt(*score);
    else
      w.null();
    if (premium)
      w.some().boolean(*premium);
    else
      w.null();
    if (country)
      w.some().str(country);
    else
      w.null();
    if (!embedding.empty()) {
      w.some().lng(static_cast<int64_t>(embedding.size()));
      for (float f : embedding) w.flt(f);
      w.lng(0);
    } else {
      w.null();
    }
    if (amount)
      w.some().dbl(*amount);
    else
      w.null();
    if (price)
      w.some().dbl(*price);
    else
      w.null();
  }
  std::string encode() const {
    AvroWriter w;
    write(w);
    return w.out;
  }
};

}  // namespace larder::sidecar::format_test
