// Readers against corrupted copies of a real segment: one test per class of
// corruption (key length, string length, slot index and probe, descriptor
// offset, truncated file). Each writes a segment with the writer API, closes
// the writer, edits the bytes as a bit flip or a stray write would, and then
// asserts the exact outcome: a refusal at open with ErrorCode::kCorrupt, or
// Status::kCorrupt / kNotFound for the damaged row while the other rows read
// normally. Test main thread only.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "larder/client.h"
#include "larder/larder.h"
#include "larder/layout/format.h"
#include "larder/layout/segment_file.h"
#include "larder/layout/table_view.h"
#include "larder/writer/writer.h"
#include "support/test_segment.h"

namespace larder {
namespace {

using layout::SegmentHeader;
using layout::TableDescriptor;

constexpr int64_t kEventTime = 1'700'000'000'000;

class CorruptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto writer =
        Writer::open(seg_.name(), testing::one_table_schema(testing::every_type_table()), seg_.writer_options());
    for (const char* key : {"u1", "u2", "u3"}) {
      const FieldValue values[] = {FieldValue::int64(0, 7), FieldValue::string(5, "se")};
      ASSERT_EQ(writer->upsert(0, key, kEventTime, values), ApplyResult::kApplied);
    }
    path_ = writer->path();
    // The writer detaches here: the segment stays, as after a sidecar stop.
  }

  // Edits the closed segment in place: f(header, base, table 0's descriptor).
  void edit(const std::function<void(SegmentHeader&, char*, TableDescriptor&)>& f) {
    auto m = layout::MappedFile::open_read_write(path_, seg_.name());
    char* base = static_cast<char*>(m->mutable_data());
    auto& h = *reinterpret_cast<SegmentHeader*>(base);
    f(h, base, *reinterpret_cast<TableDescriptor*>(base + h.header_bytes));
  }

  // The words of the slot that holds `key` live, found by scanning (not by
  // hashing, so that the test does not share the code under test).
  static uint64_t* slot_of(char* base, const TableDescriptor& d, std::string_view key) {
    auto* slots = reinterpret_cast<uint64_t*>(base + d.slots_offset);
    const uint32_t slot_words = d.slot_bytes / 8;
    for (uint64_t i = 0; i < d.slot_count; ++i) {
      uint64_t* s = slots + i * slot_words;
      if (layout::meta_state(s[layout::kSlotMetaWord]) != layout::SlotState::kLive) continue;
      const char* k = reinterpret_cast<const char*>(s + layout::kSlotHeaderWords + d.validity_words);
      if ((s[layout::kSlotKeyLenWord] & 0xffffffffu) == key.size() && std::memcmp(k, key.data(), key.size()) == 0) {
        return s;
      }
    }
    ADD_FAILURE() << "no live slot holds " << key;
    return nullptr;
  }

  // The length word of string field `field` in slot s.
  static uint32_t* string_length_of(char* base, const TableDescriptor& d, uint64_t* s, uint32_t field) {
    const auto* fd = reinterpret_cast<const layout::FieldDescriptor*>(base + d.fields_offset) + field;
    auto* payload = reinterpret_cast<char*>(s + layout::kSlotHeaderWords + d.validity_words + d.key_words);
    return reinterpret_cast<uint32_t*>(payload + fd->offset);
  }

  Segment open() const { return Segment::open(seg_.name(), ClientOptions{seg_.dir()}); }

  // Open must refuse the segment with kCorrupt and a message naming `what`.
  void expect_refused(const std::string& what) const {
    try {
      open();
      ADD_FAILURE() << "open accepted the corrupted segment";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCorrupt) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  }

  testing::ScratchSegment seg_;
  std::string path_;
};

