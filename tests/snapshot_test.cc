// Snapshot files (larder::snapshot) against a real segment image: the round
// trip, then every way a file can be damaged or foreign (truncated at many
// lengths, each byte of the header flipped, payload and checksum fields
// damaged, another magic, format, layout or ABI, an image size past the read
// limit, an empty file, payloads that pass the checksums but hold the wrong
// frame or image), each refused with kCorrupt or kVersionMismatch and a
// message that names the file and the problem. Files whose checks must reach
// past the header checksum are re-sealed (their header checksum recomputed)
// after the edit, as a careful forger would. Failed writes leave no file.
// Test main thread only.
#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <zstd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "larder/layout/format.h"
#include "larder/layout/segment_file.h"
#include "larder/snapshot/snapshot_file.h"
#include "larder/writer/writer.h"
#include "support/test_segment.h"

namespace larder {
namespace {

using snapshot::SnapshotHeader;
using Bytes = std::vector<unsigned char>;

constexpr int64_t kEventTime = 1'700'000'000'000;

Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

SnapshotHeader header_of(const Bytes& file) {
  SnapshotHeader h;
  std::memcpy(&h, file.data(), sizeof h);
  return h;
}

// Writes `h` back into `file` with its checksum recomputed.
void reseal(Bytes* file, SnapshotHeader h) {
  h.header_xxh64 = XXH64(&h, offsetof(SnapshotHeader, header_xxh64), 0);
  std::memcpy(file->data(), &h, sizeof h);
}

// Sets the payload (and its size and checksum) of `file` and reseals it.
void replace_payload(Bytes* file, const Bytes& payload) {
  SnapshotHeader h = header_of(*file);
  file->resize(snapshot::kSnapshotHeaderBytes);
  file->insert(file->end(), payload.begin(), payload.end());
  h.payload_bytes = payload.size();
  h.payload_xxh64 = XXH64(payload.data(), payload.size(), 0);
  reseal(file, h);
}

Bytes zstd_compress(const Bytes& data, bool content_size) {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, content_size ? 1 : 0);
  Bytes out(ZSTD_compressBound(data.size()));
  // Streaming without a pledged size leaves the content size out.
  ZSTD_inBuffer in{data.data(), data.size(), 0};
  ZSTD_outBuffer ob{out.data(), out.size(), 0};
  if (content_size) ZSTD_CCtx_setPledgedSrcSize(c, data.size());
  const size_t rc = ZSTD_compressStream2(c, &ob, &in, ZSTD_e_end);
  ZSTD_freeCCtx(c);
  EXPECT_EQ(rc, 0u);
  out.resize(ob.pos);
  return out;
}

class SnapshotFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/larder-snapshot-test-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    {
      auto writer =
          Writer::open(seg_.name(), testing::one_table_schema(testing::every_type_table()), seg_.writer_options());
      for (int i = 0; i < 200; ++i) {
        const std::string key = "user-" + std::to_string(i);
        const float emb[8] = {1.f * i, 2, 3, 4, 5, 6, 7, 8};
        const FieldValue values[] = {FieldValue::int64(0, i), FieldValue::float64(1, i * 0.5),
                                     FieldValue::vector(4, emb), FieldValue::string(5, "se")};
        ASSERT_EQ(writer->upsert(0, key, kEventTime + i, values), ApplyResult::kApplied);
      }
      path_ = writer->path();
    }
    auto m = layout::MappedFile::open_read_only(path_, seg_.name());
    const auto* p = static_cast<const unsigned char*>(m->data());
    image_.assign(p, p + m->size());
    file_ = dir_ + "/users.snap";
    info_ = snapshot::write_snapshot_file(file_, seg_.name(), image_);
    good_ = read_file(file_);
    ASSERT_EQ(good_.size(), snapshot::kSnapshotHeaderBytes + info_.payload_bytes);
  }

  void TearDown() override {
    if (DIR* d = ::opendir(dir_.c_str())) {
      while (dirent* e = ::readdir(d)) {
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
          ::unlink((dir_ + "/" + e->d_name).c_str());
        }
      }
      ::closedir(d);
    }
    ::rmdir(dir_.c_str());
  }

  // Names of the files in the scratch directory (temporary files included).
  std::vector<std::string> dir_entries() const {
    std::vector<std::string> names;
    if (DIR* d = ::opendir(dir_.c_str())) {
      while (dirent* e = ::readdir(d)) {
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.push_back(e->d_name);
      }
      ::closedir(d);
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  // Writes `bytes` to a file and expects both readers (file and memory) to
  // refuse it with `code` and a message containing `must_say`; the image
  // buffer must not have been grown when `no_alloc` (refused from the header).
  void expect_refused(const Bytes& bytes, ErrorCode code, const std::string& must_say, bool no_alloc = false,
                      const snapshot::ReadLimits& limits = {}) {
    const std::string path = dir_ + "/bad.snap";
    write_file(path, bytes);
    for (int via_file = 0; via_file < 2; ++via_file) {
      Bytes image;
      try {
        if (via_file) {
          snapshot::read_snapshot_file(path, &image, limits);
        } else {
          snapshot::read_snapshot(bytes, "bytes-under-test", &image, limits);
        }
        ADD_FAILURE() << "accepted (" << (via_file ? "file" : "memory") << "), expected: " << must_say;
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), code) << e.what();
        const std::string what = e.what();
        EXPECT_NE(what.find(must_say), std::string::npos) << "message: " << what << "\nmust say: " << must_say;
        EXPECT_NE(what.find(via_file ? path : std::string("bytes-under-test")), std::string::npos)
            << "the message must name the file: " << what;
        if (no_alloc) {
          EXPECT_EQ(image.capacity(), 0u) << "refused from the header, yet the image was allocated";
        }
      }
    }
  }

  testing::ScratchSegment seg_;
  std::string path_, dir_, file_;
  Bytes image_, good_;
  snapshot::SnapshotInfo info_;
};

