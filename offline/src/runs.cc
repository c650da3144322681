// Run files (runs.h). Threading: the caller's thread.
#include "runs.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <system_error>

#include <fmt/format.h>

namespace larder::offline {

namespace {

constexpr uint8_t kHasId = 1;
constexpr uint8_t kHasPinned = 2;
// u8 op, u8 flags, u16 table, i64 arrival, i64 event time, u16 key length,
// u16 values, u16 sources.
constexpr size_t kFixedBody = 1 + 1 + 2 + 8 + 8 + 2 + 2 + 2;

std::string errno_text(int e) { return std::error_code(e, std::system_category()).message(); }

template <class T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

uint16_t narrow16(size_t n, const char* what) {
  if (n > UINT16_MAX) throw std::runtime_error(fmt::format("an update's {} ({}) does not fit a run record", what, n));
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
  std::string& r = record_;
  r.clear();
  put<uint32_t>(r, 0);  // the body's length, below
  const std::string_view key = batch.key(u);
  const auto values = batch.values(u);
  const auto sources = batch.sources(u);
  const bool pinned = u.op == sidecar::UpdateOp::kUnpin;
  put<uint8_t>(r, static_cast<uint8_t>(u.op));
  put<uint8_t>(r, static_cast<uint8_t>((u.event_id != 0 ? kHasId : 0) | (pinned ? kHasPinned : 0)));
  put<uint16_t>(r, narrow16(u.table, "table"));
  put<int64_t>(r, arrival_ms);
  put<int64_t>(r, u.event_time_ms);
  if (u.event_id != 0) put<uint64_t>(r, u.event_id);
  if (pinned) put<int64_t>(r, u.pinned_after_ms);
  put<uint16_t>(r, narrow16(key.size(), "key length"));
  put<uint16_t>(r, narrow16(values.size(), "value count"));
  put<uint16_t>(r, narrow16(sources.size(), "source count"));
  r.append(key);
  for (const FieldValue& v : values) {
    put<uint16_t>(r, narrow16(v.field, "field index"));
    put<uint8_t>(r, static_cast<uint8_t>(v.type));
    switch (v.type) {
      case layout::FieldType::kInt64:
      case layout::FieldType::kBool: put<int64_t>(r, v.i64); break;
      case layout::FieldType::kFloat64:
      case layout::FieldType::kFloat32: put<double>(r, v.f64); break;
      case layout::FieldType::kString:
        put<uint32_t>(r, v.length);
        r.append(static_cast<const char*>(v.data), v.length);
        break;
      case layout::FieldType::kFloat32Vector:
        put<uint32_t>(r, v.length);
        r.append(static_cast<const char*>(v.data), size_t{v.length} * sizeof(float));
        break;
    }
  }
  for (const SourceValue& s : sources) {
    put<uint16_t>(r, narrow16(s.source, "source index"));
    put<double>(r, s.value);
    put<uint64_t>(r, s.distinct);
  }
  const auto body = static_cast<uint32_t>(r.size() - sizeof(uint32_t));
  std::memcpy(r.data(), &body, sizeof body);

  Run& out = runs_.at(run);
  out.buffer += r;
  out.bytes += r.size();
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
  files.clear();
  events.clear();
  values.clear();
  sources.clear();
  floats.clear();
  firsts.clear();
  vector_at.clear();
}

uint64_t RunData::cost(uint64_t bytes, uint64_t records, uint64_t values, uint64_t sources) noexcept {
  return bytes + records * (sizeof(Replay::DecodedEvent) + sizeof(std::array<size_t, 4>)) +
         values * sizeof(FieldValue) + sources * sizeof(SourceValue);
}

void RunData::seal() {
  for (auto [v, f] : vector_at) values[v].data = floats.data() + f;
  for (size_t i = 0; i < events.size(); ++i) {
    const std::array<size_t, 4>& f = firsts[i];
    events[i].values = std::span<const FieldValue>(values.data() + f[0], f[1]);
    events[i].sources = std::span<const SourceValue>(sources.data() + f[2], f[3]);
  }
}

void read_run_file(const std::string& path, uint64_t bytes, uint64_t records, uint32_t tables, RunData& out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot open run file {}: {}", path, errno_text(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != bytes) {
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    ::close(fd);
    throw std::runtime_error(fmt::format(
        "run file {} holds {} bytes, {} were written: it was changed or truncated (is --temp-dir shared?)", path, size,
        bytes));
  }
  std::vector<char>& file = out.files.emplace_back(bytes);
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

  const char* const data = file.data();
  size_t at = 0;
  const size_t first_event = out.events.size();
  // The floats of vector values are copied aligned; their FieldValue::data
  // and every event's spans are set by seal(), once the vectors stop growing.
  while (at < bytes) {
    const size_t start = at;
    auto bad = [&](const char* what) {
      return std::runtime_error(fmt::format("run file {}: the record at byte {} {}", path, start, what));
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
  if (out.events.size() - first_event != records) {
    throw std::runtime_error(
        fmt::format("run file {} holds {} records, {} were written", path, out.events.size() - first_event, records));
  }
}
}  // namespace larder::offline
