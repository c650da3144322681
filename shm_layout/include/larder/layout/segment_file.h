// Segment files: names, paths, mappings and header validation. Shared by the
// writer, the client and larderctl so they agree on what a valid segment is.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "larder/layout/error.h"
#include "larder/layout/format.h"
#include "larder/layout/schema.h"
#include "larder/layout/table_view.h"

namespace larder::layout {

// Segment names: 1..200 bytes of [A-Za-z0-9_.-], not starting with '.' or
// '-', not ending in ".lock". Throws Error(kInvalidArgument) saying which rule.
void validate_segment_name(std::string_view name);

std::string segment_path(std::string_view dir, std::string_view name);

// 16 lowercase hex digits, zero padded, no prefix: how fingerprints, ABI
// signatures and other 64-bit identifiers are printed.
std::string hex64(uint64_t v);

// The file system under a segment directory. Segments belong on a
// memory-backed one (tmpfs, ramfs): anywhere else every update would be
// written back to disk, so the writer refuses it unless told otherwise
// (WriterOptions::allow_non_tmpfs) and `larderctl size --check-dir` flags it.
struct DirFileSystem {
  uint64_t magic = 0;          // statfs f_type
  bool memory_backed = false;  // tmpfs or ramfs
  bool size_limited = true;    // false on ramfs, which has no limit and reports 0 blocks
  std::string type_name;       // "tmpfs", "ramfs" or "0x" and the magic's low 8 hex digits
};
// statfs(2) of `dir`. Returns false with errno set when that fails.
bool dir_file_system(const std::string& dir, DirFileSystem* out);

// Free space the writer keeps on the file system beyond the segment itself:
// creating a segment that leaves less fails with kNoSpace.
inline constexpr uint64_t kSegmentFreeMargin = uint64_t{1} << 20;

// Huge pages (docs/deployment.md, "Huge pages"). A segment is read and
// written at random: with 4 KiB pages every key costs TLB misses and page
// walks, two per aggregate update (the slot and its state block). Where the
// file system hands out 2 MiB pages (a tmpfs mounted with huge=within_size,
// always or advise; a Kubernetes emptyDir of medium HugePages-2Mi), a mapping
// at a 2 MiB aligned address is backed by them, one TLB entry each.
inline constexpr size_t kHugePageBytes = size_t{2} << 20;

// How much of a mapping the kernel maps with 2 MiB pages, read from this
// process's /proc/self/smaps entry for it. It counts the 2 MiB pages this
// process has touched: MappedFile::touch_huge_pages() first makes that every
// one of the file.
struct HugePageReport {
  bool known = false;           // false: no smaps entry found (no /proc)
  uint64_t mapping_bytes = 0;   // the mapping's size
  uint64_t resident_bytes = 0;  // Rss: bytes of the file this process has mapped in
  uint64_t huge_bytes = 0;      // of those, mapped by 2 MiB entries (ShmemPmdMapped + FilePmdMapped)
  // Bytes 2 MiB pages can back: the file cut down to whole 2 MiB pages (the
  // tail of a file whose size is not a multiple stays in 4 KiB pages).
  uint64_t eligible_bytes = 0;
  std::string mount_huge;  // the huge= option of the directory's mount ("never" when none; "" unknown)
  bool all_huge() const noexcept { return known && eligible_bytes > 0 && huge_bytes >= eligible_bytes; }
};
// "12 of 850 2 MiB pages (tmpfs huge=never)": the report for logs and larderctl.
std::string describe(const HugePageReport& r);

// The huge= option of the tmpfs mount that holds `dir`, from
// /proc/self/mountinfo: "never" for a tmpfs mounted without one, "" when the
// mount is not found or is not a tmpfs (hugetlbfs answers "hugetlbfs").
std::string mount_huge_option(const std::string& dir);

// A mapping of a whole segment file. Read-only mappings are PROT_READ: a
// write through one faults. A mapping of 2 MiB or more starts at a 2 MiB
// aligned address (file offset 0 on a huge page boundary, so every whole
// 2 MiB page of the file can be mapped by one entry) and carries
// MADV_HUGEPAGE, which a tmpfs mounted huge=advise needs and any other mount
// ignores. Neither changes what the file holds.
class MappedFile {
 public:
  // Throws Error: kNotFound, kPermissionDenied (with the file's mode, owner
  // and the fix), kCorrupt (too small to be a segment), kSystem.
  static std::unique_ptr<MappedFile> open_read_only(const std::string& path, std::string_view name);
  static std::unique_ptr<MappedFile> open_read_write(const std::string& path, std::string_view name);
  ~MappedFile();

  const void* data() const noexcept { return data_; }
  void* mutable_data() noexcept { return data_; }
  size_t size() const noexcept { return size_; }
  const SegmentHeader& header() const noexcept { return *static_cast<const SegmentHeader*>(data_); }

  // Reads one byte of every whole 2 MiB of the file, so that each is mapped
  // in: by one 2 MiB entry where the page cache holds a 2 MiB page there
  // (the mapping is aligned), by 4 KiB entries otherwise. huge_pages() then
  // counts every 2 MiB page of the file. One fault per 2 MiB (the segment's
  // 4 KiB pages are not all mapped in: that took seconds per GB here).
  void touch_huge_pages() const noexcept;
  // Asks the kernel to replace the file's 4 KiB pages by 2 MiB ones now
  // (MADV_COLLAPSE, Linux 6.1): in the page cache, so for every process
  // that maps the file. It works on a tmpfs mounted huge=advise, whose
  // fallocated pages are small, and also overrides huge=never (not the
  // system-wide "deny"). Copies the file once; the contents are unchanged.
  // Returns false with errno set when it did not make every page huge
  // (EINVAL: an older kernel; EAGAIN/ENOMEM: no free 2 MiB pages).
  bool collapse() noexcept;
  // Reads /proc/self/smaps now. mount_huge is left to the caller (the
  // mapping does not know its directory).
  HugePageReport huge_pages() const;

  struct Region;

 private:
  MappedFile() = default;
  std::unique_ptr<Region> region_;
  void* data_ = nullptr;
  size_t size_ = 0;
  bool writable_ = false;
};

// Checks the size (at least a header), magic, endianness, layout version, ABI signature, size and every
// descriptor's bounds. Throws Error naming the segment and both versions on a
// mismatch (kVersionMismatch), kNotReady while it is being created, kCorrupt
// otherwise. Does not check the state for kRetired (a retired segment is
// still readable).
void validate_segment(const void* base, size_t size, std::string_view name);

// Requires a validated segment.
const TableDescriptor& table_descriptor(const void* base, uint32_t table) noexcept;
const FieldDescriptor& field_descriptor(const void* base, const TableDescriptor& t, uint32_t field) noexcept;
const AggregateDescriptor& aggregate_descriptor(const void* base, const TableDescriptor& t, uint32_t a) noexcept;
const GroupDescriptor& group_descriptor(const void* base, const TableDescriptor& t, uint32_t group) noexcept;
TableGeometry table_geometry(const void* base, const TableDescriptor& t) noexcept;
const SourceBlock& source_block(const void* base) noexcept;

// The schema a validated segment was created from (its fingerprint equals
// the header's).
Schema schema_of(const void* base);

// A NUL-padded name field as a string_view.
std::string_view fixed_name(const char (&name)[kNameBytes]) noexcept;

}  // namespace larder::layout
