// Global operator new replacement for the unit test binary (see alloc_count.h).
#include "alloc_count.h"

#include <cstdlib>
#include <new>

namespace {
thread_local uint64_t g_allocations = 0;
}  // namespace

namespace larder::test {
uint64_t allocations() noexcept { return g_allocations; }
}  // namespace larder::test

// The default operator delete frees with free(), so malloc here pairs with it;
// the array and nothrow forms call these.
void* operator new(std::size_t n) {
  ++g_allocations;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  ++g_allocations;
  return std::malloc(n == 0 ? 1 : n);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
