// Candidate changes to the client's read path, measured next to the real
// ones (benchmarks named proto_*). The reader maps the segment read-only and
// runs the client's own probing and seqlock read (layout/table_view.h); the
// one difference is the prefetch:
//   get_many  prefetches every cache line of each home slot in the window,
//             not only the lines of its meta and key words, so the row words
//             a lookup copies are in flight too (proto_get_many64);
//   get       prefetches every line of the home slot before probing, so a
//             multi-line row arrives in one round trip instead of trickling
//             in behind the word-by-word copy (proto_get_dependent).
#pragma once

#include <algorithm>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "larder/layout/segment_file.h"
#include "larder/layout/table_view.h"

namespace larder::bench {

class PrototypeReader {
 public:
  PrototypeReader(const std::string& dir, const std::string& segment) {
    file_ = layout::MappedFile::open_read_only(layout::segment_path(dir, segment), segment);
    layout::validate_segment(file_->data(), file_->size(), segment);
    geo_ = layout::table_geometry(file_->data(), layout::table_descriptor(file_->data(), 0));
    // Fault the whole mapping in now, as the library's reader mapping is by
    // the time it is measured: otherwise the first benchmark on this
    // mapping pays a page fault per 4 KiB page in its CPU time.
    const auto* bytes = static_cast<const volatile unsigned char*>(file_->data());
    unsigned char sink = 0;
    for (size_t at = 0; at < file_->size(); at += 4096) sink ^= bytes[at];
    faulted_ = sink;
  }

  size_t row_words() const { return geo_.copy_words(); }

  // False when not found. row: row_words() words.
  bool get(std::string_view key, uint64_t* row) const {
    if (key.empty() || key.size() > geo_.key_max_len || key.size() > layout::kMaxKeyLength) return false;
    const uint64_t h = layout::hash_key(key, geo_.hash_seed);
    prefetch_slot(h);
    layout::PackedKey packed;
    packed.assign(key);
    return layout::find(geo_, packed, h, row, 256) == layout::FindResult::kFound;
  }

  // Variants of get_many's prefetch schedule (proto_get_many64_*), for
  // batches of at most kMaxBatch keys:
  //   window      keys whose home slots are in flight ahead of the lookup;
  //   hash_first  hash every key of the batch before the first lookup, so
  //               the lookup loop carries no hashing;
  //   touch_ahead also prefetch the first line of the home slot `window`
  //               keys before the whole slot, so the page walk (4 KiB
  //               pages, nested paging) is done when the slot's lines are
  //               asked for.
  static constexpr size_t kMaxBatch = 64;
  struct Schedule {
    size_t window = 16;
    bool hash_first = false;
    bool touch_ahead = false;
  };
  size_t get_many_scheduled(std::span<const std::string_view> keys, uint64_t* rows, const Schedule& sc) const {
    const size_t n = std::min(keys.size(), kMaxBatch);
    uint64_t hashes[kMaxBatch];
    const size_t w = sc.window;
    const size_t first = sc.hash_first ? n : std::min(n, sc.touch_ahead ? 2 * w : w);
    for (size_t i = 0; i < first; ++i) hashes[i] = layout::hash_key(keys[i], geo_.hash_seed);
    for (size_t i = 0; i < std::min(n, w); ++i) prefetch_slot(hashes[i]);
    if (sc.touch_ahead) {
      for (size_t i = w; i < std::min(n, 2 * w); ++i) touch_slot(hashes[i]);
    }
    size_t hashed = first;
    size_t missing = 0;
    for (size_t i = 0; i < n; ++i) {
      const size_t next = i + (sc.touch_ahead ? 2 * w : w);
      if (next < n && next >= hashed) {
        hashes[next] = layout::hash_key(keys[next], geo_.hash_seed);
        hashed = next + 1;
      }
      if (sc.touch_ahead && next < n) touch_slot(hashes[next]);
      if (i + w < n) prefetch_slot(hashes[i + w]);
      if (keys[i].empty() || keys[i].size() > geo_.key_max_len || keys[i].size() > layout::kMaxKeyLength) {
        ++missing;
        continue;
      }
      layout::PackedKey packed;
      packed.assign(keys[i]);
      missing += layout::find(geo_, packed, hashes[i], rows + i * row_words(), 256) != layout::FindResult::kFound;
    }
    return missing + (keys.size() - n);
  }

  // Returns the number of keys not found. rows: keys.size() * row_words().
  size_t get_many(std::span<const std::string_view> keys, uint64_t* rows) const {
    constexpr size_t kWindow = 16;
    uint64_t hashes[kWindow];
    const size_t n = keys.size();
    for (size_t i = 0; i < n && i < kWindow; ++i) {
      hashes[i] = layout::hash_key(keys[i], geo_.hash_seed);
      prefetch_slot(hashes[i]);
    }
    size_t missing = 0;
    for (size_t i = 0; i < n; ++i) {
      const uint64_t h = hashes[i % kWindow];
      if (i + kWindow < n) {
        hashes[i % kWindow] = layout::hash_key(keys[i + kWindow], geo_.hash_seed);
        prefetch_slot(hashes[i % kWindow]);
      }
      if (keys[i].empty() || keys[i].size() > geo_.key_max_len || keys[i].size() > layout::kMaxKeyLength) {
        ++missing;
        continue;
      }
      layout::PackedKey packed;
      packed.assign(keys[i]);
      missing += layout::find(geo_, packed, h, rows + i * row_words(), 256) != layout::FindResult::kFound;
    }
    return missing;
  }

 private:
  void prefetch_slot(uint64_t hash) const {
    const char* s = reinterpret_cast<const char*>(geo_.slot(geo_.home(hash)));
    const size_t bytes = size_t{geo_.slot_words} * 8;
    for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch(s + off, 0, 1);
  }

  void touch_slot(uint64_t hash) const { __builtin_prefetch(geo_.slot(geo_.home(hash)), 0, 1); }

  std::unique_ptr<layout::MappedFile> file_;
  layout::TableGeometry geo_;
  unsigned char faulted_ = 0;
};

}  // namespace larder::bench
