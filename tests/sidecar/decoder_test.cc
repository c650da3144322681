// Unit tests of the message format v1 decoder: every reject reason, batches,
// each field type and its limits, and the writer-side reasons through
// apply_batch(). No broker.
#include "decoder.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <set>
#include <string>

#include "larder/layout/writer.h"
#include "writer_thread.h"

namespace larder::sidecar {
namespace {

using layout::FieldType;

layout::Schema test_schema() {
  layout::Schema s;
  layout::TableSpec t;
  t.name = "t";
  t.key_max_len = 8;
  t.capacity = 16;
  t.fields = {{"i", FieldType::kInt64, 1}, {"d", FieldType::kFloat64, 1}, {"f", FieldType::kFloat32, 1},
              {"b", FieldType::kBool, 1},  {"s", FieldType::kString, 4},  {"v", FieldType::kFloat32Vector, 3}};
  s.tables.push_back(t);
  layout::TableSpec open;
  open.name = "open";
  open.capacity = 16;
  open.fields = {{"x", FieldType::kInt64, 1}};
  s.tables.push_back(open);
  return s;
}

class DecoderTest : public ::testing::Test {
 protected:
  DecoderTest() : decoder_(test_schema(), {{false}, {true}}) {}

  DecodeResult decode(const std::string& body) { return decoder_.decode(body, batch_); }

  void expect_reject(const std::string& body, RejectReason reason) {
    const DecodeResult r = decode(body);
    EXPECT_FALSE(r.ok) << body;
    EXPECT_EQ(reject_reason_name(r.reason), std::string(reject_reason_name(reason))) << body << " -> " << r.detail;
    EXPECT_TRUE(batch_.empty()) << "a rejected message leaves no updates";
    EXPECT_FALSE(r.detail.empty());
    seen_.insert(reason);
  }

  static std::string upd(const std::string& fields, const std::string& extra = "") {
    return R"({"table":"t","key":"k1","event_time":1000,"fields":{)" + fields + "}" + extra + "}";
  }

  Decoder decoder_;
  DecodedBatch batch_;
  static std::set<RejectReason> seen_;
};
std::set<RejectReason> DecoderTest::seen_;

TEST_F(DecoderTest, DecodesOneUpdateWithEveryType) {
  const DecodeResult r =
      decode(upd(R"("i":-42,"d":2.5,"f":1.25,"b":true,"s":"abcd","v":[1,2.5,-3])", R"(,"id":"m-1")"));
  ASSERT_TRUE(r.ok) << r.detail;
  ASSERT_EQ(batch_.size(), 1u);
  const DecodedUpdate& u = batch_.update(0);
  EXPECT_EQ(u.table, 0u);
  EXPECT_EQ(u.op, UpdateOp::kUpsert);
  EXPECT_EQ(u.event_time_ms, 1000);
  EXPECT_EQ(batch_.key(u), "k1");
  EXPECT_EQ(batch_.first_id(), "m-1");
  auto values = batch_.values(u);
  ASSERT_EQ(values.size(), 6u);
  EXPECT_EQ(values[0].field, 0u);
  EXPECT_EQ(values[0].i64, -42);
  EXPECT_EQ(values[1].f64, 2.5);
  EXPECT_EQ(values[2].type, FieldType::kFloat32);
  EXPECT_FLOAT_EQ(static_cast<float>(values[2].f64), 1.25f);
  EXPECT_EQ(values[3].i64, 1);
  EXPECT_EQ(std::string(static_cast<const char*>(values[4].data), values[4].length), "abcd");
  ASSERT_EQ(values[5].length, 3u);
  const float* v = static_cast<const float*>(values[5].data);
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[1], 2.5f);
  EXPECT_EQ(v[2], -3.0f);
}

TEST_F(DecoderTest, FieldsBeforeTableAndEscapedNames) {
  const DecodeResult r = decode(R"({"fields":{"\u0069":7,"s":"a\"b"},"event_time":5,"key":"k\u0032","table":"t"})");
  ASSERT_TRUE(r.ok) << r.detail;
  const DecodedUpdate& u = batch_.update(0);
  EXPECT_EQ(batch_.key(u), "k2");
  auto values = batch_.values(u);
  ASSERT_EQ(values.size(), 2u);
  EXPECT_EQ(values[0].i64, 7);
  EXPECT_EQ(std::string(static_cast<const char*>(values[1].data), values[1].length), "a\"b");
}

