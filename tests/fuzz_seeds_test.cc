// The read-side fuzzer's seeds (fuzz/corpus/read_segment, written by
// fuzz/make_read_corpus.cc) are real segments of this build's layout: a
// layout change that leaves them behind would make the fuzzer spend its runs
// on refusals at open. Also pins what each seed holds for verify.
#include <dirent.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "larder/client.h"
#include "larder/layout/format.h"
#include "larder/layout/segment_file.h"
#include "segment_verify.h"
#include "support/test_segment.h"

namespace larder {
namespace {

constexpr char kRegenerate[] =
    "regenerate the seeds: cmake --build build --target larder_make_read_corpus && "
    "build/tests/larder_make_read_corpus fuzz/corpus/read_segment";

std::map<std::string, std::vector<char>> seeds() {
  std::map<std::string, std::vector<char>> out;
  if (DIR* d = ::opendir(LARDER_READ_CORPUS_DIR)) {
    while (const dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::ifstream in(std::string(LARDER_READ_CORPUS_DIR) + "/" + e->d_name, std::ios::binary);
      out[e->d_name] = {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    }
    ::closedir(d);
  }
  return out;
}

TEST(FuzzSeeds, OpenWithThisLayout) {
  const auto all = seeds();
  ASSERT_GE(all.size(), 5u) << "seeds missing in " << LARDER_READ_CORPUS_DIR << ": " << kRegenerate;
  for (const auto& [file, bytes] : all) {
    SCOPED_TRACE(file);
    EXPECT_LE(bytes.size(), size_t{64} << 10) << "keep the seeds small: the fuzzer mutates every byte";
    testing::ScratchSegment seg;
    {
      std::ofstream out(layout::segment_path(seg.dir(), seg.name()), std::ios::binary);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }
    try {
      const Segment s = Segment::open(seg.name(), ClientOptions{seg.dir()});
      EXPECT_EQ(s.info().layout_version, layout::kLayoutVersion) << kRegenerate;
      EXPECT_FALSE(s.table_names().empty());
    } catch (const Error& e) {
      ADD_FAILURE() << file << " no longer opens (" << e.what() << "): " << kRegenerate;
    }
  }
}

// The seeds cover each outcome of verify but in_flight (which needs a live
// writer): the killed ones are repairable, the others clean.
TEST(FuzzSeeds, VerifyOutcomes) {
  for (const auto& [file, bytes] : seeds()) {
    SCOPED_TRACE(file);
    testing::ScratchSegment seg;
    {
      std::ofstream out(layout::segment_path(seg.dir(), seg.name()), std::ios::binary);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }
    auto m = layout::MappedFile::open_read_only(layout::segment_path(seg.dir(), seg.name()), seg.name());
    ASSERT_NO_THROW(layout::validate_segment(m->data(), m->size(), seg.name())) << kRegenerate;
    verify::Options o;
    o.writer = verify::WriterCheck::kAssumeAbsent;
    const verify::Report r = verify::verify_segment(m->data(), o);
    const bool killed = file.find("killed") != std::string::npos;
    EXPECT_EQ(r.outcome, killed ? verify::Outcome::kRepairable : verify::Outcome::kClean)
        << (r.problems.empty() ? "" : r.problems[0]);
    EXPECT_GT(r.slots_checked, 0u);
  }
}

}  // namespace
}  // namespace larder
