// Start-up restore and peer bootstrap (see bootstrap.h). Main thread.
#include "snapshot/bootstrap.h"

#include <fmt/format.h>
#include <httplib.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <cstring>

#include "larder/layout/clock.h"
#include "larder/layout/format.h"
#include "larder/layout/schema.h"
#include "larder/layout/segment_file.h"
#include "larder/snapshot/snapshot_file.h"
#include "snapshot/snapshot_dir.h"

namespace larder::sidecar {
namespace {

double seconds_since(int64_t mono_ns) { return static_cast<double>(layout::now_mono_ns() - mono_ns) / 1e9; }

WriterOptions writer_options(const Config& config) {
  WriterOptions options;
  options.dir = config.segment.dir;
  options.mode = config.segment.mode;
  options.full_check = config.segment.full_check;
  options.migrate_on_schema_change = config.segment.migrate_on_schema_change;
  options.grow_at = config.segment.grow_at;
  options.grow_factor = config.segment.grow_factor;
  options.max_capacity = config.segment.max_capacity;
  options.huge_pages = config.segment.huge_pages == "collapse" ? HugePages::kCollapse
                       : config.segment.huge_pages == "off"    ? HugePages::kOff
                                                               : HugePages::kAuto;
  return options;
}

std::string describe(const std::optional<SourcePosition>& p) {
  if (!p) return "no stream position stored (the configured stream_offset applies)";
  return fmt::format(
      "resuming at stream offset {}{}", p->next_offset,
      p->skip_updates == 0 ? std::string() : fmt::format(" (skipping its first {} updates)", p->skip_updates));
}

// The largest snapshot this config can restore: the segment it plans, plus
// the file header and zstd's worst case for incompressible data (a frame
// never grows by more than 1/256 and a few blocks' headers).
uint64_t max_snapshot_bytes(const Config& config) {
  const uint64_t image = layout::plan_layout(config.schema()).segment_bytes;
  return image + image / 128 + (uint64_t{1} << 20) + snapshot::kSnapshotHeaderBytes;
}

// Restores `image` (verified, described by `info`) as the segment. Throws
// larder::Error; nothing changes on a throw.
// Throws kSchemaMismatch when `info` is of another schema than the config's.
void check_schema(const Config& config, const snapshot::SnapshotInfo& info, const std::string& what) {
  const layout::Schema schema = config.schema();
  if (info.schema_fingerprint != schema.fingerprint()) {
    throw Error(ErrorCode::kSchemaMismatch,
                fmt::format("{} holds a segment of another schema (fingerprint {}; this config's tables give {}): "
                            "a snapshot restores only into the schema it was taken with; after a schema change, "
                            "start without it (docs/operations.md, \"Schema change\")",
                            what, layout::hex64(info.schema_fingerprint), layout::hex64(schema.fingerprint())));
  }
}

std::unique_ptr<Writer> restore_image(const Config& config, std::vector<unsigned char>& image,
                                      const snapshot::SnapshotInfo& info, const std::string& what) {
  check_schema(config, info, what);
  const layout::Schema schema = config.schema();
  mark_catching_up(image);
  std::unique_ptr<Writer> writer = Writer::restore(config.segment.name, schema, image, writer_options(config));
  writer->set_sync_state(layout::SyncState::kCatchingUp);
  return writer;
}

// Reads, verifies and restores one snapshot file. Throws larder::Error.
std::unique_ptr<Writer> restore_file(const Config& config, const std::string& path) {
  std::vector<unsigned char> image;
  snapshot::ReadLimits limits;
  limits.max_image_bytes = layout::plan_layout(config.schema()).segment_bytes;
  const int64_t t0 = layout::now_mono_ns();
  // The verified header first: another schema is named as such, not as an
  // image too large for this one.
  check_schema(config, snapshot::read_snapshot_info(path), path);
  const snapshot::SnapshotInfo info = snapshot::read_snapshot_file(path, &image, limits);
  const double verify_s = seconds_since(t0);
  const int64_t t1 = layout::now_mono_ns();
  std::unique_ptr<Writer> writer = restore_image(config, image, info, path);
  spdlog::info(
      "restore: segment {} restored from {} ({} byte image, taken {} ms after the epoch): fetch 0.000 s, verify "
      "{:.3f} s, restore {:.3f} s; {}; state CATCHING_UP",
      writer->path(), path, image.size(), info.created_unix_ns / 1'000'000, verify_s, seconds_since(t1),
      describe(writer->position(0)));
  return writer;
}

std::string error_text(const Error& e) { return fmt::format("{} ({})", e.what(), error_code_name(e.code())); }

// The peer bootstrap: fetch, verify, restore. Throws StartError.
std::unique_ptr<Writer> bootstrap_from_peer(const Config& config, const std::string& peer) {
  HttpUrl url;
  std::string error;
  if (!parse_http_url(peer, &url, &error)) {
    throw StartError(kExitCannotRestore, fmt::format("--bootstrap-from {}: {}", peer, error));
  }
  spdlog::info("bootstrap: no segment {}; fetching a snapshot from {}", config.segment.name, url.to_string());
  const int64_t t0 = layout::now_mono_ns();
  std::vector<unsigned char> body;
  try {
    body = fetch_peer_snapshot(url, config.bootstrap.peer_token, config.bootstrap.peer_timeout_s,
                               max_snapshot_bytes(config));
  } catch (const std::exception& e) {
    throw StartError(kExitCannotRestore, fmt::format("bootstrap from a peer failed: {}", e.what()));
  }
  const double fetch_s = seconds_since(t0);
  try {
    const int64_t t1 = layout::now_mono_ns();
    std::vector<unsigned char> image;
    snapshot::ReadLimits limits;
    limits.max_image_bytes = layout::plan_layout(config.schema()).segment_bytes;
    const snapshot::SnapshotInfo info = snapshot::read_snapshot(body, url.to_string(), &image, limits);
    std::vector<unsigned char>().swap(body);  // the image is all that is needed now
    const double verify_s = seconds_since(t1);
    const int64_t t2 = layout::now_mono_ns();
    std::unique_ptr<Writer> writer = restore_image(config, image, info, url.to_string());
    spdlog::info(
        "restore: segment {} restored from {} ({} byte image, taken {} ms after the epoch): fetch {:.3f} s, verify "
        "{:.3f} s, restore {:.3f} s; {}; state CATCHING_UP",
        writer->path(), url.to_string(), image.size(), info.created_unix_ns / 1'000'000, fetch_s, verify_s,
        seconds_since(t2), describe(writer->position(0)));
    return writer;
  } catch (const Error& e) {
    throw StartError(kExitCannotRestore, fmt::format("bootstrap from a peer failed: {}", error_text(e)));
  }
}

bool segment_exists(const Config& config) {
  struct stat st {};
  return ::stat(layout::segment_path(config.segment.dir, config.segment.name).c_str(), &st) == 0;
}

}  // namespace

void mark_catching_up(std::span<unsigned char> image) {
  if (image.size() < sizeof(layout::SegmentHeader)) return;
  uint64_t source_offset = 0;
  std::memcpy(&source_offset, image.data() + offsetof(layout::SegmentHeader, source_offset), sizeof source_offset);
  if (source_offset % 8 != 0 || source_offset > image.size() ||
      image.size() - source_offset < sizeof(layout::SourceBlock)) {
    return;
  }
  // Plain stores into a private buffer: no reader maps it yet.
  const uint64_t state = static_cast<uint64_t>(layout::SyncState::kCatchingUp);
  const uint64_t now = static_cast<uint64_t>(layout::now_unix_ns());
  std::memcpy(image.data() + source_offset + offsetof(layout::SourceBlock, sync_state), &state, sizeof state);
  std::memcpy(image.data() + source_offset + offsetof(layout::SourceBlock, sync_changed_unix_ns), &now, sizeof now);
}

std::vector<unsigned char> fetch_peer_snapshot(const HttpUrl& url, const std::string& token, double timeout_s,
                                               uint64_t max_bytes) {
  httplib::Client client(url.origin());
  const auto timeout = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::duration<double>(timeout_s));
  client.set_connection_timeout(std::min(timeout, std::chrono::microseconds(10'000'000)));
  client.set_read_timeout(timeout);
  client.set_follow_location(false);
  if (url.tls) client.enable_server_certificate_verification(true);
  httplib::Headers headers;
  if (!token.empty()) headers.emplace("Authorization", "Bearer " + token);
  const int64_t deadline = layout::now_mono_ns() + static_cast<int64_t>(timeout_s * 1e9);
  std::vector<unsigned char> body;
  std::string stop_reason;
  int status = 0;
  const httplib::Result result = client.Get(
      url.path, headers,
      [&](const httplib::Response& response) {
        status = response.status;
        if (status != 200) return false;  // the body of an error is not read
        if (response.has_header("Content-Length")) {
          const std::string length = response.get_header_value("Content-Length");
          char* end = nullptr;
          const unsigned long long n = std::strtoull(length.c_str(), &end, 10);
          if (end == length.c_str() || *end != '\0' || n > max_bytes) {
            stop_reason = fmt::format("the answer announces {} bytes, more than a snapshot of this schema can be ({})",
                                      length, max_bytes);
            return false;
          }
          body.reserve(n);
        }
        return true;
      },
      [&](const char* data, size_t size) {
        if (size > max_bytes - body.size()) {
          stop_reason = fmt::format("the answer is longer than a snapshot of this schema can be ({} bytes)", max_bytes);
          return false;
        }
        if (layout::now_mono_ns() > deadline) {
          stop_reason = fmt::format("the transfer took longer than bootstrap.peer_timeout_s ({} s)", timeout_s);
          return false;
        }
        body.insert(body.end(), reinterpret_cast<const unsigned char*>(data),
                    reinterpret_cast<const unsigned char*>(data) + size);
        return true;
      });
  if (!stop_reason.empty()) throw std::runtime_error(fmt::format("{}: {}", url.to_string(), stop_reason));
  if (status == 401) {
    throw std::runtime_error(fmt::format("{} answered 401 Unauthorized: {}", url.to_string(),
                                         token.empty() ? "it wants a token (set bootstrap.peer_token_file)"
                                                       : "the token in bootstrap.peer_token_file is not the peer's"));
  }
  if (status == 404) {
    throw std::runtime_error(fmt::format(
        "{} answered 404 Not Found: is snapshot.serve true on the peer, and the path /snapshot?", url.to_string()));
  }
  if (status != 0 && status != 200) {
    throw std::runtime_error(fmt::format("{} answered HTTP {} instead of a snapshot", url.to_string(), status));
  }
  if (!result) {
    throw std::runtime_error(fmt::format("cannot fetch {}: {}", url.to_string(), httplib::to_string(result.error())));
  }
  return body;
}

