// The C ABI's batch gathers and row-layout functions (larder.h), against the
// single-key accessors they must agree with.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "larder/client.h"
#include "larder/larder.h"
#include "larder/writer/writer.h"
#include "support/test_segment.h"

namespace larder {
namespace {

using testing::ScratchSegment;

class CGatherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    writer_ = Writer::open(seg_.name(), testing::one_table_schema(testing::every_type_table("users", 1000, 8)),
                           seg_.writer_options());
    char err[256];
    ASSERT_EQ(larder_open(seg_.name().c_str(), seg_.dir().c_str(), &segment_, err, sizeof err), LARDER_E_OK) << err;
    ASSERT_EQ(larder_table_open(segment_, "users", &table_, err, sizeof err), LARDER_E_OK) << err;
    row_.assign(larder_table_row_bytes(table_) / 8, 0);
  }
  void TearDown() override {
    larder_table_close(table_);
    larder_close(segment_);
  }

  // user:k with every field, except spend for odd k and the embedding for k % 3 == 0.
  void put(int k, int64_t event_time) {
    float emb[8];
    for (int i = 0; i < 8; ++i) emb[i] = static_cast<float>(k * 10 + i);
    std::vector<FieldValue> v = {FieldValue::int64(0, k), FieldValue::float32(2, 0.5f * static_cast<float>(k)),
                                 FieldValue::boolean(3, k % 2 == 0), FieldValue::string(5, "SE")};
    if (k % 2 == 0) v.push_back(FieldValue::float64(1, k * 1.25));
    if (k % 3 != 0) v.push_back(FieldValue::vector(4, emb));
    ASSERT_EQ(writer_->upsert(0, "user:" + std::to_string(k), event_time, v), ApplyResult::kApplied);
  }

  ScratchSegment seg_;
  std::unique_ptr<Writer> writer_;
  larder_segment* segment_ = nullptr;
  larder_table* table_ = nullptr;
  std::vector<uint64_t> row_;
};

// Offsets and packed bytes of keys, as a binding passes them.
struct PackedKeys {
  std::string bytes;
  std::vector<uint64_t> offsets{0};
  explicit PackedKeys(const std::vector<std::string>& keys) {
    for (const auto& k : keys) {
      bytes += k;
      offsets.push_back(bytes.size());
    }
  }
};

TEST_F(CGatherTest, ScalarsAgreeWithSingleGets) {
  const int64_t now = larder_now_unix_ms();
  for (int k = 1; k <= 200; ++k) put(k, now);
  std::vector<std::string> keys;
  for (int k = 0; k < 150; ++k) keys.push_back("user:" + std::to_string((k * 37) % 260));  // some absent
  keys.push_back(std::string(40, 'x'));                                                    // too long
  const PackedKeys packed(keys);
  const uint32_t fields[] = {0, 1, 2, 3, 4, 5, 99};  // vector, string, out of range: missing
  const size_t n = keys.size(), nf = std::size(fields);
  std::vector<double> out(n * nf);
  std::vector<int32_t> status(n);
  std::vector<int64_t> times(n);
  ASSERT_EQ(larder_gather_f64(table_, packed.bytes.data(), packed.bytes.size(), packed.offsets.data(), 0, n, fields, nf,
                              out.data(), status.data(), times.data(), 0, NAN),
            LARDER_E_OK);
  for (size_t i = 0; i < n; ++i) {
    const larder_read_result r = larder_get(table_, keys[i].data(), keys[i].size(), row_.data(), 0);
    ASSERT_EQ(status[i], r.status) << keys[i];
    for (size_t j = 0; j < nf; ++j) {
      const double cell = out[i * nf + j];
      const bool has = r.status == LARDER_OK && fields[j] < 4 && larder_row_valid(table_, row_.data(), fields[j]);
      if (has) {
        EXPECT_EQ(cell, larder_row_as_double(table_, row_.data(), fields[j])) << keys[i] << " field " << fields[j];
      } else {
        EXPECT_TRUE(std::isnan(cell)) << keys[i] << " field " << fields[j];
      }
    }
    EXPECT_EQ(times[i], r.status == LARDER_OK ? r.event_time_ms : 0);
  }
  EXPECT_EQ(status[n - 1], LARDER_INVALID_KEY);
}

