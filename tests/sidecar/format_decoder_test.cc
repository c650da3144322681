// Unit tests of the Protocol Buffers and Avro decoders (decode/
// message_decoder.h): every member type against the JSON decoder's result
// for the same update, batches, every reject reason they add and the JSON
// reasons they share, truncated and corrupted bodies, and the configuration
// errors found at start. Protobuf bodies are encoded by libprotobuf itself
// (text format -> DynamicMessage -> wire); Avro bodies by the test's encoder,
// checked once against the Avro C library's own writer. No broker.
#include <avro.h>
#include <fmt/format.h>
#include <google/protobuf/compiler/importer.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "config/config.h"
#include "config/config_error.h"
#include "decode/message_decoder.h"
#include "decoder_test_support.h"
#include "format_test_schema.h"
#include "support/run_command.h"

namespace larder::sidecar {
namespace {

namespace pb = google::protobuf;
namespace ft = format_test;

const std::string kDir = std::string(LARDER_SOURCE_DIR) + "/tests/sidecar/formats";

// Text format -> wire bytes, with the test's own descriptors.
class ProtoEncoder {
 public:
  ProtoEncoder() {
    tree_.MapPath("", kDir);
    importer_ = std::make_unique<pb::compiler::Importer>(&tree_, nullptr);
    if (importer_->Import("features.proto") == nullptr) throw std::runtime_error("features.proto");
  }
  std::string encode(const std::string& type, const std::string& text) {
    const pb::Descriptor* d = importer_->pool()->FindMessageTypeByName(type);
    std::unique_ptr<pb::Message> m(factory_.GetPrototype(d)->New());
    if (!pb::TextFormat::ParseFromString(text, m.get())) throw std::runtime_error("bad text: " + text);
    return m->SerializeAsString();
  }
  std::string update(const std::string& text) { return encode("larder.test.Update", text); }
  std::string batch(const std::string& text) { return encode("larder.test.Batch", text); }

 private:
  pb::compiler::DiskSourceTree tree_;
  std::unique_ptr<pb::compiler::Importer> importer_;
  pb::DynamicMessageFactory factory_;
};

std::string tmp_file(const std::string& name, const std::string& text) {
  const std::string dir = ::testing::TempDir() + "/larder-format-test";
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/" + name;
  std::ofstream(path) << text;
  return path;
}

using decoder_test::dump;

class FormatTest : public ::testing::Test {
 protected:
  FormatTest()
      : json_(make_message_decoder(ft::schema(), ft::options(), FormatConfig{})),
        proto_(make_message_decoder(ft::schema(), ft::options(), ft::protobuf(kDir))),
        proto_batch_(make_message_decoder(ft::schema(), ft::options(), ft::protobuf(kDir, "larder.test.Batch"))),
        avro_(make_message_decoder(ft::schema(), ft::options(), ft::avro(kDir))),
        avro_batch_(make_message_decoder(ft::schema(), ft::options(), ft::avro(kDir, "batch.avsc"))) {}

  std::string decoded(MessageDecoder& d, const std::string& body) {
    const DecodeResult r = d.decode(body, batch_, 5000);
    EXPECT_TRUE(r.ok) << reject_reason_name(r.reason) << ": " << r.detail;
    return dump(batch_);
  }

  DecodeResult expect_reject(MessageDecoder& d, const std::string& body, RejectReason reason) {
    const DecodeResult r = d.decode(body, batch_, 5000);
    decoder_test::expect_refused(r, batch_, reason, "");
    return r;
  }

