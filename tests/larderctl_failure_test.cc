// larderctl's exit code 3 ("the segment cannot be opened") for segments it
// must refuse: another layout version and a corrupt header (docs/operations.md,
// "Exit codes"). Each test writes a real segment with the writer API, edits
// its header bytes as another build or a stray write would, and runs the real
// larderctl binary on it. Test main thread only.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "larder/layout/format.h"
#include "larder/layout/segment_file.h"
#include "larder/writer/writer.h"
#include "support/run_command.h"
#include "support/test_segment.h"

#ifndef LARDERCTL_PATH
#error "LARDERCTL_PATH must name the larderctl binary"
#endif

namespace larder {
namespace {

using CtlRun = testing::CommandRun;

CtlRun run_larderctl(const std::string& args) { return testing::run_command(std::string(LARDERCTL_PATH) + " " + args); }

class LarderctlRefusesSegment : public ::testing::Test {
 protected:
  void SetUp() override {
    auto writer =
        Writer::open(seg_.name(), testing::one_table_schema(testing::every_type_table()), seg_.writer_options());
    const FieldValue clicks[] = {FieldValue::int64(0, 7)};
    ASSERT_EQ(writer->upsert(0, "u1", 1'700'000'000'000, clicks), ApplyResult::kApplied);
    path_ = writer->path();
    // The writer detaches here: the segment stays, as after a sidecar stop.
  }

  // Edits the header of the closed segment in place.
  template <class F>
  void edit_header(F&& f) {
    auto m = layout::MappedFile::open_read_write(path_, seg_.name());
    f(*static_cast<layout::SegmentHeader*>(m->mutable_data()), static_cast<char*>(m->mutable_data()));
  }

  // Every command that opens a segment must refuse it the same way.
  void expect_every_command_exits_3(const std::string& must_mention) {
    const std::string dir = "--dir " + seg_.dir() + " ";
    for (const std::string& command :
         {"info " + seg_.name(), "--json info " + seg_.name(), "get " + seg_.name() + " users u1",
          "dump " + seg_.name() + " users", "schema " + seg_.name()}) {
      const CtlRun r = run_larderctl(dir + command);
      EXPECT_EQ(r.code, 3) << "larderctl " << command << "\n" << r.out;
      EXPECT_NE(r.out.find(must_mention), std::string::npos)
          << "larderctl " << command << " must say \"" << must_mention << "\"\n"
          << r.out;
    }
  }

