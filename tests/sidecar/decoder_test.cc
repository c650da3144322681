// Unit tests of the message format v1 decoder: every reject reason, batches,
// each field type and its limits, and the writer-side reasons through
// apply_batch(). No broker.
#include "decode/decoder.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>

#include "alloc_count.h"
#include "apply/writer_thread.h"
#include "decode/update_builder.h"
#include "decoder_test_support.h"
#include "larder/client.h"
#include "larder/layout/clock.h"
#include "larder/writer/writer.h"

namespace larder::sidecar {
namespace {

using layout::FieldType;

layout::Schema test_schema() {
  layout::Schema s;
  layout::TableSpec t;
  t.name = "t";
  t.key_max_len = 8;
  t.capacity = 16;
  t.fields = {{"i", FieldType::kInt64, 1},   {"d", FieldType::kFloat64, 1}, {"f", FieldType::kFloat32, 1},
              {"b", FieldType::kBool, 1},    {"s", FieldType::kString, 4},  {"v", FieldType::kFloat32Vector, 3},
              {"lg", FieldType::kFloat64, 1}};
  s.tables.push_back(t);
  layout::TableSpec open;
  open.name = "open";
  open.capacity = 16;
  open.fields = {{"x", FieldType::kInt64, 1}};
  s.tables.push_back(open);
  layout::TableSpec bounded;  // event-time bounds on (the Config defaults)
  bounded.name = "bounded";
  bounded.capacity = 16;
  bounded.fields = {{"x", FieldType::kInt64, 1}};
  s.tables.push_back(bounded);
  return s;
}

// Table "t": field "lg" is log1p of the member "x".
std::vector<TableDecodeOptions> test_options() {
  std::vector<TableDecodeOptions> o{{false}, {true}, {false}};
  o[2].event_time = {kDefaultMaxFutureSkewMs, kDefaultMinEventTimeMs};
  o[0].fields.resize(7);
  o[0].fields[6].from = "x";
  o[0].fields[6].transform = TransformChain::parse_yaml("[log1p]");
  return o;
}

class DecoderTest : public ::testing::Test {
 protected:
  DecoderTest() : decoder_(test_schema(), test_options()) {}

  DecodeResult decode(const std::string& body) { return decoder_.decode(body, batch_); }

