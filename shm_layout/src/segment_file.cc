// Segment names, directories, mappings (mmap, 2 MiB aligned) and header
// validation.
#include "larder/layout/segment_file.h"

#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/magic.h>
#include <pwd.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "larder/layout/schema.h"
#include "larder/layout/sync.h"

// Debian 12's glibc headers predate MADV_COLLAPSE (Linux 6.1, value from
// <linux/mman.h>); a kernel that does not know it answers EINVAL.
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

namespace larder::layout {

void validate_segment_name(std::string_view name) {
  auto bad = [&](const std::string& why) {
    throw Error(ErrorCode::kInvalidArgument, "segment name \"" + std::string(name) + "\": " + why);
  };
  if (name.empty() || name.size() > 200) bad("must be 1..200 characters");
  if (name[0] == '.' || name[0] == '-') bad("must not start with '.' or '-'");
  for (char c : name) {
    bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
    if (!ok) bad("only [A-Za-z0-9_.-] are allowed");
  }
  if (name.size() >= 5 && name.substr(name.size() - 5) == ".lock") bad("must not end in \".lock\"");
}

std::string segment_path(std::string_view dir, std::string_view name) {
  std::string p(dir);
  if (p.empty()) p = "/dev/shm";
  if (p.back() != '/') p += '/';
  p += name;
  return p;
}

std::string hex64(uint64_t v) {
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

bool dir_file_system(const std::string& dir, DirFileSystem* out) {
  struct statfs fs;
  if (::statfs(dir.c_str(), &fs) != 0) return false;
  out->magic = static_cast<uint64_t>(fs.f_type);
  out->memory_backed = out->magic == TMPFS_MAGIC || out->magic == RAMFS_MAGIC;
  out->size_limited = out->magic != RAMFS_MAGIC;
  out->type_name = out->magic == TMPFS_MAGIC   ? "tmpfs"
                   : out->magic == RAMFS_MAGIC ? "ramfs"
                                               : "0x" + hex64(out->magic).substr(8);
  return true;
}

// A mapping made by map_file(): unmapped with the MappedFile.
struct MappedFile::Region {
  void* addr = MAP_FAILED;
  size_t bytes = 0;
  ~Region() {
    if (addr != MAP_FAILED) ::munmap(addr, bytes);
  }
};

namespace {

std::string describe_owner(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return "";
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
  std::string owner = std::to_string(st.st_uid), group_name = std::to_string(st.st_gid);
  if (passwd* pw = ::getpwuid(st.st_uid)) owner = pw->pw_name;
  if (struct group* gr = ::getgrgid(st.st_gid)) group_name = gr->gr_name;
  return std::string(" (mode ") + mode + ", owner " + owner + ", group " + group_name + ")";
}

[[noreturn]] void throw_open_error(int err, const std::string& path, std::string_view name, bool write) {
  const std::string seg = "segment \"" + std::string(name) + "\" at " + path;
  if (err == ENOENT) {
    throw Error(ErrorCode::kNotFound,
                seg + ": no such file. Is the sidecar running, and is the directory right (ClientOptions::dir)?");
  }
  if (err == EACCES || err == EPERM) {
    throw Error(ErrorCode::kPermissionDenied,
                seg + ": permission denied" + describe_owner(path) +
                    (write ? ". The writer needs read-write access to the file and its directory."
                           : ". Run the reader as a member of the file's group, or create the segment with a "
                             "mode that grants it (segment.mode)."));
  }
  if (err == EROFS) {
    throw Error(ErrorCode::kPermissionDenied, seg + ": read-only file system");
  }
  throw Error(ErrorCode::kSystem, seg + ": " + std::strerror(err));
}

// mmap of `bytes` of `fd` at a 2 MiB aligned address: a reservation of
// bytes + 2 MiB of address space, the file mapped over its first aligned
// address, the rest given back. Huge pages of the file sit at 2 MiB file
// offsets, so only an aligned mapping can map them with one entry each (a
// kernel aligns large shared mappings by itself only on some versions and
// mounts). Falls back to the kernel's choice when the reservation fails.
void* map_aligned(int fd, size_t bytes, int prot) {
  if (bytes < kHugePageBytes) return ::mmap(nullptr, bytes, prot, MAP_SHARED, fd, 0);
  const size_t span = bytes + kHugePageBytes;
  void* r = ::mmap(nullptr, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) return ::mmap(nullptr, bytes, prot, MAP_SHARED, fd, 0);
  const uintptr_t lo = reinterpret_cast<uintptr_t>(r);
  const uintptr_t at = (lo + kHugePageBytes - 1) & ~uintptr_t{kHugePageBytes - 1};
  void* p = ::mmap(reinterpret_cast<void*>(at), bytes, prot, MAP_SHARED | MAP_FIXED, fd, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    ::munmap(r, span);
    errno = err;
    return MAP_FAILED;
  }
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t end = (at + bytes + page - 1) / page * page;
  if (at > lo) ::munmap(r, at - lo);
  if (lo + span > end) ::munmap(reinterpret_cast<void*>(end), lo + span - end);
  return p;
}

std::unique_ptr<MappedFile::Region> map_file(const std::string& path, std::string_view name, bool write) {
  const int fd = ::open(path.c_str(), (write ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) throw_open_error(errno, path, name, write);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw_open_error(err, path, name, write);
  }
  const auto bytes = static_cast<size_t>(st.st_size);
  if (bytes < sizeof(SegmentHeader)) {
    ::close(fd);
    throw Error(ErrorCode::kCorrupt, "segment \"" + std::string(name) + "\" at " + path + ": " + std::to_string(bytes) +
                                         " bytes is too small to be a Larder segment");
  }
  auto r = std::make_unique<MappedFile::Region>();
  r->addr = map_aligned(fd, bytes, write ? PROT_READ | PROT_WRITE : PROT_READ);
  const int err = errno;
  ::close(fd);  // the mapping keeps the file
  if (r->addr == MAP_FAILED) throw_open_error(err, path, name, write);
  r->bytes = bytes;
  // Harmless where the mount says never or always; needed for huge=advise.
  // EINVAL on a kernel built without transparent huge pages: nothing to ask.
  if (bytes >= kHugePageBytes) ::madvise(r->addr, bytes, MADV_HUGEPAGE);
  return r;
}

}  // namespace

MappedFile::~MappedFile() = default;

namespace {

std::unique_ptr<MappedFile::Region> map_region(const std::string& path, std::string_view name, bool write, void** data,
                                               size_t* size) {
  auto region = map_file(path, name, write);
  *data = region->addr;
  *size = region->bytes;
  return region;
}

}  // namespace

std::unique_ptr<MappedFile> MappedFile::open_read_only(const std::string& path, std::string_view name) {
  std::unique_ptr<MappedFile> m(new MappedFile());
  m->region_ = map_region(path, name, false, &m->data_, &m->size_);
  m->writable_ = false;
  return m;
}

std::unique_ptr<MappedFile> MappedFile::open_read_write(const std::string& path, std::string_view name) {
  std::unique_ptr<MappedFile> m(new MappedFile());
  m->region_ = map_region(path, name, true, &m->data_, &m->size_);
  m->writable_ = true;
  return m;
}

void MappedFile::touch_huge_pages() const noexcept {
  const auto* p = static_cast<const volatile unsigned char*>(data_);
  for (size_t at = 0; at + kHugePageBytes <= size_; at += kHugePageBytes) (void)p[at];
}

bool MappedFile::collapse() noexcept {
  if (size_ < kHugePageBytes) {
    errno = EINVAL;
    return false;
  }
  return ::madvise(data_, size_, MADV_COLLAPSE) == 0;
}

HugePageReport MappedFile::huge_pages() const {
  HugePageReport r;
  r.mapping_bytes = size_;
  r.eligible_bytes = size_ / kHugePageBytes * kHugePageBytes;
  std::FILE* f = std::fopen("/proc/self/smaps", "re");
  if (f == nullptr) return r;
  const auto lo = reinterpret_cast<uintptr_t>(data_), hi = lo + size_;
  bool inside = false;  // the lines below belong to a VMA within the mapping
  char line[512];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    unsigned long long start = 0, end = 0;
    // A VMA header is "start-end perms ..."; the lines of its entry are "Key: value".
    if (std::isxdigit(static_cast<unsigned char>(line[0])) && std::strchr(line, ':') > std::strchr(line, ' ') &&
        std::sscanf(line, "%llx-%llx ", &start, &end) == 2) {
      inside = start < hi && end > lo;
      r.known |= inside;
      continue;
    }
    if (!inside) continue;
    unsigned long long kb = 0;
    if (std::sscanf(line, "Rss: %llu kB", &kb) == 1) {
      r.resident_bytes += kb * 1024;
    } else if (std::sscanf(line, "ShmemPmdMapped: %llu kB", &kb) == 1 ||
               std::sscanf(line, "FilePmdMapped: %llu kB", &kb) == 1) {
      r.huge_bytes += kb * 1024;
    }
  }
  std::fclose(f);
  return r;
}

std::string describe(const HugePageReport& r) {
  if (!r.known) return "unknown (no /proc/self/smaps entry)";
  std::string s = std::to_string(r.huge_bytes / kHugePageBytes) + " of " +
                  std::to_string(r.eligible_bytes / kHugePageBytes) + " 2 MiB pages";
  if (!r.mount_huge.empty()) s += ", mount huge=" + r.mount_huge;
  return s;
}

namespace {
// A mountinfo path field: spaces, tabs, newlines and backslashes come as \ooo.
std::string unescape_mount_path(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      const char a = s[i + 1], b = s[i + 2], c = s[i + 3];
      if (a >= '0' && a <= '3' && b >= '0' && b <= '7' && c >= '0' && c <= '7') {
        out += static_cast<char>((a - '0') * 64 + (b - '0') * 8 + (c - '0'));
        i += 3;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}
}  // namespace

std::string mount_huge_option(const std::string& dir) {
  char resolved[PATH_MAX];
  if (::realpath(dir.c_str(), resolved) == nullptr) return "";
  const std::string path = resolved;
  std::FILE* f = std::fopen("/proc/self/mountinfo", "re");
  if (f == nullptr) return "";
  std::string best_type, best_opts;
  size_t best_len = 0;
  bool found = false;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, f) != nullptr) {
    // id parent major:minor root mount-point options [optional fields] - type source super-options
    std::vector<std::string> tok;
    for (char *save = nullptr, *t = ::strtok_r(buf, " \n", &save); t != nullptr;
         t = ::strtok_r(nullptr, " \n", &save)) {
      tok.emplace_back(t);
    }
    const auto dash = std::find(tok.begin(), tok.end(), "-");
    if (tok.size() < 5 || dash == tok.end() || tok.end() - dash < 4) continue;
    const std::string mp = unescape_mount_path(tok[4]);
    const bool covers = mp == "/" || path == mp ||
                        (path.size() > mp.size() && path.compare(0, mp.size(), mp) == 0 && path[mp.size()] == '/');
    // >=: of two mounts on one point the later one (on top) is the one seen.
    if (covers && (!found || mp.size() >= best_len)) {
      found = true;
      best_len = mp.size();
      best_type = dash[1];
      best_opts = dash[3];
    }
  }
  std::fclose(f);
  if (!found) return "";
  if (best_type == "hugetlbfs") return "hugetlbfs";
  if (best_type != "tmpfs") return "";
  for (size_t at = 0; at <= best_opts.size();) {
    const size_t comma = std::min(best_opts.find(',', at), best_opts.size());
    const std::string opt = best_opts.substr(at, comma - at);
    if (opt.compare(0, 5, "huge=") == 0) return opt.substr(5);
    at = comma + 1;
  }
  return "never";
}

