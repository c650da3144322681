// larderctl's snapshot commands. All run on larderctl's main thread.
//
//   snapshot SEGMENT FILE        a segment with no writer attached -> FILE
//   snapshot-info FILE           verify FILE and describe it
//   fetch-snapshot URL FILE      GET a peer's snapshot, verify, rename to FILE
//
// `snapshot` copies the segment from outside its writer, which is consistent
// only when no writer is attached: it holds a shared flock on the writer's
// lock file for the copy (a writer starting meanwhile is refused with
// kWriterLocked, for the time of one memcpy of the segment) and refuses a
// segment whose writer is alive, or that a crashed writer left needing
// repair. A live segment is snapshotted by its sidecar (snapshot.dir) and
// fetched from it (GET /snapshot).
//
// Exit codes (larderctl's): 0 done; 1 refused (a live writer, a segment that
// needs repair, a file or answer that is not a valid snapshot, a non-200
// answer); 2 usage; 3 cannot open the segment or the file, cannot connect or
// the connection failed, cannot write the output.
#include "snapshot_commands.h"

#include <fcntl.h>
#include <httplib.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <vector>

#include "larder/layout/clock.h"
#include "larder/layout/error.h"
#include "larder/layout/format.h"
#include "larder/layout/segment_file.h"
#include "larder/layout/sync.h"
#include "larder/snapshot/snapshot_file.h"
#include "observe/json_text.h"

namespace larder::ctl {

std::string json_string(std::string_view s) {
  std::string out = "\"";
  larder::sidecar::append_json_escaped(out, s);
  return out + "\"";
}

namespace {

using namespace larder::layout;  // NOLINT: a tool over the layout

// Bytes from a peer, shown on a terminal: printable ASCII as is, everything
// else (control characters, escape sequences, UTF-8) as \xHH.
std::string printable(std::string_view bytes) {
  std::string out;
  for (unsigned char c : bytes) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    }
  }
  return out;
}