  void expect_reject(const std::string& body, RejectReason reason) {
    decoder_test::expect_refused(decode(body), batch_, reason, body);
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

// A fixed clock for the bounds: 2026-01-01T00:00:00Z.
constexpr int64_t kNowMs = 1767225600000;

std::string bounded_update(int64_t event_time_ms, const std::string& extra = "") {
  return fmt::format(R"({{"table":"bounded","key":"k","event_time":{},"fields":{{"x":1}}{}}})", event_time_ms, extra);
}

TEST_F(DecoderTest, EventTimeBounds) {
  // The limits themselves pass.
  ASSERT_TRUE(decoder_.decode(bounded_update(kNowMs + kDefaultMaxFutureSkewMs), batch_, kNowMs).ok);
  ASSERT_TRUE(decoder_.decode(bounded_update(kDefaultMinEventTimeMs), batch_, kNowMs).ok);
  // One ms beyond them does not, and the detail names the times.
  DecodeResult r = decoder_.decode(bounded_update(kNowMs + kDefaultMaxFutureSkewMs + 1), batch_, kNowMs);
  EXPECT_EQ(r.reason, RejectReason::kEventTimeInFuture) << r.detail;
  EXPECT_NE(r.detail.find("2026-01-01T00:05:00.001Z"), std::string::npos) << r.detail;
  r = decoder_.decode(bounded_update(kDefaultMinEventTimeMs - 1), batch_, kNowMs);
  EXPECT_EQ(r.reason, RejectReason::kEventTimeTooOld) << r.detail;
  // Seconds where ms are meant, and RFC 3339 times far ahead.
  r = decoder_.decode(bounded_update(1796515640), batch_, kNowMs);
  EXPECT_EQ(r.reason, RejectReason::kEventTimeTooOld) << r.detail;
  EXPECT_NE(r.detail.find("1970-01-21T"), std::string::npos) << r.detail;
  r = decoder_.decode(R"({"table":"bounded","key":"k","event_time":"9999-12-31T23:59:59.999Z","fields":{"x":1}})",
                      batch_, kNowMs);
  EXPECT_EQ(r.reason, RejectReason::kEventTimeInFuture) << r.detail;
  // A bad time anywhere rejects the whole batch: nothing of it is applied.
  r = decoder_.decode("[" + bounded_update(kNowMs) + "," + bounded_update(kNowMs + 3'600'000) + "]", batch_, kNowMs);
  EXPECT_EQ(r.reason, RejectReason::kEventTimeInFuture);
  EXPECT_NE(r.detail.find("update 1"), std::string::npos) << r.detail;
  EXPECT_TRUE(batch_.empty());
  // Deletes are bounded too, and another problem of the update comes first.
  r = decoder_.decode(fmt::format(R"({{"table":"bounded","key":"k","event_time":{},"op":"delete"}})", 5), batch_,
                      kNowMs);
  EXPECT_EQ(r.reason, RejectReason::kEventTimeTooOld);
  r = decoder_.decode(fmt::format(R"({{"table":"bounded","key":"k","event_time":5,"fields":{{"nope":1}}}})"), batch_,
                      kNowMs);
  EXPECT_EQ(r.reason, RejectReason::kUnknownField);
  // A table without bounds takes any valid time.
  ASSERT_TRUE(decoder_.decode(upd(R"("i":1)"), batch_, kNowMs).ok);
  ASSERT_TRUE(
      decoder_.decode(R"({"table":"t","key":"k","event_time":253402300799999,"fields":{}})", batch_, kNowMs).ok);
}

TEST_F(DecoderTest, UnpinCarriesTheBoundAndNeedsIt) {
  ASSERT_TRUE(decoder_
                  .decode(fmt::format(R"({{"table":"bounded","key":"k","event_time":{},"op":"unpin",)"
                                      R"("fields":{{"x":1}}}})",
                                      kNowMs),
                          batch_, kNowMs)
                  .ok);
  ASSERT_EQ(batch_.size(), 1u);
  EXPECT_EQ(batch_.update(0).op, UpdateOp::kUnpin);
  EXPECT_EQ(batch_.update(0).pinned_after_ms, kNowMs + kDefaultMaxFutureSkewMs);
  EXPECT_EQ(batch_.update(0).values_count, 0u);
  // The unpin's own time is bounded like any other.
  EXPECT_EQ(
      decoder_
          .decode(fmt::format(R"({{"table":"bounded","key":"k","event_time":{},"op":"unpin"}})", kNowMs + 3'600'000),
                  batch_, kNowMs)
          .reason,
      RejectReason::kEventTimeInFuture);
  // Without max_future_skew nothing counts as pinned.
  const DecodeResult r = decoder_.decode(R"({"table":"t","key":"k","event_time":5,"op":"unpin"})", batch_, kNowMs);
  EXPECT_EQ(r.reason, RejectReason::kBadOp) << r.detail;
}

TEST_F(DecoderTest, BoundsCheckNeverAllocates) {
  const std::string body = "[" + bounded_update(kNowMs - 10) + "," + bounded_update(kNowMs + 10) + "]";
  ASSERT_TRUE(decoder_.decode(body, batch_).ok);  // warms the buffers; reads the clock
  const uint64_t before = test::allocations();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(decoder_.decode(body, batch_, kNowMs).ok);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(decoder_.decode(body, batch_).ok);
  EXPECT_EQ(test::allocations(), before);
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
  expect_reject(upd(R"("x":-2)"), RejectReason::kBadValue);
  expect_reject(bounded_update(253402300799999), RejectReason::kEventTimeInFuture);
  expect_reject(bounded_update(1796515640), RejectReason::kEventTimeTooOld);
  // One bad update rejects the whole batch.
  expect_reject("[" + upd(R"("i":1)") + "," + upd(R"("i":"bad")") + "]", RejectReason::kWrongType);

  for (RejectReason r : all_reject_reasons()) {
    // writer-side, or the consumer's (a stream delivery without its offset),
    // or the binary formats' (tests/sidecar/format_decoder_test.cc)
    if (r == RejectReason::kTableFull || r == RejectReason::kArenaFull || r == RejectReason::kInternal ||
        r == RejectReason::kNoStreamOffset || r == RejectReason::kBadProtobuf || r == RejectReason::kBadAvro ||
        r == RejectReason::kUnknownSchemaId) {
      continue;
    }
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

// An unpin through the writer: it clears a row whose event time is beyond
// the bound (whatever that time), and changes nothing on a healthy row.
TEST(ApplyBatchTest, UnpinClearsOnlyAPinnedRow) {
  layout::Schema schema;
  layout::TableSpec t;
  t.name = "t";
  t.capacity = 8;
  t.fields = {{"i", FieldType::kInt64, 1}};
  schema.tables.push_back(t);
  std::vector<TableDecodeOptions> options(1);
  options[0].event_time = {kDefaultMaxFutureSkewMs, 0};
  const std::string name = "larder-unit-unpin-" + std::to_string(::getpid());
  Writer::remove_segment(name);
  {
    auto writer = Writer::open(name, schema);
    Decoder unbounded(schema, {});  // as before the bound existed
    Decoder bounded(schema, options);
    DecodedBatch batch;
    RejectReason reason = RejectReason::kBadJson;
    uint64_t stale = 0;
    const int64_t now = 1767225600000;  // the decoder's clock below
    auto apply = [&](Decoder& d, const std::string& body) {
      const DecodeResult r = d.decode(body, batch, now);
      EXPECT_TRUE(r.ok) << body << " -> " << r.detail;
      return apply_batch(*writer, batch, &reason, &stale);
    };
    apply(unbounded, R"({"table":"t","key":"pinned","event_time":253402300799999,"fields":{"i":1}})");
    apply(unbounded, fmt::format(R"({{"table":"t","key":"healthy","event_time":{},"fields":{{"i":2}}}})", now));
    apply(bounded, fmt::format(R"({{"table":"t","key":"pinned","event_time":{},"fields":{{"i":3}}}})", now));
    EXPECT_EQ(stale, 1u) << "the pinned row ignores a real update";

    apply(bounded, fmt::format(R"({{"table":"t","key":"pinned","event_time":{},"op":"unpin"}})", now));
    apply(bounded, fmt::format(R"({{"table":"t","key":"healthy","event_time":{},"op":"unpin"}})", now + 1));
    EXPECT_EQ(stale, 2u) << "an unpin of a healthy row is ignored";
    apply(bounded, fmt::format(R"({{"table":"t","key":"pinned","event_time":{},"fields":{{"i":4}}}})", now + 1));
    EXPECT_EQ(stale, 2u);

    larder::Segment seg = larder::Segment::open(name);
    const larder::Table table = seg.table("t");
    const larder::Field i = table.field("i");
    larder::Row row = table.make_row();
    ASSERT_EQ(table.get("pinned", row).status, larder::Status::kOk);
    EXPECT_EQ(row.i64(i), 4);
    EXPECT_EQ(row.event_time_ms(), now + 1);
    ASSERT_EQ(table.get("healthy", row).status, larder::Status::kOk);
    EXPECT_EQ(row.i64(i), 2);
    EXPECT_EQ(writer->stats(0).live_keys, 2u);
  }
  Writer::remove_segment(name);
}

// `internal`: the writer refuses an update the decoder accepted. The two
// share one schema in the daemon, so only a bug gets here; the test makes the
// disagreement on purpose (the decoder allows 16-byte strings, the segment 4)
// and checks that the message is rejected as internal, not applied or lost.
TEST(ApplyBatchTest, AnUpdateTheWriterRefusesIsAnInternalReject) {
  layout::Schema segment_schema;
  layout::TableSpec t;
  t.name = "t";
  t.capacity = 8;
  t.fields = {{"s", FieldType::kString, 4}};
  segment_schema.tables.push_back(t);
  layout::Schema decoder_schema = segment_schema;
  decoder_schema.tables[0].fields[0].count = 16;
  const std::string name = "larder-unit-internal-" + std::to_string(::getpid());
  Writer::remove_segment(name);
  {
    auto writer = Writer::open(name, segment_schema);
    Decoder decoder(decoder_schema, {});
    DecodedBatch batch;
    RejectReason reason = RejectReason::kBadJson;
    uint64_t stale = 0;
    ASSERT_TRUE(decoder.decode(R"({"table":"t","key":"a","event_time":5,"fields":{"s":"abcd"}})", batch).ok);
    EXPECT_EQ(apply_batch(*writer, batch, &reason, &stale), Outcome::kApplied);
    ASSERT_TRUE(decoder.decode(R"({"table":"t","key":"b","event_time":5,"fields":{"s":"abcdefgh"}})", batch).ok);
    EXPECT_EQ(apply_batch(*writer, batch, &reason, &stale), Outcome::kRejected);
    EXPECT_EQ(reason, RejectReason::kInternal);
    EXPECT_STREQ(reject_reason_name(reason), "internal");
    EXPECT_EQ(writer->stats(0).live_keys, 1u);  // "b" was not written
  }
  Writer::remove_segment(name);
}

// ---------------------------------------------------------------------------
// Transforms and aggregate sources: one member feeding several targets.

TransformChain steps(const char* yaml) { return TransformChain::parse_yaml(yaml); }

layout::Schema aggregate_schema() {
  layout::Schema s;
  layout::TableSpec a;
  a.name = "a";
  a.capacity = 16;
  a.fields = {{"country", FieldType::kString, 2},     {"country_idx", FieldType::kInt64, 1},
              {"amount_log", FieldType::kFloat64, 1}, {"score", FieldType::kFloat32, 1},
              {"flag", FieldType::kBool, 1},          {"bucket", FieldType::kFloat32, 1},
              {"emb", FieldType::kFloat32Vector, 2},  {"emb2", FieldType::kFloat32Vector, 2},
              {"name4", FieldType::kString, 4}};
  const auto agg = decoder_test::aggregate;
  using layout::AggregateFn;
  a.aggregates = {agg("clicks", "", AggregateFn::kCount),
                  agg("spend", "amount", AggregateFn::kSum),
                  agg("last_log", "amount_log", AggregateFn::kLast),
                  agg("flags", "flag", AggregateFn::kSum),
                  agg("score_max", "score", AggregateFn::kMax),
                  agg("idx_sum", "country_idx", AggregateFn::kSum),
                  agg("clicked_sum", "clicked", AggregateFn::kSum),
                  agg("spend_mean", "amount", AggregateFn::kMean)};
  s.tables.push_back(a);
  layout::TableSpec b;  // transforms that refuse values
  b.name = "b";
  b.capacity = 16;
  b.fields = {{"big", FieldType::kFloat32, 1}, {"tiny", FieldType::kFloat64, 1}, {"r", FieldType::kFloat64, 1}};
  s.tables.push_back(b);
  return s;
}

std::vector<TableDecodeOptions> aggregate_options() {
  std::vector<TableDecodeOptions> o(2);
  o[0].fields.resize(9);
  o[0].fields[1] = {"country", steps("[{vocabulary: {values: [US, DE, FR]}}]")};
  o[0].fields[2] = {"amount", steps("[{clip: {min: 0, max: 10000}}, log1p]")};
  o[0].fields[5] = {"amount", steps("[{bucketize: {boundaries: [10, 100]}}]")};
  o[0].fields[7] = {"emb", {}};
  o[0].fields[8] = {"country", {}};
  o[1].fields = {{"v", steps("[{minmax: {min: 0, max: 1e-40}}]")},
                 {"w", steps("[{standardize: {mean: 0, std: 1e-300}}]")},
                 {"r", steps("[log1p]")}};
  return o;
}

class AggregateDecoderTest : public ::testing::Test {
 protected:
  AggregateDecoderTest() : decoder_(aggregate_schema(), aggregate_options()) {
    sources_ = layout::plan_aggregates(aggregate_schema().tables[0]).sources;
  }

  DecodeResult decode(const std::string& body) { return decoder_.decode(body, batch_); }
  void expect_reject(const std::string& body, RejectReason reason, const std::string& detail_fragment = "") {
    const DecodeResult r = decode(body);
    decoder_test::expect_refused(r, batch_, reason, body);
    EXPECT_NE(r.detail.find(detail_fragment), std::string::npos) << r.detail;
  }
  static std::string msg(const std::string& fields, const std::string& extra = R"(,"id":"e1")") {
    return R"({"table":"a","key":"k","event_time":1000,"fields":{)" + fields + "}" + extra + "}";
  }
  // The update's sources by name; each source at most once.
  std::map<std::string, double> sources(const DecodedUpdate& u) {
    std::map<std::string, double> out;
    for (const SourceValue& sv : batch_.sources(u)) {
      EXPECT_LT(sv.source, sources_.size());
      if (sv.source >= sources_.size()) continue;
      EXPECT_TRUE(out.emplace(sources_[sv.source], sv.value).second) << sources_[sv.source] << " twice";
    }
    return out;
  }
  const FieldValue* value(const DecodedUpdate& u, uint32_t field) {
    const FieldValue* found = nullptr;
    for (const FieldValue& fv : batch_.values(u)) {
      if (fv.field == field) {
        EXPECT_EQ(found, nullptr) << "field " << field << " twice";
        found = &fv;
      }
    }
    return found;
  }

  Decoder decoder_;
  DecodedBatch batch_;
  std::vector<std::string> sources_;
};

TEST_F(AggregateDecoderTest, OneMemberFeedsFieldsAndSources) {
  // plan_aggregates orders sources by first use; the decoder uses those indexes.
  ASSERT_EQ(sources_, (std::vector<std::string>{"amount", "amount_log", "flag", "score", "country_idx", "clicked"}));
  const DecodeResult r =
      decode(msg(R"("country":"DE","amount":99,"score":2.5,"flag":true,"clicked":false,"emb":[1,2])"));
  ASSERT_TRUE(r.ok) << r.detail;
  const DecodedUpdate& u = batch_.update(0);
  EXPECT_EQ(u.event_id, event_id_hash("e1"));
  ASSERT_EQ(u.values_count, 9u);  // everything but "clicked", which only a source reads
  ASSERT_NE(value(u, 0), nullptr);
  EXPECT_EQ(std::string(static_cast<const char*>(value(u, 0)->data), value(u, 0)->length), "DE");
  EXPECT_EQ(std::string(static_cast<const char*>(value(u, 8)->data), value(u, 8)->length), "DE");
  EXPECT_EQ(value(u, 1)->type, FieldType::kInt64);
  EXPECT_EQ(value(u, 1)->i64, 2);                         // DE is values[1]: index 2
  EXPECT_DOUBLE_EQ(value(u, 2)->f64, 4.605170185988092);  // log1p(clip(99)) = ln(100)
  EXPECT_EQ(value(u, 3)->f64, 2.5);
  EXPECT_EQ(value(u, 4)->i64, 1);
  EXPECT_EQ(value(u, 5)->type, FieldType::kFloat32);  // bucketize's int64 output, converted
  EXPECT_EQ(value(u, 5)->f64, 1.0);                   // 10 <= 99 < 100
  ASSERT_EQ(value(u, 6)->length, 2u);
  ASSERT_EQ(value(u, 7)->length, 2u);
  EXPECT_EQ(static_cast<const float*>(value(u, 7)->data)[1], 2.0f);

  const std::map<std::string, double> src = sources(u);
  EXPECT_EQ(src.size(), 6u);
  EXPECT_EQ(src.at("amount"), 99.0);                          // raw: the row does not store it
  EXPECT_DOUBLE_EQ(src.at("amount_log"), 4.605170185988092);  // the field's value, after its transform
  EXPECT_EQ(src.at("flag"), 1.0);
  EXPECT_EQ(src.at("score"), 2.5);
  EXPECT_EQ(src.at("country_idx"), 2.0);
  EXPECT_EQ(src.at("clicked"), 0.0);  // false counts as 0

  // Clipped, unknown vocabulary value, and a member that only a source reads.
  ASSERT_TRUE(decode(msg(R"("amount":20000,"country":"XX","clicked":3.5)")).ok);
  const DecodedUpdate& v = batch_.update(0);
  EXPECT_DOUBLE_EQ(value(v, 2)->f64, 9.210440366976517);  // ln(10001)
  EXPECT_EQ(value(v, 1)->i64, 0);
  EXPECT_EQ(value(v, 5)->f64, 2.0);
  const std::map<std::string, double> vs = sources(v);
  EXPECT_EQ(vs.at("amount"), 20000.0);
  EXPECT_EQ(vs.at("country_idx"), 0.0);
  EXPECT_EQ(vs.at("clicked"), 3.5);
  EXPECT_FALSE(vs.count("score"));  // absent members give no source value

  // Only a source: no field values at all.
  ASSERT_TRUE(decode(msg(R"("clicked":true)")).ok);
  EXPECT_EQ(batch_.update(0).values_count, 0u);
  EXPECT_EQ(sources(batch_.update(0)).at("clicked"), 1.0);
}

TEST_F(AggregateDecoderTest, EventIds) {
  ASSERT_TRUE(decode(msg(R"("amount":1)", "")).ok);
  EXPECT_EQ(batch_.update(0).event_id, 0u);  // no id: counted every time it is delivered
  ASSERT_TRUE(decode(msg(R"("amount":1)", R"(,"id":"")")).ok);
  EXPECT_EQ(batch_.update(0).event_id, 0u);  // "" is no id
  ASSERT_TRUE(decode(R"({"id":"\u0065v-7","table":"a","key":"k","event_time":1,"fields":{"amount":1}})").ok);
  EXPECT_EQ(batch_.update(0).event_id, event_id_hash("ev-7"));  // unescaped, in any member order

  // A batch: each update its own id and its own range of sources.
  ASSERT_TRUE(decode("[" + msg(R"("amount":1,"flag":false)", R"(,"id":"x")") + "," + msg(R"("score":4)", "") + "," +
                     msg(R"("amount":3)", R"(,"id":"y")") + "]")
                  .ok);
  ASSERT_EQ(batch_.size(), 3u);
  EXPECT_EQ(batch_.update(0).event_id, event_id_hash("x"));
  EXPECT_EQ(batch_.update(1).event_id, 0u);
  EXPECT_EQ(batch_.update(2).event_id, event_id_hash("y"));
  EXPECT_EQ(sources(batch_.update(0)).size(), 3u);  // amount, amount_log, flag
  EXPECT_EQ(sources(batch_.update(0)).count("flag"), 1u);
  EXPECT_EQ(sources(batch_.update(1)), (std::map<std::string, double>{{"score", 4.0}}));
  EXPECT_EQ(sources(batch_.update(2)).at("amount"), 3.0);
  // Moving the batch keeps its sources.
  DecodedBatch moved = std::move(batch_);
  EXPECT_EQ(moved.sources(moved.update(2)).size(), 2u);
  batch_ = std::move(moved);
}

TEST_F(AggregateDecoderTest, DeletesCarryNoSources) {
  ASSERT_TRUE(decode(msg(R"("amount":5)", R"(,"op":"delete")")).ok);
  EXPECT_EQ(batch_.update(0).values_count, 0u);
  EXPECT_EQ(batch_.update(0).sources_count, 0u);
  ASSERT_TRUE(decode(R"({"op":"delete","table":"a","key":"k","event_time":1,"fields":{"amount":5}})").ok);
  EXPECT_EQ(batch_.update(0).sources_count, 0u);
}

TEST_F(AggregateDecoderTest, Rejects) {
  expect_reject(msg(R"("amount":"12")"), RejectReason::kWrongType, "expected a number, got a string");
  expect_reject(msg(R"("amount":true)"), RejectReason::kWrongType);  // fields read it: no bools
  expect_reject(msg(R"("clicked":"yes")"), RejectReason::kWrongType, "expected a number (or true/false)");
  expect_reject(msg(R"("clicked":null)"), RejectReason::kWrongType);
  expect_reject(msg(R"("clicked":1e999)"), RejectReason::kNonFinite);
  expect_reject(msg(R"("country":5)"), RejectReason::kWrongType, "expected a string");
  expect_reject(msg(R"("flag":1)"), RejectReason::kWrongType);
  expect_reject(msg(R"("country":"USA")"), RejectReason::kStringTooLong, "max_len is 2");
  expect_reject(msg(R"("emb":[1])"), RejectReason::kVectorLength);
  expect_reject(msg(R"("amount":1,"amount":2)"), RejectReason::kDuplicateMember);
  // Computed fields and aggregates are not members a message sets.
  expect_reject(msg(R"("amount_log":1)"), RejectReason::kUnknownField,
                "field \"amount_log\" of table \"a\" is computed from \"amount\"");
  // An aggregate's name: the detail says the sidecar computes it, and from what.
  expect_reject(msg(R"("spend":1)"), RejectReason::kUnknownField,
                "field \"spend\" of table \"a\" is an aggregate the sidecar computes (sum of \"amount\" over 1h: "
                "send \"amount\" with each event)");
  expect_reject(msg(R"("clicks":1)"), RejectReason::kUnknownField,
                "field \"clicks\" of table \"a\" is an aggregate the sidecar computes (count of the key's events "
                "over 1h: send the events)");
  expect_reject(msg(R"("spnd":1)"), RejectReason::kUnknownField, "table \"a\" has no field \"spnd\"");
  // An unknown table: the detail lists the configured ones.
  expect_reject(R"({"table":"c","key":"k","event_time":1,"fields":{}})", RejectReason::kUnknownTable,
                "no table \"c\"; the tables are a, b");
  // Transforms that refuse their input: the whole message is rejected.
  auto b = [](const std::string& fields) {
    return R"({"table":"b","key":"k","event_time":1,"fields":{)" + fields + "}}";
  };
  expect_reject(b(R"("r":-1)"), RejectReason::kBadValue,
                "field \"r\": transform[0] (log1p) needs an input > -1, got -1");
  expect_reject(b(R"("r":-7.5)"), RejectReason::kBadValue);
  expect_reject(b(R"("w":1e300)"), RejectReason::kBadValue,
                "gives a non-finite value, got 1e+300 (for field \"tiny\")");
  expect_reject(b(R"("v":99)"), RejectReason::kOutOfRange, "after transform is outside the float32 range");
  expect_reject("[" + b(R"("r":1)") + "," + b(R"("r":-3)") + "]", RejectReason::kBadValue, "update 1");
  ASSERT_TRUE(decode(b(R"("r":0,"w":1,"v":0)")).ok);
  EXPECT_EQ(batch_.update(0).sources_count, 0u);
}

// Many tables with long names: the unknown-table detail names as many as fit
// in a bounded length, then how many more there are.
TEST(DecoderUnknownTable, ListOfTablesIsBounded) {
  layout::Schema schema;
  for (int i = 0; i < 40; ++i) {
    layout::TableSpec t;
    t.name = fmt::format("table_with_a_long_name_{:02}", i);
    t.capacity = 4;
    t.fields = {{"x", FieldType::kInt64, 1}};
    schema.tables.push_back(t);
  }
  Decoder decoder(schema, std::vector<TableDecodeOptions>(schema.tables.size()));
  DecodedBatch batch;
  const DecodeResult r = decoder.decode(R"({"table":"nope","key":"k","event_time":1,"fields":{}})", batch);
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.reason, RejectReason::kUnknownTable);
  EXPECT_NE(r.detail.find("no table \"nope\"; the tables are table_with_a_long_name_00, table_with_a_long_name_01"),
            std::string::npos)
      << r.detail;
  EXPECT_NE(r.detail.find(" more)"), std::string::npos) << r.detail;
  EXPECT_EQ(r.detail.find("table_with_a_long_name_39"), std::string::npos) << r.detail;
  EXPECT_LT(r.detail.size(), 300u) << r.detail;
}

TEST_F(AggregateDecoderTest, SteadyStateNeverAllocates) {
  const std::string body =
      "[" + msg(R"("country":"DE","amount":99,"score":2.5,"flag":true,"clicked":false,"emb":[1,2])") + "," +
      msg(R"("amount":-3,"country":"XX")", R"(,"id":"another-id-longer-than-sso-buffers")") + "]";
  ASSERT_TRUE(decode(body).ok);  // warms the parser and the batch's buffers
  batch_.clear();
  const uint64_t before = test::allocations();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(decoder_.decode(body, batch_).ok);
  EXPECT_EQ(test::allocations(), before);
}

// distinct_count sources: a declared string field (its bytes), an int64
// field (exactly, beyond 2^53), an int64 field through a transform (its
// index), a member only distinct_counts read (any scalar) and a member that
// a sum reads too (numbers only).
TEST(DistinctDecoderTest, SourcesCarryTheValuesHash) {
  layout::Schema s;
  layout::TableSpec t = decoder_test::distinct_table();
  const auto agg = decoder_test::aggregate;
  using layout::AggregateFn;
  t.aggregates = {agg("countries", "country", AggregateFn::kDistinctCount),
                  agg("country_events", "country", AggregateFn::kCount),
                  agg("ns", "n", AggregateFn::kDistinctCount),
                  agg("bands", "band", AggregateFn::kDistinctCount),
                  agg("devices", "device", AggregateFn::kDistinctCount),
                  agg("merchants", "merchant", AggregateFn::kDistinctCount),
                  agg("spend", "merchant", AggregateFn::kSum)};
  s.tables.push_back(t);
  Decoder decoder(s, decoder_test::distinct_options());
  const std::vector<std::string> names = layout::plan_aggregates(t).sources;
  DecodedBatch batch;
  auto sources = [&](const std::string& fields) {
    const DecodeResult r =
        decoder.decode(R"({"table":"d","key":"k","event_time":1000,"fields":{)" + fields + "}}", batch);
    EXPECT_TRUE(r.ok) << fields << ": " << r.detail;
    std::map<std::string, SourceValue> out;
    if (!r.ok) return out;
    for (const SourceValue& sv : batch.sources(batch.update(0))) out[names.at(sv.source)] = sv;
    return out;
  };
  auto hash = [](const SourceValue& sv) { return sv.distinct != 0 ? sv.distinct : distinct_hash_number(sv.value); };

  auto a = sources(R"("country":"DE","n":9007199254740993,"amount":50,"device":"phone-1","merchant":12)");
  EXPECT_EQ(hash(a.at("country")), distinct_hash_string("DE"));
  EXPECT_EQ(hash(a.at("n")), distinct_hash_int64(9007199254740993));  // 2^53 + 1: not a double
  EXPECT_NE(hash(a.at("n")), distinct_hash_int64(9007199254740992));
  EXPECT_EQ(hash(a.at("band")), distinct_hash_int64(1));
  EXPECT_EQ(hash(a.at("device")), distinct_hash_string("phone-1"));
  EXPECT_EQ(hash(a.at("merchant")), distinct_hash_int64(12));
  EXPECT_EQ(a.at("merchant").value, 12.0);  // the sum still sees the number

  // A member only distinct_counts read holds any scalar: "7" and 7 differ, true is 1.
  auto b = sources(R"("device":7)");
  EXPECT_EQ(hash(b.at("device")), distinct_hash_int64(7));
  EXPECT_NE(hash(b.at("device")), distinct_hash_string("7"));
  EXPECT_EQ(hash(sources(R"("device":true)").at("device")), distinct_hash_int64(1));
  EXPECT_EQ(hash(sources(R"("device":"7")").at("device")), distinct_hash_string("7"));
  // A member a sum reads too: a fraction is a value of its own.
  EXPECT_EQ(hash(sources(R"("merchant":2.5)").at("merchant")), distinct_hash_number(2.5));

  auto reject = [&](const std::string& fields, RejectReason why) {
    const DecodeResult r =
        decoder.decode(R"({"table":"d","key":"k","event_time":1000,"fields":{)" + fields + "}}", batch);
    decoder_test::expect_refused(r, batch, why, fields);
  };
  reject(R"("device":1.5)", RejectReason::kWrongType);
  reject(R"("device":[1])", RejectReason::kWrongType);
  reject(R"("device":null)", RejectReason::kWrongType);
  reject(R"("device":1e400)", RejectReason::kWrongType);
  reject(R"("device":99999999999999999999)", RejectReason::kOutOfRange);
  reject(R"("merchant":"m1")", RejectReason::kWrongType);
}

// Options that contradict the schema are refused at construction (Config
// reports them first, with key paths).
TEST(DecoderOptions, ContradictionsThrow) {
  layout::Schema s;
  layout::TableSpec t;
  t.name = "t";
  t.fields = {{"s", FieldType::kString, 4}, {"n", FieldType::kInt64, 1}};
  s.tables.push_back(t);
  std::vector<TableDecodeOptions> o(1);
  o[0].fields.resize(2);
  o[0].fields[0].transform = steps("[log1p]");
  EXPECT_THROW(Decoder(s, o), std::invalid_argument);  // a transform on a string field
  o[0].fields[0] = {};
  o[0].fields[1].transform = steps("[log1p]");
  EXPECT_THROW(Decoder(s, o), std::invalid_argument);  // float64 output into int64
  o[0].fields[1] = {"s", {}};
  EXPECT_THROW(Decoder(s, o), std::invalid_argument);  // member "s" as a string and as a number
  o[0].fields[1] = {"s", steps("[{vocabulary: {values: [a]}}]")};
  EXPECT_NO_THROW(Decoder(s, o));  // a vocabulary reads it as a string too
}

// Fitted-transformer steps: a null member imputed, one string member into a
// one-hot vector and a bool per category, an embedding projected, and the
// raw embedding stored beside its projection.
TEST(DecoderFittedTransforms, NullsCategoriesAndProjections) {
  layout::Schema s;
  layout::TableSpec t;
  t.name = "t";
  t.key_max_len = 8;
  t.capacity = 16;
  t.fields = {{"amount", FieldType::kFloat64, 1},    {"country_oh", FieldType::kFloat32Vector, 3},
              {"country_us", FieldType::kBool, 1},   {"emb_pca", FieldType::kFloat32Vector, 2},
              {"emb", FieldType::kFloat32Vector, 3}, {"country_ix", FieldType::kFloat64, 1}};
  s.tables.push_back(t);
  std::vector<TableDecodeOptions> o(1);
  o[0].fields.resize(6);
  o[0].fields[0].transform = steps("[{impute: {value: 10}}, {standardize: {mean: 5, std: 2}}]");
  o[0].fields[1] = {"country", steps("[{one_hot: {categories: [DE, US, ~], handle_unknown: ignore}}]")};
  o[0].fields[2] = {"country", steps("[{one_hot: {categories: [DE, US, ~], handle_unknown: ignore, index: 1}}]")};
  o[0].fields[3] = {"emb", steps("[{project: {components: [[1, 0, 0], [0, 0.5, 0.5]], mean: [1, 1, 1]}}]")};
  o[0].fields[5] = {"country", steps("[{ordinal: {categories: [DE, US, ~], unknown_value: -1}}]")};
  Decoder d(s, o);
  DecodedBatch b;
  auto one = [&](const std::string& fields) {
    const DecodeResult r = d.decode(R"({"table":"t","key":"k","event_time":1000,"fields":{)" + fields + "}}", b);
    EXPECT_TRUE(r.ok) << fields << ": " << r.detail;
    std::map<uint32_t, FieldValue> by_field;
    if (r.ok) {
      for (const FieldValue& fv : b.values(b.update(0))) by_field[fv.field] = fv;
    }
    return by_field;
  };
  auto floats = [](const FieldValue& fv) {
    const auto* f = static_cast<const float*>(fv.data);
    return std::vector<float>(f, f + fv.length);
  };

  auto v = one(R"("amount":null,"country":"US","emb":[3,5,7])");
  EXPECT_EQ(v[0].f64, (10.0 - 5) / 2);
  EXPECT_EQ(floats(v[1]), (std::vector<float>{0, 1, 0}));
  EXPECT_EQ(v[2].i64, 1);
  EXPECT_EQ(floats(v[3]), (std::vector<float>{2, 5}));  // (3-1)*1; (5-1)*0.5 + (7-1)*0.5
  EXPECT_EQ(floats(v[4]), (std::vector<float>{3, 5, 7}));
  EXPECT_EQ(v[5].f64, 1.0);

  v = one(R"("amount":7,"country":null)");
  EXPECT_EQ(v[0].f64, 1.0);
  EXPECT_EQ(floats(v[1]), (std::vector<float>{0, 0, 1}));
  EXPECT_EQ(v[2].i64, 0);
  EXPECT_EQ(v[5].f64, 2.0);
  v = one(R"("country":"FR")");  // unknown, ignored
  EXPECT_EQ(floats(v[1]), (std::vector<float>{0, 0, 0}));
  EXPECT_EQ(v[5].f64, -1.0);

  // A member some reader takes no null for keeps refusing it; a vector of
  // the wrong length is refused for every reader.
  EXPECT_EQ(d.decode(R"({"table":"t","key":"k","event_time":1000,"fields":{"emb":null}})", b).reason,
            RejectReason::kWrongType);
  EXPECT_EQ(d.decode(R"({"table":"t","key":"k","event_time":1000,"fields":{"emb":[1,2]}})", b).reason,
            RejectReason::kVectorLength);
  EXPECT_EQ(d.decode(R"({"table":"t","key":"k","event_time":1000,"fields":{"country":3}})", b).reason,
            RejectReason::kWrongType);

  // handle_unknown: error refuses the message (bad_value), as sklearn raises.
  o[0].fields[1] = {"country", steps("[{one_hot: {categories: [DE, US, ~]}}]")};
  Decoder strict(s, o);
  const DecodeResult r = strict.decode(R"({"table":"t","key":"k","event_time":1000,"fields":{"country":"FR"}})", b);
  EXPECT_EQ(r.reason, RejectReason::kBadValue);
  EXPECT_NE(r.detail.find("not one of its categories"), std::string::npos) << r.detail;
}

// A null member through the UpdateBuilder (the offline engine's "sent as
// null") is what the JSON decoder makes of a JSON null: the same values
// from the same rule, and the same refusal where a reader takes no null.
TEST(DecoderFittedTransforms, BuilderNullIsTheJsonNull) {
  layout::Schema s;
  layout::TableSpec t;
  t.name = "t";
  t.key_max_len = 8;
  t.capacity = 16;
  t.fields = {{"amount", FieldType::kFloat64, 1},
              {"country_oh", FieldType::kFloat32Vector, 3},
              {"country_ix", FieldType::kInt64, 1},
              {"country_us", FieldType::kBool, 1},
              {"plain", FieldType::kFloat64, 1}};
  s.tables.push_back(t);
  std::vector<TableDecodeOptions> o(1);
  o[0].fields.resize(5);
  o[0].fields[0].transform = steps("[{impute: {value: 10}}, {standardize: {mean: 5, std: 2}}]");
  o[0].fields[1] = {"country", steps("[{one_hot: {categories: [DE, US, ~], handle_unknown: ignore}}]")};
  o[0].fields[2] = {"country", steps("[{ordinal: {categories: [DE, US, ~], missing_value: 9}}]")};
  o[0].fields[3] = {"country", steps("[{one_hot: {categories: [DE, US, ~], index: 2}}]")};
  Decoder d(s, o);
  UpdateBuilder ub(s, o);
  auto input = [&](const std::string& name) {
    const auto inputs = ub.inputs(0);
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (inputs[i].name == name) return static_cast<uint32_t>(i);
    }
    ADD_FAILURE() << "no input " << name;
    return uint32_t{0};
  };
  // (field, type, i64, f64 bits, vector) of each value, in order.
  auto values = [](const DecodedBatch& b) {
    std::vector<std::tuple<uint32_t, int, int64_t, uint64_t, std::vector<float>>> out;
    for (const FieldValue& fv : b.values(b.update(0))) {
      std::vector<float> v;
      if (fv.type == FieldType::kFloat32Vector) {
        const auto* f = static_cast<const float*>(fv.data);
        v.assign(f, f + fv.length);
      }
      uint64_t bits;
      std::memcpy(&bits, &fv.f64, 8);
      out.emplace_back(fv.field, static_cast<int>(fv.type), fv.i64, bits, v);
    }
    return out;
  };
  struct Walk {
    UpdateBuilder* b;
    std::vector<uint32_t> nulls;
    uint32_t string_input = 0;
    const char* string = nullptr;  // a value for string_input, else none
  };
  auto walk = [](void* ctx) {
    Walk& w = *static_cast<Walk*>(ctx);
    w.b->begin_update(0, false);
    w.b->set_table(0);
    w.b->set_key("k");
    w.b->set_event_time_ms(1000);
    w.b->set_fields_present();
    for (uint32_t in : w.nulls) w.b->input_null(in);
    if (w.string != nullptr) w.b->input_string(w.string_input, w.string);
    w.b->end_update();
  };

  DecodedBatch json, built;
  ASSERT_TRUE(
      d.decode(R"({"table":"t","key":"k","event_time":1000,"fields":{"amount":null,"country":null}})", json, 1000).ok);
  Walk w{&ub, {input("amount"), input("country")}};
  const DecodeResult r = ub.run(built, 1000, RejectReason::kInternal, walk, &w);
  ASSERT_TRUE(r.ok) << r.detail;
  EXPECT_EQ(values(built), values(json));
  ASSERT_EQ(values(built).size(), 4u);
  EXPECT_EQ(std::get<2>(values(built)[2]), 9);  // ordinal: missing_value
  // A value, for comparison: the one_hot's vector from a typed string too.
  ASSERT_TRUE(
      d.decode(R"({"table":"t","key":"k","event_time":1000,"fields":{"amount":null,"country":"US"}})", json, 1000).ok);
  w = Walk{&ub, {input("amount")}, input("country"), "US"};
  ASSERT_TRUE(ub.run(built, 1000, RejectReason::kInternal, walk, &w).ok);
  EXPECT_EQ(values(built), values(json));
  EXPECT_EQ(std::get<4>(values(built)[1]), (std::vector<float>{0, 1, 0}));
  w.string = nullptr;

  // A reader that takes no null: wrong_type, both ways.
  EXPECT_EQ(d.decode(R"({"table":"t","key":"k","event_time":1000,"fields":{"plain":null}})", json, 1000).reason,
            RejectReason::kWrongType);
  w.nulls = {input("plain")};
  const DecodeResult refused = ub.run(built, 1000, RejectReason::kInternal, walk, &w);
  EXPECT_EQ(refused.reason, RejectReason::kWrongType);
  EXPECT_NE(refused.detail.find("field \"plain\": expected a number, got null"), std::string::npos) << refused.detail;
  EXPECT_EQ(built.size(), 0u);
  // A member comes once, null or not.
  w.nulls = {input("amount"), input("amount")};
  EXPECT_EQ(ub.run(built, 1000, RejectReason::kInternal, walk, &w).reason, RejectReason::kDuplicateMember);
}

// A list through the UpdateBuilder (Protobuf, Avro, the offline engine) is
// what the JSON decoder makes of the same array: an embedding projected, and
// the raw embedding stored beside its projection from the same input; a
// list of the wrong length is refused by the projection's length.
TEST(DecoderFittedTransforms, BuilderVectorIsTheJsonArray) {
  layout::Schema s;
  layout::TableSpec t;
  t.name = "t";
  t.key_max_len = 8;
  t.capacity = 16;
  t.fields = {{"emb_pca", FieldType::kFloat32Vector, 2}, {"emb", FieldType::kFloat32Vector, 3}};
  s.tables.push_back(t);
  for (const bool with_raw : {false, true}) {
    SCOPED_TRACE(with_raw ? "projection and raw" : "projection alone");
    layout::Schema schema = s;
    if (!with_raw) schema.tables[0].fields.pop_back();
    std::vector<TableDecodeOptions> o(1);
    o[0].fields.resize(schema.tables[0].fields.size());
    o[0].fields[0] = {"emb", steps("[{project: {components: [[1, 0, 0], [0, 0.5, 0.5]], mean: [1, 1, 1]}}]")};
    Decoder d(schema, o);
    UpdateBuilder ub(schema, o);
    ASSERT_EQ(ub.inputs(0).size(), 1u);
    ASSERT_EQ(ub.inputs(0)[0].name, "emb");
    auto vectors = [](const DecodedBatch& b) {
      std::vector<std::pair<uint32_t, std::vector<float>>> out;
      for (const FieldValue& fv : b.values(b.update(0))) {
        const auto* f = static_cast<const float*>(fv.data);
        out.emplace_back(fv.field, std::vector<float>(f, f + fv.length));
      }
      return out;
    };
    struct Walk {
      UpdateBuilder* b;
      std::vector<double> v;
      bool as_floats;
    };
    auto walk = [](void* ctx) {
      Walk& w = *static_cast<Walk*>(ctx);
      w.b->begin_update(0, false);
      w.b->set_table(0);
      w.b->set_key("k");
      w.b->set_event_time_ms(1000);
      w.b->set_fields_present();
      w.b->vector_begin(0);
      if (w.as_floats) {
        std::vector<float> f(w.v.begin(), w.v.end());
        w.b->vector_push_floats(reinterpret_cast<const char*>(f.data()), f.size());
      } else {
        for (double x : w.v) w.b->vector_push(x);
      }
      w.b->vector_end();
      w.b->end_update();
    };
    DecodedBatch json, built;
    ASSERT_TRUE(
        d.decode(R"({"table":"t","key":"k","event_time":1000,"fields":{"emb":[3, 0.25, 5.5]}})", json, 1000).ok);
    ASSERT_EQ(vectors(json).size(), with_raw ? 2u : 1u);
    EXPECT_EQ(vectors(json)[0].second, (std::vector<float>{2, 1.875f}));
    for (const bool as_floats : {false, true}) {
      Walk w{&ub, {3, 0.25, 5.5}, as_floats};
      const DecodeResult r = ub.run(built, 1000, RejectReason::kInternal, walk, &w);
      ASSERT_TRUE(r.ok) << r.detail;
      EXPECT_EQ(vectors(built), vectors(json));
      w.v = {3, 0.25};
      const DecodeResult short_list = ub.run(built, 1000, RejectReason::kInternal, walk, &w);
      EXPECT_EQ(short_list.reason, RejectReason::kVectorLength);
      EXPECT_NE(short_list.detail.find("2 elements, the projection takes 3"), std::string::npos) << short_list.detail;
      w.v = {3, 0.25, 5.5, 1};
      EXPECT_EQ(ub.run(built, 1000, RejectReason::kInternal, walk, &w).reason, RejectReason::kVectorLength);
    }
  }
}

// `from: [a, b, c]`: the members' values make the array the projection
// reads; an update carries all of them or none.
TEST(DecoderFittedTransforms, ProjectionFromSeveralMembers) {
  layout::Schema s;
  layout::TableSpec t;
  t.name = "t";
  t.key_max_len = 8;
  t.capacity = 16;
  t.fields = {{"pca", FieldType::kFloat32Vector, 2}, {"a", FieldType::kFloat64, 1}, {"z", FieldType::kFloat64, 1}};
  s.tables.push_back(t);
  std::vector<TableDecodeOptions> o(1);
  o[0].fields.resize(3);
  o[0].fields[0].from_members = {"a", "b", "c"};
  o[0].fields[0].transform = steps("[{project: {components: [[1, 0, 0], [0, 0.5, 0.5]], mean: [1, 1, 1]}}]");
  Decoder d(s, o);
  DecodedBatch b;
  auto decode = [&](const std::string& fields) {
    return d.decode(R"({"table":"t","key":"k","event_time":1000,"fields":{)" + fields + "}}", b);
  };
  DecodeResult r = decode(R"("c":7,"a":3,"b":5)");
  ASSERT_TRUE(r.ok) << r.detail;
  ASSERT_EQ(b.values(b.update(0)).size(), 2u);  // "a" is stored as itself too
  const FieldValue* pca = nullptr;
  for (const FieldValue& fv : b.values(b.update(0))) {
    if (fv.field == 0) pca = &fv;
  }
  ASSERT_NE(pca, nullptr);
  const auto* f = static_cast<const float*>(pca->data);
  EXPECT_EQ(std::vector<float>(f, f + pca->length), (std::vector<float>{2, 5}));
  ASSERT_TRUE(decode(R"("z":3)").ok);  // none of the members: "pca" is not written
  ASSERT_EQ(b.values(b.update(0)).size(), 1u);
  EXPECT_EQ(b.values(b.update(0))[0].field, 2u);
  EXPECT_EQ(decode(R"("a":3)").reason, RejectReason::kBadValue);  // some but not all
  r = decode(R"("a":3,"b":1)");
  EXPECT_EQ(r.reason, RejectReason::kBadValue);
  EXPECT_NE(r.detail.find("projected from a, b, c: an update sets all of them or none (2 of 3 here)"),
            std::string::npos)
      << r.detail;
  EXPECT_EQ(decode(R"("a":3,"b":1,"c":null)").reason, RejectReason::kWrongType);
  // In a batch, each update gathers its own values.
  r = d.decode(R"([{"table":"t","key":"k","event_time":1,"fields":{"a":1,"b":1,"c":1}},
                   {"table":"t","key":"k","event_time":2,"fields":{"b":3}}])",
               b);
  EXPECT_EQ(r.reason, RejectReason::kBadValue);
  EXPECT_NE(r.detail.find("update 1:"), std::string::npos) << r.detail;
  EXPECT_EQ(decode(R"("pca":[1,2])").reason, RejectReason::kUnknownField);
}

TEST(DecoderFittedTransforms, OutputsMustFitTheFieldType) {
  layout::Schema s;
  layout::TableSpec t;
  t.name = "t";
  t.fields = {{"v", FieldType::kFloat32Vector, 2}, {"b", FieldType::kBool, 1}};
  s.tables.push_back(t);
  std::vector<TableDecodeOptions> o(1);
  o[0].fields.resize(2);
  o[0].fields[0].transform = steps("[{one_hot: {categories: [a, b, c]}}]");  // 3 elements into dims 2
  EXPECT_THROW(Decoder(s, o), std::invalid_argument);
  o[0].fields[0].transform = steps("[{one_hot: {categories: [a, b]}}]");
  EXPECT_NO_THROW(Decoder(s, o));
  o[0].fields[1].transform = steps("[log1p]");  // a number into a bool
  EXPECT_THROW(Decoder(s, o), std::invalid_argument);
}

// Writer::apply through apply_batch: a redelivered event (same id) and an
// event too late for its aggregates are counted, not rejected.
TEST(ApplyBatchTest, DuplicatesAndLateEventsAreCountedNotRejected) {
  layout::Schema schema;
  layout::TableSpec t;
  t.name = "t";
  t.capacity = 4;
  t.fields = {{"x", FieldType::kInt64, 1}};
  layout::AggregateSpec n;
  n.name = "n";
  n.fn = layout::AggregateFn::kCount;
  n.window_ms = 3'600'000;
  layout::AggregateSpec sum = n;
  sum.name = "spend";
  sum.source = "amount";
  sum.fn = layout::AggregateFn::kSum;
  t.aggregates = {n, sum};
  schema.tables.push_back(t);
  const std::string name = "larder-unit-applybatch-agg-" + std::to_string(::getpid());
  Writer::remove_segment(name);
  {
    auto writer = Writer::open(name, schema);
    Decoder decoder(schema, {});
    DecodedBatch batch;
    RejectReason reason = RejectReason::kBadJson;
    uint64_t stale = 0, applied = 0, duplicates = 0, late = 0;
    auto apply = [&](const std::string& body) {
      const DecodeResult r = decoder.decode(body, batch);
      EXPECT_TRUE(r.ok) << r.detail;
      return apply_batch(*writer, batch, &reason, &stale, &applied, nullptr, &duplicates, &late);
    };
    const int64_t now_ms = layout::now_unix_ns() / 1'000'000;
    const std::string first =
        fmt::format(R"({{"table":"t","key":"a","event_time":{},"id":"e1","fields":{{"x":1,"amount":5}}}})", now_ms);
    EXPECT_EQ(apply(first), Outcome::kApplied);
    EXPECT_EQ(batch.sources(batch.update(0)).size(), 1u);
    EXPECT_EQ(applied, 1u);
    EXPECT_EQ(apply(first), Outcome::kApplied);  // redelivered: acked, ignored
    EXPECT_EQ(duplicates, 1u);
    EXPECT_EQ(apply(fmt::format(R"({{"table":"t","key":"a","event_time":{},"id":"e2","fields":{{"amount":5}}}})",
                                now_ms - 2 * 3'600'000)),
              Outcome::kApplied);  // older than the lateness (the 1 h window): acked, dropped
    EXPECT_EQ(late, 1u);
    EXPECT_EQ(applied, 1u);
    const WriterStats st = writer->stats(0);
    EXPECT_EQ(st.duplicates, 1u);
    EXPECT_EQ(st.late_dropped, 1u);
  }
  Writer::remove_segment(name);
}

}  // namespace
}  // namespace larder::sidecar