std::string_view fixed_name(const char (&name)[kNameBytes]) noexcept {
  return std::string_view(name, strnlen(name, kNameBytes));
}

const TableDescriptor& table_descriptor(const void* base, uint32_t table) noexcept {
  const auto* h = static_cast<const SegmentHeader*>(base);
  return *reinterpret_cast<const TableDescriptor*>(static_cast<const char*>(base) + h->header_bytes +
                                                   table * sizeof(TableDescriptor));
}

const AggregateDescriptor& aggregate_descriptor(const void* base, const TableDescriptor& t, uint32_t a) noexcept {
  return *reinterpret_cast<const AggregateDescriptor*>(static_cast<const char*>(base) + t.aggregates_offset +
                                                       a * sizeof(AggregateDescriptor));
}

const FieldDescriptor& field_descriptor(const void* base, const TableDescriptor& t, uint32_t field) noexcept {
  return *reinterpret_cast<const FieldDescriptor*>(static_cast<const char*>(base) + t.fields_offset +
                                                   field * sizeof(FieldDescriptor));
}

const GroupDescriptor& group_descriptor(const void* base, const TableDescriptor& t, uint32_t group) noexcept {
  return *reinterpret_cast<const GroupDescriptor*>(static_cast<const char*>(base) + t.groups_offset +
                                                   group * sizeof(GroupDescriptor));
}

