// Run files (runs.h). Threading: the caller's thread.
#include "runs.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <system_error>

namespace larder::offline {

namespace {

constexpr uint8_t kHasId = 1;
constexpr uint8_t kHasPinned = 2;
// u8 op, u8 flags, u16 table, i64 arrival, i64 event time, u16 key length,
// u16 values, u16 sources.
constexpr size_t kFixedBody = 1 + 1 + 2 + 8 + 8 + 2 + 2 + 2;

std::string errno_text(int e) { return std::error_code(e, std::system_category()).message(); }

[[noreturn, gnu::cold]] void too_large(size_t n, const char* what) {
  throw std::runtime_error(fmt::format("an update's {} ({}) does not fit a run record", what, n));
}

inline uint16_t narrow16(size_t n, const char* what) {
  if (n > UINT16_MAX) [[unlikely]]
    too_large(n, what);
  return static_cast<uint16_t>(n);
}

}  // namespace

RunWriter::RunWriter(const std::string& parent, uint32_t runs, size_t buffer_bytes) : buffer_bytes_(buffer_bytes) {
  std::string templ = parent + "/larder-backfill-XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) {
    throw std::runtime_error(
        fmt::format("cannot make a directory for run files under {}: {} (--temp-dir)", parent, errno_text(errno)));
  }
  dir_ = templ;
  runs_.resize(runs == 0 ? 1 : runs);
  for (uint32_t r = 0; r < runs_.size(); ++r) {
    const int fd = ::open(path(r).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
      const int e = errno;
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
      throw std::runtime_error(fmt::format("cannot create run file {}: {}", path(r), errno_text(e)));
    }
    ::close(fd);
  }
}

RunWriter::~RunWriter() {
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);  // ours: made by mkdtemp
}

std::string RunWriter::path(uint32_t run) const { return fmt::format("{}/run-{}", dir_, run); }

void RunWriter::add(uint32_t run, const sidecar::DecodedBatch& batch, const sidecar::DecodedUpdate& u,
                    int64_t arrival_ms) {
  const std::string_view key = batch.key(u);
  const auto values = batch.values(u);
  const auto sources = batch.sources(u);
  const bool pinned = u.op == sidecar::UpdateOp::kUnpin;
  // The record's size first, then its fields stored in place: one resize of
  // the run's buffer per record, no append per field.
  size_t size = sizeof(uint32_t) + kFixedBody + (u.event_id != 0 ? 8 : 0) + (pinned ? 8 : 0) + key.size() +
                sources.size() * (2 + 8 + 8);
  for (const FieldValue& v : values) {
    size += 2 + 1;
    switch (v.type) {
      case layout::FieldType::kString: size += 4 + size_t{v.length}; break;
      case layout::FieldType::kFloat32Vector: size += 4 + size_t{v.length} * sizeof(float); break;
      default: size += 8; break;
    }
  }
  if (size - sizeof(uint32_t) > UINT32_MAX) throw std::runtime_error("an update does not fit a run record");
  Run& out = runs_.at(run);
  const size_t start = out.buffer.size();
  out.buffer.resize(start + size);
  char* p = out.buffer.data() + start;
  auto put = [&p]<class T>(T v) {
    std::memcpy(p, &v, sizeof(T));
    p += sizeof(T);
  };
  auto put_bytes = [&p](const void* from, size_t n) {
    if (n > 0) std::memcpy(p, from, n);
    p += n;
  };
  put(static_cast<uint32_t>(size - sizeof(uint32_t)));
  put(static_cast<uint8_t>(u.op));
  put(static_cast<uint8_t>((u.event_id != 0 ? kHasId : 0) | (pinned ? kHasPinned : 0)));
  put(narrow16(u.table, "table"));
  put(arrival_ms);
  put(u.event_time_ms);
  if (u.event_id != 0) put(u.event_id);
  if (pinned) put(u.pinned_after_ms);
  put(narrow16(key.size(), "key length"));
  put(narrow16(values.size(), "value count"));
  put(narrow16(sources.size(), "source count"));
  put_bytes(key.data(), key.size());
  for (const FieldValue& v : values) {
    put(narrow16(v.field, "field index"));
    put(static_cast<uint8_t>(v.type));
    switch (v.type) {
      case layout::FieldType::kInt64:
      case layout::FieldType::kBool: put(v.i64); break;
      case layout::FieldType::kFloat64:
      case layout::FieldType::kFloat32: put(v.f64); break;
      case layout::FieldType::kString:
        put(v.length);
        put_bytes(v.data, v.length);
        break;
      case layout::FieldType::kFloat32Vector:
        put(v.length);
        put_bytes(v.data, size_t{v.length} * sizeof(float));
        break;
    }
  }
  for (const SourceValue& sv : sources) {
    put(narrow16(sv.source, "source index"));
    put(sv.value);
    put(sv.distinct);
  }
  out.bytes += size;
  ++out.records;
  out.values += values.size();
  out.sources += sources.size();
  if (out.buffer.size() >= buffer_bytes_) write_out(run);
}