TEST_F(SnapshotFileTest, RoundTripGivesTheSameImageBytes) {
  Bytes image;
  const snapshot::SnapshotInfo got = snapshot::read_snapshot_file(file_, &image);
  EXPECT_EQ(image, image_);
  EXPECT_EQ(got.format_version, snapshot::kSnapshotFormatVersion);
  EXPECT_EQ(got.layout_version, layout::kLayoutVersion);
  EXPECT_EQ(got.abi_signature, layout::abi_signature());
  const auto& seg = *reinterpret_cast<const layout::SegmentHeader*>(image_.data());
  EXPECT_EQ(got.schema_fingerprint, seg.schema_fingerprint);
  EXPECT_EQ(got.image_bytes, image_.size());
  EXPECT_EQ(got.payload_bytes, info_.payload_bytes);
  EXPECT_EQ(got.segment_name, seg_.name());
  EXPECT_EQ(got.created_unix_ns, info_.created_unix_ns);
  EXPECT_GT(got.created_unix_ns, 0);
  // The sparse table compresses.
  EXPECT_LT(got.payload_bytes, image_.size() / 2);

  const snapshot::SnapshotInfo header_only = snapshot::read_snapshot_info(file_);
  EXPECT_EQ(header_only.image_bytes, got.image_bytes);
  EXPECT_EQ(header_only.payload_bytes, got.payload_bytes);
  EXPECT_EQ(header_only.segment_name, got.segment_name);
  // Only the file is left in the directory: no temporary file.
  EXPECT_EQ(dir_entries(), std::vector<std::string>{"users.snap"});
}

TEST_F(SnapshotFileTest, EveryLevelAndThreadCountRoundTrips) {
  for (int level : {-1, 1, 3}) {
    for (int threads : {0, 1, 2}) {
      const std::string path = dir_ + "/l" + std::to_string(level) + "t" + std::to_string(threads) + ".snap";
      snapshot::write_snapshot_file(path, seg_.name(), image_, {level, threads});
      Bytes image;
      snapshot::read_snapshot_file(path, &image);
      EXPECT_EQ(image, image_) << "level " << level << " threads " << threads;
    }
  }
}

TEST_F(SnapshotFileTest, SinkReceivesAFileThatReadsBack) {
  Bytes streamed;
  size_t calls = 0;
  const auto info = snapshot::write_snapshot(seg_.name(), image_, [&](const void* data, size_t size) {
    const auto* p = static_cast<const unsigned char*>(data);
    streamed.insert(streamed.end(), p, p + size);
    ++calls;
    return true;
  });
  EXPECT_GE(calls, 2u);  // the header, then the payload
  EXPECT_EQ(streamed.size(), snapshot::kSnapshotHeaderBytes + info.payload_bytes);
  Bytes image;
  snapshot::read_snapshot(streamed, "streamed", &image);
  EXPECT_EQ(image, image_);
}

TEST_F(SnapshotFileTest, SinkThatRefusesAbortsTheWrite) {
  size_t calls = 0;
  try {
    snapshot::write_snapshot(seg_.name(), image_, [&](const void*, size_t) { return ++calls < 1; });
    ADD_FAILURE() << "a refusing sink must abort the write";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("aborted by the sink"), std::string::npos) << e.what();
  }
  EXPECT_EQ(calls, 1u);
}