TableGeometry table_geometry(const void* base, const TableDescriptor& t) noexcept {
  TableGeometry g;
  g.slots = reinterpret_cast<const Word*>(static_cast<const char*>(base) + t.slots_offset);
  g.slot_count = t.slot_count;
  g.slot_words = t.slot_bytes / 8;
  g.validity_words = t.validity_words;
  g.key_words = t.key_words;
  g.row_words = t.row_bytes / 8;
  g.key_max_len = t.key_max_len;
  g.group_count = t.group_count;
  g.hash_seed = t.hash_seed;
  return g;
}

const SourceBlock& source_block(const void* base) noexcept {
  const auto& h = *static_cast<const SegmentHeader*>(base);
  return *reinterpret_cast<const SourceBlock*>(static_cast<const char*>(base) + h.source_offset);
}

namespace {
// The group a field names in the schema: "" for a field of the default group,
// which is how a schema declares it.
std::string group_name_of(const void* base, const TableDescriptor& d, const FieldDescriptor& fd) {
  if (d.group_count == 0) return "";
  const std::string_view g = fixed_name(group_descriptor(base, d, fd.group).name);
  return g == kDefaultGroup ? "" : std::string(g);
}
}  // namespace

Schema schema_of(const void* base) {
  const auto& h = *static_cast<const SegmentHeader*>(base);
  Schema schema;
  for (uint32_t t = 0; t < h.table_count; ++t) {
    const TableDescriptor& d = table_descriptor(base, t);
    TableSpec spec;
    spec.name = std::string(fixed_name(d.name));
    spec.key_max_len = d.key_max_len;
    spec.capacity = d.capacity;
    spec.max_load_factor = d.max_load_ppm / 1e6;
    for (uint32_t f = 0; f < d.field_count; ++f) {
      const FieldDescriptor& fd = field_descriptor(base, d, f);
      if (fd.flags & kFieldAggregate) continue;  // rebuilt from the aggregate descriptors below
      spec.fields.push_back(FieldSpec{std::string(fixed_name(fd.name)), static_cast<FieldType>(fd.type), fd.count,
                                      group_name_of(base, d, fd)});
    }
    for (uint32_t a = 0; a < d.aggregate_count; ++a) {
      const AggregateDescriptor& ad = aggregate_descriptor(base, d, a);
      AggregateSpec as;
      as.name = std::string(fixed_name(field_descriptor(base, d, ad.field).name));
      as.source = std::string(fixed_name(ad.source));
      as.fn = static_cast<AggregateFn>(ad.fn);
      as.end = static_cast<WindowEnd>(ad.end);
      as.window_ms = ad.window_ms;
      as.resolution_ms = ad.resolution_ms;
      as.window_events = ad.window_events;
      as.min_periods = ad.min_periods;
      as.ddof = ad.ddof;
      as.group = group_name_of(base, d, field_descriptor(base, d, ad.field));
      spec.aggregates.push_back(std::move(as));
    }
    spec.allowed_lateness_ms = d.allowed_lateness_ms;
    spec.dedup_capacity = d.dedup_capacity;
    spec.dedup_horizon_ms = d.dedup_horizon_ms;
    spec.arena_chunks = d.arena_chunks;  // as resolved: the same plan, fingerprint and default
    schema.tables.push_back(std::move(spec));
  }
  return schema;
}

