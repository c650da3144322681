// larderctl: read-only inspection of Larder segments, in the spirit of
// mdb_stat and redis-cli. Every command maps segments read-only; none can
// change one. The snapshot commands (snapshot_commands.cc) write snapshot
// files, never segments.
//
//   larderctl ls                        segments in the directory
//   larderctl info SEGMENT              header, writer, sync state and positions, per-table occupancy
//   larderctl schema SEGMENT            the schema as sidecar YAML
//   larderctl get SEGMENT TABLE KEY...  rows, typed, with validity and age
//   larderctl dump SEGMENT TABLE        every live row (jsonl or csv)
//   larderctl watch SEGMENT             a live view, refreshed every second
//   larderctl verify SEGMENT            an integrity check
//   larderctl size --config FILE        bytes a sidecar config needs (no segment)
//   larderctl snapshot SEGMENT FILE     a segment with no writer -> snapshot file
//   larderctl snapshot-info FILE        verify a snapshot file and describe it
//   larderctl fetch-snapshot URL FILE   GET a peer's snapshot, verify, rename
//   larderctl publish FILE ...          CSV / JSON Lines rows, validated, to RabbitMQ (publish_command.cc)
//
// Exit codes: 0 success (verify: clean); 1 verify found the segment
// corrupt, get found no row for a key, size --check-dir found the directory
// unfit, publish found bad rows or had messages returned or refused, or a
// snapshot command refused (a live writer, an invalid snapshot
// file or answer, a non-200 answer); 2 bad usage or a bad config; 3 the
// segment or file cannot be opened (missing, permission, version, corrupt
// header), or the peer cannot be reached; 4 verify found only what attaching
// a writer repairs; 5 verify could not finish: a live writer kept slots
// mid-update through every re-read.
#include <dirent.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "config/config.h"  // larder-sidecar's config parser (larder::sidecar_config)
#include "config/size_report.h"
#include "larder/client.h"
#include "larder/layout/clock.h"
#include "larder/layout/segment_file.h"
#include "larder/layout/table_view.h"
#include "publish_command.h"
#include "segment_verify.h"
#include "snapshot_commands.h"

