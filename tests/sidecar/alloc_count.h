// Counts heap allocations on the calling thread, for tests that check a hot
// path never allocates. alloc_count.cc replaces the global operator new of
// the test binary (forwarding to malloc), so every test in it is counted;
// reading the counter is all this header offers.
#pragma once

#include <cstdint>

namespace larder::test {

// Calls of operator new (any form but the aligned ones) on this thread so far.
uint64_t allocations() noexcept;

}  // namespace larder::test
