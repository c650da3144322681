// A sort for the steps of a key-by-key replay (the C ABI's and
// larder-backfill's), whose first key is a uniform 64-bit hash.
// Threading: the caller's thread.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <vector>

namespace larder::offline {

// Sorts v by `less`, an order whose first key is the uniform 64-bit hash
// `hash(x)`: one counting pass and one scatter by the hash's top bits into
// buckets of about 16 elements, then each bucket, within the cache, by
// `less`. Against std::sort of the whole: two sequential passes instead of
// log2(n) passes of misses. Memory: a second array while it runs.
template <class T, class Hash, class Less>
void sort_by_hash(std::vector<T>& v, Hash hash, Less less) {
  const size_t n = v.size();
  if (n < (size_t{1} << 12)) {
    std::sort(v.begin(), v.end(), less);
    return;
  }
  const int bits = std::clamp(static_cast<int>(std::bit_width(n / 16)), 8, 22);
  const int shift = 64 - bits;
  std::vector<size_t> start((size_t{1} << bits) + 1, 0);
  for (const T& x : v) ++start[(hash(x) >> shift) + 1];
  for (size_t b = 1; b < start.size(); ++b) start[b] += start[b - 1];
  std::vector<T> out(n);
  {
    std::vector<size_t> at(start.begin(), start.end() - 1);
    for (const T& x : v) out[at[hash(x) >> shift]++] = x;
  }
  for (size_t b = 0; b + 1 < start.size(); ++b) {
    std::sort(out.begin() + static_cast<std::ptrdiff_t>(start[b]),
              out.begin() + static_cast<std::ptrdiff_t>(start[b + 1]), less);
  }
  v.swap(out);
}

}  // namespace larder::offline