TEST_F(SnapshotFileTest, LongSegmentNamesAreTruncatedInTheHeader) {
  const std::string name(100, 'n');
  const std::string path = dir_ + "/long.snap";
  snapshot::write_snapshot_file(path, name, image_);
  Bytes image;
  EXPECT_EQ(snapshot::read_snapshot_file(path, &image).segment_name, name.substr(0, snapshot::kSnapshotNameBytes - 1));
}

TEST_F(SnapshotFileTest, TruncatedAtAnyLengthIsRefused) {
  const size_t n = good_.size();
  std::vector<size_t> lengths = {1,     7,    8, 64, 119, 127, 128, 129, 130, 128 + (n - 128) / 3, 128 + (n - 128) / 2,
                                 n - 2, n - 1};
  for (size_t len = 0; len < n; len += std::max<size_t>(1, n / 50)) lengths.push_back(len);
  for (size_t len : lengths) {
    if (len == 0 || len >= n) continue;
    SCOPED_TRACE("truncated to " + std::to_string(len) + " of " + std::to_string(n) + " bytes");
    const Bytes cut(good_.begin(), good_.begin() + static_cast<std::ptrdiff_t>(len));
    expect_refused(cut, ErrorCode::kCorrupt,
                   len < snapshot::kSnapshotHeaderBytes
                       ? "truncated: " + std::to_string(len) + " bytes, less than the 128-byte header"
                       : "truncated: payload ends at byte " + std::to_string(len) + " of " + std::to_string(n),
                   true);
  }
}

TEST_F(SnapshotFileTest, EmptyFileIsRefused) { expect_refused({}, ErrorCode::kCorrupt, "empty file (0 bytes)", true); }

TEST_F(SnapshotFileTest, EveryFlippedHeaderByteIsRefused) {
  for (size_t at = 0; at < snapshot::kSnapshotHeaderBytes; ++at) {
    SCOPED_TRACE("byte " + std::to_string(at));
    Bytes bad = good_;
    bad[at] ^= 0x10;
    const bool magic = at < 8;
    const bool version = at >= 8 && at < 12;
    // The magic is checked first; a damaged format version cannot be told
    // from another format (kVersionMismatch, saying the header may be
    // damaged); every other byte breaks the header checksum.
    expect_refused(bad, version ? ErrorCode::kVersionMismatch : ErrorCode::kCorrupt,
                   magic     ? "bad magic"
                   : version ? "or the header is damaged"
                             : "header checksum mismatch",
                   true);
  }
}

TEST_F(SnapshotFileTest, FlippedPayloadBytesAreRefusedBeforeDecompression) {
  const size_t n = good_.size();
  for (size_t at : {size_t{128}, size_t{129}, 128 + (n - 128) / 2, n - 1}) {
    SCOPED_TRACE("byte " + std::to_string(at));
    Bytes bad = good_;
    bad[at] ^= 0x01;
    expect_refused(bad, ErrorCode::kCorrupt, "payload checksum mismatch", true);
  }
}

TEST_F(SnapshotFileTest, WrongStoredChecksumsAreRefused) {
  {
    Bytes bad = good_;
    SnapshotHeader h = header_of(bad);
    h.payload_xxh64 ^= 1;
    reseal(&bad, h);
    expect_refused(bad, ErrorCode::kCorrupt, "payload checksum mismatch", true);
  }
  {
    Bytes bad = good_;
    SnapshotHeader h = header_of(bad);
    h.image_xxh64 ^= 1;
    reseal(&bad, h);
    expect_refused(bad, ErrorCode::kCorrupt, "image checksum mismatch");
  }
  {
    Bytes bad = good_;
    SnapshotHeader h = header_of(bad);
    h.header_xxh64 ^= 1;
    std::memcpy(bad.data(), &h, sizeof h);
    expect_refused(bad, ErrorCode::kCorrupt, "header checksum mismatch", true);
  }
}

TEST_F(SnapshotFileTest, WrongMagicIsRefused) {
  Bytes bad = good_;
  std::memcpy(bad.data(), "LARDSEG1", 8);
  expect_refused(bad, ErrorCode::kCorrupt, "not a Larder snapshot (bad magic", true);
}

TEST_F(SnapshotFileTest, FutureFormatVersionIsAVersionMismatch) {
  Bytes bad = good_;
  SnapshotHeader h = header_of(bad);
  h.format_version = snapshot::kSnapshotFormatVersion + 1;
  reseal(&bad, h);
  expect_refused(bad, ErrorCode::kVersionMismatch,
                 "has snapshot format v" + std::to_string(snapshot::kSnapshotFormatVersion + 1) +
                     ", this build reads v" + std::to_string(snapshot::kSnapshotFormatVersion) + ": upgrade larder",
                 true);
}