TEST_F(DecoderTest, FieldsBeforeTableInsideABatch) {
  const std::string late = R"({"fields":{"i":1},"key":"a","table":"t","event_time":5,"id":"x"})";
  ASSERT_TRUE(decode("[" + late + "," + upd(R"("i":2)") + "," + late + "]").ok);
  ASSERT_EQ(batch_.size(), 3u);
  EXPECT_EQ(batch_.values(batch_.update(1))[0].i64, 2);
  EXPECT_EQ(batch_.values(batch_.update(2))[0].i64, 1);
  expect_reject("[" + late + "] x", RejectReason::kBadJson);
  expect_reject(late + "{}", RejectReason::kBadJson);
}

TEST_F(DecoderTest, BatchKeepsOrderAndOwnsStorage) {
  std::string body = "[";
  for (int i = 0; i < 100; ++i) {
    if (i) body += ",";
    body += R"({"table":"t","key":"k)" + std::to_string(i) + R"(","event_time":)" + std::to_string(i) +
            R"(,"fields":{"s":")" + std::to_string(i % 10) + R"(","v":[)" + std::to_string(i) + ",0,0]}}";
  }
  body += "]";
  ASSERT_TRUE(decode(body).ok);
  ASSERT_EQ(batch_.size(), 100u);
  DecodedBatch moved = std::move(batch_);  // pointers survive a move
  for (size_t i = 0; i < 100; ++i) {
    const DecodedUpdate& u = moved.update(i);
    EXPECT_EQ(moved.key(u), "k" + std::to_string(i));
    EXPECT_EQ(u.event_time_ms, static_cast<int64_t>(i));
    auto values = moved.values(u);
    EXPECT_EQ(std::string(static_cast<const char*>(values[0].data), values[0].length), std::to_string(i % 10));
    EXPECT_EQ(static_cast<const float*>(values[1].data)[0], static_cast<float>(i));
  }
}

TEST_F(DecoderTest, DeleteNeedsNoFieldsAndIgnoresThem) {
  ASSERT_TRUE(decode(R"({"table":"t","key":"k","event_time":9,"op":"delete"})").ok);
  EXPECT_EQ(batch_.update(0).op, UpdateOp::kDelete);
  ASSERT_TRUE(decode(R"({"table":"t","key":"k","event_time":9,"fields":{"i":1},"op":"delete"})").ok);
  EXPECT_EQ(batch_.update(0).values_count, 0u);
  ASSERT_TRUE(decode(R"({"op":"upsert","table":"t","key":"k","event_time":9,"fields":{}})").ok);
}

TEST_F(DecoderTest, UnknownTopLevelMembersAreIgnored) {
  ASSERT_TRUE(decode(upd(R"("i":1)", R"(,"trace":{"a":[1,2]},"v":2)")).ok);
}

TEST_F(DecoderTest, AllowUnknownFieldsIgnoresThem) {
  const DecodeResult r = decode(R"({"table":"open","key":"k","event_time":1,"fields":{"x":1,"y":"z","w":[1]}})");
  ASSERT_TRUE(r.ok) << r.detail;
  EXPECT_EQ(batch_.update(0).values_count, 1u);
}

// Found by the fuzzer: On-Demand skips ignored values without validating
// them, so broken JSON inside an ignored member must still be caught.
TEST_F(DecoderTest, MalformedJsonInsideIgnoredMembers) {
  expect_reject(std::string(R"({"table":"open","key":"k","event_time":1,"fields":{"x":1,"u":)") + std::string(3, '\0') +
                    R"({"a":null}]}})",
                RejectReason::kBadJson);
  expect_reject(R"({"table":"open","key":"k","event_time":1,"fields":{"x":1,"u":[1,}]}})", RejectReason::kBadJson);
  expect_reject(upd(R"("i":1)", R"(,"extra":{"a":[}})"), RejectReason::kBadJson);
  ASSERT_TRUE(decode(upd(R"("i":1)", R"(,"extra":{"a":[1,{"b":null}]})")).ok);
}

TEST_F(DecoderTest, Int64Range) {
  ASSERT_TRUE(decode(upd(R"("i":9223372036854775807)")).ok);
  EXPECT_EQ(batch_.values(batch_.update(0))[0].i64, INT64_MAX);
  ASSERT_TRUE(decode(upd(R"("i":-9223372036854775808)")).ok);
  EXPECT_EQ(batch_.values(batch_.update(0))[0].i64, INT64_MIN);
  expect_reject(upd(R"("i":9223372036854775808)"), RejectReason::kOutOfRange);
  expect_reject(upd(R"("i":-9223372036854775809)"), RejectReason::kOutOfRange);
  expect_reject(upd(R"("i":123456789012345678901234567890)"), RejectReason::kOutOfRange);
  expect_reject(upd(R"("i":1.5)"), RejectReason::kWrongType);
  expect_reject(upd(R"("i":1e3)"), RejectReason::kWrongType);
  expect_reject(upd(R"("i":"1")"), RejectReason::kWrongType);
}