void RunWriter::write_out(uint32_t run) {
  std::string& buf = runs_[run].buffer;
  if (buf.empty()) return;
  // Opened for each write: k files need no k descriptors kept open.
  const int fd = ::open(path(run).c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot open run file {}: {}", path(run), errno_text(errno)));
  size_t done = 0;
  while (done < buf.size()) {
    const ssize_t n = ::write(fd, buf.data() + done, buf.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = n < 0 ? errno : ENOSPC;
      ::close(fd);
      throw std::runtime_error(fmt::format("cannot write run file {}: {} (--temp-dir)", path(run), errno_text(e)));
    }
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) {
    throw std::runtime_error(fmt::format("cannot write run file {}: {} (--temp-dir)", path(run), errno_text(errno)));
  }
  buf.clear();
}

void RunWriter::finish() {
  for (uint32_t r = 0; r < runs_.size(); ++r) write_out(r);
}

void RunWriter::remove(uint32_t run) {
  std::error_code ec;
  std::filesystem::remove(path(run), ec);
}

void read_run(const RunWriter& writer, uint32_t run, uint32_t tables, RunData& out) {
  // Sized once: growing by doubling would hold up to three times as much
  // while a vector moves.
  out.events.reserve(out.events.size() + writer.records(run));
  out.firsts.reserve(out.firsts.size() + writer.records(run));
  out.values.reserve(out.values.size() + writer.values(run));
  out.sources.reserve(out.sources.size() + writer.sources(run));
  read_run_file(writer.path(run), writer.bytes(run), writer.records(run), tables, out);
}

void RunData::clear() {
  files_used = 0;
  events.clear();
  values.clear();
  sources.clear();
  floats.clear();
  firsts.clear();
  vector_at.clear();
}

void RunData::seal() {
  for (auto [v, f] : vector_at) values[v].data = floats.data() + f;
  for (size_t i = 0; i < events.size(); ++i) {
    const std::array<size_t, 4>& f = firsts[i];
    events[i].values = std::span<const FieldValue>(values.data() + f[0], f[1]);
    events[i].sources = std::span<const SourceValue>(sources.data() + f[2], f[3]);
  }
}

void load_run_file(const std::string& path, uint64_t bytes, std::vector<char>& file) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot open run file {}: {}", path, errno_text(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != bytes) {
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    ::close(fd);
    throw std::runtime_error(
        fmt::format("run file {} holds {} bytes, {} were written: it was changed or truncated (is --temp-dir shared?)",
                    path, size, bytes));
  }
  file.resize(bytes);
  size_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::read(fd, file.data() + done, bytes - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = errno;
      ::close(fd);
      throw std::runtime_error(fmt::format("cannot read run file {}: {}", path, n < 0 ? errno_text(e) : "short read"));
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
}

bool scan_record(const char* data, size_t size, size_t at, uint32_t tables, size_t* length, uint32_t* table,
                 std::string_view* key) noexcept {
  uint32_t body = 0;
  if (at > size || size - at < sizeof body) return false;
  std::memcpy(&body, data + at, sizeof body);
  const size_t start = at + sizeof body;
  if (body > size - start || body < kFixedBody) return false;
  uint8_t flags = 0;
  uint16_t t = 0, key_len = 0;
  std::memcpy(&flags, data + start + 1, 1);
  std::memcpy(&t, data + start + 2, 2);
  const size_t key_len_at = 4 + 16 + ((flags & kHasId) ? 8 : 0) + ((flags & kHasPinned) ? 8 : 0);
  if (t >= tables || key_len_at + 6 > body) return false;
  std::memcpy(&key_len, data + start + key_len_at, 2);
  if (key_len > body - key_len_at - 6) return false;
  *length = sizeof body + body;
  *table = t;
  *key = std::string_view(data + start + key_len_at + 6, key_len);
  return true;
}

