// Snapshot files: writing (zstd streaming compression into a temporary file
// or a memory buffer) and reading (checks in the order the header comment of
// snapshot_file.h lists, each before the bytes it guards are used).
#include "larder/snapshot/snapshot_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>

#include "larder/layout/clock.h"
#include "larder/layout/format.h"
#include "larder/layout/segment_file.h"

namespace larder::snapshot {

namespace {

constexpr size_t kChunkBytes = size_t{1} << 20;  // compression output and file I/O chunk

// Error messages name the file (or the bytes) first: "snapshot /x/y.snap: ...".
std::string subject(std::string_view what) { return "snapshot " + std::string(what); }

[[noreturn]] void corrupt(std::string_view what, const std::string& why) {
  throw Error(ErrorCode::kCorrupt, subject(what) + ": " + why);
}

[[noreturn]] void system_error(std::string_view what, const std::string& doing, int err) {
  ErrorCode code = ErrorCode::kSystem;
  if (err == ENOSPC || err == EDQUOT) code = ErrorCode::kNoSpace;
  if (err == EACCES || err == EPERM || err == EROFS) code = ErrorCode::kPermissionDenied;
  if (err == ENOENT) code = ErrorCode::kNotFound;
  throw Error(code, subject(what) + ": " + doing + ": " + std::strerror(err));
}

struct ZstdCCtx {
  ZSTD_CCtx* p = ZSTD_createCCtx();
  ~ZstdCCtx() { ZSTD_freeCCtx(p); }
};
struct ZstdDCtx {
  ZSTD_DCtx* p = ZSTD_createDCtx();
  ~ZstdDCtx() { ZSTD_freeDCtx(p); }
};

void check_zstd(size_t rc, std::string_view what, const char* doing) {
  if (ZSTD_isError(rc)) {
    throw Error(ErrorCode::kSystem, subject(what) + ": " + doing + ": " + ZSTD_getErrorName(rc));
  }
}

// The image must at least start like a segment: the header is built from it.
const layout::SegmentHeader& image_header(std::span<const unsigned char> image) {
  if (image.size() < layout::kSegmentHeaderBytes) {
    throw Error(ErrorCode::kInvalidArgument,
                "snapshot: the image has " + std::to_string(image.size()) + " bytes, less than a segment header");
  }
  const auto& h = *reinterpret_cast<const layout::SegmentHeader*>(image.data());
  if (h.magic != layout::kMagic || h.segment_bytes != image.size()) {
    throw Error(ErrorCode::kInvalidArgument, "snapshot: the image is not a whole segment (bad magic or size)");
  }
  return h;
}

SnapshotHeader make_header(std::string_view segment_name, std::span<const unsigned char> image) {
  const layout::SegmentHeader& seg = image_header(image);
  SnapshotHeader h;
  std::memset(&h, 0, sizeof h);
  std::memcpy(h.magic, kSnapshotMagic, sizeof h.magic);
  h.format_version = kSnapshotFormatVersion;
  h.layout_version = seg.layout_version;
  h.abi_signature = seg.abi_signature;
  h.schema_fingerprint = seg.schema_fingerprint;
  h.image_bytes = image.size();
  h.image_xxh64 = XXH64(image.data(), image.size(), 0);
  h.created_unix_ns = layout::now_unix_ns();
  std::memcpy(h.segment_name, segment_name.data(), std::min(segment_name.size(), kSnapshotNameBytes - 1));
  return h;
}

void seal_header(SnapshotHeader* h) { h->header_xxh64 = XXH64(h, offsetof(SnapshotHeader, header_xxh64), 0); }

SnapshotInfo info_of(const SnapshotHeader& h) {
  SnapshotInfo info;
  info.format_version = h.format_version;
  info.layout_version = h.layout_version;
  info.abi_signature = h.abi_signature;
  info.schema_fingerprint = h.schema_fingerprint;
  info.image_bytes = h.image_bytes;
  info.payload_bytes = h.payload_bytes;
  info.created_unix_ns = h.created_unix_ns;
  info.segment_name.assign(h.segment_name, strnlen(h.segment_name, kSnapshotNameBytes));
  return info;
}

// Compresses `image` as one zstd frame with its content size set, handing
// each compressed chunk to `out(data, size)`. Returns the payload size.
template <typename Out>
uint64_t compress(std::span<const unsigned char> image, const WriteOptions& options, std::string_view what, Out&& out) {
  if (options.level < ZSTD_minCLevel() || options.level > ZSTD_maxCLevel()) {
    throw Error(ErrorCode::kInvalidArgument, "snapshot: zstd level " + std::to_string(options.level) + " outside " +
                                                 std::to_string(ZSTD_minCLevel()) + ".." +
                                                 std::to_string(ZSTD_maxCLevel()));
  }
  ZstdCCtx cctx;
  if (cctx.p == nullptr) throw Error(ErrorCode::kSystem, subject(what) + ": out of memory (zstd context)");
  check_zstd(ZSTD_CCtx_setParameter(cctx.p, ZSTD_c_compressionLevel, options.level), what, "zstd level");
  check_zstd(ZSTD_CCtx_setParameter(cctx.p, ZSTD_c_contentSizeFlag, 1), what, "zstd content size flag");
  int workers = options.threads > 0 ? options.threads : static_cast<int>(std::thread::hardware_concurrency());
  workers = std::min(workers, max_compression_workers());
  // One worker still moves compression off the calling thread and overlaps
  // it with the output; 0 compresses inline (libzstd without threads).
  if (workers > 1 || (workers == 1 && max_compression_workers() > 0)) {
    check_zstd(ZSTD_CCtx_setParameter(cctx.p, ZSTD_c_nbWorkers, workers), what, "zstd workers");
  }
  check_zstd(ZSTD_CCtx_setPledgedSrcSize(cctx.p, image.size()), what, "zstd content size");

  std::vector<unsigned char> buf(std::max(kChunkBytes, ZSTD_CStreamOutSize()));
  ZSTD_inBuffer in{image.data(), image.size(), 0};
  uint64_t total = 0;
  for (;;) {
    ZSTD_outBuffer ob{buf.data(), buf.size(), 0};
    const size_t remaining = ZSTD_compressStream2(cctx.p, &ob, &in, ZSTD_e_end);
    check_zstd(remaining, what, "zstd compression");
    if (ob.pos > 0) {
      out(buf.data(), ob.pos);
      total += ob.pos;
    }
    if (remaining == 0) break;
  }
  return total;
}

void write_all(int fd, const void* data, size_t size, uint64_t offset, std::string_view what) {
  const auto* p = static_cast<const unsigned char*>(data);
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, p, std::min(size, size_t{1} << 30), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      system_error(what, "write", errno);
    }
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

std::string dir_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Checks a header against this build and `file_bytes` (the bytes available:
// the file size or the buffer size). Nothing in `h` is trusted before.
void check_header(const SnapshotHeader& h, uint64_t file_bytes, std::string_view what, const ReadLimits& limits) {
  if (std::memcmp(h.magic, kSnapshotMagic, sizeof h.magic) != 0) {
    corrupt(what, "not a Larder snapshot (bad magic; a snapshot starts with \"LARDSNP1\")");
  }
  const uint64_t sum = XXH64(&h, offsetof(SnapshotHeader, header_xxh64), 0);
  if (h.format_version != kSnapshotFormatVersion) {
    // Another format may lay its header out differently, so its checksum
    // cannot be judged; a damaged version field reads the same way.
    throw Error(ErrorCode::kVersionMismatch,
                subject(what) + " has snapshot format v" + std::to_string(h.format_version) + ", this build reads v" +
                    std::to_string(kSnapshotFormatVersion) +
                    (sum == h.header_xxh64
                         ? std::string(": ") +
                               (h.format_version > kSnapshotFormatVersion ? "upgrade larder" : "take a new snapshot")
                         : " (or the header is damaged: its checksum does not match)"));
  }
  if (sum != h.header_xxh64) {
    corrupt(what, "header checksum mismatch (stored " + layout::hex64(h.header_xxh64) + ", computed " +
                      layout::hex64(sum) + "): the header at bytes 0..127 is damaged");
  }
  if (h.flags != 0) {
    throw Error(ErrorCode::kVersionMismatch,
                subject(what) + " uses flags " + layout::hex64(h.flags) + " this build does not know: upgrade larder");
  }
  if (h.reserved != 0) corrupt(what, "reserved header field is not zero");
  if (h.segment_name[kSnapshotNameBytes - 1] != '\0') corrupt(what, "segment name is not NUL terminated");
  if (h.layout_version != layout::kLayoutVersion) {
    throw Error(ErrorCode::kVersionMismatch,
                subject(what) + " holds a segment of layout v" + std::to_string(h.layout_version) +
                    ", this build uses v" + std::to_string(layout::kLayoutVersion) + ": " +
                    (h.layout_version > layout::kLayoutVersion ? "upgrade larder to restore it"
                                                               : "it cannot be restored by this release"));
  }
  if (h.abi_signature != layout::abi_signature()) {
    throw Error(ErrorCode::kVersionMismatch, subject(what) + " holds a segment of ABI signature " +
                                                 layout::hex64(h.abi_signature) + ", this build expects " +
                                                 layout::hex64(layout::abi_signature()) +
                                                 ": restore it with the release that wrote it");
  }
  if (h.image_bytes < layout::kSegmentHeaderBytes) {
    corrupt(what, "image of " + std::to_string(h.image_bytes) + " bytes is smaller than a segment header");
  }
  if (h.image_bytes > limits.max_image_bytes || h.image_bytes > std::numeric_limits<size_t>::max()) {
    corrupt(what, "image of " + std::to_string(h.image_bytes) + " bytes exceeds the limit of " +
                      std::to_string(limits.max_image_bytes) + " bytes (ReadLimits::max_image_bytes)");
  }
  // The image fits size_t here, so ZSTD_compressBound cannot overflow for
  // any image this limit admits below 2^63.
  const uint64_t bound = ZSTD_compressBound(static_cast<size_t>(h.image_bytes));
  if (h.payload_bytes == 0 || (bound != 0 && !ZSTD_isError(bound) && h.payload_bytes > bound)) {
    corrupt(what, "payload size " + std::to_string(h.payload_bytes) + " impossible for an image of " +
                      std::to_string(h.image_bytes) + " bytes");
  }
  const uint64_t available = file_bytes - kSnapshotHeaderBytes;  // file_bytes >= 128 was checked
  if (h.payload_bytes > available) {
    corrupt(what, "truncated: payload ends at byte " + std::to_string(file_bytes) + " of " +
                      std::to_string(kSnapshotHeaderBytes + h.payload_bytes));
  }
  if (h.payload_bytes < available) {
    corrupt(what, std::to_string(available - h.payload_bytes) + " bytes after the payload (it ends at byte " +
                      std::to_string(kSnapshotHeaderBytes + h.payload_bytes) + ", the file has " +
                      std::to_string(file_bytes) + ")");
  }
}

SnapshotHeader parse_header(const unsigned char* bytes, uint64_t size, std::string_view what,
                            const ReadLimits& limits) {
  if (size < kSnapshotHeaderBytes) {
    corrupt(what, size == 0 ? std::string("empty file (0 bytes)")
                            : "truncated: " + std::to_string(size) + " bytes, less than the " +
                                  std::to_string(kSnapshotHeaderBytes) + "-byte header");
  }
  SnapshotHeader h;
  std::memcpy(&h, bytes, sizeof h);
  check_header(h, size, what, limits);
  return h;
}

// Everything after the header checks: payload checksum, frame, decompression,
// image checksum, image header against the file header, validate_segment.
void decode_payload(const SnapshotHeader& h, const unsigned char* payload, std::string_view what,
                    std::vector<unsigned char>* image) {
  const uint64_t payload_sum = XXH64(payload, h.payload_bytes, 0);
  if (payload_sum != h.payload_xxh64) {
    corrupt(what, "payload checksum mismatch (bytes 128.." + std::to_string(kSnapshotHeaderBytes + h.payload_bytes) +
                      ", stored " + layout::hex64(h.payload_xxh64) + ", computed " + layout::hex64(payload_sum) + ")");
  }
  const unsigned long long content = ZSTD_getFrameContentSize(payload, h.payload_bytes);
  if (content == ZSTD_CONTENTSIZE_ERROR) corrupt(what, "payload is not a zstd frame");
  if (content == ZSTD_CONTENTSIZE_UNKNOWN) corrupt(what, "zstd frame does not state its content size");
  if (content != h.image_bytes) {
    corrupt(what,
            "zstd frame holds " + std::to_string(content) + " bytes, the header says " + std::to_string(h.image_bytes));
  }
  const size_t frame = ZSTD_findFrameCompressedSize(payload, h.payload_bytes);
  if (ZSTD_isError(frame)) corrupt(what, std::string("zstd frame is damaged: ") + ZSTD_getErrorName(frame));
  if (frame != h.payload_bytes) {
    corrupt(what,
            "zstd frame ends at payload byte " + std::to_string(frame) + " of " + std::to_string(h.payload_bytes));
  }
  image->resize(h.image_bytes);
  ZstdDCtx dctx;
  if (dctx.p == nullptr) throw Error(ErrorCode::kSystem, subject(what) + ": out of memory (zstd context)");
  const size_t got = ZSTD_decompressDCtx(dctx.p, image->data(), image->size(), payload, h.payload_bytes);
  if (ZSTD_isError(got)) corrupt(what, std::string("zstd decompression failed: ") + ZSTD_getErrorName(got));
  if (got != h.image_bytes) {
    corrupt(what, "decompressed " + std::to_string(got) + " bytes, the header says " + std::to_string(h.image_bytes));
  }
  const uint64_t image_sum = XXH64(image->data(), image->size(), 0);
  if (image_sum != h.image_xxh64) {
    corrupt(what, "image checksum mismatch (stored " + layout::hex64(h.image_xxh64) + ", computed " +
                      layout::hex64(image_sum) + ")");
  }
  const auto& seg = *reinterpret_cast<const layout::SegmentHeader*>(image->data());
  if (seg.layout_version != h.layout_version || seg.abi_signature != h.abi_signature ||
      seg.schema_fingerprint != h.schema_fingerprint || seg.segment_bytes != h.image_bytes) {
    corrupt(what, "the image's segment header disagrees with the file header (version, ABI, schema or size)");
  }
  try {
    layout::validate_segment(image->data(), image->size(), info_of(h).segment_name);
  } catch (const Error& e) {
    const ErrorCode code = e.code() == ErrorCode::kVersionMismatch ? e.code() : ErrorCode::kCorrupt;
    throw Error(code, subject(what) + ": the image is not a valid segment: " + e.what());
  }
}

class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

uint64_t file_size(int fd, std::string_view what) {
  struct stat st;
  if (::fstat(fd, &st) != 0) system_error(what, "stat", errno);
  if (!S_ISREG(st.st_mode)) corrupt(what, "not a regular file");
  return static_cast<uint64_t>(st.st_size);
}

int open_read(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) system_error(path, "open", errno);
  return fd;
}

void read_all(int fd, void* data, size_t size, uint64_t offset, std::string_view what) {
  auto* p = static_cast<unsigned char*>(data);
  while (size > 0) {
    const ssize_t n = ::pread(fd, p, std::min(size, size_t{1} << 30), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      system_error(what, "read", errno);
    }
    if (n == 0) corrupt(what, "truncated while reading: the file shrank at byte " + std::to_string(offset));
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

}  // namespace

int max_compression_workers() {
  const ZSTD_bounds b = ZSTD_cParam_getBounds(ZSTD_c_nbWorkers);
  if (ZSTD_isError(b.error)) return 0;
  return std::max(0, b.upperBound);
}

SnapshotInfo write_snapshot(std::string_view segment_name, std::span<const unsigned char> image,
                            const std::function<bool(const void*, size_t)>& sink, const WriteOptions& options) {
  SnapshotHeader h = make_header(segment_name, image);
  std::vector<unsigned char> payload;
  XXH64_state_t* state = XXH64_createState();
  if (state == nullptr) throw Error(ErrorCode::kSystem, "snapshot: out of memory (xxhash state)");
  std::unique_ptr<XXH64_state_t, decltype(&XXH64_freeState)> state_owner(state, &XXH64_freeState);
  XXH64_reset(state, 0);
  h.payload_bytes = compress(image, options, segment_name, [&](const unsigned char* data, size_t size) {
    XXH64_update(state, data, size);
    payload.insert(payload.end(), data, data + size);
  });
  h.payload_xxh64 = XXH64_digest(state);
  seal_header(&h);
  if (!sink(&h, sizeof h)) throw Error(ErrorCode::kSystem, "snapshot: aborted by the sink");
  for (size_t at = 0; at < payload.size(); at += kChunkBytes) {
    if (!sink(payload.data() + at, std::min(kChunkBytes, payload.size() - at))) {
      throw Error(ErrorCode::kSystem, "snapshot: aborted by the sink");
    }
  }
  return info_of(h);
}

SnapshotInfo write_snapshot_file(const std::string& path, std::string_view segment_name,
                                 std::span<const unsigned char> image, const WriteOptions& options) {
  SnapshotHeader h = make_header(segment_name, image);
  const std::string dir = dir_of(path);
  const size_t slash = path.rfind('/');
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  if (base.empty()) throw Error(ErrorCode::kInvalidArgument, subject(path) + ": not a file name");
  std::string tmp = (dir == "/" ? std::string("/") : dir + "/") + "." + base + ".tmp.XXXXXX";
  const int raw_fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (raw_fd < 0) system_error(path, "create a temporary file in " + dir, errno);
  FileDescriptor fd(raw_fd);
  try {
    XXH64_state_t* state = XXH64_createState();
    if (state == nullptr) throw Error(ErrorCode::kSystem, subject(path) + ": out of memory (xxhash state)");
    std::unique_ptr<XXH64_state_t, decltype(&XXH64_freeState)> state_owner(state, &XXH64_freeState);
    XXH64_reset(state, 0);
    uint64_t offset = kSnapshotHeaderBytes;
    h.payload_bytes = compress(image, options, path, [&](const unsigned char* data, size_t size) {
      XXH64_update(state, data, size);
      write_all(fd.get(), data, size, offset, tmp);
      offset += size;
    });
    h.payload_xxh64 = XXH64_digest(state);
    seal_header(&h);
    write_all(fd.get(), &h, sizeof h, 0, tmp);
    if (::fsync(fd.get()) != 0) system_error(tmp, "fsync", errno);
    if (::rename(tmp.c_str(), path.c_str()) != 0) system_error(path, "rename " + tmp + " over it", errno);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // The rename is durable once the directory is: fsync it. The file is in
  // place already, so a failure here is reported but leaves it.
  FileDescriptor dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.get() < 0 || ::fsync(dfd.get()) != 0) system_error(path, "fsync of directory " + dir, errno);
  return info_of(h);
}

SnapshotInfo read_snapshot(std::span<const unsigned char> bytes, std::string_view what,
                           std::vector<unsigned char>* image, const ReadLimits& limits) {
  const SnapshotHeader h = parse_header(bytes.data(), bytes.size(), what, limits);
  decode_payload(h, bytes.data() + kSnapshotHeaderBytes, what, image);
  return info_of(h);
}

SnapshotInfo read_snapshot_info(const std::string& path, const ReadLimits& limits) {
  FileDescriptor fd(open_read(path));
  const uint64_t size = file_size(fd.get(), path);
  unsigned char buf[kSnapshotHeaderBytes];
  read_all(fd.get(), buf, static_cast<size_t>(std::min<uint64_t>(size, sizeof buf)), 0, path);
  return info_of(parse_header(buf, size, path, limits));
}

SnapshotInfo read_snapshot_file(const std::string& path, std::vector<unsigned char>* image, const ReadLimits& limits) {
  FileDescriptor fd(open_read(path));
  const uint64_t size = file_size(fd.get(), path);
  unsigned char buf[kSnapshotHeaderBytes];
  read_all(fd.get(), buf, static_cast<size_t>(std::min<uint64_t>(size, sizeof buf)), 0, path);
  // The header is checked against the file size before the payload buffer
  // is allocated: nothing is allocated for sizes the file does not back. The
  // payload is read, not mapped, so a file truncated meanwhile reads short
  // (an error) instead of faulting.
  const SnapshotHeader h = parse_header(buf, size, path, limits);
  std::vector<unsigned char> payload(h.payload_bytes);
  read_all(fd.get(), payload.data(), payload.size(), kSnapshotHeaderBytes, path);
  decode_payload(h, payload.data(), path, image);
  return info_of(h);
}

}  // namespace larder::snapshot