  testing::ScratchSegment seg_;
  std::string path_;
};

TEST_F(LarderctlRefusesSegment, OlderLayoutVersionExits3NamingBothVersions) {
  edit_header([](layout::SegmentHeader& h, char*) { h.layout_version = layout::kLayoutVersion - 1; });
  expect_every_command_exits_3("has layout v" + std::to_string(layout::kLayoutVersion - 1) + ", this build reads v" +
                               std::to_string(layout::kLayoutVersion));
}

TEST_F(LarderctlRefusesSegment, NewerLayoutVersionExits3) {
  edit_header([](layout::SegmentHeader& h, char*) { h.layout_version = layout::kLayoutVersion + 1; });
  expect_every_command_exits_3("v" + std::to_string(layout::kLayoutVersion + 1));
}

TEST_F(LarderctlRefusesSegment, CorruptMagicExits3) {
  edit_header([](layout::SegmentHeader& h, char*) { h.magic = 0x0123456789abcdefULL; });
  expect_every_command_exits_3(seg_.name());
}

TEST_F(LarderctlRefusesSegment, DescriptorOutsideTheFileExits3) {
  edit_header([](layout::SegmentHeader& h, char* base) {
    auto* d = reinterpret_cast<layout::TableDescriptor*>(base + h.header_bytes);
    d->slot_count *= 1000;
  });
  expect_every_command_exits_3("slot array outside the file");
}

TEST_F(LarderctlRefusesSegment, FieldDescriptorsWrappingAroundExit3) {
  edit_header([](layout::SegmentHeader& h, char* base) {
    reinterpret_cast<layout::TableDescriptor*>(base + h.header_bytes)->fields_offset = ~uint64_t{0} - 7;
  });
  expect_every_command_exits_3("field descriptors outside the file");
}

TEST_F(LarderctlRefusesSegment, TruncatedFileExits3) {
  uint64_t bytes = 0;
  edit_header([&](layout::SegmentHeader& h, char*) { bytes = h.segment_bytes; });
  ASSERT_EQ(::truncate(path_.c_str(), static_cast<off_t>(bytes / 2)), 0);
  expect_every_command_exits_3("the file has " + std::to_string(bytes / 2));
}

// A row whose stored lengths do not fit the schema: the segment opens, the
// row is reported corrupt, and no command dies of a signal (run_command
// reports -1 for a signal).
class LarderctlCorruptRow : public LarderctlRefusesSegment {
 protected:
  // The live slot of key "u1" in table 0.
  uint64_t* slot_u1(char* base, const layout::SegmentHeader& h) {
    const auto& d = *reinterpret_cast<const layout::TableDescriptor*>(base + h.header_bytes);
    auto* slots = reinterpret_cast<uint64_t*>(base + d.slots_offset);
    for (uint64_t i = 0; i < d.slot_count; ++i) {
      uint64_t* s = slots + i * (d.slot_bytes / 8);
      if (layout::meta_state(s[layout::kSlotMetaWord]) == layout::SlotState::kLive) return s;  // the only key
    }
    ADD_FAILURE() << "no live slot";
    return nullptr;
  }
};

TEST_F(LarderctlCorruptRow, KeyLengthBeyondTheSlotIsReportedNotFollowed) {
  edit_header([&](layout::SegmentHeader& h, char* base) { slot_u1(base, h)[layout::kSlotKeyLenWord] = 0xfffffff0u; });
  const std::string dir = "--dir " + seg_.dir() + " ";

  CtlRun r = run_larderctl(dir + "dump " + seg_.name() + " users");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("\"status\":\"corrupt\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1 slots hold lengths outside the schema"), std::string::npos) << r.out;

  r = run_larderctl(dir + "dump --format csv " + seg_.name() + " users");
  EXPECT_EQ(r.code, 1) << r.out;

  r = run_larderctl(dir + "get " + seg_.name() + " users u1");  // the stored length no longer matches
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("u1: not_found"), std::string::npos) << r.out;

  r = run_larderctl(dir + "info " + seg_.name());
  EXPECT_EQ(r.code, 0) << r.out;

  r = run_larderctl(dir + "verify " + seg_.name());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("key length 4294967280 is outside 1..32"), std::string::npos) << r.out;
}

TEST_F(LarderctlCorruptRow, StringLengthBeyondMaxLenIsReportedCorrupt) {
  edit_header([&](layout::SegmentHeader& h, char* base) {
    const auto& d = *reinterpret_cast<const layout::TableDescriptor*>(base + h.header_bytes);
    const auto* country = reinterpret_cast<const layout::FieldDescriptor*>(base + d.fields_offset) + 5;
    auto* payload =
        reinterpret_cast<char*>(slot_u1(base, h) + layout::kSlotHeaderWords + d.validity_words + d.key_words);
    const uint32_t len = 0x7fffffffu;
    std::memcpy(payload + country->offset, &len, sizeof len);
  });
  const std::string dir = "--dir " + seg_.dir() + " ";

  CtlRun r = run_larderctl(dir + "get " + seg_.name() + " users u1");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("u1: corrupt"), std::string::npos) << r.out;

  r = run_larderctl(dir + "--json get " + seg_.name() + " users u1");
  EXPECT_NE(r.out.find("{\"key\":\"u1\",\"status\":\"corrupt\"}"), std::string::npos) << r.out;

  r = run_larderctl(dir + "dump " + seg_.name() + " users");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("\"status\":\"corrupt\""), std::string::npos) << r.out;

  r = run_larderctl(dir + "verify " + seg_.name());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("field country has string length 2147483647, above its max_len 8"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace larder