TEST_F(CorruptionTest, KeyLengthAboveKeyMaxLenIsCorruptForThatRowOnly) {
  edit([](SegmentHeader&, char* base, TableDescriptor& d) {
    slot_of(base, d, "u1")[layout::kSlotKeyLenWord] = 0xfffffff0u;  // far beyond the slot
  });
  const Segment s = open();
  const Table users = s.table("users");
  Row row = users.make_row();
  // The lookup compares the stored length with the caller's key: no match.
  EXPECT_EQ(users.get("u1", row).status, Status::kNotFound);
  EXPECT_EQ(users.get("u2", row).status, Status::kOk);
  EXPECT_EQ(row.i64(users.field("clicks")), 7);

  // Reading the slot whole (as larderctl dump does) yields kCorrupt, and the
  // key view stays inside the row buffer even so.
  auto m = layout::MappedFile::open_read_only(path_, seg_.name());
  const auto& d = layout::table_descriptor(m->data(), 0);
  const layout::TableGeometry geo = layout::table_geometry(m->data(), d);
  std::vector<uint64_t> words(geo.slot_words);
  int corrupt = 0, ok = 0;
  for (uint64_t i = 0; i < geo.slot_count; ++i) {
    if (layout::meta_state(geo.slot(i)[layout::kSlotMetaWord]) != layout::SlotState::kLive) continue;
    ASSERT_EQ(layout::read_whole_slot(geo, geo.slot(i), words.data(), 16), layout::SlotRead::kMatch);
    const Status st = users.check_row(words.data() + 1);
    (st == Status::kCorrupt ? corrupt : ok) += 1;
    EXPECT_LE(users.view(words.data() + 1).key().size(), size_t{geo.key_words} * 8);
  }
  EXPECT_EQ(corrupt, 1);
  EXPECT_EQ(ok, 2);
}

TEST_F(CorruptionTest, StringLengthAboveMaxLenIsCorruptForThatRowOnly) {
  edit([](SegmentHeader&, char* base, TableDescriptor& d) {
    *string_length_of(base, d, slot_of(base, d, "u2"), 5) = 0x7fffffffu;
  });
  const Segment s = open();
  const Table users = s.table("users");
  Row row = users.make_row();
  EXPECT_EQ(users.get("u2", row).status, Status::kCorrupt);
  EXPECT_FALSE(users.get("u2", row).found());
  ASSERT_EQ(users.get("u1", row).status, Status::kOk);
  EXPECT_EQ(row.string(users.field("country")), "se");

  const std::string_view keys[] = {"u1", "u2", "u3"};
  RowBatch batch = users.make_batch(3);
  ReadResult results[3];
  users.get_many(keys, batch, results);
  EXPECT_EQ(results[0].status, Status::kOk);
  EXPECT_EQ(results[1].status, Status::kCorrupt);
  EXPECT_EQ(results[2].status, Status::kOk);
  EXPECT_EQ(batch.row(2).string(users.field("country")), "se");

  // The C ABI says the same.
  larder_segment* cs = nullptr;
  larder_table* ct = nullptr;
  ASSERT_EQ(larder_open(seg_.name().c_str(), seg_.dir().c_str(), &cs, nullptr, 0), LARDER_E_OK);
  ASSERT_EQ(larder_table_open(cs, "users", &ct, nullptr, 0), LARDER_E_OK);
  std::vector<uint64_t> buf(larder_table_row_bytes(ct) / 8);
  EXPECT_EQ(larder_get(ct, "u2", 2, buf.data(), 0).status, LARDER_CORRUPT);
  EXPECT_EQ(larder_get(ct, "u3", 2, buf.data(), 0).status, LARDER_OK);
  EXPECT_STREQ(larder_status_name(LARDER_CORRUPT), "corrupt");
  larder_table_close(ct);
  larder_close(cs);
}

TEST_F(CorruptionTest, SlotCountBeyondTheFileIsRefusedAtOpen) {
  edit([](SegmentHeader&, char*, TableDescriptor& d) { d.slot_count = uint64_t{1} << 62; });
  expect_refused("slot array outside the file");
}

