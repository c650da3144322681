// Snapshot files: a whole segment image (Writer::copy_image), compressed with
// zstd, with the checksums and versions that let a reader refuse a damaged or
// foreign file before it builds anything from it.
//
//   offset 0                     128                                     end
//   +----------------------------+----------------------------------------+
//   | SnapshotHeader (128 bytes) | payload: one zstd frame of the image   |
//   | little-endian, checksummed | (content size set), payload_bytes long |
//   +----------------------------+----------------------------------------+
//
// The image is a complete segment: header, descriptors, rows, aggregate state,
// dedup set and (layout v3) the source block with the positions it covers.
// The file header repeats only what a reader needs to refuse the file early
// (versions, sizes, checksums) and to describe it (segment name, time).
// docs/segment-format.md ("Snapshot files") describes the same bytes.
//
// Threading: every function here is thread-compatible (no shared state);
// compression may use zstd's own worker threads (WriteOptions::threads).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "larder/layout/error.h"

namespace larder::snapshot {

// "LARDSNP1", the first 8 bytes of every snapshot file.
inline constexpr char kSnapshotMagic[8] = {'L', 'A', 'R', 'D', 'S', 'N', 'P', '1'};
inline constexpr uint32_t kSnapshotFormatVersion = 1;
inline constexpr size_t kSnapshotHeaderBytes = 128;
inline constexpr size_t kSnapshotNameBytes = 40;  // segment_name: at most 39 bytes, NUL padded

// The file header, as stored (little-endian; this build runs on
// little-endian machines only, as the segment format does).
struct SnapshotHeader {
  char magic[8];                          //   0  kSnapshotMagic
  uint32_t format_version;                //   8  kSnapshotFormatVersion
  uint32_t flags;                         //  12  0 (no flags are defined)
  uint32_t layout_version;                //  16  the image's SegmentHeader::layout_version
  uint32_t reserved;                      //  20  0
  uint64_t abi_signature;                 //  24  the image's SegmentHeader::abi_signature
  uint64_t schema_fingerprint;            //  32  the image's SegmentHeader::schema_fingerprint
  uint64_t image_bytes;                   //  40  decompressed size = segment_bytes
  uint64_t payload_bytes;                 //  48  compressed size; the file is 128 + this long
  uint64_t payload_xxh64;                 //  56  XXH64 (seed 0) of the payload
  uint64_t image_xxh64;                   //  64  XXH64 (seed 0) of the image
  int64_t created_unix_ns;                //  72  when the file was written
  char segment_name[kSnapshotNameBytes];  //  80  the segment's name (truncated), NUL padded
  uint64_t header_xxh64;                  // 120  XXH64 (seed 0) of bytes 0..119
};
static_assert(std::endian::native == std::endian::little, "snapshot files are little-endian");
static_assert(sizeof(SnapshotHeader) == kSnapshotHeaderBytes);
static_assert(std::is_trivially_copyable_v<SnapshotHeader> && std::is_standard_layout_v<SnapshotHeader>);
static_assert(offsetof(SnapshotHeader, abi_signature) == 24);
static_assert(offsetof(SnapshotHeader, image_bytes) == 40);
static_assert(offsetof(SnapshotHeader, created_unix_ns) == 72);
static_assert(offsetof(SnapshotHeader, segment_name) == 80);
static_assert(offsetof(SnapshotHeader, header_xxh64) == 120);

// What a verified header says.
struct SnapshotInfo {
  uint32_t format_version = 0;
  uint32_t layout_version = 0;
  uint64_t abi_signature = 0;
  uint64_t schema_fingerprint = 0;
  uint64_t image_bytes = 0;
  uint64_t payload_bytes = 0;
  int64_t created_unix_ns = 0;
  std::string segment_name;
};

struct WriteOptions {
  // zstd level: negative levels are faster and compress less; 1 is fast with
  // a useful ratio on sparse tables. Outside zstd's range: kInvalidArgument.
  int level = 1;
  // zstd worker threads (ZSTD_c_nbWorkers); 0: std::thread::hardware_concurrency().
  // Clamped to what the linked libzstd supports (1 thread when it was built
  // without multithreading).
  int threads = 0;
};

// Writes a snapshot of `image` (a Writer::copy_image() of segment
// `segment_name`) to `path`: the file is built as a temporary file in the same
// directory (mode 0600: a snapshot holds every row), fsynced, renamed over
// `path`, and the directory fsynced, so `path` is either the old file (or
// absent) or the complete new one. The image's header must be a segment
// header (magic, sizes); it is not otherwise validated here.
// Throws Error: kInvalidArgument (bad level, not a segment image), kNoSpace
// (ENOSPC, EDQUOT; the temporary file is removed), kPermissionDenied, kSystem.
SnapshotInfo write_snapshot_file(const std::string& path, std::string_view segment_name,
                                 std::span<const unsigned char> image, const WriteOptions& options = {});

// The same bytes, handed to `sink(data, size)` in file order (header first).
// The compressed payload is held in memory until it is complete (the header
// carries its size and checksum). `sink` returning false aborts: the call then
// throws Error(kSystem, "aborted by the sink").
SnapshotInfo write_snapshot(std::string_view segment_name, std::span<const unsigned char> image,
                            const std::function<bool(const void*, size_t)>& sink, const WriteOptions& options = {});

struct ReadLimits {
  // Larger images are refused (kCorrupt) before anything is allocated.
  uint64_t max_image_bytes = uint64_t{1} << 40;
};

// Reads and verifies a snapshot, in this order, trusting nothing before it is
// checked: the file size against the header size; magic; the header checksum;
// format version, flags, layout version and ABI signature against this build;
// image and payload sizes against each other, the file size and `limits`
// (before any allocation); the payload checksum (before decompressing); the
// zstd frame's content size against image_bytes; the decompressed size and the
// image checksum; the image's own header against the file header; then
// layout::validate_segment on the image. `image` is resized to image_bytes.
// Throws Error naming the file and what is wrong: kCorrupt ("truncated:
// payload ends at byte N of M", "payload checksum mismatch", ...),
// kVersionMismatch (another snapshot format, layout version or ABI), kNotFound,
// kPermissionDenied, kSystem (reading the file). On a throw `image` holds no
// usable image (it may have been resized).
SnapshotInfo read_snapshot_file(const std::string& path, std::vector<unsigned char>* image,
                                const ReadLimits& limits = {});

// The same on bytes in memory (e.g. an HTTP body); `what` names them in errors.
SnapshotInfo read_snapshot(std::span<const unsigned char> bytes, std::string_view what,
                           std::vector<unsigned char>* image, const ReadLimits& limits = {});

// Reads and verifies the header only (size, magic, checksum, versions, sizes
// against the file size), without reading the payload. Same errors.
SnapshotInfo read_snapshot_info(const std::string& path, const ReadLimits& limits = {});

// The number of zstd worker threads the linked libzstd accepts (0: built
// without multithreading; compression then runs on the calling thread).
int max_compression_workers();

}  // namespace larder::snapshot