// The refusal of a segment of another schema names what works today (the
// writer's own message names a library option the sidecar does not expose).
std::string schema_change_message(const Config& config) {
  const std::string path = layout::segment_path(config.segment.dir, config.segment.name);
  std::string have = "another fingerprint";
  try {
    have = "fingerprint " +
           layout::hex64(layout::MappedFile::open_read_only(path, config.segment.name)->header().schema_fingerprint);
  } catch (const Error&) {
    // Named generically: the refusal itself already read the header.
  }
  return fmt::format(
      "cannot open segment \"{}\" in {}: it holds another schema ({}; this config's tables give {}). What works: "
      "(0) set segment.on_schema_change: migrate: the sidecar carries every row into a new generation of the "
      "segment with this schema (added fields start not valid, dropped fields go; a changed type or a table with "
      "aggregates is refused) and readers follow by themselves; (1) give segment.name a new name: the "
      "sidecar creates that segment beside the old one, readers move to the new name, then delete the old one; "
      "(2) stop the sidecar, delete {} and {}.lock, and start it: it creates an empty segment and refills from the "
      "stream (stream_offset) or a re-send by the producers, or restores a snapshot of the new schema "
      "(--bootstrap-from a peer already on it); (3) go back to the old config. Snapshots of the old schema do not "
      "restore into the new one. See docs/operations.md, \"Schema change\"",
      config.segment.name, config.segment.dir, have, layout::hex64(config.schema().fingerprint()), path, path);
}