TEST_F(CorruptionTest, ProbeOverCorruptedMetaWordsStaysInsideTheTable) {
  // Every slot claims to be live with a hash no key has: the probe has no
  // empty slot to stop at and must give up after slot_count slots.
  edit([](SegmentHeader&, char* base, TableDescriptor& d) {
    auto* slots = reinterpret_cast<uint64_t*>(base + d.slots_offset);
    for (uint64_t i = 0; i < d.slot_count; ++i) {
      slots[i * (d.slot_bytes / 8) + layout::kSlotMetaWord] = 0x5555555555555554ULL | 1u;  // state bits: live
    }
  });
  const Segment s = open();
  const Table users = s.table("users");
  ASSERT_EQ(layout::meta_state(0x5555555555555555ULL), layout::SlotState::kLive);
  Row row = users.make_row();
  for (const char* key : {"u1", "u2", "absent"}) EXPECT_EQ(users.get(key, row).status, Status::kNotFound) << key;
}

TEST_F(CorruptionTest, FieldDescriptorOffsetOutsideTheFileIsRefusedAtOpen) {
  // Near 2^64: offset + size would wrap around to a small number.
  edit([](SegmentHeader&, char*, TableDescriptor& d) { d.fields_offset = ~uint64_t{0} - 7; });
  expect_refused("field descriptors outside the file");
}

TEST_F(CorruptionTest, SlotArrayOffsetOutsideTheFileIsRefusedAtOpen) {
  edit([](SegmentHeader& h, char*, TableDescriptor& d) { d.slots_offset = h.segment_bytes + layout::kSlotAlign; });
  expect_refused("slot array outside the file");
}

TEST_F(CorruptionTest, UndoAreaWrappingAroundIsRefusedAtOpen) {
  edit([](SegmentHeader& h, char*, TableDescriptor&) { h.undo_bytes = ~uint64_t{0} - h.undo_offset + 1; });
  expect_refused("undo area outside the file");
}

TEST_F(CorruptionTest, TruncatedFileIsRefusedAtOpen) {
  uint64_t bytes = 0;
  edit([&](SegmentHeader& h, char*, TableDescriptor&) { bytes = h.segment_bytes; });
  ASSERT_EQ(::truncate(path_.c_str(), static_cast<off_t>(bytes / 2)), 0);
  expect_refused("header says " + std::to_string(bytes) + " bytes, the file has " + std::to_string(bytes / 2));

  ASSERT_EQ(::truncate(path_.c_str(), 100), 0);  // shorter than the header
  expect_refused("too small to be a Larder segment");
}

// Classes the read-side fuzzer found (fuzz/read_segment_fuzz.cc; each has
// its input in fuzz/regressions/read_segment).

// The C ABI takes a field index from the caller: an index out of range, or
// one whose field has another type than the accessor reads, must read
// nothing (larder.h says what each returns), never another field's bytes or
// past the row buffer (a vector of 8 floats read at the string's offset
// would end 16 bytes past it).
TEST_F(CorruptionTest, CAbiAccessorsWithTheWrongFieldReadNothing) {
  larder_segment* cs = nullptr;
  larder_table* ct = nullptr;
  ASSERT_EQ(larder_open(seg_.name().c_str(), seg_.dir().c_str(), &cs, nullptr, 0), LARDER_E_OK);
  ASSERT_EQ(larder_table_open(cs, "users", &ct, nullptr, 0), LARDER_E_OK);
  std::vector<uint64_t> row(larder_table_row_bytes(ct) / 8);
  ASSERT_EQ(larder_get(ct, "u1", 2, row.data(), 0).status, LARDER_OK);
  const uint32_t clicks = 0, premium = 3, embedding = 4, country = 5, past_end = 6;
  EXPECT_EQ(larder_row_int64(ct, row.data(), clicks), 7);
  uint32_t n = 99;
  EXPECT_EQ(larder_row_vector(ct, row.data(), country, &n), nullptr);
  EXPECT_EQ(n, 0u);
  n = 99;
  EXPECT_EQ(larder_row_string(ct, row.data(), embedding, &n), nullptr);
  EXPECT_EQ(n, 0u);
  EXPECT_EQ(larder_row_int64(ct, row.data(), premium), 0);
  EXPECT_TRUE(std::isnan(larder_row_float64(ct, row.data(), clicks)));
  EXPECT_TRUE(std::isnan(larder_row_float32(ct, row.data(), country)));
  EXPECT_EQ(larder_row_bool(ct, row.data(), clicks), 0);
  for (const uint32_t f : {past_end, 1000u, UINT32_MAX}) {
    EXPECT_EQ(larder_row_valid(ct, row.data(), f), 0);
    EXPECT_EQ(larder_row_int64(ct, row.data(), f), 0);
    EXPECT_TRUE(std::isnan(larder_row_float64(ct, row.data(), f)));
    EXPECT_TRUE(std::isnan(larder_row_float32(ct, row.data(), f)));
    EXPECT_EQ(larder_row_bool(ct, row.data(), f), 0);
    EXPECT_TRUE(std::isnan(larder_row_as_double(ct, row.data(), f)));
    EXPECT_EQ(larder_row_vector(ct, row.data(), f, &n), nullptr);
    EXPECT_EQ(larder_row_string(ct, row.data(), f, &n), nullptr);
  }
  // The right types still read.
  EXPECT_EQ(larder_row_vector(ct, row.data(), embedding, &n), larder_row_vector(ct, row.data(), embedding, nullptr));
  EXPECT_EQ(n, 8u);
  ASSERT_NE(larder_row_string(ct, row.data(), country, &n), nullptr);
  EXPECT_EQ(std::string(larder_row_string(ct, row.data(), country, &n), n), "se");
  larder_table_close(ct);
  larder_close(cs);
}

