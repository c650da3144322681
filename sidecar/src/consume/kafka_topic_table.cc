// The Kafka source's topic table (see kafka_topic_table.h). Source thread.
#include "consume/kafka_topic_table.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>

namespace larder::sidecar {
namespace {

// A table holds at most kMaxSourcePartitions topics of 249 characters: far
// below this. A bigger file is damaged, not read.
constexpr size_t kMaxFileBytes = 64 * 1024;
constexpr std::string_view kMagic = "larder-kafka-topics 1";

uint64_t fnv1a64(std::string_view bytes) noexcept {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

// Splits "word rest" at the first space.
std::string_view next_word(std::string_view& line) {
  const size_t sp = line.find(' ');
  const std::string_view w = line.substr(0, sp);
  line = sp == std::string_view::npos ? std::string_view{} : line.substr(sp + 1);
  return w;
}

// A decimal without sign or leading zeros (but "0"), the whole of `s`.
bool parse_u32(std::string_view s, uint32_t* out) {
  if (s.empty() || s.size() > 10 || (s.size() > 1 && s[0] == '0')) return false;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc{} && end == s.data() + s.size();
}

bool parse_hash(std::string_view s, uint64_t* out) {
  if (s.size() != 16) return false;
  for (const char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out, 16);
  return ec == std::errc{} && end == s.data() + s.size();
}

bool write_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

}  // namespace

bool kafka_topic_name_ok(std::string_view name) noexcept {
  if (name.empty() || name.size() > 249) return false;
  for (const char c : name) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

KafkaTopicTable::KafkaTopicTable(std::string path, std::string_view source_id, uint32_t ranges)
    : path_(std::move(path)), id_hash_(fnv1a64(source_id)), topics_(ranges), retired_(ranges, false) {}

void KafkaTopicTable::clear() {
  for (std::string& t : topics_) t.clear();
  retired_.assign(retired_.size(), false);
}

uint32_t KafkaTopicTable::used() const noexcept {
  uint32_t n = 0;
  for (size_t r = 0; r < topics_.size(); ++r) n += !topics_[r].empty() || retired_[r] ? 1 : 0;
  return n;
}

int KafkaTopicTable::range_of(std::string_view topic) const noexcept {
  for (size_t r = 0; r < topics_.size(); ++r) {
    if (topics_[r] == topic) return static_cast<int>(r);
  }
  return -1;
}

void KafkaTopicTable::retire(uint32_t r) {
  topics_.at(r).clear();
  retired_.at(r) = true;
}

std::string KafkaTopicTable::serialize() const {
  std::string out = fmt::format("{}\nid {:016x}\nranges {}\n", kMagic, id_hash_, topics_.size());
  for (size_t r = 0; r < topics_.size(); ++r) {
    if (!topics_[r].empty()) out += fmt::format("topic {} {}\n", r, topics_[r]);
    if (retired_[r]) out += fmt::format("retired {}\n", r);
  }
  out += fmt::format("end {:016x}\n", fnv1a64(out));
  return out;
}

KafkaTopicTable::Load KafkaTopicTable::parse(std::string_view bytes, std::string* why) {
  clear();
  auto damaged = [&](std::string reason) {
    clear();
    *why = std::move(reason);
    return Load::kDamaged;
  };
  auto other = [&] {
    clear();
    return Load::kOtherSource;
  };
  if (bytes.size() > kMaxFileBytes) return damaged(fmt::format("{} bytes, more than a table holds", bytes.size()));
  if (bytes.find('\0') != std::string_view::npos) return damaged("a NUL byte");
  if (bytes.empty() || bytes.back() != '\n') return damaged("cut short (no final newline)");
  // The checksum line: the last one; it covers every byte before it.
  const size_t last = bytes.rfind('\n', bytes.size() - 2);
  const std::string_view body = last == std::string_view::npos ? std::string_view{} : bytes.substr(0, last + 1);
  std::string_view end_line = bytes.substr(body.size(), bytes.size() - body.size() - 1);
  uint64_t sum = 0;
  if (next_word(end_line) != "end" || !parse_hash(end_line, &sum)) return damaged("no checksum line at the end");
  if (sum != fnv1a64(body)) return damaged("the checksum does not match");

  size_t pos = 0;
  int line_no = 0;
  bool saw_id = false, saw_ranges = false;
  while (pos < body.size()) {
    const size_t nl = body.find('\n', pos);
    std::string_view line = body.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (line_no == 1) {
      if (line != kMagic) return damaged(fmt::format("not a topic table of this version (\"{:.40}\")", line));
      continue;
    }
    const std::string_view word = next_word(line);
    if (line_no == 2) {
      uint64_t id = 0;
      if (word != "id" || !parse_hash(line, &id)) return damaged("line 2 is not the source id");
      if (id != id_hash_) return other();
      saw_id = true;
      continue;
    }
    if (line_no == 3) {
      uint32_t ranges = 0;
      if (word != "ranges" || !parse_u32(line, &ranges)) return damaged("line 3 is not the range count");
      if (ranges != topics_.size()) return other();
      saw_ranges = true;
      continue;
    }
    uint32_t r = 0;
    if (word == "topic") {
      const std::string_view range = next_word(line);
      if (!parse_u32(range, &r) || r >= topics_.size())
        return damaged(fmt::format("line {}: range out of bounds", line_no));
      if (!kafka_topic_name_ok(line)) return damaged(fmt::format("line {}: not a Kafka topic name", line_no));
      if (!topics_[r].empty() || retired_[r]) return damaged(fmt::format("line {}: range {} given twice", line_no, r));
      if (range_of(line) >= 0) return damaged(fmt::format("line {}: topic \"{}\" listed twice", line_no, line));
      topics_[r] = std::string(line);
    } else if (word == "retired") {
      if (!parse_u32(line, &r) || r >= topics_.size())
        return damaged(fmt::format("line {}: range out of bounds", line_no));
      if (!topics_[r].empty() || retired_[r]) return damaged(fmt::format("line {}: range {} given twice", line_no, r));
      retired_[r] = true;
    } else {
      return damaged(fmt::format("line {}: unknown entry", line_no));
    }
  }
  if (!saw_id || !saw_ranges) return damaged("no header");
  return Load::kLoaded;
}

KafkaTopicTable::Load KafkaTopicTable::load(std::string* why) {
  clear();
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Load::kMissing;
    *why = fmt::format("cannot open it: {}", std::strerror(errno));
    return Load::kDamaged;
  }
  std::string bytes;
  char buf[8192];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *why = fmt::format("cannot read it: {}", std::strerror(errno));
      ::close(fd);
      return Load::kDamaged;
    }
    if (n == 0) break;
    bytes.append(buf, static_cast<size_t>(n));
    if (bytes.size() > kMaxFileBytes) break;  // parse() refuses it
  }
  ::close(fd);
  return parse(bytes, why);
}