std::string utc_time(int64_t unix_ns) {
  const time_t secs = static_cast<time_t>(unix_ns / 1'000'000'000);
  struct tm tm;
  if (unix_ns <= 0 || gmtime_r(&secs, &tm) == nullptr) return "unknown";
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

const char* sync_state_name(uint64_t s) {
  switch (static_cast<SyncState>(s)) {
    case SyncState::kUnknown: return "unknown";
    case SyncState::kCatchingUp: return "catching_up";
    case SyncState::kReady: return "ready";
    case SyncState::kIncomplete: return "incomplete";
  }
  return "invalid";
}

std::string dir_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

int refused(const std::string& message) {
  std::fprintf(stderr, "larderctl: %s\n", message.c_str());
  return kExitProblems;
}

// The exit code for an Error from reading a snapshot: the file was read and
// refused (1), or could not be read (3).
int snapshot_error(const Error& e) {
  std::fprintf(stderr, "larderctl: %s\n", e.what());
  return e.code() == ErrorCode::kCorrupt || e.code() == ErrorCode::kVersionMismatch ? kExitProblems : kExitOpen;
}

// A one-line (text) or one-object (JSON) description of a verified image:
// sync state, source id, partitions with a position, tables.
void describe_image(bool json, const std::vector<unsigned char>& image, std::string* text, std::string* js) {
  const void* base = image.data();
  const SegmentHeader& h = *static_cast<const SegmentHeader*>(base);
  const SourceBlock& src = source_block(base);
  const uint64_t state = sync::load_relaxed(src.sync_state);
  char id_bytes[kSourceIdWords * 8];
  for (size_t w = 0; w < kSourceIdWords; ++w) {
    const uint64_t v = sync::load_relaxed(src.source_id[w]);
    std::memcpy(id_bytes + w * 8, &v, 8);
  }
  const std::string source_id(id_bytes, strnlen(id_bytes, sizeof id_bytes));
  const uint64_t changed = sync::load_relaxed(src.sync_changed_unix_ns);
  // partition_count comes from the file: never index past the array.
  const uint64_t count = std::min<uint64_t>(sync::load_relaxed(src.partition_count), kMaxSourcePartitions);
  std::string parts_text, parts_json;
  auto opt = [](uint64_t plus_one) { return plus_one == 0 ? std::string("-") : std::to_string(plus_one - 1); };
  auto opt_json = [](uint64_t plus_one) { return plus_one == 0 ? std::string("null") : std::to_string(plus_one - 1); };
  for (uint64_t p = 0; p < count; ++p) {
    const PartitionWords& pw = src.partitions[p];
    const uint64_t next = sync::load_relaxed(pw.next_plus_one), skip = sync::load_relaxed(pw.skip_updates),
                   target = sync::load_relaxed(pw.target_plus_one),
                   first = sync::load_relaxed(pw.first_retained_plus_one);
    if (next == 0 && target == 0 && first == 0) continue;
    parts_text += "    partition " + std::to_string(p) + ": next offset " + opt(next) + ", skip " +
                  std::to_string(skip) + " updates, target " + opt(target) + ", first retained " + opt(first) + "\n";
    parts_json += std::string(parts_json.empty() ? "" : ",") + "{\"partition\":" + std::to_string(p) +
                  ",\"next_offset\":" + opt_json(next) + ",\"skip_updates\":" + std::to_string(skip) +
                  ",\"target\":" + opt_json(target) + ",\"first_retained\":" + opt_json(first) + "}";
  }
  std::string tables_text, tables_json;
  for (uint32_t t = 0; t < h.table_count; ++t) {
    const TableDescriptor& d = table_descriptor(base, t);
    const uint64_t live = sync::load_relaxed(d.counters.live_keys), tomb = sync::load_relaxed(d.counters.tombstones);
    tables_text += "  " + std::string(fixed_name(d.name)) + ": " + std::to_string(live) + " live keys, " +
                   std::to_string(tomb) + " tombstones, capacity " + std::to_string(d.capacity) + "\n";
    tables_json += std::string(t ? "," : "") + "{\"name\":" + json_string(fixed_name(d.name)) +
                   ",\"live_keys\":" + std::to_string(live) + ",\"tombstones\":" + std::to_string(tomb) +
                   ",\"capacity\":" + std::to_string(d.capacity) + "}";
  }
  if (json) {
    *js = "\"sync_state\":\"" + std::string(sync_state_name(state)) +
          "\",\"sync_changed_unix_ns\":" + std::to_string(changed) + ",\"source_id\":" + json_string(source_id) +
          ",\"partitions\":[" + parts_json +
          "],\"updates_applied\":" + std::to_string(sync::load_relaxed(h.updates_applied)) + ",\"tables\":[" +
          tables_json + "]";
  } else {
    *text = "  sync state " + std::string(sync_state_name(state)) +
            (changed != 0 ? " (since " + utc_time(static_cast<int64_t>(changed)) + ")" : std::string()) +
            ", source id " + (source_id.empty() ? std::string("(none)") : "\"" + printable(source_id) + "\"") + "\n" +
            (parts_text.empty() ? std::string("    no positions stored\n") : parts_text) + "  updates applied " +
            std::to_string(sync::load_relaxed(h.updates_applied)) + "\ntables:\n" + tables_text;
  }
}

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

}  // namespace

int cmd_snapshot(const std::string& dir, bool json, const std::string& name, const std::string& file, int level) {
  const std::string path = segment_path(dir, name);
  const std::string seg = "segment \"" + name + "\"";
  const std::string use_sidecar =
      ": a copy taken from outside the writer is not consistent. Let the sidecar take it (snapshot.dir in its "
      "config), or fetch its current one with `larderctl fetch-snapshot URL FILE` (GET /snapshot with "
      "snapshot.serve: true)";
  // The writer holds an exclusive flock on the lock file for its lifetime.
  // A shared one here proves there is none, and keeps one from attaching
  // until the copy is taken.
  Fd lock(::open((path + ".lock").c_str(), O_RDONLY | O_CLOEXEC));
  bool locked = false;
  if (lock.get() >= 0) {
    if (::flock(lock.get(), LOCK_SH | LOCK_NB) == 0) {
      locked = true;
    } else if (errno == EWOULDBLOCK) {
      std::unique_ptr<MappedFile> m;
      std::string pid;
      try {
        m = MappedFile::open_read_only(path, name);
        if (m->header().magic == kMagic)
          pid = " (pid " + std::to_string(sync::load_relaxed(m->header().writer_pid)) + ")";
      } catch (const Error&) {
      }
      return refused(seg + " has a live writer" + pid + use_sidecar);
    } else {
      std::fprintf(stderr, "larderctl: flock %s.lock: %s\n", path.c_str(), std::strerror(errno));
      return kExitOpen;
    }
  } else if (errno != ENOENT) {
    std::fprintf(stderr, "larderctl: open %s.lock: %s\n", path.c_str(), std::strerror(errno));
    return kExitOpen;
  }

  std::vector<unsigned char> image;
  {
    auto m = MappedFile::open_read_only(path, name);
    validate_segment(m->data(), m->size(), name);
    const SegmentHeader& h = m->header();
    if (static_cast<SegmentState>(sync::load_acquire(h.state)) == SegmentState::kRetired) {
      return refused(seg + " is retired (another segment replaced it): snapshot the current one");
    }
    if (!locked && sync::load_relaxed(h.writer_pid) != 0) {
      // No lock file to ask: a writer pid means one may be running.
      return refused(seg + " has a writer attached (pid " + std::to_string(sync::load_relaxed(h.writer_pid)) + ")" +
                     use_sidecar);
    }
    const SourceBlock& src = source_block(m->data());
    if (sync::load_relaxed(h.undo_armed) != 0 || sync::load_relaxed(h.journal_armed) != 0 ||
        sync::load_relaxed(src.pending_state) != kPendingIdle) {
      return refused(seg +
                     " needs repair: its last writer stopped in the middle of an update. Start its sidecar "
                     "(a writer repairs the segment when it attaches), then take the snapshot through it");
    }
    const auto* p = static_cast<const unsigned char*>(m->data());
    image.assign(p, p + m->size());
  }
  lock.reset();  // the copy is taken: a writer may attach again
  validate_segment(image.data(), image.size(), name);

  const auto start = std::chrono::steady_clock::now();
  const snapshot::SnapshotInfo info = snapshot::write_snapshot_file(file, name, image, {level, 0});
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  if (json) {
    std::printf("{\"segment\":%s,\"file\":%s,\"image_bytes\":%" PRIu64 ",\"file_bytes\":%" PRIu64
                ",\"level\":%d,\"write_ms\":%.1f}\n",
                json_string(name).c_str(), json_string(file).c_str(), info.image_bytes,
                info.payload_bytes + snapshot::kSnapshotHeaderBytes, level, ms);
  } else {
    std::printf("%s -> %s: %" PRIu64 " bytes, %" PRIu64 " compressed (zstd level %d, %.1fx) in %.0f ms\n", seg.c_str(),
                file.c_str(), info.image_bytes, info.payload_bytes + snapshot::kSnapshotHeaderBytes, level,
                static_cast<double>(info.image_bytes) / static_cast<double>(info.payload_bytes), ms);
  }
  return kExitOk;
}

int cmd_snapshot_info(bool json, const std::string& file) {
  std::vector<unsigned char> image;
  snapshot::SnapshotInfo info;
  try {
    info = snapshot::read_snapshot_file(file, &image);
  } catch (const Error& e) {
    return snapshot_error(e);
  }
  std::string text, js;
  describe_image(json, image, &text, &js);
  if (json) {
    std::printf("{\"file\":%s,\"valid\":true,\"format_version\":%u,\"segment\":%s,\"created_unix_ns\":%" PRId64
                ",\"layout_version\":%u,\"abi_signature\":\"%s\",\"schema_fingerprint\":\"%s\",\"image_bytes\":%" PRIu64
                ",\"payload_bytes\":%" PRIu64 ",%s}\n",
                json_string(file).c_str(), info.format_version, json_string(info.segment_name).c_str(),
                info.created_unix_ns, info.layout_version, hex64(info.abi_signature).c_str(),
                hex64(info.schema_fingerprint).c_str(), info.image_bytes, info.payload_bytes, js.c_str());
  } else {
    std::printf("snapshot %s: valid (header, payload and image checksums, segment layout)\n", file.c_str());
    std::printf("  format v%u, segment %s, taken %s\n", info.format_version, printable(info.segment_name).c_str(),
                utc_time(info.created_unix_ns).c_str());
    std::printf("  image %" PRIu64 " bytes (layout v%u, ABI %s, schema %s), payload %" PRIu64 " bytes (zstd, %.1fx)\n",
                info.image_bytes, info.layout_version, hex64(info.abi_signature).c_str(),
                hex64(info.schema_fingerprint).c_str(), info.payload_bytes,
                static_cast<double>(info.image_bytes) / static_cast<double>(info.payload_bytes));
    std::printf("%s", text.c_str());
  }
  return kExitOk;
}

int cmd_fetch_snapshot(bool json, const std::string& url, const std::string& file, const std::string& token_file,
                       double timeout_s) {
  // http://host[:port][/path] or https://...
  const size_t scheme_end = url.find("://");
  const std::string scheme = scheme_end == std::string::npos ? "" : url.substr(0, scheme_end);
  if (scheme != "http" && scheme != "https") {
    std::fprintf(stderr, "larderctl: URL \"%s\": expected http://HOST[:PORT]/PATH or https://...\n",
                 printable(url).c_str());
    return kExitUsage;
  }
  const size_t path_start = url.find('/', scheme_end + 3);
  const std::string origin = url.substr(0, path_start);
  const std::string target = path_start == std::string::npos ? "/" : url.substr(path_start);
  if (origin.size() <= scheme_end + 3) {
    std::fprintf(stderr, "larderctl: URL \"%s\" has no host\n", printable(url).c_str());
    return kExitUsage;
  }
  if (!(timeout_s > 0)) {
    std::fprintf(stderr, "larderctl: --timeout must be positive\n");
    return kExitUsage;
  }
  httplib::Headers headers;
  if (!token_file.empty()) {
    std::ifstream in(token_file, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "larderctl: token file %s: %s\n", token_file.c_str(), std::strerror(errno));
      return kExitUsage;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    std::string token = ss.str();
    while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) token.pop_back();
    if (token.empty()) {
      std::fprintf(stderr, "larderctl: token file %s is empty\n", token_file.c_str());
      return kExitUsage;
    }
    for (unsigned char c : token) {
      if (c <= 0x20 || c >= 0x7f) {
        std::fprintf(stderr, "larderctl: token file %s holds a character a bearer token cannot have\n",
                     token_file.c_str());
        return kExitUsage;
      }
    }
    headers.emplace("Authorization", "Bearer " + token);
  }

  // The body goes to a temporary file next to FILE; it is renamed over FILE
  // only once it has been verified, and removed on every other outcome.
  const std::string dir = dir_of(file);
  std::string tmp = (dir == "/" ? std::string("/") : dir + "/") + "." + base_of(file) + ".fetch.XXXXXX";
  Fd out(::mkostemp(tmp.data(), O_CLOEXEC));
  if (out.get() < 0) {
    std::fprintf(stderr, "larderctl: cannot create a temporary file in %s: %s\n", dir.c_str(), std::strerror(errno));
    return kExitOpen;
  }
  struct Unlink {
    std::string path;
    bool armed = true;
    ~Unlink() {
      if (armed) ::unlink(path.c_str());
    }
  } cleanup{tmp};

  httplib::Client client(origin);
  const auto secs = static_cast<time_t>(timeout_s);
  const auto usecs = static_cast<time_t>((timeout_s - static_cast<double>(secs)) * 1e6);
  client.set_connection_timeout(secs, usecs);
  client.set_read_timeout(secs, usecs);
  client.set_write_timeout(secs, usecs);

  int status = 0;
  std::string error_body;  // the first 200 bytes of a non-200 answer
  uint64_t received = 0;
  int write_errno = 0;
  const httplib::Result res = client.Get(
      target, headers,
      [&](const httplib::Response& r) {
        status = r.status;
        return true;
      },
      [&](const char* data, size_t n) {
        if (status != 200) {
          error_body.append(data, std::min(n, size_t{200} - error_body.size()));
          return error_body.size() < 200;  // enough to show: stop reading
        }
        while (n > 0) {
          const ssize_t w = ::write(out.get(), data, n);
          if (w < 0) {
            if (errno == EINTR) continue;
            write_errno = errno;
            return false;
          }
          data += w;
          n -= static_cast<size_t>(w);
          received += static_cast<uint64_t>(w);
        }
        return true;
      });
  if (write_errno != 0) {
    std::fprintf(stderr, "larderctl: writing %s: %s; no file written\n", tmp.c_str(), std::strerror(write_errno));
    return kExitOpen;
  }
  if (status != 0 && status != 200) {
    return refused(printable(url) + " answered HTTP " + std::to_string(status) + " (expected 200)" +
                   (error_body.empty() ? std::string(", with no body") : ": \"" + printable(error_body) + "\"") +
                   (status == 401 || status == 403 ? "; check --token-file" : "") + "; no file written");
  }
  if (!res) {
    std::fprintf(stderr, "larderctl: fetching %s: %s%s; no file written\n", printable(url).c_str(),
                 httplib::to_string(res.error()).c_str(),
                 status == 200 ? (" after " + std::to_string(received) + " bytes of the body").c_str() : "");
    return kExitOpen;
  }
  if (::fsync(out.get()) != 0) {
    std::fprintf(stderr, "larderctl: fsync %s: %s; no file written\n", tmp.c_str(), std::strerror(errno));
    return kExitOpen;
  }
  out.reset();
  std::vector<unsigned char> image;
  snapshot::SnapshotInfo info;
  try {
    info = snapshot::read_snapshot_file(tmp, &image);
  } catch (const Error& e) {
    const bool bad = e.code() == ErrorCode::kCorrupt || e.code() == ErrorCode::kVersionMismatch;
    std::fprintf(stderr,
                 "larderctl: the answer of %s (%" PRIu64
                 " bytes) is not a snapshot this build accepts: %s; no "
                 "file written\n",
                 printable(url).c_str(), received, e.what());
    return bad ? kExitProblems : kExitOpen;
  }
  if (::rename(tmp.c_str(), file.c_str()) != 0) {
    std::fprintf(stderr, "larderctl: rename %s to %s: %s; no file written\n", tmp.c_str(), file.c_str(),
                 std::strerror(errno));
    return kExitOpen;
  }
  cleanup.armed = false;
  Fd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.get() < 0 || ::fsync(dfd.get()) != 0) {
    std::fprintf(stderr, "larderctl: fsync of directory %s: %s (the file is in place)\n", dir.c_str(),
                 std::strerror(errno));
    return kExitOpen;
  }
  if (json) {
    std::printf("{\"url\":%s,\"file\":%s,\"segment\":%s,\"file_bytes\":%" PRIu64 ",\"image_bytes\":%" PRIu64 "}\n",
                json_string(url).c_str(), json_string(file).c_str(), json_string(info.segment_name).c_str(), received,
                info.image_bytes);
  } else {
    std::printf("%s -> %s: %" PRIu64 " bytes, verified (segment %s, %" PRIu64 " bytes, taken %s)\n",
                printable(url).c_str(), file.c_str(), received, printable(info.segment_name).c_str(), info.image_bytes,
                utc_time(info.created_unix_ns).c_str());
  }
  return kExitOk;
}

}  // namespace larder::ctl
