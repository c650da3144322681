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

  std::unique_ptr<layout::MappedFile> file_;
  layout::TableGeometry geo_;
};

}  // namespace larder::bench