// An event time from a corrupt slot (or a producer's clock gone wrong) far
// in the past: now - event time overflows int64. The row is stale, the age
// saturates, and nothing overflows.
TEST_F(CorruptionTest, EventTimeFarInThePastIsStaleWithoutOverflow) {
  edit([](SegmentHeader&, char* base, TableDescriptor& d) {
    slot_of(base, d, "u1")[layout::kSlotEventTimeWord] = uint64_t{1} << 63;  // INT64_MIN
    slot_of(base, d, "u2")[layout::kSlotEventTimeWord] = ~uint64_t{0} >> 1;  // INT64_MAX: the future
  });
  const Segment s = open();
  const Table users = s.table("users");
  Row row = users.make_row();
  ReadResult r = users.get("u1", row, ReadOptions{1000});
  EXPECT_EQ(r.status, Status::kStale);
  EXPECT_EQ(r.event_time_ms, INT64_MIN);
  EXPECT_EQ(r.age_ms(), INT64_MAX);
  r = users.get("u2", row, ReadOptions{1000});
  EXPECT_EQ(r.status, Status::kOk);  // not older than max_age: from the future
  EXPECT_EQ(r.age_ms(-2), INT64_MIN);

  const std::string_view keys[] = {"u1", "u2"};
  RowBatch batch = users.make_batch(2);
  ReadResult results[2];
  users.get_many(keys, batch, results, ReadOptions{1000});
  EXPECT_EQ(results[0].status, Status::kStale);
  EXPECT_EQ(results[1].status, Status::kOk);
}

// A heartbeat word from the future (corrupt, or another clock): the age
// saturates instead of overflowing.
TEST_F(CorruptionTest, HeartbeatFarFromNowDoesNotOverflowTheAge) {
  edit([](SegmentHeader& h, char*, TableDescriptor&) { h.heartbeat_mono_ns.store(uint64_t{1} << 63); });
  const Segment s = open();
  EXPECT_EQ(s.info().heartbeat_age_ms, INT64_MAX / 1'000'000);
  EXPECT_FALSE(s.writer_alive());
}

// A vector field whose offset is not a multiple of its alignment (8: the
// writer places vectors on whole words) would hand out a misaligned float*:
// refused at open.
TEST_F(CorruptionTest, MisalignedVectorFieldIsRefusedAtOpen) {
  edit([](SegmentHeader&, char* base, TableDescriptor& d) {
    auto* fd = reinterpret_cast<layout::FieldDescriptor*>(base + d.fields_offset) + 4;  // embedding
    ASSERT_EQ(fd->type, static_cast<uint32_t>(layout::FieldType::kFloat32Vector));
    fd->offset += 2;  // still inside the row
  });
  expect_refused("field 4 is misaligned");
}

}  // namespace
}  // namespace larder