void validate_segment(const void* base, size_t size, std::string_view name) {
  const auto& h = *static_cast<const SegmentHeader*>(base);
  const std::string seg = "segment \"" + std::string(name) + "\"";
  auto corrupt = [&](const std::string& why) { throw Error(ErrorCode::kCorrupt, seg + ": " + why); };
  if (size < sizeof(SegmentHeader)) {
    corrupt(std::to_string(size) + " bytes is too small to be a Larder segment (truncated?)");
  }
  if (h.magic != kMagic) corrupt("not a Larder segment (bad magic)");
  if (h.endian_tag != kEndianTag) corrupt("written on a machine of another byte order");
  if (h.layout_version != kLayoutVersion) {
    throw Error(ErrorCode::kVersionMismatch,
                seg + " has layout v" + std::to_string(h.layout_version) + ", this build reads v" +
                    std::to_string(kLayoutVersion) + ": " +
                    (h.layout_version > kLayoutVersion ? "upgrade the client" : "upgrade the sidecar"));
  }
  if (h.abi_signature != abi_signature()) {
    throw Error(ErrorCode::kVersionMismatch, seg + " has ABI signature " + hex64(h.abi_signature) +
                                                 ", this build expects " + hex64(abi_signature()) +
                                                 ": rebuild reader and writer from the same release");
  }
  // Pairs with the writer's release store of kReady: what the writer wrote
  // before publishing (identity, descriptors) is visible to the reads after.
  const auto state = static_cast<SegmentState>(sync::load_acquire(h.state));
  if (state == SegmentState::kCreating) {
    throw Error(ErrorCode::kNotReady, seg + " is still being created; retry shortly");
  }
  if (state != SegmentState::kReady && state != SegmentState::kRetired) corrupt("unknown state");
  if (h.segment_bytes != size) {
    corrupt("header says " + std::to_string(h.segment_bytes) + " bytes, the file has " + std::to_string(size));
  }
  // Every offset and size below comes from the file: each is compared
  // against the file size before it takes part in any sum or product, so no
  // check can be defeated by an overflow.
  if (h.table_count == 0 || h.table_count > kMaxTables) {
    corrupt("bad table count " + std::to_string(h.table_count) + " (1.." + std::to_string(kMaxTables) + ")");
  }
  if (h.header_bytes != kSegmentHeaderBytes) corrupt("bad header size " + std::to_string(h.header_bytes));
  const uint64_t dir_end = uint64_t{h.header_bytes} + uint64_t{h.table_count} * sizeof(TableDescriptor);
  if (dir_end > size) corrupt("table directory outside the file");
  if (h.undo_offset > size || h.undo_bytes > size - h.undo_offset || h.undo_offset < dir_end) {
    corrupt("undo area outside the file (offset " + std::to_string(h.undo_offset) + ", " +
            std::to_string(h.undo_bytes) + " bytes)");
  }
  if (h.journal_offset % 8 != 0 || h.journal_offset > size ||
      h.journal_capacity > (size - h.journal_offset) / sizeof(JournalEntry)) {
    corrupt("journal outside the file");
  }
  if (h.source_offset % 8 != 0 || h.source_offset < dir_end || h.source_offset > size ||
      sizeof(SourceBlock) > size - h.source_offset) {
    corrupt("source block outside the file (offset " + std::to_string(h.source_offset) + ")");
  }
  for (uint32_t i = 0; i < h.table_count; ++i) {
    const TableDescriptor& t = table_descriptor(base, i);
    const std::string tw = "table " + std::to_string(i) + ": ";
    if (t.name[kNameBytes - 1] != '\0' || t.name[0] == '\0') corrupt(tw + "bad name");
    if (t.field_count == 0 || t.field_count > kMaxFields) {
      corrupt(tw + "bad field count " + std::to_string(t.field_count) + " (1.." + std::to_string(kMaxFields) + ")");
    }
    if (t.validity_words != (t.field_count + 63) / 64) corrupt(tw + "bad validity size");
    if (t.key_max_len == 0 || t.key_max_len > kMaxKeyLength || t.key_words != (t.key_max_len + 7) / 8) {
      corrupt(tw + "bad key size (key_max_len " + std::to_string(t.key_max_len) + ", " + std::to_string(t.key_words) +
              " key words, at most " + std::to_string(kMaxKeyLength) + ")");
    }
    if (t.group_count > kMaxFieldGroups) {
      corrupt(tw + "bad group count " + std::to_string(t.group_count) + " (0.." + std::to_string(kMaxFieldGroups) +
              ")");
    }
    if (t.slot_bytes % kSlotAlign != 0 || t.row_bytes % 8 != 0 ||
        uint64_t{8} * (kSlotHeaderWords + t.validity_words + t.key_words + t.group_count) + t.row_bytes >
            t.slot_bytes) {
      corrupt(tw + "bad slot size");
    }
    if (t.group_count > 0) {
      if (t.groups_offset % 8 != 0 || t.groups_offset < dir_end || t.groups_offset > size ||
          uint64_t{t.group_count} * sizeof(GroupDescriptor) > size - t.groups_offset) {
        corrupt(tw + "group descriptors outside the file (offset " + std::to_string(t.groups_offset) + ")");
      }
      for (uint32_t g = 0; g < t.group_count; ++g) {
        const GroupDescriptor& gd = group_descriptor(base, t, g);
        if (gd.name[kNameBytes - 1] != '\0' || gd.name[0] == '\0')
          corrupt(tw + "group " + std::to_string(g) + " bad name");
      }
    }
    if (t.slot_count == 0 || t.slot_count <= t.capacity) {
      corrupt(tw + "bad slot count " + std::to_string(t.slot_count) + " for capacity " + std::to_string(t.capacity));
    }
    if (t.slots_offset % kSlotAlign != 0 || t.slots_offset < dir_end || t.slots_offset > size ||
        t.slot_count > (size - t.slots_offset) / t.slot_bytes) {
      corrupt(tw + "slot array outside the file (offset " + std::to_string(t.slots_offset) + ", " +
              std::to_string(t.slot_count) + " slots of " + std::to_string(t.slot_bytes) + " bytes)");
    }
    if (t.fields_offset % 8 != 0 || t.fields_offset < dir_end || t.fields_offset > size ||
        uint64_t{t.field_count} * sizeof(FieldDescriptor) > size - t.fields_offset) {
      corrupt(tw + "field descriptors outside the file (offset " + std::to_string(t.fields_offset) + ")");
    }
    for (uint32_t f = 0; f < t.field_count; ++f) {
      const FieldDescriptor& fd = field_descriptor(base, t, f);
      if (fd.name[kNameBytes - 1] != '\0' || fd.name[0] == '\0')
        corrupt(tw + "field " + std::to_string(f) + " bad name");
      if (fd.index != f || uint64_t{fd.offset} + fd.bytes > t.row_bytes) {
        corrupt(tw + "field " + std::to_string(f) + " outside the row");
      }
      if (fd.type < static_cast<uint32_t>(FieldType::kInt64) || fd.type > static_cast<uint32_t>(FieldType::kString)) {
        corrupt(tw + "field " + std::to_string(f) + " has unknown type");
      }
      const auto type = static_cast<FieldType>(fd.type);
      const bool sized = type == FieldType::kFloat32Vector || type == FieldType::kString;
      if ((sized ? (fd.count == 0 || fd.count > kMaxStringLength) : fd.count != 1) ||
          fd.bytes != field_bytes(type, fd.count)) {
        corrupt(tw + "field " + std::to_string(f) + " has an inconsistent size");
      }
      // Readers hand out typed pointers into the row (a float* for a
      // vector): an offset the writer would never choose is refused here,
      // once, instead of checked on every read.
      if (fd.offset % field_align(type) != 0) corrupt(tw + "field " + std::to_string(f) + " is misaligned");
      if (t.group_count == 0 ? fd.group != 0 : fd.group >= t.group_count) {
        corrupt(tw + "field " + std::to_string(f) + " is in group " + std::to_string(fd.group) + " of " +
                std::to_string(t.group_count));
      }
    }
    if (t.aggregate_count > kMaxAggregates || t.aggregate_count > t.field_count) {
      corrupt(tw + "bad aggregate count " + std::to_string(t.aggregate_count));
    }
    if (t.aggregate_count > 0) {
      if (t.aggregates_offset % 8 != 0 || t.aggregates_offset < dir_end || t.aggregates_offset > size ||
          uint64_t{t.aggregate_count} * sizeof(AggregateDescriptor) > size - t.aggregates_offset) {
        corrupt(tw + "aggregate descriptors outside the file (offset " + std::to_string(t.aggregates_offset) + ")");
      }
      for (uint32_t a = 0; a < t.aggregate_count; ++a) {
        const AggregateDescriptor& ad = aggregate_descriptor(base, t, a);
        if (ad.field >= t.field_count || ad.source[kNameBytes - 1] != '\0' || ad.fn < 1 ||
            ad.fn > static_cast<uint32_t>(AggregateFn::kFirst) || ad.end > 1 || ad.window_events > kMaxWindowEvents ||
            ad.min_periods > ad.window_events || ad.ddof > 1) {
          corrupt(tw + "aggregate " + std::to_string(a) + " is malformed");
        }
      }
      // Division instead of slot_count * stride * 8, which could overflow.
      if (t.state_offset % 8 != 0 || t.state_offset < dir_end || t.state_offset > size ||
          (t.state_stride_words != 0 && t.slot_count > (size - t.state_offset) / 8 / t.state_stride_words) ||
          t.dedup_offset > size || t.dedup_buckets > (size - t.dedup_offset) / kDedupBucketBytes) {
        corrupt(tw + "aggregate state outside the file");
      }
      // The arena: chunk indexes read from the state are checked against
      // arena_chunks where they are used (the writer, larderctl verify).
      if (t.arena_chunk_words != 0 || t.arena_chunks != 0) {
        if (t.arena_chunk_words == 0 || t.arena_offset % 8 != 0 || t.arena_offset < dir_end || t.arena_offset > size ||
            kArenaHeaderWords > (size - t.arena_offset) / 8 ||
            t.arena_chunks > ((size - t.arena_offset) / 8 - kArenaHeaderWords) / t.arena_chunk_words) {
          corrupt(tw + "aggregate arena outside the file (offset " + std::to_string(t.arena_offset) + ", " +
                  std::to_string(t.arena_chunks) + " chunks of " + std::to_string(t.arena_chunk_words) + " words)");
        }
      }
    } else if (t.arena_chunk_words != 0 || t.arena_chunks != 0 || t.arena_offset != 0) {
      corrupt(tw + "an aggregate arena without aggregates");
    }
  }
}

}  // namespace larder::layout