TEST_F(DecoderTest, FloatLimits) {
  ASSERT_TRUE(decode(upd(R"("f":3.4028234e38,"d":1.7e308)")).ok);
  expect_reject(upd(R"("f":3.5e38)"), RejectReason::kOutOfRange);
  expect_reject(upd(R"("f":-1e39)"), RejectReason::kOutOfRange);
  expect_reject(upd(R"("d":1e999)"), RejectReason::kNonFinite);
  expect_reject(upd(R"("v":[1,1e400,2])"), RejectReason::kNonFinite);
  expect_reject(upd(R"("d":NaN)"), RejectReason::kBadJson);
  expect_reject(upd(R"("d":true)"), RejectReason::kWrongType);
  expect_reject(upd(R"("b":1)"), RejectReason::kWrongType);
}

TEST_F(DecoderTest, StringsAndVectors) {
  ASSERT_TRUE(decode(upd(R"("s":"")")).ok);
  ASSERT_TRUE(decode(upd(R"("s":"\u00e9\u00e9")")).ok);  // 4 bytes of UTF-8
  expect_reject(upd(R"("s":"abcde")"), RejectReason::kStringTooLong);
  expect_reject(upd(R"("s":"\u00e9\u00e9a")"), RejectReason::kStringTooLong);  // 5 bytes
  expect_reject(upd(R"("s":5)"), RejectReason::kWrongType);
  expect_reject(upd(R"("v":[1,2])"), RejectReason::kVectorLength);
  expect_reject(upd(R"("v":[1,2,3,4])"), RejectReason::kVectorLength);
  expect_reject(upd(R"("v":[])"), RejectReason::kVectorLength);
  expect_reject(upd(R"("v":[1,"2",3])"), RejectReason::kWrongType);
  expect_reject(upd(R"("v":{"a":1})"), RejectReason::kWrongType);
}

TEST_F(DecoderTest, EventTimes) {
  ASSERT_TRUE(decode(R"({"table":"t","key":"k","event_time":"2024-05-01T12:30:00.123Z","fields":{}})").ok);
  EXPECT_EQ(batch_.update(0).event_time_ms, 1714566600123);
  ASSERT_TRUE(decode(R"({"table":"t","key":"k","event_time":"2024-05-01T14:30:00.123+02:00","fields":{}})").ok);
  EXPECT_EQ(batch_.update(0).event_time_ms, 1714566600123);
  ASSERT_TRUE(decode(R"({"table":"t","key":"k","event_time":0,"fields":{}})").ok);
  for (const char* bad : {R"("2024-05-01T12:30:00")", R"("2024-13-01T00:00:00Z")", R"("yesterday")", "-1", "1.5", "1e3",
                          "true", "null", "[1]", "253402300800000"}) {
    expect_reject(std::string(R"({"table":"t","key":"k","fields":{},"event_time":)") + bad + "}",
                  RejectReason::kBadEventTime);
  }
}

