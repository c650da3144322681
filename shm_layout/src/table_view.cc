// Key hashing and home-slot prefetch for the probe in table_view.h, shared by
// every reader and the writer so they agree on where a key lives.
#include "larder/layout/table_view.h"

#include <algorithm>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace larder::layout {

uint64_t hash_key(std::string_view key, uint64_t seed) noexcept {
  return XXH3_64bits_withSeed(key.data(), key.size(), seed);
}

void prefetch_home(const TableGeometry& g, uint64_t hash) noexcept {
  const auto* s = reinterpret_cast<const char*>(g.slot(g.home(hash)));
  const uint32_t lines = std::min<uint32_t>(g.slot_words / 8, 16);
  for (uint32_t l = 0; l < lines; ++l) __builtin_prefetch(s + 64 * l, 0, 1);
}

}  // namespace larder::layout