  ProtoEncoder pe_;
  std::unique_ptr<MessageDecoder> json_, proto_, proto_batch_, avro_, avro_batch_;
  DecodedBatch batch_;
};

const char* kFullJson =
    R"({"table":"users","key":"u1","event_time":1000,"id":"e-1","fields":{"clicks":-42,"ctr":0.25,"score":1.5,)"
    R"("premium":true,"country":"DE","embedding":[1,2.5,-3],"amount":99}})";
const char* kFullText =
    R"(table: "users" key: "u1" event_time: 1000 id: "e-1" fields { clicks: -42 ctr: 0.25 score: 1.5 )"
    R"(premium: true country: "DE" embedding: [1, 2.5, -3] amount: 99 })";

ft::AvroUpdate full_avro() {
  static const int64_t clicks = -42;
  static const double ctr = 0.25, amount = 99;
  static const float score = 1.5f;
  static const bool premium = true;
  ft::AvroUpdate u;
  u.id = "e-1";
  u.clicks = &clicks;
  u.ctr = &ctr;
  u.score = &score;
  u.premium = &premium;
  u.country = "DE";
  u.embedding = {1, 2.5f, -3};
  u.amount = &amount;
  return u;
}

TEST_F(FormatTest, EveryTypeDecodesAsJsonDoes) {
  const std::string want = decoded(*json_, kFullJson);
  EXPECT_NE(want.find("6=4.60517"), std::string::npos) << want;  // amount_log = log1p(99)
  EXPECT_EQ(decoded(*proto_, pe_.update(kFullText)), want);
  EXPECT_EQ(decoded(*avro_, full_avro().encode()), want);
  EXPECT_EQ(proto_->describe(), "protobuf larder.test.Update");
  EXPECT_EQ(json_->describe(), "json");
}

TEST_F(FormatTest, AvroEncoderMatchesTheAvroLibrary) {
  // The test's encoder against avro_value_write for one full update.
  std::ifstream in(kDir + "/update.avsc");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  avro_schema_t schema;
  ASSERT_EQ(avro_schema_from_json_length(text.data(), text.size(), &schema), 0) << avro_strerror();
  avro_value_iface_t* iface = avro_generic_class_from_schema(schema);
  avro_value_t v, member, branch, fields;
  ASSERT_EQ(avro_generic_value_new(iface, &v), 0);
  avro_value_get_by_name(&v, "table", &member, nullptr);
  avro_value_set_string(&member, "users");
  avro_value_get_by_name(&v, "key", &member, nullptr);
  avro_value_set_string(&member, "u1");
  avro_value_get_by_name(&v, "event_time", &member, nullptr);
  avro_value_set_long(&member, 1000);
  avro_value_get_by_name(&v, "op", &member, nullptr);
  avro_value_set_branch(&member, 0, &branch);
  avro_value_get_by_name(&v, "id", &member, nullptr);
  avro_value_set_branch(&member, 1, &branch);
  avro_value_set_string(&branch, "e-1");
  avro_value_get_by_name(&v, "fields", &fields, nullptr);
  auto set = [&](const char* name, auto&& fill) {
    avro_value_get_by_name(&fields, name, &member, nullptr);
    avro_value_set_branch(&member, 1, &branch);
    fill(branch);
  };
  set("clicks", [](avro_value_t& b) { avro_value_set_long(&b, -42); });
  set("ctr", [](avro_value_t& b) { avro_value_set_double(&b, 0.25); });
  set("score", [](avro_value_t& b) { avro_value_set_float(&b, 1.5f); });
  set("premium", [](avro_value_t& b) { avro_value_set_boolean(&b, 1); });
  set("country", [](avro_value_t& b) { avro_value_set_string(&b, "DE"); });
  set("embedding", [](avro_value_t& b) {
    for (float f : {1.0f, 2.5f, -3.0f}) {
      avro_value_t e;
      avro_value_append(&b, &e, nullptr);
      avro_value_set_float(&e, f);
    }
  });
  set("amount", [](avro_value_t& b) { avro_value_set_double(&b, 99); });
  for (const char* null_member : {"price"}) {
    avro_value_get_by_name(&fields, null_member, &member, nullptr);
    avro_value_set_branch(&member, 0, &branch);
  }
  char buf[512];
  avro_writer_t w = avro_writer_memory(buf, sizeof buf);
  ASSERT_EQ(avro_value_write(w, &v), 0) << avro_strerror();
  const std::string library(buf, static_cast<size_t>(avro_writer_tell(w)));
  avro_writer_free(w);
  avro_value_decref(&v);
  avro_value_iface_decref(iface);
  avro_schema_decref(schema);
  EXPECT_EQ(library, full_avro().encode());
  EXPECT_EQ(decoded(*avro_, library), decoded(*json_, kFullJson));
}

TEST_F(FormatTest, BatchesDeletesAndOrder) {
  const std::string json = R"([{"table":"users","key":"a","event_time":1,"fields":{"clicks":1}},)"
                           R"({"table":"items","key":"i","event_time":2,"fields":{"price":9.5}},)"
                           R"({"table":"users","key":"b","event_time":3,"op":"delete"}])";
  const std::string want = decoded(*json_, json);
  EXPECT_EQ(decoded(*proto_batch_, pe_.batch(R"(updates { table: "users" key: "a" event_time: 1 fields { clicks: 1 } }
      updates { table: "items" key: "i" event_time: 2 fields { price: 9.5 } }
      updates { table: "users" key: "b" event_time: 3 op: "delete" })")),
            want);
  ft::AvroWriter w;
  const int64_t one = 1;
  const double price = 9.5;
  ft::AvroUpdate a, i, b;
  a.key = "a", a.event_time = 1, a.clicks = &one;
  i.table = "items", i.key = "i", i.event_time = 2, i.price = &price;
  b.key = "b", b.event_time = 3, b.op = "delete";
  w.lng(2);
  a.write(w);
  i.write(w);
  w.lng(1);  // a second block
  b.write(w);
  w.lng(0);
  EXPECT_EQ(decoded(*avro_batch_, w.out), want);
  // A delete carries no `fields`: only an upsert needs them.
  expect_reject(*proto_, pe_.update(R"(table: "users" key: "b" event_time: 3)"), RejectReason::kMissingMember);
  expect_reject(*proto_batch_, "", RejectReason::kEmptyBatch);
  expect_reject(*avro_batch_, std::string(1, '\0'), RejectReason::kEmptyBatch);
}

TEST_F(FormatTest, FieldsBeforeTableOnTheWire) {
  // Serializers write members in number order, but any order is valid.
  const std::string fields = pe_.encode("larder.test.Fields", "clicks: 7");
  std::string body;
  body += static_cast<char>(6 << 3 | 2);
  body += static_cast<char>(fields.size());
  body += fields;
  body += pe_.update(R"(table: "users" key: "k" event_time: 5)");
  EXPECT_EQ(decoded(*proto_, body), "t0 op0 k @5 id= event_id=0: 0=7\n");
}

TEST_F(FormatTest, SharedRejectReasons) {
  auto reject_both = [&](const std::string& text, ft::AvroUpdate avro, RejectReason reason) {
    SCOPED_TRACE(text);
    expect_reject(*proto_, pe_.update(text), reason);
    expect_reject(*avro_, avro.encode(), reason);
  };
  const int64_t one = 1;
  const double price = 1, minus_two = -2;
  ft::AvroUpdate u;
  u.clicks = &one;
  ft::AvroUpdate bad = u;
  bad.table = "nope";
  reject_both(R"(table: "nope" key: "k" event_time: 1 fields { clicks: 1 })", bad, RejectReason::kUnknownTable);
  bad = u;
  bad.key = "";
  expect_reject(*avro_, bad.encode(), RejectReason::kEmptyKey);
  // proto3 does not send an empty string: an empty key is a missing one.
  expect_reject(*proto_, pe_.update(R"(table: "users" event_time: 1 fields { clicks: 1 })"),
                RejectReason::kMissingMember);
  bad = u;
  bad.key = std::string(17, 'k');
  reject_both(R"(table: "users" key: "kkkkkkkkkkkkkkkkk" event_time: 1 fields { clicks: 1 })", bad,
              RejectReason::kKeyTooLong);
  bad = u;
  bad.country = "DEU";
  reject_both(R"(table: "users" key: "k" event_time: 1 fields { country: "DEU" })", bad, RejectReason::kStringTooLong);
  bad = u;
  bad.embedding = {1, 2};
  reject_both(R"(table: "users" key: "k" event_time: 1 fields { embedding: [1, 2] })", bad,
              RejectReason::kVectorLength);
  bad = u;
  bad.op = "merge";
  reject_both(R"(table: "users" key: "k" event_time: 1 op: "merge" fields { clicks: 1 })", bad, RejectReason::kBadOp);
  bad = u;
  bad.event_time = -5;
  reject_both(R"(table: "users" key: "k" event_time: -5 fields { clicks: 1 })", bad, RejectReason::kBadEventTime);
  bad = u;
  bad.table = "items";
  reject_both(R"(table: "items" key: "k" event_time: 1 fields { clicks: 1 })", bad, RejectReason::kUnknownField);
  bad = u;
  bad.clicks = nullptr;
  bad.amount = &minus_two;
  reject_both(R"(table: "users" key: "k" event_time: 1 fields { amount: -2 })", bad, RejectReason::kBadValue);
  bad = u;
  bad.table = "items";
  bad.clicks = nullptr;
  bad.price = &price;
  const DecodeResult ok =
      proto_->decode(pe_.update(R"(table: "items" key: "k" event_time: 1 fields { price: 1 })"), batch_, 5000);
  EXPECT_TRUE(ok.ok) << ok.detail;
  // A huge float into a float32 field, a NaN into a float64.
  expect_reject(*proto_, pe_.update(R"(table: "users" key: "k" event_time: 1 fields { score: inf })"),
                RejectReason::kNonFinite);
  expect_reject(*proto_, pe_.update(R"(table: "users" key: "k" event_time: 1 fields { ctr: nan })"),
                RejectReason::kNonFinite);
  // The refused update's id and key reach the DecodeResult (dead-letter headers).
  const DecodeResult r = expect_reject(
      *proto_, pe_.update(R"(table: "users" key: "k9" id: "e-9" event_time: 1 fields { country: "XYZ" })"),
      RejectReason::kStringTooLong);
  EXPECT_EQ(r.key, "k9");
  EXPECT_EQ(r.update_id, "e-9");
  EXPECT_NE(r.detail.find("field \"country\""), std::string::npos) << r.detail;
}

TEST_F(FormatTest, EventTimeBoundsApply) {
  std::vector<TableDecodeOptions> o = ft::options();
  o[0].event_time = {kDefaultMaxFutureSkewMs, kDefaultMinEventTimeMs};
  auto proto = make_message_decoder(ft::schema(), o, ft::protobuf(kDir));
  const int64_t now = 1'800'000'000'000;
  const std::string future =
      pe_.update(fmt::format(R"(table: "users" key: "k" event_time: {} fields {{ clicks: 1 }})", now + 3'600'000));
  DecodeResult r = proto->decode(future, batch_, now);
  EXPECT_EQ(r.reason, RejectReason::kEventTimeInFuture) << r.detail;
  r = proto->decode(pe_.update(R"(table: "users" key: "k" event_time: 1796515640 fields { clicks: 1 })"), batch_, now);
  EXPECT_EQ(r.reason, RejectReason::kEventTimeTooOld) << r.detail;
}

TEST_F(FormatTest, ProtobufWireProblems) {
  const std::string good = pe_.update(kFullText);
  // Truncated anywhere: refused, never read past the end.
  for (size_t cut = 1; cut < good.size(); ++cut) {
    const DecodeResult r = proto_->decode(good.substr(0, cut), batch_, 5000);
    EXPECT_FALSE(r.ok) << cut;
    EXPECT_TRUE(batch_.empty());
  }
  expect_reject(*proto_, good.substr(0, good.size() - 3), RejectReason::kBadProtobuf);
  // A length beyond the body.
  expect_reject(*proto_,
                std::string("\x12\x7f"
                            "abc",
                            5),
                RejectReason::kBadProtobuf);
  // Field number 0, a group, a varint of 11 bytes.
  expect_reject(*proto_, std::string("\x02\x00", 2), RejectReason::kBadProtobuf);
  expect_reject(*proto_, std::string("\x0b", 1), RejectReason::kBadProtobuf);
  expect_reject(*proto_, "\x18" + std::string(10, '\xff') + "\x01", RejectReason::kBadProtobuf);
  // `key` sent as a varint: the producer's .proto differs.
  expect_reject(*proto_, std::string("\x10\x05", 2), RejectReason::kWrongType);
  // A member twice.
  expect_reject(*proto_, good + pe_.update(R"(key: "x")"), RejectReason::kDuplicateMember);
  // A member of a newer .proto (number 99) is skipped.
  std::string newer = good;
  newer += std::string("\x98\x06\x01", 3);  // field 99, varint 1
  EXPECT_EQ(decoded(*proto_, newer), decoded(*proto_, good));
  // A packed float list whose length is not a multiple of 4.
  const std::string odd =
      pe_.update(R"(table: "users" key: "k" event_time: 1)") + std::string("\x32\x03\x32\x01\x00", 5);
  expect_reject(*proto_, odd, RejectReason::kBadProtobuf);
}

TEST_F(FormatTest, AvroWireProblems) {
  const std::string good = full_avro().encode();
  for (size_t cut = 0; cut < good.size(); ++cut) {
    const DecodeResult r = avro_->decode(good.substr(0, cut), batch_, 5000);
    EXPECT_FALSE(r.ok) << cut;
  }
  expect_reject(*avro_, good + "x", RejectReason::kBadAvro);  // bytes after the datum
  // A union branch beyond ["null", T].
  ft::AvroWriter w;
  w.str("users").str("k").lng(1).lng(2);
  expect_reject(*avro_, w.out, RejectReason::kBadAvro);
  // A string length beyond the body, and a negative one.
  expect_reject(*avro_, ft::AvroWriter{}.lng(1000).out + "users", RejectReason::kBadAvro);
  expect_reject(*avro_, ft::AvroWriter{}.lng(-3).out, RejectReason::kBadAvro);
  // A boolean byte other than 0 or 1.
  ft::AvroUpdate u;
  const bool yes = true;
  u.premium = &yes;
  std::string b = u.encode();
  const size_t at = b.size() - 1 - 1 - 1 - 1 - 1;  // premium's byte: then country, embedding, amount, price nulls
  ASSERT_EQ(b[at], 1);
  b[at] = 2;
  expect_reject(*avro_, b, RejectReason::kBadAvro);
  // A forged block count in a batch cannot spin: bounded by the bytes left.
  expect_reject(*avro_batch_, ft::AvroWriter{}.lng(int64_t{1} << 60).out, RejectReason::kBadAvro);
}

TEST_F(FormatTest, ConfluentHeader) {
  FormatConfig f = ft::avro(kDir);
  f.confluent_schema_id = 0x01020304;
  auto d = make_message_decoder(ft::schema(), ft::options(), f);
  const std::string datum = full_avro().encode();
  EXPECT_EQ(decoded(*d, std::string("\0\x01\x02\x03\x04", 5) + datum), decoded(*json_, kFullJson));
  const DecodeResult r =
      expect_reject(*d, std::string("\0\x01\x02\x03\x05", 5) + datum, RejectReason::kUnknownSchemaId);
  EXPECT_NE(r.detail.find("16909061"), std::string::npos) << r.detail;
  expect_reject(*d, std::string("\x01\x01\x02\x03\x04", 5) + datum, RejectReason::kBadAvro);
  expect_reject(*d, std::string("\0\x01", 2), RejectReason::kBadAvro);
  expect_reject(*d, datum, RejectReason::kBadAvro);  // no header at all
}

TEST_F(FormatTest, FixedTableAndRenamedMembers) {
  const std::string proto = tmp_file("renamed.proto", R"(syntax = "proto3";
package r;
message Price { optional double price = 1; }
message Event { string item_id = 1; uint64 ts = 2; Price data = 3; string unused = 4; }
)");
  FormatConfig f;
  f.type = MessageFormat::kProtobuf;
  f.schema_file = proto;
  f.message = "r.Event";
  f.table = "items";
  f.members.key = "item_id";
  f.members.event_time = "ts";
  f.members.fields = "data";
  f.path = "rabbitmq.format";
  auto d = make_message_decoder(ft::schema(), ft::options(), f);
  // Hand-encoded: item_id "i1", ts 7, data { price: 2.0 }, unused "x".
  std::string body("\x0a\x02i1\x10\x07\x1a\x09\x09\x00\x00\x00\x00\x00\x00\x00\x40\x22\x01x", 20);
  EXPECT_EQ(decoded(*d, body), "t1 op0 i1 @7 id= event_id=0: 0=2\n");
}

// Aggregate sources and distinct_count hashes come out as from JSON: a
// source folding a field's value, raw members only aggregates read, an
// int64 above 2^53 hashed exactly, a member both a sum and a distinct_count
// read.
TEST(FormatAggregateTest, SourcesAsJson) {
  layout::Schema s;
  layout::TableSpec t = decoder_test::distinct_table();
  const auto agg = decoder_test::aggregate;
  using layout::AggregateFn;
  t.aggregates = {agg("countries", "country", AggregateFn::kDistinctCount),
                  agg("ns", "n", AggregateFn::kDistinctCount),
                  agg("bands", "band", AggregateFn::kDistinctCount),
                  agg("devices", "device", AggregateFn::kDistinctCount),
                  agg("merchants", "merchant", AggregateFn::kDistinctCount),
                  agg("spend", "merchant", AggregateFn::kSum),
                  agg("events", "", AggregateFn::kCount)};
  s.tables.push_back(t);
  const std::vector<TableDecodeOptions> o = decoder_test::distinct_options();
  FormatConfig pf;
  pf.type = MessageFormat::kProtobuf;
  pf.path = "rabbitmq.format";
  pf.message = "a.U";
  pf.table = "d";
  pf.schema_file = tmp_file("agg.proto", R"(syntax = "proto3"; package a;
message F { optional string country = 1; optional int64 n = 2; optional double amount = 3; optional string device = 4;
            optional sint64 merchant = 5; }
message U { string key = 1; int64 event_time = 2; F fields = 3; })");
  FormatConfig af;
  af.type = MessageFormat::kAvro;
  af.path = "rabbitmq.format";
  af.table = "d";
  af.schema_file = tmp_file("agg.avsc", R"({"type":"record","name":"U","fields":[{"name":"key","type":"string"},
    {"name":"event_time","type":"long"},{"name":"fields","type":{"type":"record","name":"F","fields":[
    {"name":"country","type":["null","string"]},{"name":"n","type":["null","long"]},
    {"name":"amount","type":["null","double"]},{"name":"device","type":["null","string"]},
    {"name":"merchant","type":["null","long"]}]}}]})");
  auto json = make_message_decoder(s, o, FormatConfig{});
  auto proto = make_message_decoder(s, o, pf);
  auto avro = make_message_decoder(s, o, af);
  DecodedBatch batch;
  auto run = [&](MessageDecoder& d, const std::string& body) {
    const DecodeResult r = d.decode(body, batch, 5000);
    EXPECT_TRUE(r.ok) << r.detail;
    return dump(batch);
  };
  const std::string want =
      run(*json, R"({"table":"d","key":"k","event_time":1000,"fields":{"country":"DE","n":9007199254740993,)"
                 R"("amount":50,"device":"phone-1","merchant":12}})");
  // key "k", event_time 1000, fields {country "DE", n 2^53+1, amount 50.0, device "phone-1", merchant 12 (zigzag 24)}
  std::string fields(
      "\x0a\x02"
      "DE"
      "\x10\x81\x80\x80\x80\x80\x80\x80\x10"
      "\x19",
      14);
  const double fifty = 50;
  fields.append(reinterpret_cast<const char*>(&fifty), 8);
  fields += std::string(
      "\x22\x07"
      "phone-1"
      "\x28\x18",
      11);
  const std::string body = std::string("\x0a\x01k\x10\xe8\x07\x1a", 7) + static_cast<char>(fields.size()) + fields;
  EXPECT_EQ(run(*proto, body), want);
  ft::AvroWriter w;
  w.str("k")
      .lng(1000)
      .some()
      .str("DE")
      .some()
      .lng(9007199254740993)
      .some()
      .dbl(50)
      .some()
      .str("phone-1")
      .some()
      .lng(12);
  EXPECT_EQ(run(*avro, w.out), want);
  EXPECT_NE(want.find("/" + std::to_string(distinct_hash_int64(9007199254740993))), std::string::npos) << want;
}

// Each configuration error names the key path and what to change.
void expect_config_error(const FormatConfig& f, const std::string& needle) {
  try {
    make_message_decoder(ft::schema(), ft::options(), f);
    ADD_FAILURE() << "no error; wanted " << needle;
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind("rabbitmq.format", 0), 0u) << e.what();
  }
}