std::unique_ptr<Writer> open_segment(const Config& config, const StartOptions& start) {
  if (!start.restore_file.empty()) {
    try {
      return restore_file(config, start.restore_file);
    } catch (const Error& e) {
      throw StartError(kExitCannotRestore,
                       fmt::format("--restore {}: {}; the segment was not changed", start.restore_file, error_text(e)));
    }
  }
  const bool exists = segment_exists(config);
  if (exists && !start.bootstrap_from.empty()) {
    spdlog::warn(
        "--bootstrap-from {} ignored: segment {} exists and resumes from its own position (to replace it, delete it "
        "first or use --restore FILE)",
        start.bootstrap_from, config.segment.name);
  }
  if (!exists && config.bootstrap.restore == RestoreMode::kFile) {
    try {
      return restore_file(config, config.bootstrap.restore_file);
    } catch (const Error& e) {
      throw StartError(kExitCannotRestore,
                       fmt::format("bootstrap.restore {}: {}", config.bootstrap.restore_file, error_text(e)));
    }
  }
  if (!exists && config.bootstrap.restore == RestoreMode::kLatest && !config.snapshot.dir.empty()) {
    std::vector<SnapshotEntry> entries;
    try {
      entries = list_snapshots(config.snapshot.dir, config.segment.name);
    } catch (const std::exception& e) {
      spdlog::error("restore: cannot list snapshot.dir {}: {}", config.snapshot.dir, e.what());
    }
    for (size_t i = 0; i < entries.size(); ++i) {
      try {
        return restore_file(config, entries[i].path);
      } catch (const Error& e) {
        spdlog::error("restore: snapshot {} is unusable: {}; {}", entries[i].path, error_text(e),
                      i + 1 < entries.size() ? "trying the next older one" : "it was the oldest");
      }
    }
    if (!entries.empty())
      spdlog::error("restore: no usable snapshot of {} in {}", config.segment.name, config.snapshot.dir);
  }
  const std::string& peer = start.bootstrap_from.empty() ? config.bootstrap.peer : start.bootstrap_from;
  if (!exists && !peer.empty()) return bootstrap_from_peer(config, peer);
  try {
    return Writer::open(config.segment.name, config.schema(), writer_options(config));
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kSchemaMismatch && !config.segment.migrate_on_schema_change) {
      throw StartError(kExitCannotOpen, schema_change_message(config));
    }
    throw StartError(kExitCannotOpen, fmt::format("cannot open segment \"{}\" in {}: {}", config.segment.name,
                                                  config.segment.dir, error_text(e)));
  }
}

}  // namespace larder::sidecar