bool KafkaTopicTable::save(std::string* why) const {
  const std::string tmp = path_ + ".tmp";
  const std::string bytes = serialize();
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) {
    *why = fmt::format("cannot create {}: {}", tmp, std::strerror(errno));
    return false;
  }
  const bool written = write_all(fd, bytes) && ::fsync(fd) == 0;
  const int saved_errno = errno;
  ::close(fd);
  if (!written) {
    *why = fmt::format("cannot write {}: {}", tmp, std::strerror(saved_errno));
    ::unlink(tmp.c_str());
    return false;
  }
  // The rename is the commit point (kafka_topic_table.h).
  if (::rename(tmp.c_str(), path_.c_str()) != 0) {
    *why = fmt::format("cannot rename {} to {}: {}", tmp, path_, std::strerror(errno));
    ::unlink(tmp.c_str());
    return false;
  }
  const size_t slash = path_.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path_.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // the rename itself durable (a no-op on tmpfs, which a reboot empties anyway)
    ::close(dfd);
  }
  return true;
}

int KafkaTopicTable::assign(const std::string& topic, std::string* why) {
  why->clear();
  const int have = range_of(topic);
  if (have >= 0) return have;
  for (size_t r = 0; r < topics_.size(); ++r) {
    if (!topics_[r].empty() || retired_[r]) continue;
    topics_[r] = topic;
    if (!save(why)) {
      topics_[r].clear();
      return -1;
    }
    return static_cast<int>(r);
  }
  return -1;
}

}  // namespace larder::sidecar