namespace {

using namespace larder;          // NOLINT: a tool over the whole library
using namespace larder::layout;  // NOLINT

constexpr int kExitOk = 0;
constexpr int kExitProblems = 1;
constexpr int kExitUsage = 2;
constexpr int kExitOpen = 3;
constexpr int kExitRepairable = 4;  // verify: what attaching a writer repairs, nothing else
constexpr int kExitInFlight = 5;    // verify: a live writer kept slots mid-update; incomplete

struct Globals {
  std::string dir = "/dev/shm";
  bool json = false;
  int64_t at_ms = 0;  // compute ages as of this time (0: now)
  int64_t now_ms() const { return at_ms != 0 ? at_ms : now_unix_ms(); }
};

// ---------------------------------------------------------------------------
// Output helpers

using larder::ctl::json_string;

std::string number(double v) {
  if (!std::isfinite(v)) return "null";
  char b[32];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

// Size of the next generation a switch is building beside segment `name`
// (".<name>.creating.<pid>"), 0 when none is.
uint64_t next_generation_bytes(const std::string& dir, const std::string& name) {
  const std::string prefix = "." + name + ".creating.";
  uint64_t bytes = 0;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return 0;
  while (dirent* e = ::readdir(d)) {
    if (std::strncmp(e->d_name, prefix.c_str(), prefix.size()) != 0) continue;
    struct stat st;
    if (::stat((dir + "/" + e->d_name).c_str(), &st) == 0) bytes = static_cast<uint64_t>(st.st_size);
  }
  ::closedir(d);
  return bytes;
}

const char* state_name(SegmentState s) {
  switch (s) {
    case SegmentState::kCreating: return "creating";
    case SegmentState::kReady: return "ready";
    case SegmentState::kRetired: return "retired";
  }
  return "unknown";
}

const char* connection_name(ConnectionState s) {
  switch (s) {
    case ConnectionState::kUnknown: return "unknown";
    case ConnectionState::kConnecting: return "connecting";
    case ConnectionState::kConnected: return "connected";
    case ConnectionState::kDisconnected: return "disconnected";
    case ConnectionState::kStopped: return "stopped";
  }
  return "unknown";
}

const char* sync_name(SyncState s) {
  switch (s) {
    case SyncState::kUnknown: return "unknown";
    case SyncState::kCatchingUp: return "catching_up";
    case SyncState::kReady: return "ready";
    case SyncState::kIncomplete: return "incomplete";
  }
  return "unknown";
}

// The source block as JSON and as text lines (info).
void describe_sync(const SyncInfo& info, int64_t now_ns, std::string* json, std::string* text) {
  std::string parts_json = "[", parts_text;
  auto opt = [](const std::optional<uint64_t>& v) { return v ? std::to_string(*v) : std::string("null"); };
  for (const SyncInfo::Partition& p : info.partitions) {
    parts_json += std::string(parts_json.size() > 1 ? "," : "") + "{\"partition\":" + std::to_string(p.partition) +
                  ",\"next_offset\":" + opt(p.next_offset) + ",\"skip_updates\":" + std::to_string(p.skip_updates) +
                  ",\"target\":" + opt(p.target) + ",\"first_retained\":" + opt(p.first_retained) + "}";
    parts_text += "    partition " + std::to_string(p.partition) + ": ";
    if (p.next_offset) {
      parts_text += "next offset " + std::to_string(*p.next_offset);
      if (p.skip_updates != 0) parts_text += " (+" + std::to_string(p.skip_updates) + " updates applied)";
    } else {
      parts_text += "no position";
    }
    if (p.target) parts_text += ", target " + std::to_string(*p.target);
    if (p.first_retained) parts_text += ", first retained " + std::to_string(*p.first_retained);
    parts_text += "\n";
  }
  parts_json += "]";
  const int64_t age_ms = info.changed_unix_ns == 0 ? -1 : saturating_sub(now_ns, info.changed_unix_ns) / 1'000'000;
  *json = "{\"state\":\"" + std::string(sync_name(info.state)) + "\",\"source_id\":" + json_string(info.source_id) +
          ",\"changed_age_ms\":" + std::to_string(age_ms) + ",\"partitions\":" + parts_json + "}";
  *text = "  sync " + std::string(sync_name(info.state)) +
          (info.changed_unix_ns == 0 ? std::string() : " (since " + std::to_string(age_ms) + " ms ago)") + ", source " +
          (info.source_id.empty() ? std::string("none") : info.source_id) + "\n" + parts_text;
}

// A field's value as JSON (scalars, arrays for vectors, strings) or null when
// never written.
std::string value_json(const RowView& row, const Field& f) {
  if (!row.valid(f)) return "null";
  switch (f.type) {
    case FieldType::kInt64: return std::to_string(row.i64(f));
    case FieldType::kFloat64: return number(row.f64(f));
    case FieldType::kFloat32: return number(row.f32(f));
    case FieldType::kBool: return row.boolean(f) ? "true" : "false";
    case FieldType::kString: return json_string(row.string(f));
    case FieldType::kFloat32Vector: {
      std::string out = "[";
      for (float x : row.vector(f)) out += (out.size() > 1 ? "," : "") + number(x);
      return out + "]";
    }
  }
  return "null";
}

// The same as text: JSON for vectors and strings (quoted), plain otherwise.
std::string value_text(const RowView& row, const Field& f) {
  if (!row.valid(f)) return "(unset)";
  return value_json(row, f);
}

std::string csv_cell(std::string s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += (c == '"') ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

// ---------------------------------------------------------------------------
// Opening

struct Opened {
  Segment segment;
  std::unique_ptr<MappedFile> raw;  // the same file, for slot-level commands
};

Opened open_segment(const Globals& g, const std::string& name) {
  Opened o;
  o.segment = Segment::open(name, ClientOptions{g.dir});
  o.raw = MappedFile::open_read_only(segment_path(g.dir, name), name);
  validate_segment(o.raw->data(), o.raw->size(), name);
  return o;
}

struct TableScan {
  uint64_t live = 0, tombstones = 0, empty = 0, odd = 0;
  std::map<uint64_t, uint64_t> probe_lengths;  // distance from home -> live keys
  uint64_t max_probe = 0;
};

TableScan scan_table(const void* base, const TableDescriptor& d) {
  const TableGeometry g = table_geometry(base, d);
  TableScan s;
  for (uint64_t i = 0; i < g.slot_count; ++i) {
    const Word* slot = g.slot(i);
    if (sync::load_relaxed(slot[kSlotSeqWord]) & 1) ++s.odd;  // statistics: no seqlock, may be torn
    const uint64_t meta = sync::load_relaxed(slot[kSlotMetaWord]);
    switch (meta_state(meta)) {
      case SlotState::kEmpty: ++s.empty; break;
      case SlotState::kTombstone: ++s.tombstones; break;
      case SlotState::kLive: {
        ++s.live;
        const uint64_t home = g.home(meta);
        const uint64_t dist = i >= home ? i - home : i + g.slot_count - home;
        ++s.probe_lengths[dist];
        s.max_probe = std::max(s.max_probe, dist);
        break;
      }
    }
  }
  return s;
}

// ---------------------------------------------------------------------------
// Commands

int cmd_ls(const Globals& g) {
  DIR* d = ::opendir(g.dir.c_str());
  if (d == nullptr) {
    std::fprintf(stderr, "larderctl: cannot list %s: %s\n", g.dir.c_str(), std::strerror(errno));
    return kExitOpen;
  }
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.empty() || n[0] == '.' || (n.size() > 5 && n.substr(n.size() - 5) == ".lock")) continue;
    names.push_back(n);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  std::string json = "[";
  bool unreadable = false;
  if (!g.json) std::printf("%-32s %12s %6s %-9s %s\n", "SEGMENT", "BYTES", "TABLES", "STATE", "WRITER");
  for (const std::string& n : names) {
    try {
      validate_segment_name(n);
      Segment s = Segment::open(n, ClientOptions{g.dir});
      const SegmentInfo i = s.info();
      const bool alive = s.writer_alive();
      if (g.json) {
        json += std::string(json.size() > 1 ? "," : "") + "{\"name\":" + json_string(n) +
                ",\"bytes\":" + std::to_string(i.segment_bytes) +
                ",\"tables\":" + std::to_string(s.table_names().size()) + ",\"state\":\"" + state_name(i.state) +
                "\",\"writer_pid\":" + std::to_string(i.writer_pid) +
                ",\"writer_alive\":" + (alive ? "true" : "false") +
                ",\"heartbeat_age_ms\":" + std::to_string(i.heartbeat_age_ms) + "}";
      } else {
        std::string writer =
            alive ? "alive (pid " + std::to_string(i.writer_pid) + ")"
                  : (i.writer_pid != 0 ? "not responding (pid " + std::to_string(i.writer_pid) + ")" : "none");
        std::printf("%-32s %12" PRIu64 " %6zu %-9s %s\n", n.c_str(), i.segment_bytes, s.table_names().size(),
                    state_name(i.state), writer.c_str());
      }
    } catch (const Error& e) {
      // Other files share /dev/shm and are skipped; a file with a writer's
      // lock file beside it is a Larder segment, and one this user may not
      // read is listed as such, not left out.
      struct stat lock;
      if (e.code() != ErrorCode::kPermissionDenied || ::stat((segment_path(g.dir, n) + ".lock").c_str(), &lock) != 0)
        continue;
      unreadable = true;
      if (g.json) {
        json += std::string(json.size() > 1 ? "," : "") + "{\"name\":" + json_string(n) +
                ",\"state\":\"unreadable\",\"error\":\"permission_denied\",\"message\":" + json_string(e.what()) + "}";
      } else {
        std::printf("%-32s %12s %6s %-9s %s\n", n.c_str(), "-", "-", "unreadable", "permission denied");
        std::fprintf(stderr, "larderctl: %s\n", e.what());
      }
    }
  }
  if (g.json) std::printf("%s]\n", json.c_str());
  return unreadable ? kExitOpen : kExitOk;
}

// A table's field groups as a JSON member, "" for a table without.
std::string groups_json(const Table& t) {
  if (t.groups().empty()) return "";
  std::string out = ",\"groups\":[";
  for (const Group& grp : t.groups()) {
    out += std::string(grp.index ? "," : "") + "{\"name\":" + json_string(grp.name) + ",\"fields\":[";
    bool first = true;
    for (const Field& f : t.fields()) {
      if (f.group != grp.index) continue;
      out += std::string(first ? "" : ",") + json_string(f.name);
      first = false;
    }
    out += "]}";
  }
  return out + "]";
}

int cmd_info(const Globals& g, const std::string& name) {
  Opened o = open_segment(g, name);
  const SegmentInfo i = o.segment.info();
  const SegmentHeader& h = o.raw->header();
  const int64_t now_ns = g.now_ms() * 1'000'000;
  auto age_ms = [&](int64_t unix_ns) {
    return unix_ns == 0 ? int64_t{-1} : saturating_sub(now_ns, unix_ns) / 1'000'000;
  };
  std::string tables_json = "[";
  std::string text;
  for (uint32_t t = 0; t < h.table_count; ++t) {
    const TableDescriptor& d = table_descriptor(o.raw->data(), t);
    const Table table = o.segment.table(std::string(fixed_name(d.name)));
    const TableStats st = table.stats();
    const TableScan scan = scan_table(o.raw->data(), d);
    const double load = static_cast<double>(scan.live + scan.tombstones) / static_cast<double>(d.slot_count);
    std::string probes_json = "{", probes_text;
    uint64_t p50 = 0, p99 = 0, seen = 0;
    for (const auto& [dist, n] : scan.probe_lengths) {
      probes_json +=
          std::string(probes_json.size() > 1 ? "," : "") + "\"" + std::to_string(dist) + "\":" + std::to_string(n);
      if (seen < (scan.live + 1) / 2 && seen + n >= (scan.live + 1) / 2) p50 = dist;
      if (seen < (scan.live * 99 + 99) / 100 && seen + n >= (scan.live * 99 + 99) / 100) p99 = dist;
      seen += n;
    }
    probes_json += "}";
    tables_json += std::string(tables_json.size() > 1 ? "," : "") + "{\"name\":" + json_string(table.name()) +
                   ",\"capacity\":" + std::to_string(d.capacity) + ",\"slots\":" + std::to_string(d.slot_count) +
                   ",\"slot_bytes\":" + std::to_string(d.slot_bytes) +
                   ",\"live_keys\":" + std::to_string(st.live_keys) +
                   ",\"tombstones\":" + std::to_string(st.tombstones) + ",\"load_factor\":" + number(load) +
                   ",\"upserts\":" + std::to_string(st.upserts) + ",\"deletes\":" + std::to_string(st.deletes) +
                   ",\"stale_ignored\":" + std::to_string(st.stale_ignored) +
                   ",\"full_rejected\":" + std::to_string(st.full_rejected) +
                   ",\"last_update_age_ms\":" + std::to_string(age_ms(st.last_apply_unix_ns)) +
                   ",\"max_event_time_ms\":" + std::to_string(st.max_event_time_ms) + groups_json(table) +
                   ",\"probe_length\":{\"p50\":" + std::to_string(p50) + ",\"p99\":" + std::to_string(p99) +
                   ",\"max\":" + std::to_string(scan.max_probe) + ",\"histogram\":" + probes_json + "}";
    if (st.aggregates > 0) {
      tables_json += ",\"aggregates\":{\"count\":" + std::to_string(st.aggregates) +
                     ",\"events\":" + std::to_string(st.aggregate_events) +
                     ",\"late_dropped\":" + std::to_string(st.late_dropped) +
                     ",\"outside_window\":" + std::to_string(st.outside_window) +
                     ",\"duplicates\":" + std::to_string(st.duplicates) +
                     ",\"dedup_evictions\":" + std::to_string(st.dedup_evictions) +
                     ",\"refreshes\":" + std::to_string(st.refreshes) +
                     ",\"clock_ms\":" + std::to_string(st.aggregate_clock_ms) +
                     ",\"refreshed_through_ms\":" + std::to_string(st.refreshed_through_ms) + "}";
    }
    tables_json += "}";
    char line[512];
    std::snprintf(
        line, sizeof line,
        "  %s: %" PRIu64 " / %" PRIu64 " keys (%.1f%% of capacity), %" PRIu64 " tombstones, %" PRIu64
        " slots of %u B, load %.3f\n"
        "    upserts %" PRIu64 ", deletes %" PRIu64 ", stale ignored %" PRIu64 ", full rejected %" PRIu64
        ", last update %s\n"
        "    probe length p50 %" PRIu64 ", p99 %" PRIu64 ", max %" PRIu64 "\n",
        table.name().c_str(), st.live_keys, d.capacity,
        100.0 * static_cast<double>(st.live_keys) / static_cast<double>(d.capacity), st.tombstones, d.slot_count,
        d.slot_bytes, load, st.upserts, st.deletes, st.stale_ignored, st.full_rejected,
        st.last_apply_unix_ns == 0 ? "never" : (std::to_string(age_ms(st.last_apply_unix_ns)) + " ms ago").c_str(), p50,
        p99, scan.max_probe);
    text += line;
    if (!table.groups().empty()) {
      text += "    field groups:";
      for (const Group& grp : table.groups()) {
        text += std::string(grp.index ? ", " : " ") + std::string(grp.name) + " (";
        uint32_t n = 0;
        for (const Field& f : table.fields()) n += f.group == grp.index;
        text += std::to_string(n) + (n == 1 ? " field)" : " fields)");
      }
      text += "\n";
    }
    if (st.aggregates > 0) {
      std::snprintf(line, sizeof line,
                    "    %u aggregates: %" PRIu64 " events, %" PRIu64 " late dropped, %" PRIu64
                    " outside the window, %" PRIu64 " duplicates, %" PRIu64 " dedup evictions, %" PRIu64
                    " refreshes\n"
                    "    aggregate clock %" PRId64 " ms, windows computed through %" PRId64 " ms\n",
                    st.aggregates, st.aggregate_events, st.late_dropped, st.outside_window, st.duplicates,
                    st.dedup_evictions, st.refreshes, st.aggregate_clock_ms, st.refreshed_through_ms);
      text += line;
    }
  }
  tables_json += "]";
  std::string sync_json, sync_text;
  describe_sync(o.segment.sync(), now_ns, &sync_json, &sync_text);
  const bool alive = o.segment.writer_alive();
  // A generation switch in progress: the writer builds the next generation
  // beside this one under a temporary name (docs/design.md, "Generations").
  const uint64_t next_bytes = next_generation_bytes(g.dir, name);
  // How the file is backed, as this reader maps it: one byte of every 2 MiB
  // read (nothing is allocated), then this process's smaps entry. A
  // reader's pages are the writer's (one page cache), so this is what
  // inference processes get too.
  o.raw->touch_huge_pages();
  HugePageReport hp = o.raw->huge_pages();
  hp.mount_huge = mount_huge_option(g.dir);
  const std::string huge_json =
      "{\"known\":" + std::string(hp.known ? "true" : "false") + ",\"huge_bytes\":" + std::to_string(hp.huge_bytes) +
      ",\"eligible_bytes\":" + std::to_string(hp.eligible_bytes) +
      ",\"resident_bytes\":" + std::to_string(hp.resident_bytes) +
      ",\"all_huge\":" + (hp.all_huge() ? "true" : "false") + ",\"mount_huge\":" + json_string(hp.mount_huge) + "}";
  if (g.json) {
    std::printf("{\"name\":%s,\"path\":%s,\"bytes\":%" PRIu64
                ",\"layout_version\":%u,\"abi_signature\":\"%s\","
                "\"schema_fingerprint\":\"%s\",\"state\":\"%s\",\"generation\":%" PRIu64
                ",\"creator\":%s,"
                "\"writer\":{\"pid\":%" PRIu64 ",\"alive\":%s,\"heartbeat_age_ms\":%" PRId64 ",\"sessions\":%" PRIu64
                ",\"repaired_slots\":%" PRIu64 "},\"connection\":\"%s\",\"updates_applied\":%" PRIu64
                ",\"messages_rejected\":%" PRIu64 ",\"last_update_age_ms\":%" PRId64
                ",\"next_generation_bytes\":%" PRIu64 ",\"huge_pages\":%s,\"sync\":%s,\"tables\":%s}\n",
                json_string(name).c_str(), json_string(segment_path(g.dir, name)).c_str(), i.segment_bytes,
                i.layout_version, hex64(h.abi_signature).c_str(), hex64(i.schema_fingerprint).c_str(),
                state_name(i.state), i.generation,
                json_string(std::string_view(h.creator, strnlen(h.creator, sizeof h.creator))).c_str(), i.writer_pid,
                alive ? "true" : "false", i.heartbeat_age_ms, i.writer_sessions, i.repaired_slots,
                connection_name(i.connection), i.updates_applied, i.messages_rejected, age_ms(i.last_apply_unix_ns),
                next_bytes, huge_json.c_str(), sync_json.c_str(), tables_json.c_str());
  } else {
    std::printf("segment %s (%s)\n", name.c_str(), segment_path(g.dir, name).c_str());
    std::printf("  %" PRIu64 " bytes, layout v%u, ABI %s, schema %s, state %s, generation %" PRIu64 "\n",
                i.segment_bytes, i.layout_version, hex64(h.abi_signature).c_str(), hex64(i.schema_fingerprint).c_str(),
                state_name(i.state), i.generation);
    if (i.state == SegmentState::kRetired) {
      std::printf("  retired: generation %" PRIu64 " replaced it; readers move there by themselves\n",
                  i.generation + 1);
    }
    if (next_bytes > 0) {
      std::printf("  generation switch in progress: the writer is filling generation %" PRIu64 " (%" PRIu64
                  " bytes) beside this one\n",
                  i.generation + 1, next_bytes);
    }
    if (i.writer_pid != 0) {
      std::printf("  writer pid %" PRIu64 ", %s, heartbeat %" PRId64 " ms ago, broker %s\n", i.writer_pid,
                  alive ? "alive" : "NOT RESPONDING", i.heartbeat_age_ms, connection_name(i.connection));
    } else {
      std::printf("  no writer attached (last heartbeat %" PRId64 " ms ago), broker %s\n", i.heartbeat_age_ms,
                  connection_name(i.connection));
    }
    std::printf(
        "  %" PRIu64 " updates applied, %" PRIu64 " messages rejected, last update %s; %" PRIu64
        " writer sessions, %" PRIu64 " slots repaired at the last start\n",
        i.updates_applied, i.messages_rejected,
        i.last_apply_unix_ns == 0 ? "never" : (std::to_string(age_ms(i.last_apply_unix_ns)) + " ms ago").c_str(),
        i.writer_sessions, i.repaired_slots);
    if (hp.eligible_bytes > 0) std::printf("  huge pages: %s\n", describe(hp).c_str());
    std::printf("%s", sync_text.c_str());
    std::printf("tables:\n%s", text.c_str());
  }
  return kExitOk;
}

int cmd_schema(const Globals& g, const std::string& name) {
  Opened o = open_segment(g, name);
  const Schema schema = schema_of(o.raw->data());
  if (g.json) {
    std::string out = "{\"segment\":" + json_string(name) + ",\"fingerprint\":\"" +
                      hex64(o.raw->header().schema_fingerprint) + "\",\"tables\":[";
    for (size_t t = 0; t < schema.tables.size(); ++t) {
      const TableSpec& s = schema.tables[t];
      out += std::string(t ? "," : "") + "{\"name\":" + json_string(s.name) +
             ",\"key_max_len\":" + std::to_string(s.key_max_len) + ",\"capacity\":" + std::to_string(s.capacity) +
             ",\"max_load_factor\":" + number(s.max_load_factor) + ",\"fields\":[";
      for (size_t f = 0; f < s.fields.size(); ++f) {
        const FieldSpec& fs = s.fields[f];
        out += std::string(f ? "," : "") + "{\"name\":" + json_string(fs.name) + ",\"type\":\"" +
               field_type_name(fs.type) + "\"";
        if (fs.type == FieldType::kFloat32Vector) out += ",\"dims\":" + std::to_string(fs.count);
        if (fs.type == FieldType::kString) out += ",\"max_len\":" + std::to_string(fs.count);
        if (!fs.group.empty()) out += ",\"group\":" + json_string(fs.group);
        out += "}";
      }
      out += "]";
      if (!s.aggregates.empty()) {
        out += ",\"aggregates\":[";
        for (size_t a = 0; a < s.aggregates.size(); ++a) {
          const AggregateSpec& as = s.aggregates[a];
          out += std::string(a ? "," : "") + "{\"name\":" + json_string(as.name) +
                 ",\"source\":" + json_string(as.source) + ",\"fn\":\"" + aggregate_fn_name(as.fn) +
                 "\",\"window_ms\":" + std::to_string(as.window_ms) +
                 ",\"resolution_ms\":" + std::to_string(s.resolution_of(as)) + ",\"end\":\"" +
                 (as.end == WindowEnd::kNow ? "now" : "latest_event") + "\"" +
                 (as.window_events != 0 ? ",\"window_events\":" + std::to_string(as.window_events) +
                                              ",\"min_periods\":" + std::to_string(as.min_periods_or_default())
                                        : "") +
                 (as.ddof != 0 ? ",\"ddof\":" + std::to_string(as.ddof) : "") +
                 (as.group.empty() ? "" : ",\"group\":" + json_string(as.group)) + "}";
        }
        out += "],\"allowed_lateness_ms\":" + std::to_string(s.lateness_ms()) +
               ",\"dedup\":{\"horizon_ms\":" + std::to_string(s.dedup_horizon()) +
               ",\"capacity\":" + std::to_string(s.dedup_ids()) + "}";
      }
      out += "}";
    }
    std::printf("%s]}\n", out.c_str());
    return kExitOk;
  }
  std::printf("# Schema of segment %s (fingerprint %s), in larder-sidecar config form.\n", name.c_str(),
              hex64(o.raw->header().schema_fingerprint).c_str());
  std::printf("segment:\n  name: %s\n  dir: %s\ntables:\n", name.c_str(), g.dir.c_str());
  for (const TableSpec& s : schema.tables) {
    std::printf("  - name: %s\n    key_max_len: %u\n    capacity: %" PRIu64 "\n    max_load_factor: %g\n    fields:\n",
                s.name.c_str(), s.key_max_len, s.capacity, s.max_load_factor);
    for (const FieldSpec& f : s.fields) {
      std::printf("      - {name: %s, type: %s", f.name.c_str(), field_type_name(f.type));
      if (f.type == FieldType::kFloat32Vector) std::printf(", dims: %u", f.count);
      if (f.type == FieldType::kString) std::printf(", max_len: %u", f.count);
      if (!f.group.empty()) std::printf(", group: %s", f.group.c_str());
      std::printf("}\n");
    }
    // Durations as the parser reads them (1h, 10m, 7d) and only the settings
    // that were given, so that the config reproduces the fingerprint. Field
    // transforms are ingest settings and not recorded in the segment.
    if (!s.aggregates.empty()) std::printf("    aggregates:\n");
    for (const AggregateSpec& a : s.aggregates) {
      std::printf("      - {name: %s, ", a.name.c_str());
      if (!a.source.empty()) std::printf("source: %s, ", a.source.c_str());
      if (a.fn == AggregateFn::kLastN) {
        std::printf("fn: last_n, n: %u", a.window_events);
      } else if (a.window_events != 0) {
        std::printf("fn: %s, window: %u events", aggregate_fn_name(a.fn), a.window_events);
      } else {
        std::printf("fn: %s, window: %s", aggregate_fn_name(a.fn),
                    larder::sidecar::format_duration(a.window_ms).c_str());
      }
      if (a.min_periods != 0) std::printf(", min_periods: %u", a.min_periods);
      if (a.ddof != 0) std::printf(", ddof: %u", a.ddof);
      if (a.resolution_ms != 0)
        std::printf(", resolution: %s", larder::sidecar::format_duration(a.resolution_ms).c_str());
      if (a.end == WindowEnd::kLatestEvent) std::printf(", end: latest_event");
      if (!a.group.empty()) std::printf(", group: %s", a.group.c_str());
      std::printf("}\n");
    }
    if (s.allowed_lateness_ms != 0)
      std::printf("    allowed_lateness: %s\n", larder::sidecar::format_duration(s.allowed_lateness_ms).c_str());
    if (s.dedup_capacity != 0 || s.dedup_horizon_ms != 0) {
      std::printf("    dedup: {");
      if (s.dedup_horizon_ms != 0) {
        std::printf("horizon: %s%s", larder::sidecar::format_duration(s.dedup_horizon_ms).c_str(),
                    s.dedup_capacity ? ", " : "");
      }
      if (s.dedup_capacity != 0) std::printf("capacity: %" PRIu64, s.dedup_capacity);
      std::printf("}\n");
    }
  }
  // The broker settings are not in the segment; the sidecar needs them.
  std::printf("# rabbitmq: {url: ..., password_env: ..., queue: {name: ...}} is not stored in the segment: add it\n");
  return kExitOk;
}

// A group's event time and age as JSON members; null for a group never written.
std::string group_time_json(const RowView& row, const Group& grp, int64_t now_ms) {
  const int64_t t = row.group_event_time_ms(grp);
  if (t == layout::kNoGroupTime) return "\"event_time_ms\":null,\"age_ms\":null";
  return "\"event_time_ms\":" + std::to_string(t) + ",\"age_ms\":" + std::to_string(row.group_age_ms(grp, now_ms));
}

std::string row_json(const Table& t, std::string_view key, const RowView& row, const char* status, int64_t now_ms) {
  std::string out = "{\"key\":" + json_string(key) + ",\"status\":\"" + status + "\"";
  if (row.event_time_ms() != 0 || std::string_view(status) == "ok" || std::string_view(status) == "stale") {
    out += ",\"event_time_ms\":" + std::to_string(row.event_time_ms()) +
           ",\"age_ms\":" + std::to_string(saturating_sub(now_ms, row.event_time_ms())) +
           ",\"apply_unix_ns\":" + std::to_string(row.apply_unix_ns());
    if (!t.groups().empty()) {
      out += ",\"groups\":{";
      for (const Group& grp : t.groups()) {
        out +=
            std::string(grp.index ? "," : "") + json_string(grp.name) + ":{" + group_time_json(row, grp, now_ms) + "}";
      }
      out += "}";
    }
    out += ",\"fields\":{";
    bool first = true;
    for (const Field& f : t.fields()) {
      out += std::string(first ? "" : ",") + json_string(f.name) + ":" + value_json(row, f);
      first = false;
    }
    out += "}";
  }
  return out + "}";
}

int cmd_get(const Globals& g, const std::string& name, const std::string& table_name,
            const std::vector<std::string>& keys, int64_t max_age_ms) {
  Opened o = open_segment(g, name);
  const Table t = o.segment.table(table_name);
  Row row = t.make_row();
  const int64_t now = g.now_ms();
  bool all_found = true;
  for (const std::string& key : keys) {
    const ReadResult r = t.get(key, row, ReadOptions{max_age_ms});
    all_found = all_found && r.found();
    if (g.json) {
      if (r.found()) {
        std::printf("%s\n", row_json(t, key, row, status_name(r.status), now).c_str());
      } else {
        std::printf("{\"key\":%s,\"status\":\"%s\"}\n", json_string(key).c_str(), status_name(r.status));
      }
      continue;
    }
    if (!r.found()) {
      std::printf("%s: %s\n", key.c_str(), status_name(r.status));
      continue;
    }
    std::printf("%s: %s, event time %" PRId64 " (age %" PRId64 " ms), applied %" PRId64 " ms ago\n", key.c_str(),
                status_name(r.status), r.event_time_ms, r.age_ms(now),
                saturating_sub(now * 1'000'000, r.apply_unix_ns) / 1'000'000);
    for (const Group& grp : t.groups()) {
      const int64_t gt = row.group_event_time_ms(grp);
      if (gt == layout::kNoGroupTime) {
        std::printf("  group %.*s: never written\n", static_cast<int>(grp.name.size()), grp.name.data());
      } else {
        std::printf("  group %.*s: event time %" PRId64 " (age %" PRId64 " ms)\n", static_cast<int>(grp.name.size()),
                    grp.name.data(), gt, row.group_age_ms(grp, now));
      }
    }
    for (const Field& f : t.fields()) {
      std::printf("  %-24.*s %-8s %s\n", static_cast<int>(f.name.size()), f.name.data(), field_type_name(f.type),
                  value_text(row, f).c_str());
    }
  }
  return all_found ? kExitOk : kExitProblems;
}

int cmd_dump(const Globals& g, const std::string& name, const std::string& table_name, const std::string& format,
             uint64_t limit) {
  Opened o = open_segment(g, name);
  const Table t = o.segment.table(table_name);
  const void* base = o.raw->data();
  const TableDescriptor* d = nullptr;
  for (uint32_t i = 0; i < o.raw->header().table_count; ++i) {
    if (fixed_name(table_descriptor(base, i).name) == table_name) d = &table_descriptor(base, i);
  }
  const TableGeometry geo = table_geometry(base, *d);
  std::vector<uint64_t> words(geo.slot_words);
  const RowView row = t.view(words.data() + 1);
  const int64_t now = g.now_ms();
  const bool csv = format == "csv";
  if (csv) {
    std::printf("key,event_time_ms,apply_unix_ns");
    for (const Group& grp : t.groups()) std::printf(",%s", csv_cell(std::string(grp.name) + ".event_time_ms").c_str());
    for (const Field& f : t.fields()) std::printf(",%s", csv_cell(std::string(f.name)).c_str());
    std::printf("\n");
  }
  uint64_t n = 0, busy = 0, corrupt = 0;
  for (uint64_t i = 0; i < geo.slot_count && (limit == 0 || n < limit); ++i) {
    if (sync::load_relaxed(geo.slot(i)[kSlotMetaWord]) == 0) continue;  // a hint: the seqlock read decides
    // Each row is one consistent version (a seqlock read of the slot).
    if (read_whole_slot(geo, geo.slot(i), words.data(), 1024) != SlotRead::kMatch) {
      ++busy;
      continue;
    }
    if (meta_state(words[0]) != SlotState::kLive) continue;
    // A consistent copy whose lengths do not fit the schema is reported, not
    // printed: its key and strings cannot be trusted.
    if (t.check_row(words.data() + 1) != Status::kOk) {
      ++corrupt;
      if (!csv) std::printf("{\"slot\":%" PRIu64 ",\"status\":\"corrupt\"}\n", i);
      continue;
    }
    if (csv) {
      std::string line = csv_cell(std::string(row.key())) + "," + std::to_string(row.event_time_ms()) + "," +
                         std::to_string(row.apply_unix_ns());
      for (const Group& grp : t.groups()) {
        const int64_t gt = row.group_event_time_ms(grp);
        line += "," + (gt == layout::kNoGroupTime ? std::string() : std::to_string(gt));
      }
      for (const Field& f : t.fields()) {
        std::string cell;
        if (row.valid(f)) cell = f.type == FieldType::kString ? std::string(row.string(f)) : value_json(row, f);
        line += "," + csv_cell(cell);
      }
      std::printf("%s\n", line.c_str());
    } else {
      std::printf("%s\n", row_json(t, row.key(), row, "ok", now).c_str());
    }
    ++n;
  }
  if (busy > 0) std::fprintf(stderr, "larderctl: %" PRIu64 " slots were mid-update and skipped\n", busy);
  if (corrupt > 0) {
    std::fprintf(stderr,
                 "larderctl: %" PRIu64
                 " slots hold lengths outside the schema (corrupt) and were skipped; "
                 "run larderctl verify %s\n",
                 corrupt, name.c_str());
    return kExitProblems;
  }
  return kExitOk;
}

// verify: every check that can be made without the writer's cooperation
// (segment_verify.h), reported with one of four outcomes.
int cmd_verify(const Globals& g, const std::string& name) {
  std::unique_ptr<MappedFile> m;
  try {
    validate_segment_name(name);
    m = MappedFile::open_read_only(segment_path(g.dir, name), name);
    validate_segment(m->data(), m->size(), name);
  } catch (const Error& e) {
    if (g.json) {
      std::printf("{\"segment\":%s,\"ok\":false,\"outcome\":\"corrupt\",\"problems\":[%s]}\n",
                  json_string(name).c_str(), json_string(e.what()).c_str());
    } else {
      std::printf("%s: %s\n", name.c_str(), e.what());
    }
    return e.code() == ErrorCode::kCorrupt || e.code() == ErrorCode::kVersionMismatch ? kExitProblems : kExitOpen;
  }
  const verify::Report r = verify::verify_segment(m->data());
  const std::string writer = r.writer_pid == 0 ? std::string("no writer attached")
                             : r.writer_live   ? "writer pid " + std::to_string(r.writer_pid) + " live"
                                               : "writer pid " + std::to_string(r.writer_pid) + " gone";
  if (g.json) {
    auto list = [](const std::vector<std::string>& v) {
      std::string out;
      for (const std::string& p : v) out += (out.empty() ? "" : ",") + json_string(p);
      return "[" + out + "]";
    };
    std::printf("{\"segment\":%s,\"ok\":%s,\"outcome\":\"%s\",\"writer\":{\"pid\":%" PRIu64
                ",\"live\":%s},\"slots_checked\":%" PRIu64 ",\"repairable_slots\":%" PRIu64
                ",\"problems\":%s,\"repairs\":%s,\"in_flight\":%s}\n",
                json_string(name).c_str(), r.outcome == verify::Outcome::kClean ? "true" : "false",
                verify::outcome_name(r.outcome), r.writer_pid, r.writer_live ? "true" : "false", r.slots_checked,
                r.repairable_slots, list(r.problems).c_str(), list(r.repairs).c_str(), list(r.in_flight).c_str());
  } else {
    switch (r.outcome) {
      case verify::Outcome::kClean:
        std::printf("%s: ok (%" PRIu64 " occupied slots checked)\n  %s\n", name.c_str(), r.slots_checked,
                    writer.c_str());
        break;
      case verify::Outcome::kRepairable:
        std::printf("%s: repairable (%s): attaching a writer repairs %" PRIu64
                    " slot(s) and the records below; readers meanwhile get busy for those slots\n",
                    name.c_str(), writer.c_str(), r.repairable_slots);
        for (const std::string& p : r.repairs) std::printf("  %s\n", p.c_str());
        break;
      case verify::Outcome::kCorrupt:
        std::printf("%s: %zu problem(s)\n", name.c_str(), r.problems.size());
        for (const std::string& p : r.problems) std::printf("  %s\n", p.c_str());
        for (const std::string& p : r.repairs) std::printf("  (repairable) %s\n", p.c_str());
        break;
      case verify::Outcome::kInFlight:
        std::printf("%s: incomplete: %s kept %zu slot(s) mid-update through every re-read; run verify again\n",
                    name.c_str(), writer.c_str(), r.in_flight.size());
        for (const std::string& p : r.in_flight) std::printf("  %s\n", p.c_str());
        break;
    }
  }
  switch (r.outcome) {
    case verify::Outcome::kClean: return kExitOk;
    case verify::Outcome::kRepairable: return kExitRepairable;
    case verify::Outcome::kInFlight: return kExitInFlight;
    case verify::Outcome::kCorrupt: break;
  }
  return kExitProblems;
}

int cmd_watch(const Globals& g, const std::string& name, double interval_s, int count) {
  Opened o = open_segment(g, name);
  const bool tty = ::isatty(STDOUT_FILENO) != 0;
  std::vector<Table> tables;
  for (const std::string& t : o.segment.table_names()) tables.push_back(o.segment.table(t));
  std::vector<uint64_t> last(tables.size(), 0);
  auto last_time = std::chrono::steady_clock::now();
  for (size_t i = 0; i < tables.size(); ++i) {
    const TableStats s = tables[i].stats();
    last[i] = s.upserts + s.deletes;
  }
  for (int n = 0; count == 0 || n < count; ++n) {
    std::this_thread::sleep_for(std::chrono::duration<double>(interval_s));
    const auto now_t = std::chrono::steady_clock::now();
    const double dt = std::chrono::duration<double>(now_t - last_time).count();
    last_time = now_t;
    const SegmentInfo info = o.segment.info();
    const int64_t now_ns = layout::now_unix_ns();
    if (tty) std::printf("\x1b[H\x1b[2J");
    if (tty || n == 0 || g.json) {
      // Header: once per screen on a terminal, once at the start otherwise.
    }
    if (g.json) {
      std::string t_json;
      for (size_t i = 0; i < tables.size(); ++i) {
        const TableStats s = tables[i].stats();
        const uint64_t ops = s.upserts + s.deletes;
        t_json +=
            std::string(i ? "," : "") + "{\"name\":" + json_string(tables[i].name()) +
            ",\"updates_per_s\":" + number(static_cast<double>(ops - last[i]) / dt) +
            ",\"live_keys\":" + std::to_string(s.live_keys) + ",\"capacity\":" + std::to_string(s.capacity) +
            ",\"freshness_ms\":" +
            std::to_string(s.last_apply_unix_ns == 0 ? -1 : saturating_sub(now_ns, s.last_apply_unix_ns) / 1'000'000) +
            "}";
        last[i] = ops;
      }
      std::printf("{\"segment\":%s,\"writer_alive\":%s,\"heartbeat_age_ms\":%" PRId64
                  ",\"connection\":\"%s\",\"tables\":[%s]}\n",
                  json_string(name).c_str(), o.segment.writer_alive() ? "true" : "false", info.heartbeat_age_ms,
                  connection_name(info.connection), t_json.c_str());
    } else {
      std::printf("%s  writer %s (pid %" PRIu64 ", heartbeat %" PRId64 " ms)  broker %s  rejected %" PRIu64 "\n",
                  name.c_str(), o.segment.writer_alive() ? "alive" : "NOT RESPONDING", info.writer_pid,
                  info.heartbeat_age_ms, connection_name(info.connection), info.messages_rejected);
      if (tty || n == 0) {
        std::printf("  %-20s %12s %12s %12s %8s %12s\n", "TABLE", "UPDATES/S", "LIVE", "CAPACITY", "FULL%",
                    "FRESHNESS");
      }
      for (size_t i = 0; i < tables.size(); ++i) {
        const TableStats s = tables[i].stats();
        const uint64_t ops = s.upserts + s.deletes;
        const std::string fresh =
            s.last_apply_unix_ns == 0
                ? "never"
                : std::to_string(saturating_sub(now_ns, s.last_apply_unix_ns) / 1'000'000) + " ms";
        std::printf("  %-20s %12.0f %12" PRIu64 " %12" PRIu64 " %7.1f%% %12s\n", tables[i].name().c_str(),
                    static_cast<double>(ops - last[i]) / dt, s.live_keys, s.capacity,
                    100.0 * static_cast<double>(s.live_keys) / static_cast<double>(s.capacity), fresh.c_str());
        last[i] = ops;
      }
    }
    std::fflush(stdout);
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------
// size: what a sidecar config needs, before any segment exists.

// The writer refuses to create a segment unless the directory has this much
// free space beyond the segment.
constexpr uint64_t kWriterFreeMargin = kSegmentFreeMargin;
// Headroom on top: the lock file, file-system metadata, and rounding by
// tools (kubelet, du) that measure the volume.
constexpr uint64_t kHeadroomPercent = 10;
constexpr uint64_t kMiB = uint64_t{1} << 20;

uint64_t round_up_to(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }

std::string mib(uint64_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MiB", static_cast<double>(bytes) / static_cast<double>(kMiB));
  return b;
}

struct DirCheck {
  bool exists = false;
  bool memory_backed = false;
  std::string fs_type;      // "tmpfs", "ramfs" or "0x<magic>"
  uint64_t size_bytes = 0;  // of the file system
  uint64_t free_bytes = 0;  // for an unprivileged user, plus the existing segment's bytes
  uint64_t existing_segment_bytes = 0;
  bool fits = false;
  std::string problem;  // empty when fit
};

DirCheck check_dir(const std::string& dir, const std::string& segment, uint64_t need) {
  DirCheck c;
  DirFileSystem fs;
  struct statvfs vfs;
  if (!dir_file_system(dir, &fs) || ::statvfs(dir.c_str(), &vfs) != 0) {
    c.problem = dir + " does not exist on this host (" + std::strerror(errno) + ")";
    return c;
  }
  c.exists = true;
  c.memory_backed = fs.memory_backed;
  c.fs_type = fs.type_name;
  c.size_bytes = uint64_t{vfs.f_blocks} * vfs.f_frsize;
  c.free_bytes = uint64_t{vfs.f_bavail} * vfs.f_frsize;
  struct stat st;
  if (::stat(segment_path(dir, segment).c_str(), &st) == 0) {
    // The sidecar reopens an existing segment in place: its pages count as available.
    c.existing_segment_bytes = static_cast<uint64_t>(st.st_blocks) * 512;
    c.free_bytes += c.existing_segment_bytes;
  }
  // ramfs has no size limit and reports 0 blocks.
  c.fits = !fs.size_limited || c.free_bytes >= need + kWriterFreeMargin;
  if (!c.memory_backed) {
    c.problem = dir + " is not a tmpfs (file system type " + c.fs_type +
                "): larder-sidecar refuses it, because every update would be written back to disk";
  } else if (!c.fits) {
    c.problem = dir + " has " + std::to_string(c.free_bytes) + " bytes free, the segment needs " +
                std::to_string(need) + " plus " + std::to_string(kWriterFreeMargin) +
                " kept free: enlarge it (docker --shm-size, emptyDir sizeLimit, mount -o remount,size=)";
  }
  return c;
}

std::string aggregates_json(const larder::sidecar::TableSize& t) {
  std::string out = "[";
  for (const larder::sidecar::AggregateCost& a : t.aggregates) {
    std::string shares = "[";
    for (const std::string& s : a.shares_with) shares += (shares.size() > 1 ? "," : "") + json_string(s);
    out += std::string(out.size() > 1 ? "," : "") + "{\"name\":" + json_string(a.name) + ",\"fn\":\"" + a.fn +
           "\",\"source\":" + json_string(a.source) + ",\"window_ms\":" + std::to_string(a.window_ms) +
           ",\"resolution_ms\":" + std::to_string(a.resolution_ms) + ",\"bytes\":" + std::to_string(a.bytes) +
           ",\"shares_with\":" + shares + "]}";
  }
  out += "],\"sharing_hints\":[";
  bool first = true;
  for (const larder::sidecar::SharingHint& h : t.sharing) {
    out += std::string(first ? "" : ",") + "{\"aggregate\":" + json_string(h.aggregate) +
           ",\"change\":" + json_string(h.change) + ",\"note\":" + json_string(h.note) +
           ",\"saves_bytes\":" + std::to_string(h.saves_bytes) + "}";
    first = false;
  }
  return out + "]";
}

// grow: asks the segment's live writer to grow a table. The request is the
// file Writer::grow_request_path names (".<name>.grow" beside the segment,
// "<table> <capacity>\n", written whole by a rename); the writer takes it
// on its own thread (maintain(), every 100 ms at most) and runs the
// generation switch between updates. With --wait, waits for the grown
// generation to be published.
int cmd_grow(const Globals& g, const std::string& name, const std::string& table_name, uint64_t capacity,
             double wait_s) {
  Opened o = open_segment(g, name);
  const SegmentInfo info = o.segment.info();
  const Table table = o.segment.table(table_name);
  const uint64_t current = table.stats().capacity;
  if (capacity <= current) {
    std::fprintf(stderr, "larderctl: table \"%s\" has capacity %" PRIu64 "; grow asks for a larger one\n",
                 table_name.c_str(), current);
    return kExitUsage;
  }
  const auto pid = static_cast<pid_t>(info.writer_pid);
  if (pid <= 0 || (::kill(pid, 0) != 0 && errno == ESRCH)) {
    std::fprintf(stderr,
                 "larderctl: segment \"%s\" has no live writer to grow it: start the sidecar with capacity: %" PRIu64
                 " for table \"%s\" (a larger capacity in the config is a migration)\n",
                 name.c_str(), capacity, table_name.c_str());
    return kExitOpen;
  }
  const std::string request = segment_path(g.dir, "." + name + ".grow");
  const std::string tmp = request + "." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << table_name << ' ' << capacity << '\n';
    if (!out.flush()) {
      std::fprintf(stderr, "larderctl: write %s: %s\n", tmp.c_str(), std::strerror(errno));
      ::unlink(tmp.c_str());
      return kExitOpen;
    }
  }
  if (::rename(tmp.c_str(), request.c_str()) != 0) {
    std::fprintf(stderr, "larderctl: rename to %s: %s\n", request.c_str(), std::strerror(errno));
    ::unlink(tmp.c_str());
    return kExitOpen;
  }
  if (wait_s <= 0) {
    std::printf("asked the writer (pid %d) to grow \"%s\" to %" PRIu64 "\n", static_cast<int>(pid), table_name.c_str(),
                capacity);
    return kExitOk;
  }
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(wait_s);
  while (std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    try {
      Segment now = Segment::open(name, ClientOptions{g.dir});
      const uint64_t generation = now.info().generation;
      if (generation > info.generation && now.table(table_name).stats().capacity >= capacity) {
        std::printf("grown: \"%s\" capacity %" PRIu64 ", generation %" PRIu64 "\n", table_name.c_str(),
                    now.table(table_name).stats().capacity, generation);
        return kExitOk;
      }
    } catch (const Error&) {
      // between the rename and the retirement: look again
    }
  }
  std::fprintf(stderr,
               "larderctl: segment \"%s\" did not grow within %.0f s: the writer's log says why (a switch refused: "
               "no room for two generations, say), and larder_generation_switch_active whether it is still copying\n",
               name.c_str(), wait_s);
  return kExitProblems;
}

int cmd_size(const Globals& g, const std::string& config_path, bool check) {
  larder::sidecar::Config cfg;
  try {
    // Sizing happens on an operator's machine or in CI, where the broker
    // password is not: a secret that cannot be read is only a warning.
    cfg = larder::sidecar::load_config_file(config_path, larder::sidecar::ConfigLoad{.require_secrets = false});
  } catch (const larder::sidecar::ConfigError& e) {
    std::fprintf(stderr, "larderctl: invalid config: %s\n", e.what());
    return kExitUsage;
  }
  // The same report as larder-sidecar --check-config: the writer's planner.
  const larder::sidecar::SizeReport report = larder::sidecar::size_report(cfg);
  const uint64_t total = report.total_bytes;
  uint64_t tables_bytes = 0;
  for (const larder::sidecar::TableSize& t : report.tables) tables_bytes += t.bytes();
  const uint64_t other_bytes = total - tables_bytes;
  const uint64_t headroom = std::max(total * kHeadroomPercent / 100, kMiB);
  const uint64_t recommended = round_up_to(total + kWriterFreeMargin + headroom, kMiB);
  const std::string& dir = cfg.segment.dir;
  const DirCheck dc = check_dir(dir, cfg.segment.name, total);
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", cfg.segment.mode);

  if (g.json) {
    std::string tables = "[";
    for (size_t t = 0; t < report.tables.size(); ++t) {
      const larder::sidecar::TableSize& ts = report.tables[t];
      const TableSpec& s = cfg.tables[t].spec;
      tables += std::string(t ? "," : "") + "{\"name\":" + json_string(ts.name) +
                ",\"capacity\":" + std::to_string(ts.capacity) + ",\"max_load_factor\":" + number(s.max_load_factor) +
                ",\"slots\":" + std::to_string(ts.slot_count) + ",\"slot_bytes\":" + std::to_string(ts.slot_bytes) +
                ",\"bytes\":" + std::to_string(ts.slots_bytes) +
                ",\"aggregate_state_bytes\":" + std::to_string(ts.state_bytes) +
                ",\"aggregate_state_bytes_per_slot\":" + std::to_string(ts.state_bytes_per_slot) +
                ",\"dedup_bytes\":" + std::to_string(ts.dedup_bytes) +
                ",\"dedup_ids\":" + std::to_string(ts.dedup_ids) +
                ",\"dedup_horizon_ms\":" + std::to_string(ts.dedup_horizon_ms) +
                ",\"arena_chunks\":" + std::to_string(ts.arena_chunks) +
                ",\"arena_chunk_bytes\":" + std::to_string(ts.arena_chunk_bytes) +
                ",\"arena_bytes\":" + std::to_string(ts.arena_bytes) +
                ",\"expected_events_per_s\":" + number(ts.expected_events_per_s) +
                ",\"aggregates\":" + aggregates_json(ts) + "}";
    }
    tables += "]";
    std::string warnings = "[";
    for (const std::string& w : cfg.warnings) warnings += (warnings.size() > 1 ? "," : "") + json_string(w);
    for (const std::string& w : report.warnings) warnings += (warnings.size() > 1 ? "," : "") + json_string(w);
    warnings += "]";
    std::string dir_json = "{\"exists\":" + std::string(dc.exists ? "true" : "false");
    if (dc.exists) {
      dir_json +=
          ",\"fs_type\":" + json_string(dc.fs_type) + ",\"memory_backed\":" + (dc.memory_backed ? "true" : "false") +
          ",\"size_bytes\":" + std::to_string(dc.size_bytes) + ",\"free_bytes\":" + std::to_string(dc.free_bytes) +
          ",\"existing_segment_bytes\":" + std::to_string(dc.existing_segment_bytes) +
          ",\"fits\":" + (dc.fits ? "true" : "false");
    }
    dir_json += ",\"problem\":" + (dc.problem.empty() ? std::string("null") : json_string(dc.problem)) + "}";
    std::printf(
        "{\"config\":%s,\"segment\":%s,\"dir\":%s,\"mode\":\"%s\",\"schema_fingerprint\":\"%s\","
        "\"tables\":%s,\"header_bytes\":%" PRIu64 ",\"undo_bytes\":%" PRIu64 ",\"journal_bytes\":%" PRIu64
        ",\"source_bytes\":%" PRIu64 ",\"alignment_bytes\":%" PRIu64 ",\"other_bytes\":%" PRIu64
        ",\"total_bytes\":%" PRIu64 ",\"writer_free_margin_bytes\":%" PRIu64 ",\"headroom_bytes\":%" PRIu64
        ",\"recommended_tmpfs_bytes\":%" PRIu64 ",\"recommended_tmpfs_mib\":%" PRIu64
        ",\"warnings\":%s,\"dir_check\":%s}\n",
        json_string(config_path).c_str(), json_string(cfg.segment.name).c_str(), json_string(dir).c_str(), mode,
        hex64(report.fingerprint).c_str(), tables.c_str(), report.header_bytes, report.undo_bytes, report.journal_bytes,
        report.source_bytes, report.alignment_bytes, other_bytes, total, kWriterFreeMargin, headroom, recommended,
        recommended / kMiB, warnings.c_str(), dir_json.c_str());
  } else {
    for (const std::string& w : cfg.warnings) std::fprintf(stderr, "larderctl: warning: %s\n", w.c_str());
    std::printf("%s", larder::sidecar::format_size_report(report).c_str());
    std::printf("segment.dir %s, mode %s\n", dir.c_str(), mode);
    std::printf("recommended tmpfs size: %" PRIu64 " bytes = %" PRIu64 " MiB (total + %" PRIu64
                " MiB the sidecar keeps free + %" PRIu64 "%% headroom, at least 1 MiB)\n",
                recommended, recommended / kMiB, kWriterFreeMargin / kMiB, kHeadroomPercent);
    std::printf("  docker run --shm-size=%" PRIu64 "m   |   Kubernetes emptyDir {medium: Memory, sizeLimit: %" PRIu64
                "Mi}\n",
                recommended / kMiB, recommended / kMiB);
    std::printf("  the segment's pages count against the memory limit of the sidecar's container (its cgroup)\n");
    if (dc.exists) {
      std::printf("%s on this host: %s, %s, %s free%s: %s\n", dir.c_str(), dc.fs_type.c_str(),
                  mib(dc.size_bytes).c_str(), mib(dc.free_bytes).c_str(),
                  dc.existing_segment_bytes ? " (counting the existing segment)" : "",
                  dc.problem.empty() ? "fits" : dc.problem.c_str());
    } else {
      std::printf("%s\n", dc.problem.c_str());
    }
  }
  if (g.json && !dc.problem.empty() && dc.exists) std::fprintf(stderr, "larderctl: warning: %s\n", dc.problem.c_str());
  return check && !dc.problem.empty() ? kExitProblems : kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "larderctl: inspect Larder shared-memory segments (read-only but for grow).\n"
      "Exit codes: 0 ok; 1 verify found corruption, get found no row, size --check-dir found the\n"
      "directory unfit, or a snapshot command refused (live writer, invalid snapshot, non-200 answer);\n"
      "2 usage or a bad config; 3 cannot open the segment or file, or cannot reach the peer;\n"
      "4 verify: repairable (a writer attaching repairs it); 5 verify: a live writer kept slots mid-update."};
  app.require_subcommand(1);
  Globals g;
  app.add_option("--dir", g.dir, "directory of the segments")->capture_default_str();
  app.add_flag("--json", g.json, "machine-readable output (one JSON document, or JSON lines)");
  app.add_option("--at-ms", g.at_ms, "compute ages as of this time (ms since the epoch) instead of now");

  std::string segment, table, format = "jsonl";
  std::vector<std::string> keys;
  int64_t max_age_ms = 0;
  uint64_t limit = 0;
  double interval = 1.0;
  int count = 0;

  app.add_subcommand("ls", "list the segments in --dir: name, size, tables, writer");
  auto* info = app.add_subcommand("info", "header, writer liveness, per-table occupancy and probe lengths");
  info->add_option("segment", segment, "segment name")->required();
  auto* schema = app.add_subcommand("schema", "print the schema as YAML that larder-sidecar accepts");
  schema->add_option("segment", segment, "segment name")->required();
  auto* get = app.add_subcommand("get", "print rows: typed fields, validity, event time and age");
  get->add_option("segment", segment, "segment name")->required();
  get->add_option("table", table, "table name")->required();
  get->add_option("keys", keys, "keys")->required();
  get->add_option("--max-age-ms", max_age_ms, "report rows older than this as stale");
  auto* dump = app.add_subcommand("dump", "print every live row, each read consistently");
  dump->add_option("segment", segment, "segment name")->required();
  dump->add_option("table", table, "table name")->required();
  dump->add_option("--format", format, "jsonl or csv")->check(CLI::IsMember({"jsonl", "csv"}))->capture_default_str();
  dump->add_option("--limit", limit, "at most this many rows (0: all)");
  auto* watch = app.add_subcommand("watch", "live view: updates/s, occupancy, freshness, writer heartbeat");
  watch->add_option("segment", segment, "segment name")->required();
  watch->add_option("--interval", interval, "seconds between refreshes")->capture_default_str();
  watch->add_option("--count", count, "stop after this many refreshes (0: until interrupted)");
  uint64_t grow_capacity = 0;
  double grow_wait = 60;
  auto* grow =
      app.add_subcommand("grow", "ask the segment's live writer to grow a table (a generation switch while it serves)");
  grow->add_option("segment", segment, "segment name")->required();
  grow->add_option("--table", table, "table name")->required();
  grow->add_option("--capacity", grow_capacity, "the new capacity in live keys")->required();
  grow->add_option("--wait", grow_wait, "seconds to wait for the grown generation (0: ask and return)")
      ->capture_default_str();
  auto* verify = app.add_subcommand(
      "verify",
      "integrity check; exit 0 clean, 1 corrupt, 4 repairable by attaching a writer, 5 incomplete (a live "
      "writer kept slots mid-update)");
  verify->add_option("segment", segment, "segment name")->required();
  std::string config_path;
  bool check_dir = false;
  auto* size = app.add_subcommand("size",
                                  "bytes a larder-sidecar config needs, per table and in total, and the tmpfs size "
                                  "to give its directory (no segment is opened)");
  size->add_option("--config", config_path, "larder-sidecar config file")->required();
  size->add_flag("--check-dir", check_dir,
                 "exit 1 unless segment.dir exists here, is a tmpfs and has room for the segment");
  size->fallthrough();  // larderctl size --config F --json
  std::string snapshot_file, url, token_file;
  int level = 1;
  double timeout_s = 30;
  auto* snap = app.add_subcommand(
      "snapshot",
      "write a snapshot file (zstd) of a segment that has no writer attached; a live segment is snapshotted by its "
      "sidecar (snapshot.dir) and fetched with fetch-snapshot");
  snap->add_option("segment", segment, "segment name")->required();
  snap->add_option("file", snapshot_file, "snapshot file to write (atomically: temporary file, fsync, rename)")
      ->required();
  snap->add_option("--level", level, "zstd level (negative: faster, larger)")->capture_default_str();
  snap->fallthrough();
  auto* snap_info =
      app.add_subcommand("snapshot-info",
                         "verify a snapshot file (checksums, decompression, segment layout) and print its header, "
                         "sync state, positions and tables; exit 1 if it is invalid");
  snap_info->add_option("file", snapshot_file, "snapshot file")->required();
  snap_info->fallthrough();
  auto* fetch =
      app.add_subcommand("fetch-snapshot",
                         "GET a snapshot from a sidecar's /snapshot (http or https), verify it, then rename it to "
                         "FILE; nothing is written unless it is valid");
  fetch->add_option("url", url, "e.g. http://10.0.0.7:9464/snapshot")->required();
  fetch->add_option("file", snapshot_file, "snapshot file to write")->required();
  fetch->add_option("--token-file", token_file, "send `Authorization: Bearer <token>` with the token in this file");
  fetch->add_option("--timeout", timeout_s, "seconds to wait for the connection and for each read")
      ->capture_default_str();
  fetch->fallthrough();
  ctl::PublishOptions po;
  auto* pub = app.add_subcommand(
      "publish",
      "validate the rows of a CSV or JSON Lines file against a table's schema (the sidecar's own checks) and "
      "publish them to RabbitMQ in batches with publisher confirms; bad rows are listed and nothing is sent");
  pub->add_option("file", po.file, "a .csv file (a header line names the columns) or .jsonl (one object a line)")
      ->required();
  pub->add_option("--format", po.format, "csv or jsonl (default: by the file's extension)")
      ->check(CLI::IsMember({"csv", "jsonl"}));
  pub->add_option("--config", po.config_path, "the sidecar's config: schema, transforms, broker URL, TLS, password");
  pub->add_option("--segment", po.segment, "or validate against this live segment's schema (in --dir)");
  pub->add_option("--table", po.table, "the table")->required();
  pub->add_option("--key", po.key_column, "the key column")->required();
  pub->add_option("--event-time", po.event_time_column, "the event-time column (ms since the epoch or RFC 3339)");
  pub->add_option("--event-time-ms", po.event_time_ms, "or one event time for every row (ms since the epoch)");
  pub->add_option("--id", po.id_column, "a column of event ids (deduplication on tables with aggregates)");
  pub->add_option("--delete-column", po.delete_column, "rows where this column is true are deletes");
  pub->add_flag("--delete", po.delete_all, "every row deletes its key");
  pub->add_flag("--skip-bad", po.skip_bad, "send the valid rows and list the bad ones (default: send nothing)");
  pub->add_flag("--dry-run", po.dry_run, "validate and batch, do not connect");
  pub->add_option("--exchange", po.exchange, "default: the exchange of the config's first binding");
  pub->add_option("--routing-key", po.routing_key, "default: the table's name");
  pub->add_option("--url", po.url, "amqp://user@host:port/vhost or amqps://... (overrides the config's)");
  pub->add_option("--password-env", po.password_env, "variable holding the password (without --config)")
      ->capture_default_str();
  pub->add_option("--password-file", po.password_file, "a file holding the password");
  pub->add_option("--ca-file", po.ca_file, "amqps: the CA of the broker's certificate");
  pub->add_option("--cert-file", po.cert_file, "amqps: client certificate");
  pub->add_option("--key-file", po.key_file, "amqps: client key");
  pub->add_flag("--no-verify-peer", po.no_verify_peer, "amqps: do not check the broker's certificate");
  pub->add_option("--max-message-bytes", po.max_message_bytes, "bytes of one message (one larger update goes alone)")
      ->capture_default_str();
  pub->add_option("--max-updates", po.max_updates, "updates in one message")->capture_default_str();
  pub->fallthrough();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  try {
    if (app.got_subcommand("ls")) return cmd_ls(g);
    if (app.got_subcommand(info)) return cmd_info(g, segment);
    if (app.got_subcommand(schema)) return cmd_schema(g, segment);
    if (app.got_subcommand(get)) return cmd_get(g, segment, table, keys, max_age_ms);
    if (app.got_subcommand(dump)) return cmd_dump(g, segment, table, format, limit);
    if (app.got_subcommand(watch)) return cmd_watch(g, segment, interval, count);
    if (app.got_subcommand(verify)) return cmd_verify(g, segment);
    if (app.got_subcommand(grow)) return cmd_grow(g, segment, table, grow_capacity, grow_wait);
    if (app.got_subcommand(size)) return cmd_size(g, config_path, check_dir);
    if (app.got_subcommand(snap)) return ctl::cmd_snapshot(g.dir, g.json, segment, snapshot_file, level);
    if (app.got_subcommand(snap_info)) return ctl::cmd_snapshot_info(g.json, snapshot_file);
    if (app.got_subcommand(fetch)) return ctl::cmd_fetch_snapshot(g.json, url, snapshot_file, token_file, timeout_s);
    if (app.got_subcommand(pub)) {
      po.json = g.json;
      if (po.segment.empty()) return ctl::cmd_publish(po, nullptr);
      Opened o = open_segment(g, po.segment);
      const Schema segment_schema = schema_of(o.raw->data());
      return ctl::cmd_publish(po, &segment_schema);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "larderctl: %s\n", e.what());
    return e.code() == ErrorCode::kNotFound && std::string(e.what()).find("has no") != std::string::npos ? kExitUsage
                                                                                                         : kExitOpen;
  }
  return kExitUsage;
}