TEST_F(DecoderTest, EveryDecoderRejectReason) {
  expect_reject("", RejectReason::kBadJson);
  expect_reject("{", RejectReason::kBadJson);
  expect_reject(R"({"table":"t",})", RejectReason::kBadJson);
  expect_reject(upd(R"("i":1)") + " x", RejectReason::kBadJson);
  expect_reject(upd(R"("i":1)") + upd(R"("i":2)"), RejectReason::kBadJson);
  expect_reject("42", RejectReason::kNotObject);
  expect_reject(R"("text")", RejectReason::kNotObject);
  expect_reject("[" + upd(R"("i":1)") + ",7]", RejectReason::kNotObject);
  expect_reject("[]", RejectReason::kEmptyBatch);
  expect_reject(R"({"key":"k","event_time":1,"fields":{}})", RejectReason::kMissingMember);
  expect_reject(R"({"table":"t","event_time":1,"fields":{}})", RejectReason::kMissingMember);
  expect_reject(R"({"table":"t","key":"k","fields":{}})", RejectReason::kMissingMember);
  expect_reject(R"({"table":"t","key":"k","event_time":1})", RejectReason::kMissingMember);
  expect_reject(R"({"table":7,"key":"k","event_time":1,"fields":{}})", RejectReason::kWrongMemberType);
  expect_reject(R"({"table":"t","key":1,"event_time":1,"fields":{}})", RejectReason::kWrongMemberType);
  expect_reject(R"({"table":"t","key":"k","event_time":1,"fields":[]})", RejectReason::kWrongMemberType);
  expect_reject(upd(R"("i":1)", R"(,"id":5)"), RejectReason::kWrongMemberType);
  expect_reject(R"({"table":"t","table":"t","key":"k","event_time":1,"fields":{}})", RejectReason::kDuplicateMember);
  expect_reject(upd(R"("i":1,"i":2)"), RejectReason::kDuplicateMember);
  expect_reject(R"({"table":"nope","key":"k","event_time":1,"fields":{}})", RejectReason::kUnknownTable);
  expect_reject(upd(R"("nope":1)"), RejectReason::kUnknownField);
  expect_reject(upd(R"("i":"x")"), RejectReason::kWrongType);
  expect_reject(upd(R"("i":1e99999)"), RejectReason::kWrongType);
  expect_reject(upd(R"("f":1e39)"), RejectReason::kOutOfRange);
  expect_reject(upd(R"("d":-1e999)"), RejectReason::kNonFinite);
  expect_reject(R"({"table":"t","key":"","event_time":1,"fields":{}})", RejectReason::kEmptyKey);
  expect_reject(R"({"table":"t","key":"123456789","event_time":1,"fields":{}})", RejectReason::kKeyTooLong);
  expect_reject(upd(R"("s":"12345")"), RejectReason::kStringTooLong);
  expect_reject(upd(R"("v":[1])"), RejectReason::kVectorLength);
  expect_reject(R"({"table":"t","key":"k","event_time":"2024","fields":{}})", RejectReason::kBadEventTime);
  expect_reject(upd(R"("i":1)", R"(,"op":"merge")"), RejectReason::kBadOp);
  expect_reject(upd(R"("i":1)", R"(,"op":1)"), RejectReason::kBadOp);
  // One bad update rejects the whole batch.
  expect_reject("[" + upd(R"("i":1)") + "," + upd(R"("i":"bad")") + "]", RejectReason::kWrongType);

  for (RejectReason r : all_reject_reasons()) {
    if (r == RejectReason::kTableFull || r == RejectReason::kInternal) continue;  // writer-side
    EXPECT_TRUE(seen_.count(r)) << "no test for " << reject_reason_name(r);
  }
}

TEST_F(DecoderTest, GarbageNeverCrashes) {
  std::string body = upd(R"("i":1,"d":2.5,"s":"ab","v":[1,2,3])");
  for (size_t cut = 0; cut < body.size(); ++cut) {
    const DecodeResult r = decode(body.substr(0, cut));
    EXPECT_FALSE(r.ok) << body.substr(0, cut);
  }
  for (size_t i = 0; i < body.size(); ++i) {
    std::string b = body;
    b[i] = '\x01';
    decode(b);  // any outcome but a crash
    b[i] = '"';
    decode(b);
  }
}

TEST(RejectReasonTest, EveryReasonHasAUniqueName) {
  std::set<std::string> names;
  for (RejectReason r : all_reject_reasons()) {
    const std::string name = reject_reason_name(r);
    EXPECT_NE(name, "unknown_reason");
    EXPECT_TRUE(names.insert(name).second) << name;
  }
}

// The writer-side reasons: a full table, through the real Writer.
TEST(ApplyBatchTest, TableFullIsAWriterReject) {
  layout::Schema schema;
  layout::TableSpec t;
  t.name = "t";
  t.capacity = 1;
  t.fields = {{"i", FieldType::kInt64, 1}};
  schema.tables.push_back(t);
  const std::string name = "larder-unit-applybatch-" + std::to_string(::getpid());
  Writer::remove_segment(name);
  {
    auto writer = Writer::open(name, schema);
    Decoder decoder(schema, {});
    DecodedBatch batch;
    RejectReason reason = RejectReason::kBadJson;
    uint64_t stale = 0;
    ASSERT_TRUE(decoder.decode(R"({"table":"t","key":"a","event_time":5,"fields":{"i":1}})", batch).ok);
    EXPECT_EQ(apply_batch(*writer, batch, &reason, &stale), Outcome::kApplied);
    ASSERT_TRUE(decoder.decode(R"({"table":"t","key":"a","event_time":4,"fields":{"i":0}})", batch).ok);
    EXPECT_EQ(apply_batch(*writer, batch, &reason, &stale), Outcome::kApplied);
    EXPECT_EQ(stale, 1u);
    ASSERT_TRUE(decoder.decode(R"([{"table":"t","key":"b","event_time":5,"fields":{"i":1}}])", batch).ok);
    EXPECT_EQ(apply_batch(*writer, batch, &reason, &stale), Outcome::kRejected);
    EXPECT_EQ(reason, RejectReason::kTableFull);
  }
  Writer::remove_segment(name);
}

}  // namespace
}  // namespace larder::sidecar
