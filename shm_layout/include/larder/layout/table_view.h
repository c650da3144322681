// The read side of one table: hashing, probing and the seqlock read of a slot.
// Used by the client library, larderctl and the writer's own checks, so there
// is one implementation of the reader protocol (see sync.h for the fences).
//
// Probing is linear from home = fastrange(hash, slot_count). A reader stops at
// the first empty slot: keys never move and a tombstone only becomes empty
// when the slot after it is empty (format.h), so a present key's chain never
// holds an empty slot and no concurrent delete or update can make a present
// key look missing.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "larder/layout/format.h"
#include "larder/layout/sync.h"

namespace larder::layout {

// XXH3-64 of the key with the table's seed.
uint64_t hash_key(std::string_view key, uint64_t seed) noexcept;

// A key laid out as the slot stores it: zero padded to whole words.
struct PackedKey {
  uint64_t words[kMaxKeyLength / 8];
  uint32_t length = 0;
  uint32_t word_count = 0;

  // Requires key.size() <= kMaxKeyLength.
  void assign(std::string_view key) noexcept {
    length = static_cast<uint32_t>(key.size());
    word_count = static_cast<uint32_t>((key.size() + 7) / 8);
    if (word_count > 0) words[word_count - 1] = 0;
    std::memcpy(words, key.data(), key.size());
  }
};

// Local, validated copy of a table's geometry (never re-read from the
// segment after open, so a corrupted descriptor cannot steer a reader out of
// its mapping).
struct TableGeometry {
  const Word* slots = nullptr;
  uint64_t slot_count = 0;
  uint32_t slot_words = 0;
  uint32_t validity_words = 0;
  uint32_t key_words = 0;
  uint32_t row_words = 0;
  uint32_t key_max_len = 0;
  uint32_t group_count = 0;  // field groups: their time words follow the row
  uint64_t hash_seed = 0;

  const Word* slot(uint64_t i) const noexcept { return slots + i * slot_words; }
  // fastrange: maps the hash onto [0, slot_count) with one multiply. The low
  // two bits are ignored, so a slot's home can be computed from its meta word.
  uint64_t home(uint64_t hash) const noexcept {
    __extension__ using u128 = unsigned __int128;
    return static_cast<uint64_t>((static_cast<u128>(hash & ~kMetaStateMask) * slot_count) >> 64);
  }
  uint32_t key_word_offset() const noexcept { return kSlotHeaderWords + validity_words; }
  uint32_t row_word_offset() const noexcept { return key_word_offset() + key_words; }
  uint32_t group_word_offset() const noexcept { return row_word_offset() + row_words; }
  // Words a reader copies out of a slot: everything from the event time on.
  uint32_t copy_words() const noexcept { return slot_words - kSlotEventTimeWord; }
};

enum class SlotRead : uint8_t {
  kMatch,     // the slot holds the key live; `out` has its words
  kMismatch,  // the slot holds something else (consistently read)
  kBusy,      // the slot stayed odd or kept changing for max_retries
};

// Seqlock read of one slot that may hold `key`: compares the key inside the
// read window and, on a match, copies words [kSlotEventTimeWord, slot_words)
// into out. Lock-free; never writes to the slot.
inline SlotRead read_slot(const TableGeometry& g, const Word* s, const PackedKey& key, uint64_t hash, uint64_t* out,
                          uint32_t max_retries) noexcept {
  const uint32_t key_at = g.key_word_offset();
  for (uint32_t attempt = 0; attempt < max_retries; ++attempt) {
    const uint64_t s0 = sync::load_acquire(s[kSlotSeqWord]);  // R1: pairs with W2
    if (s0 & 1) {
      sync::cpu_relax();
      continue;
    }
    bool same = meta_matches(sync::load_payload(s[kSlotMetaWord]), hash) &&
                (sync::load_payload(s[kSlotKeyLenWord]) & 0xffffffffu) == key.length;
    for (uint32_t w = 0; same && w < key.word_count; ++w) {
      same = sync::load_payload(s[key_at + w]) == key.words[w];
    }
    if (same) {
      const uint32_t n = g.copy_words();
      for (uint32_t w = 0; w < n; ++w) out[w] = sync::load_payload(s[kSlotEventTimeWord + w]);
    }
    sync::reader_fence();  // R2: pairs with W1
    if (sync::load_relaxed(s[kSlotSeqWord]) == s0) return same ? SlotRead::kMatch : SlotRead::kMismatch;
  }
  return SlotRead::kBusy;
}

// Seqlock read of a whole slot, whatever it holds (dumps, checks): copies
// words [kSlotMetaWord, slot_words) into out, so out[0] is the meta word and
// out + 1 has the layout a reader's row buffer has. kMismatch is not used.
inline SlotRead read_whole_slot(const TableGeometry& g, const Word* s, uint64_t* out, uint32_t max_retries) noexcept {
  for (uint32_t attempt = 0; attempt < max_retries; ++attempt) {
    const uint64_t s0 = sync::load_acquire(s[kSlotSeqWord]);  // R1
    if (s0 & 1) {
      sync::cpu_relax();
      continue;
    }
    for (uint32_t w = kSlotMetaWord; w < g.slot_words; ++w) out[w - kSlotMetaWord] = sync::load_payload(s[w]);
    sync::reader_fence();  // R2
    if (sync::load_relaxed(s[kSlotSeqWord]) == s0) return SlotRead::kMatch;
  }
  return SlotRead::kBusy;
}

enum class FindResult : uint8_t { kFound, kAbsent, kBusy };

// Probes for `key` (already hashed) and copies its words into out on success.
// A slot whose meta word shows another hash or state is skipped with one
// atomic load: a single 8-byte load is never torn, and a key that is present
// throughout the lookup has a matching live meta throughout.
inline FindResult find(const TableGeometry& g, const PackedKey& key, uint64_t hash, uint64_t* out,
                       uint32_t max_retries) noexcept {
  uint64_t i = g.home(hash);
  for (uint64_t probed = 0; probed < g.slot_count; ++probed) {
    const Word* s = g.slot(i);
    const uint64_t meta = sync::load_relaxed(s[kSlotMetaWord]);
    if (meta == 0) return FindResult::kAbsent;
    if (meta_matches(meta, hash)) {
      switch (read_slot(g, s, key, hash, out, max_retries)) {
        case SlotRead::kMatch: return FindResult::kFound;
        case SlotRead::kBusy: return FindResult::kBusy;
        case SlotRead::kMismatch: break;
      }
    }
    if (++i == g.slot_count) i = 0;
  }
  return FindResult::kAbsent;
}

// Prefetches the home slot of a hash: every 64-byte line of it, up to 16
// lines (1 KiB), so that the lines a lookup reads arrive together instead of
// one after another. The L2 hint measured faster than the default for
// batches here. Out of line on purpose: g++ 12 drops these prefetches when
// the function is inlined into a caller (checked in the disassembly).
void prefetch_home(const TableGeometry& g, uint64_t hash) noexcept;

}  // namespace larder::layout