TEST(FormatConfigTest, ProtobufErrorsAtStart) {
  expect_config_error(ft::protobuf(kDir, "larder.test.Nope"), "no message type \"larder.test.Nope\"");
  expect_config_error(ft::protobuf(kDir, "larder.test.Fields"), "message larder.test.Fields has no member");
  FormatConfig broken = ft::protobuf(kDir);
  broken.schema_file = tmp_file("broken.proto", "syntax = \"proto3\"; message X { int64 a = ; }");
  expect_config_error(broken, "cannot parse");
  auto with = [&](const std::string& name, const std::string& fields) {
    FormatConfig f = ft::protobuf(kDir, "t.Update");
    f.schema_file = tmp_file(name, "syntax = \"proto3\"; package t; message Fields { " + fields +
                                       " } message Update { string table = 1; string key = 2; int64 event_time = "
                                       "3; Fields fields = 4; }");
    return f;
  };
  const std::string all =
      "optional int64 clicks = 1; optional double ctr = 2; optional float score = 3; optional bool premium = 4; "
      "optional string country = 5; repeated float embedding = 6; optional double amount = 7; ";
  EXPECT_NO_THROW(
      make_message_decoder(ft::schema(), ft::options(), with("ok.proto", all + "optional double price = 8;")));
  // A field of a table missing from the .proto.
  expect_config_error(with("missing.proto", all),
                      "table \"items\" reads \"price\", but t.Fields has no member \"price\"");
  // A type that cannot feed the field.
  expect_config_error(with("type.proto", all + "optional string price = 8;"), "member \"price\" of t.Fields is string");
  expect_config_error(with("int.proto",
                           "optional double clicks = 1; optional double ctr = 2; optional float score = 3; "
                           "optional bool premium = 4; optional string country = 5; repeated float "
                           "embedding = 6; optional double amount = 7; optional double price = 8;"),
                      "reads it as an integer");
  // No presence: a zero would never be sent.
  expect_config_error(with("presence.proto", all + "double price = 8;"), "has no presence");
  // A member no table reads, and one the sidecar computes.
  expect_config_error(with("extra.proto", all + "optional double price = 8; optional double color = 9;"),
                      "member \"color\" of t.Fields is no field or input of any table");
  expect_config_error(with("computed.proto", all + "optional double price = 8; optional double amount_log = 9;"),
                      "is computed from \"amount\"");
  // A table named both in the config and by the message.
  FormatConfig both = ft::protobuf(kDir);
  both.table = "users";
  expect_config_error(both, "names its table");
}