TEST_F(SnapshotFileTest, UnknownFlagsAreAVersionMismatch) {
  Bytes bad = good_;
  SnapshotHeader h = header_of(bad);
  h.flags = 4;
  reseal(&bad, h);
  expect_refused(bad, ErrorCode::kVersionMismatch, "flags", true);
}

TEST_F(SnapshotFileTest, AnotherLayoutVersionIsAVersionMismatch) {
  for (uint32_t v : {layout::kLayoutVersion - 1, layout::kLayoutVersion + 1}) {
    Bytes bad = good_;
    SnapshotHeader h = header_of(bad);
    h.layout_version = v;
    reseal(&bad, h);
    expect_refused(bad, ErrorCode::kVersionMismatch,
                   "holds a segment of layout v" + std::to_string(v) + ", this build uses v" +
                       std::to_string(layout::kLayoutVersion),
                   true);
  }
}

TEST_F(SnapshotFileTest, AnotherAbiSignatureIsAVersionMismatch) {
  Bytes bad = good_;
  SnapshotHeader h = header_of(bad);
  h.abi_signature ^= 0xff;
  reseal(&bad, h);
  expect_refused(bad, ErrorCode::kVersionMismatch, "ABI signature " + layout::hex64(h.abi_signature), true);
}

TEST_F(SnapshotFileTest, HugeImageSizeIsRefusedWithoutAllocating) {
  for (uint64_t huge : {uint64_t{1} << 41, uint64_t{1} << 62, ~uint64_t{0}}) {
    Bytes bad = good_;
    SnapshotHeader h = header_of(bad);
    h.image_bytes = huge;
    reseal(&bad, h);
    expect_refused(bad, ErrorCode::kCorrupt, "image of " + std::to_string(huge) + " bytes exceeds the limit", true);
  }
  // A real file above a caller's limit.
  expect_refused(good_, ErrorCode::kCorrupt, "exceeds the limit of 4096 bytes", true, {4096});
}

TEST_F(SnapshotFileTest, ImageSmallerThanASegmentHeaderIsRefused) {
  Bytes bad = good_;
  SnapshotHeader h = header_of(bad);
  h.image_bytes = 100;
  reseal(&bad, h);
  expect_refused(bad, ErrorCode::kCorrupt, "smaller than a segment header", true);
}

TEST_F(SnapshotFileTest, PayloadSizeLargerThanTheFileIsTruncation) {
  Bytes bad = good_;
  SnapshotHeader h = header_of(bad);
  h.payload_bytes += 1000;
  reseal(&bad, h);
  expect_refused(
      bad, ErrorCode::kCorrupt,
      "truncated: payload ends at byte " + std::to_string(good_.size()) + " of " + std::to_string(good_.size() + 1000),
      true);
}

TEST_F(SnapshotFileTest, ImpossiblePayloadSizesAreRefused) {
  Bytes bad = good_;
  SnapshotHeader h = header_of(bad);
  h.payload_bytes = 0;
  reseal(&bad, h);
  expect_refused(bad, ErrorCode::kCorrupt, "payload size 0 impossible", true);
  h.payload_bytes = ~uint64_t{0} - 64;  // 128 + this wraps
  reseal(&bad, h);
  expect_refused(bad, ErrorCode::kCorrupt, "impossible for an image of", true);
}

TEST_F(SnapshotFileTest, TrailingBytesAreRefused) {
  Bytes bad = good_;
  bad.insert(bad.end(), 5, 0);
  expect_refused(bad, ErrorCode::kCorrupt, "5 bytes after the payload", true);
}

TEST_F(SnapshotFileTest, PayloadThatIsNotZstdIsRefused) {
  Bytes bad = good_;
  replace_payload(&bad, Bytes(4000, 0x5a));
  expect_refused(bad, ErrorCode::kCorrupt, "payload is not a zstd frame");
}

TEST_F(SnapshotFileTest, FrameWithoutContentSizeIsRefused) {
  Bytes bad = good_;
  replace_payload(&bad, zstd_compress(image_, false));
  expect_refused(bad, ErrorCode::kCorrupt, "zstd frame does not state its content size");
}

