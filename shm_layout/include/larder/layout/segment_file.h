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

// A mapping of a whole segment file. Read-only mappings are PROT_READ: a
// write through one faults.
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

  struct Region;

 private:
  MappedFile() = default;
  std::unique_ptr<Region> region_;
  void* data_ = nullptr;
  size_t size_ = 0;
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