TEST(FormatConfigTest, AvroErrorsAtStart) {
  FormatConfig f = ft::avro(kDir);
  f.schema_file = tmp_file("bad.avsc", "{\"type\": \"record\", \"name\": \"X\"");
  expect_config_error(f, "is not an Avro schema");
  f.schema_file = tmp_file("str.avsc", "\"string\"");
  expect_config_error(f, "expected a record");
  f.schema_file = tmp_file("nokey.avsc", R"({"type":"record","name":"U","fields":[{"name":"table","type":"string"},
    {"name":"event_time","type":"long"},{"name":"fields","type":{"type":"record","name":"F","fields":[]}}]})");
  expect_config_error(f, "has no member \"key\"");
  f.schema_file = tmp_file("missing.avsc", R"({"type":"record","name":"U","fields":[{"name":"table","type":"string"},
    {"name":"key","type":"string"},{"name":"event_time","type":"long"},
    {"name":"fields","type":{"type":"record","name":"F","fields":[{"name":"price","type":"double"}]}}]})");
  expect_config_error(f, "table \"users\" reads \"clicks\"");
  f.schema_file = tmp_file("keytype.avsc", R"({"type":"record","name":"U","fields":[{"name":"table","type":"string"},
    {"name":"key","type":"long"},{"name":"event_time","type":"long"},
    {"name":"fields","type":{"type":"record","name":"F","fields":[]}}]})");
  expect_config_error(f, "cannot carry `key`");
}

