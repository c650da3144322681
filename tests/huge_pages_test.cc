// Huge pages for the segment (docs/deployment.md, "Huge pages"): every
// mapping of a segment starts on a 2 MiB boundary, and what the writer and a
// reader report about 2 MiB pages is what the kernel says in /proc/self/smaps
// for that mapping, on whatever mount the test gets: /dev/shm (huge=never
// on most hosts), with and without a collapse, and, where the test may mount
// a tmpfs (root, or CAP_SYS_ADMIN), one mounted huge=within_size. Nothing
// here needs huge pages to pass: it needs the report to be true.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "larder/client.h"
#include "larder/layout/segment_file.h"
#include "larder/writer/writer.h"
#include "support/test_segment.h"

namespace larder {
namespace {

using layout::HugePageReport;
using layout::kHugePageBytes;
using testing::ScratchSegment;

// A table of about 12 MiB: several whole 2 MiB pages and a tail.
layout::Schema big_schema() {
  layout::TableSpec t = testing::every_type_table("users", 40'000, 16);
  return testing::one_table_schema(t);
}

// The test's own reading of /proc/self/smaps for [lo, lo + bytes): its Rss
// and ShmemPmdMapped + FilePmdMapped, summed over the VMAs inside the range.
struct Smaps {
  bool found = false;
  uint64_t rss = 0;
  uint64_t pmd = 0;
};
Smaps read_smaps(const void* at, size_t bytes) {
  Smaps out;
  std::FILE* f = std::fopen("/proc/self/smaps", "r");
  if (f == nullptr) return out;
  const auto lo = reinterpret_cast<uintptr_t>(at), hi = lo + bytes;
  bool inside = false;
  char line[512];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    char* dash = std::strchr(line, '-');
    char* space = std::strchr(line, ' ');
    if (dash != nullptr && space != nullptr && dash < space) {  // "start-end perms offset dev inode path"
      const uint64_t start = std::strtoull(line, nullptr, 16), end = std::strtoull(dash + 1, nullptr, 16);
      inside = start >= lo && end <= hi && start < end;
      out.found |= inside;
      continue;
    }
    if (!inside) continue;
    const std::string l(line);
    const auto kb = [&](const char* key) -> uint64_t {
      return l.rfind(key, 0) == 0 ? std::strtoull(line + std::strlen(key), nullptr, 10) * 1024 : 0;
    };
    out.rss += kb("Rss:");
    out.pmd += kb("ShmemPmdMapped:") + kb("FilePmdMapped:");
  }
  std::fclose(f);
  return out;
}

// The report matches smaps, and says what 2 MiB pages could back.
void expect_matches_smaps(const HugePageReport& r, const void* at, size_t bytes, const char* who) {
  SCOPED_TRACE(who);
  const Smaps s = read_smaps(at, bytes);
  ASSERT_TRUE(s.found) << "no smaps entry for the mapping";
  EXPECT_TRUE(r.known);
  EXPECT_EQ(r.mapping_bytes, bytes);
  EXPECT_EQ(r.eligible_bytes, bytes / kHugePageBytes * kHugePageBytes);
  EXPECT_EQ(r.resident_bytes, s.rss);
  EXPECT_EQ(r.huge_bytes, s.pmd);
  EXPECT_EQ(r.huge_bytes % kHugePageBytes, 0u);
  EXPECT_LE(r.huge_bytes, r.eligible_bytes);
  EXPECT_EQ(r.all_huge(), s.pmd >= bytes / kHugePageBytes * kHugePageBytes);
  std::printf("[ report   ] %s: %s\n", who, layout::describe(r).c_str());
}

// Opens a writer on `dir` with `mode`, checks its report and a reader's.
// Returns the writer's report.
HugePageReport check_dir(const std::string& dir, HugePages mode) {
  ScratchSegment seg(dir);
  WriterOptions wo = seg.writer_options();
  wo.huge_pages = mode;
  auto w = Writer::open(seg.name(), big_schema(), wo);
  const size_t bytes = static_cast<const layout::SegmentHeader*>(w->data())->segment_bytes;
  EXPECT_GT(bytes, 4 * kHugePageBytes);
  // A 2 MiB aligned mapping: file offset 0 on a huge page boundary.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w->data()) % kHugePageBytes, 0u);
  HugePageReport wr = w->huge_pages();
  EXPECT_EQ(wr.mount_huge, layout::mount_huge_option(dir));
  // Every whole 2 MiB of the file was touched: at least a page of each is in.
  EXPECT_GE(wr.resident_bytes, wr.eligible_bytes / kHugePageBytes * 4096);
  expect_matches_smaps(wr, w->data(), bytes, "writer");

  auto reader = layout::MappedFile::open_read_only(layout::segment_path(dir, seg.name()), seg.name());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(reader->data()) % kHugePageBytes, 0u);
  reader->touch_huge_pages();
  const HugePageReport rr = reader->huge_pages();
  expect_matches_smaps(rr, reader->data(), reader->size(), "reader");
  // One page cache: a reader gets the pages the writer got.
  EXPECT_EQ(rr.huge_bytes, wr.huge_bytes);
  return wr;
}

TEST(HugePages, ReportMatchesSmapsOnDevShm) {
  const std::string mount = layout::mount_huge_option("/dev/shm");
  EXPECT_FALSE(mount.empty()) << "/dev/shm is not a tmpfs here";
  check_dir("/dev/shm", HugePages::kAuto);
  check_dir("/dev/shm", HugePages::kOff);
}

// collapse asks the kernel for 2 MiB pages even on a huge=never mount; a
// kernel may refuse (older than 6.1, "deny", no free 2 MiB pages), so what
// it gave is only checked against smaps.
TEST(HugePages, CollapseReportMatchesSmaps) { check_dir("/dev/shm", HugePages::kCollapse); }

TEST(HugePages, MountOptionOfNonTmpfs) {
  EXPECT_EQ(layout::mount_huge_option("/proc"), "");
  EXPECT_EQ(layout::mount_huge_option("/no/such/directory"), "");
}

// A tmpfs of its own, mounted huge=within_size (unmounted by the guard).
class HugeTmpfs {
 public:
  HugeTmpfs() {
    char tmpl[] = "/tmp/larder-hugetest-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      why_ = std::string("mkdtemp: ") + std::strerror(errno);
      return;
    }
    dir_ = tmpl;
    if (::mount("tmpfs", dir_.c_str(), "tmpfs", 0, "huge=within_size,size=64m,mode=0700") != 0) {
      why_ = std::string("mount -t tmpfs -o huge=within_size: ") + std::strerror(errno);
      return;
    }
    mounted_ = true;
  }
  ~HugeTmpfs() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
    if (!dir_.empty()) ::rmdir(dir_.c_str());
  }
  bool mounted() const { return mounted_; }
  const std::string& dir() const { return dir_; }
  const std::string& why_not() const { return why_; }

 private:
  std::string dir_, why_;
  bool mounted_ = false;
};

TEST(HugePages, WithinSizeTmpfsBacksTheSegment) {
  HugeTmpfs fs;
  if (!fs.mounted()) {
    std::printf("[ skipped  ] no tmpfs of our own (%s): the within_size expectation is not checked here\n",
                fs.why_not().c_str());
    return;
  }
  EXPECT_EQ(layout::mount_huge_option(fs.dir()), "within_size");
  // The kernel may still fall back to 4 KiB pages when no free 2 MiB page is
  // at hand (fragmented memory): the report must say what it gave, which
  // check_dir holds against smaps; whether it gave all of them is printed.
  const HugePageReport r = check_dir(fs.dir(), HugePages::kAuto);
  std::printf("[ within   ] %s the segment: %s\n", r.all_huge() ? "2 MiB pages back all of" : "NOT all of",
              layout::describe(r).c_str());
}

}  // namespace
}  // namespace larder