TEST_F(SnapshotFileTest, FrameOfAnotherSizeIsRefused) {
  Bytes shorter(image_.begin(), image_.end() - 4096);
  Bytes bad = good_;
  replace_payload(&bad, zstd_compress(shorter, true));
  expect_refused(bad, ErrorCode::kCorrupt,
                 "zstd frame holds " + std::to_string(shorter.size()) + " bytes, the header says " +
                     std::to_string(image_.size()));
}

TEST_F(SnapshotFileTest, BytesAfterTheFrameInsideThePayloadAreRefused) {
  Bytes payload = zstd_compress(image_, true);
  const size_t frame = payload.size();
  payload.insert(payload.end(), 16, 0);
  Bytes bad = good_;
  replace_payload(&bad, payload);
  expect_refused(bad, ErrorCode::kCorrupt,
                 "zstd frame ends at payload byte " + std::to_string(frame) + " of " + std::to_string(payload.size()));
}

TEST_F(SnapshotFileTest, DamagedFrameWithMatchingChecksumsIsRefused) {
  Bytes payload = zstd_compress(image_, true);
  payload[payload.size() / 2] ^= 0xff;  // inside a compressed block
  Bytes bad = good_;
  replace_payload(&bad, payload);
  try {
    Bytes image;
    snapshot::read_snapshot(bad, "damaged-frame", &image);
    ADD_FAILURE() << "accepted a damaged frame";
  } catch (const Error& e) {
    // Either zstd notices or the image checksum does; both are kCorrupt.
    EXPECT_EQ(e.code(), ErrorCode::kCorrupt) << e.what();
    const std::string what = e.what();
    EXPECT_TRUE(what.find("zstd") != std::string::npos || what.find("image checksum mismatch") != std::string::npos)
        << what;
  }
}

TEST_F(SnapshotFileTest, ImageThatIsNotAValidSegmentIsRefusedAfterItsChecksums) {
  // A writer that snapshots a damaged segment produces a file whose checksums
  // all match: validate_segment is the last line.
  Bytes damaged = image_;
  auto& h = *reinterpret_cast<layout::SegmentHeader*>(damaged.data());
  h.table_count = 0;
  const std::string path = dir_ + "/damaged.snap";
  snapshot::write_snapshot_file(path, seg_.name(), damaged);
  expect_refused(read_file(path), ErrorCode::kCorrupt, "the image is not a valid segment: segment \"" + seg_.name());
}

TEST_F(SnapshotFileTest, ImageHeaderThatDisagreesWithTheFileHeaderIsRefused) {
  Bytes bad = good_;
  SnapshotHeader h = header_of(bad);
  h.schema_fingerprint ^= 1;
  reseal(&bad, h);
  expect_refused(bad, ErrorCode::kCorrupt, "disagrees with the file header");
}

TEST_F(SnapshotFileTest, MissingFileIsNotFound) {
  Bytes image;
  try {
    snapshot::read_snapshot_file(dir_ + "/absent.snap", &image);
    ADD_FAILURE() << "read a missing file";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound) << e.what();
    EXPECT_NE(std::string(e.what()).find("absent.snap"), std::string::npos) << e.what();
  }
}

TEST_F(SnapshotFileTest, FailedWritesLeaveNoFileAndKeepTheOldOne) {
  // A bad level: refused before anything is written, the old file stays.
  const Bytes before = read_file(file_);
  EXPECT_THROW(snapshot::write_snapshot_file(file_, seg_.name(), image_, {ZSTD_maxCLevel() + 1, 0}), Error);
  EXPECT_EQ(read_file(file_), before);
  // Not a segment image.
  const std::string fresh = dir_ + "/fresh.snap";
  Bytes junk(4096, 0x11);
  try {
    snapshot::write_snapshot_file(fresh, seg_.name(), junk);
    ADD_FAILURE() << "wrote a snapshot of bytes that are not a segment";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
  }
  EXPECT_FALSE(exists(fresh));
  // A directory that does not exist.
  const std::string nowhere = dir_ + "/no/such/dir/x.snap";
  try {
    snapshot::write_snapshot_file(nowhere, seg_.name(), image_);
    ADD_FAILURE() << "wrote into a missing directory";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound) << e.what();
    EXPECT_NE(std::string(e.what()).find(nowhere), std::string::npos) << e.what();
  }
  EXPECT_FALSE(exists(nowhere));
  // No temporary file is left behind by any of them.
  EXPECT_EQ(dir_entries(), std::vector<std::string>{"users.snap"});
}

TEST_F(SnapshotFileTest, CompressionWorkersAreReported) {
  // Debian's libzstd is built with multithreading; the writer clamps to it.
  EXPECT_GT(snapshot::max_compression_workers(), 0);
}

}  // namespace
}  // namespace larder