TEST(FormatConfigTest, FormatBlockInTheYaml) {
  const std::string base = R"(
segment: {name: fmt}
tables: [{name: items, capacity: 16, fields: [{name: price, type: float64}]}]
rabbitmq:
  url: amqp://guest@127.0.0.1:5672/
  password_env: HOME
  queue: {name: q}
)";
  Config c = parse_config(base);
  EXPECT_EQ(c.rabbitmq.format.type, MessageFormat::kJson);
  c = parse_config(base + "  format: {type: avro, schema: " + kDir + "/update.avsc, confluent: {schema_id: 7}}\n");
  EXPECT_EQ(c.rabbitmq.format.type, MessageFormat::kAvro);
  EXPECT_EQ(c.rabbitmq.format.confluent_schema_id.value_or(0), 7u);
  auto error = [&](const std::string& format) {
    try {
      parse_config(base + "  format: " + format + "\n");
      return std::string("no error");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
  };
  EXPECT_NE(error("{type: thrift}").find("rabbitmq.format.type: unknown format \"thrift\""), std::string::npos);
  EXPECT_NE(error("{type: protobuf, message: a.B}").find("rabbitmq.format.proto: required"), std::string::npos);
  EXPECT_NE(error("{type: protobuf, proto: /nonexistent.proto, message: a.B}").find("cannot read"), std::string::npos);
  EXPECT_NE(error("{type: avro, schema: " + kDir + "/update.avsc, message: a.B}").find("only for type: protobuf"),
            std::string::npos);
  EXPECT_NE(error("{type: json, members: {key: k}}").find("only for type: protobuf or avro"), std::string::npos);
}