TEST_F(CGatherTest, KeyFormsAgree) {
  for (int k = 1; k <= 100; ++k) put(k, 1000 + k);
  std::vector<std::string> keys;
  for (int k = 1; k <= 130; k += 3) keys.push_back("user:" + std::to_string(k));
  const size_t n = keys.size();
  const PackedKeys packed(keys);
  std::string fixed(n * 12, '\0'), terminated;
  for (size_t i = 0; i < n; ++i) {
    std::memcpy(&fixed[i * 12], keys[i].data(), keys[i].size());
    terminated += keys[i];
    terminated += '\0';
  }
  const uint32_t fields[] = {0};
  std::vector<double> a(n), b(n), c(n);
  std::vector<int64_t> ta(n), tb(n), tc(n);
  larder_gather_f64(table_, packed.bytes.data(), packed.bytes.size(), packed.offsets.data(), 0, n, fields, 1, a.data(),
                    nullptr, ta.data(), 0, -1);
  larder_gather_f64(table_, fixed.data(), fixed.size(), nullptr, 12, n, fields, 1, b.data(), nullptr, tb.data(), 0, -1);
  larder_gather_f64(table_, terminated.data(), terminated.size(), nullptr, 0, n, fields, 1, c.data(), nullptr,
                    tc.data(), 0, -1);
  for (size_t i = 0; i < n; ++i) {
    const int k = std::stoi(keys[i].substr(5));
    EXPECT_EQ(a[i], k <= 100 ? k : -1) << keys[i];
    EXPECT_EQ(b[i], a[i]);
    EXPECT_EQ(c[i], a[i]);
    EXPECT_EQ(ta[i], k <= 100 ? 1000 + k : 0);
    EXPECT_EQ(tb[i], ta[i]);
    EXPECT_EQ(tc[i], ta[i]);
  }
  // Keys that do not match their form are refused before anything is read.
  std::string embedded = "user:1" + std::string(1, '\0') + "x" + std::string(1, '\0');
  EXPECT_EQ(larder_gather_f64(table_, embedded.data(), embedded.size(), nullptr, 0, 1, fields, 1, a.data(), nullptr,
                              nullptr, 0, -1),
            LARDER_E_INVALID_ARGUMENT);
  EXPECT_EQ(larder_gather_f64(table_, terminated.data(), terminated.size() - 1, nullptr, 0, n, fields, 1, a.data(),
                              nullptr, nullptr, 0, -1),
            LARDER_E_INVALID_ARGUMENT);
  EXPECT_EQ(larder_gather_f64(table_, fixed.data(), fixed.size(), nullptr, 12, n + 1, fields, 1, a.data(), nullptr,
                              nullptr, 0, -1),
            LARDER_E_INVALID_ARGUMENT);
  EXPECT_EQ(larder_gather_f64(table_, packed.bytes.data(), packed.bytes.size() - 1, packed.offsets.data(), 0, n, fields,
                              1, a.data(), nullptr, nullptr, 0, -1),
            LARDER_E_INVALID_ARGUMENT);
}

