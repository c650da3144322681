// The floor: a plain in-process open-addressing table holding the same keys
// and rows as the Larder table, with no shared memory and no seqlock.
//
// Same hash (XXH3 with a seed), same fastrange home slot, same linear probing
// and load factor, slots padded to 64 bytes like Larder's, memory from the
// ordinary heap. A get copies the row out, as Larder's does. What is left of
// the gap between the two is the cost of the seqlock, the shared mapping
// and the extra slot header words. The floor's anonymous memory is kept on
// 4 KiB pages (MADV_NOHUGEPAGE) like the tmpfs mapping, unless
// LARDER_BENCH_FLOOR_THP=1 asks for transparent huge pages.
#pragma once

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string_view>

#include "larder/layout/table_view.h"

namespace larder::bench {

class FloorTable {
 public:
  // Slot words: [0] hash|1 (0 = empty), [1] key length, [2..3] key, then row.
  static constexpr uint32_t kHeaderWords = 4;

  FloorTable(uint64_t capacity, uint32_t row_words, double max_load = 0.75)
      : row_words_(row_words),
        slot_words_((kHeaderWords + row_words + 7) / 8 * 8),
        slot_count_(static_cast<uint64_t>(static_cast<double>(capacity) / max_load) + 1),
        slots_(allocate(slot_count_ * slot_words_ * 8)) {}

  uint64_t bytes() const { return slot_count_ * slot_words_ * 8; }

  // Transparent huge pages for the floor (LARDER_BENCH_FLOOR_THP=1): shows
  // how much of a figure is TLB misses, which a /dev/shm mapping (4 KiB
  // pages) cannot avoid.
  static bool use_thp() {
    const char* v = std::getenv("LARDER_BENCH_FLOOR_THP");
    return v != nullptr && v[0] == '1';
  }

  void insert(std::string_view key, const uint64_t* row) {
    const uint64_t h = tag(key);
    for (uint64_t i = home(h);; i = (i + 1 == slot_count_ ? 0 : i + 1)) {
      uint64_t* s = slot(i);
      if (s[0] == 0 || (s[0] == h && same_key(s, key))) {
        s[0] = h;
        s[1] = key.size();
        s[2] = s[3] = 0;
        std::memcpy(&s[2], key.data(), key.size());
        std::memcpy(&s[kHeaderWords], row, row_words_ * 8);
        return;
      }
    }
  }

  // Copies the row of `key` into out; false when absent.
  bool get(std::string_view key, uint64_t* out) const { return get_hashed(key, tag(key), out); }

  // 64-key batches the way Larder's get_many does them: hash and prefetch a
  // window of home slots (every line of each) ahead of the lookups.
  void get_many(const std::string_view* keys, size_t n, uint64_t* out, bool* found) const {
    constexpr size_t kWindow = 16;
    uint64_t tags[kWindow];
    for (size_t i = 0; i < n && i < kWindow; ++i) {
      tags[i] = tag(keys[i]);
      prefetch_slot(tags[i]);
    }
    for (size_t i = 0; i < n; ++i) {
      const uint64_t h = tags[i % kWindow];
      if (i + kWindow < n) {
        tags[i % kWindow] = tag(keys[i + kWindow]);
        prefetch_slot(tags[i % kWindow]);
      }
      found[i] = get_hashed(keys[i], h, out + i * row_words_);
    }
  }

 private:
  static uint64_t tag(std::string_view key) { return layout::hash_key(key, 0x5eed) | 1; }
  uint64_t home(uint64_t h) const {
    __extension__ using u128 = unsigned __int128;
    return static_cast<uint64_t>((static_cast<u128>(h) * slot_count_) >> 64);
  }
  uint64_t* slot(uint64_t i) const { return slots_.get() + i * slot_words_; }
  void prefetch_slot(uint64_t h) const {
    const char* s = reinterpret_cast<const char*>(slot(home(h)));
    for (uint32_t off = 0; off < slot_words_ * 8; off += 64) __builtin_prefetch(s + off, 0, 1);
  }
  static bool same_key(const uint64_t* s, std::string_view key) {
    return s[1] == key.size() && std::memcmp(&s[2], key.data(), key.size()) == 0;
  }
  bool get_hashed(std::string_view key, uint64_t h, uint64_t* out) const {
    for (uint64_t i = home(h);; i = (i + 1 == slot_count_ ? 0 : i + 1)) {
      const uint64_t* s = slot(i);
      if (s[0] == 0) return false;
      if (s[0] == h && same_key(s, key)) {
        std::memcpy(out, &s[kHeaderWords], row_words_ * 8);
        return true;
      }
    }
  }

  struct Unmap {
    size_t bytes;
    void operator()(uint64_t* p) const { ::munmap(p, bytes); }
  };
  static std::unique_ptr<uint64_t[], Unmap> allocate(size_t bytes) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    ::madvise(p, bytes, use_thp() ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    return std::unique_ptr<uint64_t[], Unmap>(static_cast<uint64_t*>(p), Unmap{bytes});
  }

  uint32_t row_words_;
  uint32_t slot_words_;
  uint64_t slot_count_;
  std::unique_ptr<uint64_t[], Unmap> slots_;
};

}  // namespace larder::bench