// `larder-sidecar --check-config` checks the schema file against the tables
// too: a field missing from the .proto stops it with exit code 2, and a good
// one prints the format.
TEST(FormatConfigTest, CheckConfigChecksTheSchemaFile) {
  auto yaml = [](const std::string& proto) {
    return "segment: {name: fmtcheck}\n"
           "tables: [{name: items, capacity: 16, fields: [{name: price, type: float64}, {name: stock, type: int64}]}]\n"
           "rabbitmq:\n  url: amqp://guest@127.0.0.1:5672/\n  password_env: LARDER_FORMAT_TEST_UNSET\n"
           "  queue: {name: q}\n"
           "  format: {type: protobuf, proto: " +
           proto + ", message: s.Item, table: items}\n";
  };
  const std::string missing = tmp_file("check_missing.proto", R"(syntax = "proto3"; package s;
message F { optional double price = 1; }
message Item { string key = 1; int64 event_time = 2; F fields = 3; })");
  const std::string path = tmp_file("check.yaml", yaml(missing));
  const std::string cmd = std::string(LARDER_SIDECAR_BINARY) + " --check-config -c " + path;
  testing::CommandRun run = testing::run_command(cmd);
  EXPECT_EQ(run.code, 2) << run.out;
  EXPECT_NE(run.out.find("invalid config: rabbitmq.format: table \"items\" reads \"stock\", but s.F has no member "
                         "\"stock\""),
            std::string::npos)
      << run.out;
  const std::string good = tmp_file("check_good.proto", R"(syntax = "proto3"; package s;
message F { optional double price = 1; optional int64 stock = 2; }
message Item { string key = 1; int64 event_time = 2; F fields = 3; })");
  std::ofstream(path) << yaml(good);
  run = testing::run_command(cmd);
  EXPECT_EQ(run.code, 0) << run.out;
  EXPECT_NE(run.out.find("format (rabbitmq): protobuf s.Item\n"), std::string::npos) << run.out;
}

}  // namespace
}  // namespace larder::sidecar
