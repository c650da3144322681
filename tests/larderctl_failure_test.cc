// larderctl's exit code 3 ("the segment cannot be opened") for segments it
// must refuse: another layout version and a corrupt header (docs/operations.md,
// "Exit codes"). Each test writes a real segment with the writer API, edits
// its header bytes as another build or a stray write would, and runs the real
// larderctl binary on it. Test main thread only.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace larder