void read_run_file(const std::string& path, uint64_t bytes, uint64_t records, uint32_t tables, RunData& out) {
  // A buffer of an earlier run is reused when there is one: its pages are
  // mapped already (a fresh one would take a page fault per 4 KiB).
  if (out.files_used == out.files.size()) out.files.emplace_back();
  std::vector<char>& file = out.files[out.files_used++];
  load_run_file(path, bytes, file);
  const size_t first_event = out.events.size();
  parse_records(file.data(), file.size(), "run file " + path, tables, out);
  if (out.events.size() - first_event != records) {
    throw std::runtime_error(
        fmt::format("run file {} holds {} records, {} were written", path, out.events.size() - first_event, records));
  }
}

void parse_records(const char* data, size_t bytes, const std::string& where, uint32_t tables, RunData& out) {
  size_t at = 0;
  // The floats of vector values are copied aligned; their FieldValue::data
  // and every event's spans are set by seal(), once the vectors stop growing.
  while (at < bytes) {
    const size_t start = at;
    auto bad = [&](const char* what) {
      return std::runtime_error(fmt::format("{}: the record at byte {} {}", where, start, what));
    };
    uint32_t body = 0;
    if (bytes - at < sizeof body) throw bad("is cut short");
    std::memcpy(&body, data + at, sizeof body);
    at += sizeof body;
    if (body > bytes - at || body < kFixedBody) throw bad("has a body length out of bounds");
    const size_t end = at + body;
    auto take = [&](void* to, size_t n) {
      if (n > end - at) throw bad("is shorter than its contents");
      std::memcpy(to, data + at, n);
      at += n;
    };
    auto get = [&]<class T>(T* v) { take(v, sizeof(T)); };
    Replay::DecodedEvent e;
    uint8_t op = 0, flags = 0;
    uint16_t table = 0, key_len = 0, value_count = 0, source_count = 0;
    get(&op);
    get(&flags);
    get(&table);
    get(&e.arrival_ms);
    get(&e.event_time_ms);
    if (op > static_cast<uint8_t>(sidecar::UpdateOp::kUnpin)) throw bad("has an unknown op");
    if (table >= tables) throw bad("names a table the config does not have");
    if ((flags & ~(kHasId | kHasPinned)) != 0) throw bad("has unknown flags");
    e.op = static_cast<sidecar::UpdateOp>(op);
    e.table = table;
    if (flags & kHasId) get(&e.event_id);
    if (flags & kHasPinned) get(&e.pinned_after_ms);
    get(&key_len);
    get(&value_count);
    get(&source_count);
    if (key_len > end - at) throw bad("has a key longer than the record");
    e.key = std::string_view(data + at, key_len);
    at += key_len;
    const size_t first_value = out.values.size();
    for (uint16_t i = 0; i < value_count; ++i) {
      FieldValue v;
      uint16_t field = 0;
      uint8_t type = 0;
      get(&field);
      get(&type);
      v.field = field;
      v.type = static_cast<layout::FieldType>(type);
      switch (v.type) {
        case layout::FieldType::kInt64:
        case layout::FieldType::kBool: get(&v.i64); break;
        case layout::FieldType::kFloat64:
        case layout::FieldType::kFloat32: get(&v.f64); break;
        case layout::FieldType::kString:
          get(&v.length);
          if (v.length > end - at) throw bad("has a string longer than the record");
          v.data = data + at;
          at += v.length;
          break;
        case layout::FieldType::kFloat32Vector: {
          get(&v.length);
          if (v.length > (end - at) / sizeof(float)) throw bad("has a vector longer than the record");
          const size_t f = out.floats.size();
          out.floats.resize(f + v.length);
          std::memcpy(out.floats.data() + f, data + at, size_t{v.length} * sizeof(float));
          at += size_t{v.length} * sizeof(float);
          out.vector_at.emplace_back(out.values.size(), f);
          break;
        }
        default: throw bad("has a value of an unknown type");
      }
      out.values.push_back(v);
    }
    const size_t first_source = out.sources.size();
    for (uint16_t i = 0; i < source_count; ++i) {
      SourceValue s;
      uint16_t source = 0;
      get(&source);
      get(&s.value);
      get(&s.distinct);
      s.source = source;
      out.sources.push_back(s);
    }
    if (at != end) throw bad("is longer than its contents");
    e.pinned_after_ms = (flags & kHasPinned) ? e.pinned_after_ms : 0;
    // The spans are set below, once the vectors stop growing.
    out.events.push_back(e);
    out.firsts.push_back({first_value, value_count, first_source, source_count});
  }
}

}  // namespace larder::offline
