// The integrity check of a validated segment (segment_verify.h).
#include "segment_verify.h"

#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <map>
#include <optional>

#include "larder/layout/clock.h"
#include "larder/layout/format.h"
#include "larder/layout/schema.h"
#include "larder/layout/segment_file.h"
#include "larder/layout/sync.h"
#include "larder/layout/table_view.h"

namespace larder::verify {

using namespace layout;  // NOLINT: the check reads the layout's words

const char* outcome_name(Outcome o) noexcept {
  switch (o) {
    case Outcome::kClean: return "clean";
    case Outcome::kRepairable: return "repairable";
    case Outcome::kCorrupt: return "corrupt";
    case Outcome::kInFlight: return "in_flight";
  }
  return "unknown";
}

namespace {

std::string quoted(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c >= 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

bool pid_exists(uint64_t pid) {
  // pid_t is 32 bits; 0 and negative values would address process groups.
  if (pid == 0 || pid > static_cast<uint64_t>(INT_MAX)) return false;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

// One consistent copy of a slot: its sequence and words [kSlotMetaWord,
// slot_words) in out (out[0] is the meta word), as read_whole_slot, plus the
// sequence value the copy is consistent with.
std::optional<uint64_t> read_slot_seq(const TableGeometry& g, const Word* s, uint64_t* out, uint32_t max_retries) {
  for (uint32_t attempt = 0; attempt < max_retries; ++attempt) {
    const uint64_t s0 = sync::load_acquire(s[kSlotSeqWord]);  // R1: pairs with the writer's W2
    if (s0 & 1) {
      sync::cpu_relax();
      continue;
    }
    for (uint32_t w = kSlotMetaWord; w < g.slot_words; ++w) out[w - kSlotMetaWord] = sync::load_payload(s[w]);
    sync::reader_fence();  // R2: pairs with the writer's W1
    if (sync::load_relaxed(s[kSlotSeqWord]) == s0) return s0;
  }
  return std::nullopt;
}

struct TableCounts {
  uint64_t live = 0, tombstones = 0, upserts = 0, deletes = 0;
};

TableCounts counters_of(const TableDescriptor& d) {
  return {sync::load_relaxed(d.counters.live_keys), sync::load_relaxed(d.counters.tombstones),
          sync::load_relaxed(d.counters.upserts), sync::load_relaxed(d.counters.deletes)};
}

int64_t saturating_sub(int64_t a, int64_t b) {
  int64_t d;
  if (__builtin_sub_overflow(a, b, &d)) return b < 0 ? INT64_MAX : INT64_MIN;
  return d;
}

uint64_t distance(uint64_t a, uint64_t b) { return a > b ? a - b : b - a; }

class Checker {
 public:
  Checker(const void* base, const Options& options, Report* report)
      : base_(base), h_(*static_cast<const SegmentHeader*>(base)), options_(options), r_(*report) {
    if (options_.max_retries == 0) options_.max_retries = 1;
  }

  void run() {
    detect_writer();
    check_schema();
    if (!r_.writer_live) check_records();
    for (uint32_t t = 0; t < h_.table_count; ++t) check_table(t);
    // The arena moves under a live writer, and an armed journal is about to
    // move it back: judge it only at rest.
    if (!r_.writer_live && sync::load_acquire(h_.journal_armed) == 0) {
      for (uint32_t t = 0; t < h_.table_count; ++t) check_arena(t);
    }
    if (!r_.problems.empty()) {
      r_.outcome = Outcome::kCorrupt;
    } else if (!r_.in_flight.empty()) {
      r_.outcome = Outcome::kInFlight;
    } else if (!r_.repairs.empty()) {
      r_.outcome = Outcome::kRepairable;
    } else {
      r_.outcome = Outcome::kClean;
    }
  }

 private:
  void detect_writer() {
    r_.writer_pid = sync::load_acquire(h_.writer_pid);
    switch (options_.writer) {
      case WriterCheck::kAssumeAbsent: r_.writer_live = false; break;
      case WriterCheck::kAssumeLive: r_.writer_live = true; break;
      case WriterCheck::kDetect: {
        if (r_.writer_pid == 0) break;
        if (pid_exists(r_.writer_pid)) {
          r_.writer_live = true;
          break;
        }
        // Not a process here: dead, or alive in another pid namespace. A
        // fresh heartbeat alone cannot tell (a writer killed a moment ago
        // left one); a heartbeat that moves can.
        const uint64_t hb = sync::load_relaxed(h_.heartbeat_mono_ns);
        const int64_t age_ns = saturating_sub(now_mono_ns(), static_cast<int64_t>(hb));
        if (hb == 0 || age_ns < 0 || age_ns > kLiveHeartbeatMs * 1'000'000) break;
        const int64_t until = now_mono_ns() + kHeartbeatWatchMs * 1'000'000;
        while (!r_.writer_live && now_mono_ns() < until) {
          ::usleep(10'000);
          r_.writer_live = sync::load_relaxed(h_.heartbeat_mono_ns) != hb;
        }
        break;
      }
    }
    // A writer detaching clears writer_pid; a pid left behind by a writer
    // that is gone means it died, and its counters may lag its slots.
    writer_died_ = !r_.writer_live && r_.writer_pid != 0;
    // A writer recounts on attach only when the counters were not kept exact
    // by the last writer session (an older build kept no count record).
    counters_exact_ = sync::load_relaxed(h_.counters_session) == sync::load_relaxed(h_.writer_sessions);
  }

  void check_schema() {
    try {
      if (schema_of(base_).fingerprint() != h_.schema_fingerprint) {
        r_.problems.push_back("the schema fingerprint does not match the table and field descriptors");
      }
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception& e) {
      r_.problems.push_back(std::string("the descriptors do not form a schema: ") + e.what());
    }
  }

  // The records a dead writer leaves for the next one (repair.cc).
  void check_records() {
    if (sync::load_acquire(h_.undo_armed) != 0) {
      const uint64_t t = sync::load_relaxed(h_.undo_table);
      const uint64_t i = sync::load_relaxed(h_.undo_slot);
      if (t >= h_.table_count || i >= table_descriptor(base_, static_cast<uint32_t>(t)).slot_count ||
          table_descriptor(base_, static_cast<uint32_t>(t)).slot_bytes > h_.undo_bytes) {
        r_.problems.push_back("the armed undo record names table " + std::to_string(t) + " slot " + std::to_string(i) +
                              ", which does not exist or does not fit the undo area");
      } else {
        undo_valid_ = true;
        undo_table_ = t;
        undo_slot_ = i;
        const TableDescriptor& d = table_descriptor(base_, static_cast<uint32_t>(t));
        const uint64_t seq = sync::load_relaxed(table_geometry(base_, d).slot(i)[kSlotSeqWord]);
        if ((seq & 1) == 0) {
          r_.repairs.push_back("the undo record is armed for " + std::string(fixed_name(d.name)) + " slot " +
                               std::to_string(i) + ", whose write finished: attaching a writer disarms it");
        }
        // An odd guarded slot is counted in the table scan.
      }
    }
    const uint64_t journal = sync::load_acquire(h_.journal_armed);
    if (journal != 0) {
      const uint64_t count = sync::load_relaxed(h_.journal_count);
      bool ok = journal == 1 || journal == 2;
      if (!ok) r_.problems.push_back("journal_armed holds " + std::to_string(journal) + " (0, 1 or 2)");
      if (count > h_.journal_capacity) {
        r_.problems.push_back("the journal holds " + std::to_string(count) + " entries, its capacity is " +
                              std::to_string(h_.journal_capacity));
        ok = false;
      } else {
        const auto* entries =
            reinterpret_cast<const JournalEntry*>(static_cast<const char*>(base_) + h_.journal_offset);
        for (uint64_t e = 0; e < count; ++e) {
          const uint64_t word = sync::load_relaxed(entries[e].word);
          if (word >= h_.segment_bytes / 8) {
            r_.problems.push_back("journal entry " + std::to_string(e) + " names word " + std::to_string(word) +
                                  ", outside the segment");
            ok = false;
          }
        }
      }
      if (ok) {
        r_.repairs.push_back("the aggregate journal is armed with " + std::to_string(count) +
                             " entries: attaching a writer " +
                             (journal == 2 ? "keeps the change" : "keeps or undoes the change"));
      }
    }
    const SourceBlock& src = source_block(base_);
    const uint64_t pending = sync::load_acquire(src.pending_state);
    if (pending != kPendingIdle) {
      const uint64_t partition = sync::load_relaxed(src.pending_partition);
      if (pending != kPendingArmed && pending != kPendingDone) {
        r_.problems.push_back("the pending position's state is " + std::to_string(pending) + " (0, 1 or 2)");
      } else if (partition >= kMaxSourcePartitions) {
        r_.problems.push_back("the pending position names partition " + std::to_string(partition) + " (0.." +
                              std::to_string(kMaxSourcePartitions - 1) + ")");
      } else {
        r_.repairs.push_back("a stream position for partition " + std::to_string(partition) +
                             " is pending: attaching a writer " +
                             (pending == kPendingDone ? "stores it" : "stores it or drops it"));
      }
    }
  }

  // Findings about one consistently read slot, or nothing. `words` is the
  // copy (words[0] the meta word).
  std::optional<std::string> slot_problem(const TableDescriptor& d, const TableGeometry& g, const uint64_t* words,
                                          const std::string& where) {
    const uint64_t meta = words[0];
    const uint64_t key_len = words[kSlotKeyLenWord - kSlotMetaWord] & 0xffffffffu;
    if (key_len == 0 || key_len > d.key_max_len) {
      return where + ": key length " + std::to_string(key_len) + " is outside 1.." + std::to_string(d.key_max_len);
    }
    for (uint32_t f = 0; f < d.field_count; ++f) {
      const FieldDescriptor& fd = field_descriptor(base_, d, f);
      if (fd.type != static_cast<uint32_t>(FieldType::kString)) continue;
      uint32_t len;
      std::memcpy(&len, reinterpret_cast<const unsigned char*>(words + g.row_word_offset() - kSlotMetaWord) + fd.offset,
                  sizeof len);
      if (len > fd.count) {
        return where + ": field " + std::string(fixed_name(fd.name)) + " has string length " + std::to_string(len) +
               ", above its max_len " + std::to_string(fd.count);
      }
    }
    // Field groups: the row's event time is the newest of its groups'.
    const auto row_time = static_cast<int64_t>(words[kSlotEventTimeWord - kSlotMetaWord]);
    for (uint32_t grp = 0; grp < g.group_count; ++grp) {
      const auto t = static_cast<int64_t>(words[g.group_word_offset() + grp - kSlotMetaWord]);
      if (t > row_time) {
        return where + ": group " + std::string(fixed_name(group_descriptor(base_, d, grp).name)) + " event time " +
               std::to_string(t) + " is newer than the row's " + std::to_string(row_time);
      }
    }
    const std::string_view key(reinterpret_cast<const char*>(words + g.key_word_offset() - kSlotMetaWord), key_len);
    if (((hash_key(key, g.hash_seed) ^ meta) & ~kMetaStateMask) != 0) {
      return where + ": stored hash does not match key " + quoted(key);
    }
    const SlotState state = meta_state(meta);
    if (state != SlotState::kLive && state != SlotState::kTombstone) {
      return where + ": unknown state " + std::to_string(meta & kMetaStateMask);
    }
    if (state == SlotState::kLive) {
      // The key must be reachable from its home without crossing an empty slot.
      PackedKey packed;
      packed.assign(key);
      row_.resize(g.copy_words());
      if (find(g, packed, hash_key(key, g.hash_seed), row_.data(), options_.max_retries) == FindResult::kAbsent) {
        return where + ": key " + quoted(key) + " is not reachable from its home slot";
      }
    }
    return std::nullopt;
  }

  void check_table(uint32_t t) {
    const TableDescriptor& d = table_descriptor(base_, t);
    const std::string tname(fixed_name(d.name));
    const TableGeometry g = table_geometry(base_, d);
    std::vector<uint64_t> words(g.slot_words);
    const TableCounts before = counters_of(d);
    // Live keys by key: the slot and the sequence it was read at.
    std::map<std::string, std::pair<uint64_t, uint64_t>, std::less<>> keys;
    uint64_t live = 0, tomb = 0, in_flight = 0;
    std::vector<uint64_t> busy;
    auto account = [&](uint64_t i, uint64_t seq) {
      if (words[0] == 0) return;
      const std::string where = tname + " slot " + std::to_string(i);
      std::optional<std::string> problem = slot_problem(d, g, words.data(), where);
      // Live writer: a finding stands only if the slot did not change while
      // it was judged (reachability depends on other slots too).
      for (uint32_t round = 0; problem && r_.writer_live && round < options_.live_rounds; ++round) {
        if (sync::load_acquire(g.slot(i)[kSlotSeqWord]) == seq) break;
        std::optional<uint64_t> again = read_slot_seq(g, g.slot(i), words.data(), options_.max_retries);
        if (!again) continue;
        seq = *again;
        if (words[0] == 0) return;
        problem = slot_problem(d, g, words.data(), where);
      }
      ++r_.slots_checked;
      if (problem) {
        r_.problems.push_back(*problem);
        return;
      }
      if (meta_state(words[0]) == SlotState::kTombstone) {
        ++tomb;
        return;
      }
      ++live;
      const uint64_t key_len = words[kSlotKeyLenWord - kSlotMetaWord] & 0xffffffffu;
      std::string key(reinterpret_cast<const char*>(words.data() + g.key_word_offset() - kSlotMetaWord), key_len);
      auto [it, fresh] = keys.try_emplace(key, i, seq);
      if (fresh) return;
      // Live writer: the first copy may have been deleted (and its slot
      // reclaimed) since it was read.
      if (r_.writer_live && sync::load_acquire(g.slot(it->second.first)[kSlotSeqWord]) != it->second.second) {
        it->second = {i, seq};
        return;
      }
      r_.problems.push_back(where + ": key " + quoted(key) + " is live twice");
    };
    for (uint64_t i = 0; i < g.slot_count; ++i) {
      const std::optional<uint64_t> seq = read_slot_seq(g, g.slot(i), words.data(), options_.max_retries);
      if (!seq) {
        busy.push_back(i);
        continue;
      }
      account(i, *seq);
    }
    // Slots read mid-update. Without a writer they stay odd: the undo record
    // covers at most one of them; with one, read them again.
    uint64_t restorable = 0;
    for (const uint64_t i : busy) {
      const std::string where = tname + " slot " + std::to_string(i);
      if (!r_.writer_live) {
        if (undo_valid_ && undo_table_ == t && undo_slot_ == i) {
          ++r_.repairable_slots;
          ++restorable;  // its state is the undo copy's or the write's: uncounted
          r_.repairs.push_back(where +
                               ": sequence odd (a writer died mid-update); attaching a writer restores it "
                               "from the undo copy");
        } else {
          r_.problems.push_back(where +
                                ": sequence stays odd, not covered by the undo record (a writer opened with "
                                "segment.full_check turns it into a tombstone; the stream or a snapshot refills it)");
        }
        continue;
      }
      std::optional<uint64_t> seq;
      for (uint32_t round = 0; !seq && round < options_.live_rounds; ++round) {
        if (round > 0) ::sched_yield();
        seq = read_slot_seq(g, g.slot(i), words.data(), options_.max_retries);
      }
      if (!seq) {
        ++in_flight;
        r_.in_flight.push_back(where + ": mid-update through " + std::to_string(options_.live_rounds) +
                               " re-reads (writer pid " + std::to_string(r_.writer_pid) + ")");
        continue;
      }
      account(i, *seq);
    }
    const TableCounts after = counters_of(d);
    // A slot the undo record restores is counted neither way: one of slack.
    // Live writer: the scan is not a snapshot. Each update, delete or
    // reclaim during it moves a slot and a counter, so a count may be off by
    // the counters' movement; slots never read consistently add theirs. And
    // one update may be between its slot write and its counter stores for
    // the whole scan (the writer preempted there): one more.
    uint64_t slack = restorable;
    if (r_.writer_live) {
      slack += (after.upserts - before.upserts) + (after.deletes - before.deletes) + distance(after.live, before.live) +
               distance(after.tombstones, before.tombstones) + in_flight + 1;
    }
    auto compare = [&](const char* what, uint64_t counted, uint64_t c0, uint64_t c1) {
      const uint64_t lo = std::min(c0, c1), hi = std::max(c0, c1);
      if ((lo <= slack || counted >= lo - slack) && counted <= hi + slack) return;
      const std::string line =
          tname + ": counters say " + std::to_string(c1) + " " + what + ", the slots hold " + std::to_string(counted);
      if (writer_died_ && sync::load_relaxed(d.count_armed) != 0) {
        r_.repairs.push_back(line +
                             " (a writer died mid-write with its count record armed; attaching a writer "
                             "finishes the counters)");
      } else if (!counters_exact_) {
        r_.repairs.push_back(line +
                             " (last written by a build that kept no count record; attaching a writer "
                             "recounts them)");
      } else {
        r_.problems.push_back(line + " (a writer opened with segment.full_check recounts them)");
      }
    };
    compare("live keys", live, before.live, after.live);
    compare("tombstones", tomb, before.tombstones, after.tombstones);
    if (live > d.capacity + slack) r_.problems.push_back(tname + ": more live keys than the capacity");
  }

  // Every arena chunk is exactly one of: never taken, on the free list, or
  // held by one group of one slot's state block; the used count agrees.
  void check_arena(uint32_t t) {
    const TableDescriptor& d = table_descriptor(base_, t);
    if (d.arena_chunks == 0) return;
    const std::string tname(fixed_name(d.name));
    AggregatePlan plan;
    try {
      plan = plan_aggregates(schema_of(base_).tables.at(t));
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception&) {
      return;  // check_schema reported it
    }
    if (plan.stride_words != d.state_stride_words || plan.chunk_words != d.arena_chunk_words) {
      r_.problems.push_back(tname + ": the aggregate state or arena size differs from the schema's plan");
      return;
    }
    const auto* base = static_cast<const char*>(base_);
    const auto* arena = reinterpret_cast<const Word*>(base + d.arena_offset);
    const uint64_t chunks = d.arena_chunks;
    const uint64_t fresh = sync::load_relaxed(arena[kArenaFreshWord]);
    const uint64_t used = sync::load_relaxed(arena[kArenaUsedWord]);
    if (fresh > chunks) {
      r_.problems.push_back(tname + ": arena: " + std::to_string(fresh) + " chunks taken of " + std::to_string(chunks));
      return;
    }
    enum : uint8_t { kUntaken, kTaken, kFree, kHeld };  // kTaken: free or held, not known yet
    std::vector<uint8_t> state(chunks, kUntaken);
    for (uint64_t c = 0; c < fresh; ++c) state[c] = kTaken;
    uint64_t free_count = 0;
    for (uint64_t link = sync::load_relaxed(arena[kArenaFreeHeadWord]); link != 0;) {
      if (link > fresh || state[link - 1] != kTaken) {
        r_.problems.push_back(tname + ": arena: the free list names chunk " + std::to_string(link - 1) +
                              (link > fresh ? ", never taken" : " twice"));
        return;
      }
      state[link - 1] = kFree;
      ++free_count;
      const Word* chunk = arena + kArenaHeaderWords + (link - 1) * d.arena_chunk_words;
      link = sync::load_relaxed(chunk[kArenaChunkNextWord]);
    }
    const auto* blocks = reinterpret_cast<const Word*>(base + d.state_offset);
    uint64_t held = 0;
    for (uint64_t slot = 0; slot < d.slot_count; ++slot) {
      const Word* block = blocks + slot * d.state_stride_words;
      for (const AggregatePlan::Group& grp : plan.groups) {
        if (!grp.sparse()) continue;
        const uint64_t c = sync::load_relaxed(block[grp.offset + kGroupChunkWord]);
        if (c == 0) continue;
        const std::string where = tname + " slot " + std::to_string(slot) + ": aggregate group " + grp.source;
        if (c > fresh || state[c - 1] == kFree) {
          r_.problems.push_back(where + " holds arena chunk " + std::to_string(c - 1) +
                                (c > chunks  ? ", beyond the arena"
                                 : c > fresh ? ", never taken"
                                             : ", which is free"));
          continue;
        }
        if (state[c - 1] == kHeld) {
          r_.problems.push_back(where + " holds arena chunk " + std::to_string(c - 1) + ", held by another too");
          continue;
        }
        state[c - 1] = kHeld;
        ++held;
      }
    }
    if (held + free_count != fresh) {
      r_.problems.push_back(tname + ": arena: " + std::to_string(fresh - held - free_count) +
                            " chunks neither free nor held (lost)");
    }
    if (used != held) {
      r_.problems.push_back(tname + ": arena: the header counts " + std::to_string(used) + " chunks in use, " +
                            std::to_string(held) + " are held");
    }
  }

  const void* base_;
  const SegmentHeader& h_;
  Options options_;
  Report& r_;
  bool writer_died_ = false;
  bool counters_exact_ = true;
  bool undo_valid_ = false;
  uint64_t undo_table_ = 0, undo_slot_ = 0;
  std::vector<uint64_t> row_;
};

}  // namespace

Report verify_segment(const void* base, const Options& options) {
  Report report;
  Checker(base, options, &report).run();
  return report;
}

}  // namespace larder::verify