TEST_F(CGatherTest, VectorsAndStaleRows) {
  const int64_t now = larder_now_unix_ms();
  put(1, now);
  put(2, now - 120'000);  // stale under max_age 60 s, still filled
  put(3, now);            // no embedding
  const std::vector<std::string> keys = {"user:1", "user:2", "user:3", "user:4"};
  const PackedKeys packed(keys);
  std::vector<float> emb(keys.size() * 8);
  std::vector<int32_t> status(keys.size());
  ASSERT_EQ(larder_gather_vector(table_, packed.bytes.data(), packed.bytes.size(), packed.offsets.data(), 0,
                                 keys.size(), 4, emb.data(), status.data(), nullptr, 60'000, -7.0f),
            LARDER_E_OK);
  EXPECT_EQ(status, (std::vector<int32_t>{LARDER_OK, LARDER_STALE, LARDER_OK, LARDER_NOT_FOUND}));
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(emb[0 * 8 + i], 10 + i);
    EXPECT_EQ(emb[1 * 8 + i], 20 + i);
    EXPECT_EQ(emb[2 * 8 + i], -7.0f);
    EXPECT_EQ(emb[3 * 8 + i], -7.0f);
  }
  EXPECT_EQ(larder_gather_vector(table_, packed.bytes.data(), packed.bytes.size(), packed.offsets.data(), 0,
                                 keys.size(), 0, emb.data(), nullptr, nullptr, 0, 0),
            LARDER_E_INVALID_ARGUMENT);
}

TEST_F(CGatherTest, OnePassGatherAndWideBatches) {
  for (int k = 1; k <= 300; ++k) put(k, 5000);
  std::vector<std::string> keys;
  for (int k = 300; k >= 1; --k) keys.push_back("user:" + std::to_string(k));  // more than one chunk
  const PackedKeys packed(keys);
  const size_t n = keys.size();
  const uint32_t scalars[] = {0, 3};
  const uint32_t vectors[] = {4};
  std::vector<double> values(n * 2);
  std::vector<float> emb(n * 8);
  std::vector<int32_t> status(n, -1);
  ASSERT_EQ(larder_gather(table_, packed.bytes.data(), packed.bytes.size(), packed.offsets.data(), 0, n, scalars, 2,
                          values.data(), NAN, vectors, 1, emb.data(), NAN, status.data(), nullptr, 0),
            LARDER_E_OK);
  for (size_t i = 0; i < n; ++i) {
    const int k = 300 - static_cast<int>(i);
    ASSERT_EQ(status[i], LARDER_OK);
    EXPECT_EQ(values[i * 2], k);
    EXPECT_EQ(values[i * 2 + 1], k % 2 == 0 ? 1.0 : 0.0);
    EXPECT_EQ(std::isnan(emb[i * 8]), k % 3 == 0);
    if (k % 3 != 0) {
      EXPECT_EQ(emb[i * 8 + 7], k * 10 + 7);
    }
  }
}

TEST_F(CGatherTest, RowOffsetsMatchTheAccessors) {
  put(4, 42);
  ASSERT_EQ(larder_get(table_, "user:4", 6, row_.data(), 0).status, LARDER_OK);
  const auto* bytes = reinterpret_cast<const unsigned char*>(row_.data());
  int64_t clicks;
  std::memcpy(&clicks, bytes + larder_row_field_offset(table_, 0), 8);
  EXPECT_EQ(clicks, 4);
  double spend;
  std::memcpy(&spend, bytes + larder_row_field_offset(table_, 1), 8);
  EXPECT_EQ(spend, 5.0);
  uint32_t dims;
  EXPECT_EQ(reinterpret_cast<const unsigned char*>(larder_row_vector(table_, row_.data(), 4, &dims)),
            bytes + larder_row_field_offset(table_, 4));
  uint64_t validity;
  std::memcpy(&validity, bytes + larder_row_validity_offset(table_), 8);
  for (uint32_t f = 0; f < 6; ++f) EXPECT_EQ((validity >> f) & 1u, larder_row_valid(table_, row_.data(), f) ? 1u : 0u);
  char key[16];
  size_t key_len = 0;
  ASSERT_EQ(larder_row_key(table_, row_.data(), key, sizeof key, &key_len), LARDER_E_OK);
  EXPECT_EQ(std::string(key, key_len), "user:4");
  EXPECT_EQ(larder_row_event_time_ms(table_, row_.data()), 42);
  EXPECT_EQ(larder_row_field_offset(table_, 6), UINT32_MAX);

  larder_read_result r{};
  EXPECT_EQ(larder_get_into(table_, "user:4", 6, row_.data(), 0, &r), LARDER_OK);
  EXPECT_EQ(r.event_time_ms, 42);
  EXPECT_EQ(larder_get_into(table_, "user:5", 6, row_.data(), 0, nullptr), LARDER_NOT_FOUND);
}

// Aggregates are ordinary fields to every reader: the C ABI's index lookup,
// single gets and batch gathers see the rolling values, and an empty window
// reads as missing (NaN) once its events have left it.
TEST(CAggregates, GathersReadRollingValuesAndTheirDecay) {
  ScratchSegment seg;
  layout::TableSpec t;
  t.name = "users";
  t.capacity = 100;
  t.fields = {{"country", layout::FieldType::kString, 4}};
  t.aggregates = {{"spend_1m", "amount", layout::AggregateFn::kSum, 60'000, 1'000, layout::WindowEnd::kNow},
                  {"basket_mean_1m", "amount", layout::AggregateFn::kMean, 60'000, 1'000, layout::WindowEnd::kNow},
                  {"events_1m", "", layout::AggregateFn::kCount, 60'000, 1'000, layout::WindowEnd::kNow}};
  auto w = Writer::open(seg.name(), testing::one_table_schema(t), seg.writer_options());
  const int64_t t0 = 1'700'000'000'000;
  const uint32_t amount = static_cast<uint32_t>(w->source_index(0, "amount"));
  for (int k = 0; k < 10; ++k) {
    for (int e = 0; e <= k; ++e) {  // user:k buys k + 1 times, 10 each
      const SourceValue v{amount, 10.0};
      const int64_t at = t0 + e * 1000;
      ASSERT_EQ(w->apply(0, "user:" + std::to_string(k), at, {}, {&v, 1}, 0, at * 1'000'000), ApplyResult::kApplied);
    }
  }
  char err[256];
  larder_segment* segment = nullptr;
  larder_table* table = nullptr;
  ASSERT_EQ(larder_open(seg.name().c_str(), seg.dir().c_str(), &segment, err, sizeof err), LARDER_E_OK) << err;
  ASSERT_EQ(larder_table_open(segment, "users", &table, err, sizeof err), LARDER_E_OK) << err;
  uint32_t fields[3];
  ASSERT_EQ(larder_field_lookup(table, "spend_1m", &fields[0]), LARDER_E_OK);
  ASSERT_EQ(larder_field_lookup(table, "basket_mean_1m", &fields[1]), LARDER_E_OK);
  ASSERT_EQ(larder_field_lookup(table, "events_1m", &fields[2]), LARDER_E_OK);
  ASSERT_EQ(fields[0], 1u);
  ASSERT_EQ(larder_table_field(table, fields[2]).type, LARDER_INT64);
  std::vector<std::string> keys;
  for (int k = 0; k < 10; ++k) keys.push_back("user:" + std::to_string(k));
  const PackedKeys packed(keys);
  std::vector<double> out(keys.size() * 3);
  std::vector<int32_t> status(keys.size());
  auto gather = [&] {
    ASSERT_EQ(larder_gather_f64(table, packed.bytes.data(), packed.bytes.size(), packed.offsets.data(), 0, keys.size(),
                                fields, 3, out.data(), status.data(), nullptr, 0, NAN),
              LARDER_E_OK);
  };
  w->refresh((t0 + 10'000) * 1'000'000);
  gather();
  for (int k = 0; k < 10; ++k) {
    EXPECT_EQ(status[k], LARDER_OK);
    EXPECT_EQ(out[k * 3 + 0], 10.0 * (k + 1)) << k;
    EXPECT_EQ(out[k * 3 + 1], 10.0) << k;
    EXPECT_EQ(out[k * 3 + 2], k + 1.0) << k;
  }
  // 64.5 s after t0: the buckets of t0 .. t0 + 4 s have left every window.
  w->refresh((t0 + 64'500) * 1'000'000);
  gather();
  for (int k = 0; k < 10; ++k) {
    const int left = std::max(0, k + 1 - 5);
    EXPECT_EQ(out[k * 3 + 0], 10.0 * left) << k;
    EXPECT_EQ(out[k * 3 + 2], static_cast<double>(left)) << k;
    if (left == 0) {
      EXPECT_TRUE(std::isnan(out[k * 3 + 1])) << "an empty window's mean is missing, key " << k;
    } else {
      EXPECT_EQ(out[k * 3 + 1], 10.0) << k;
    }
  }
  larder_table_close(table);
  larder_close(segment);
}

}  // namespace
}  // namespace larder
