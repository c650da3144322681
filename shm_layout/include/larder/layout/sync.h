// Named memory orders for everything shared between the writer and readers.
//
// The slot protocol is Boehm's seqlock ("Can Seqlocks Get Along With
// Programming Language Memory Models?", MSPC 2012), with the payload held in
// 8-byte atomics accessed relaxed:
//
//   writer (single)                          reader (any number, read-only map)
//   s = seq.load(relaxed)                    s0 = seq.load(acquire)      [R1]
//   seq.store(s + 1, relaxed)                if s0 is odd: retry
//   fence(release)                  [W1]     d = payload.load(relaxed)...
//   payload.store(.., relaxed)...            fence(acquire)              [R2]
//   seq.store(s + 2, release)       [W2]     s1 = seq.load(relaxed)
//                                            retry unless s0 == s1
//
// W1 pairs with R2: if any payload load saw a store made after the odd seq,
// R2 makes the odd (or a later) seq visible to the s1 load, so s0 != s1.
// W2 pairs with R1: if the reader saw seq s+2, it sees every payload store
// made before it. The reader never performs a read-modify-write (that would
// fault on a PROT_READ mapping), which is why s1 is a plain load after a fence
// and not Boehm's fetch_add(0) alternative.
//
// ThreadSanitizer does not model standalone fences. Under TSAN the fences
// become no-ops and the payload accesses carry the ordering themselves
// (acquire loads, release stores), which is at least as strong.
#pragma once

#include <atomic>
#include <cstdint>

#if defined(__SANITIZE_THREAD__)
#define LARDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LARDER_TSAN 1
#endif
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace larder::layout::sync {

#if defined(LARDER_TSAN)
inline constexpr bool kTsan = true;
#else
inline constexpr bool kTsan = false;
#endif

inline constexpr std::memory_order kPayloadLoad = kTsan ? std::memory_order_acquire : std::memory_order_relaxed;
inline constexpr std::memory_order kPayloadStore = kTsan ? std::memory_order_release : std::memory_order_relaxed;

template <class T>
inline T load_acquire(const std::atomic<T>& a) {
  return a.load(std::memory_order_acquire);
}
template <class T>
inline T load_relaxed(const std::atomic<T>& a) {
  return a.load(std::memory_order_relaxed);
}
template <class T>
inline void store_release(std::atomic<T>& a, T v) {
  a.store(v, std::memory_order_release);
}
template <class T>
inline void store_relaxed(std::atomic<T>& a, T v) {
  a.store(v, std::memory_order_relaxed);
}

// Payload words inside a seqlock window.
inline uint64_t load_payload(const std::atomic<uint64_t>& a) { return a.load(kPayloadLoad); }
inline void store_payload(std::atomic<uint64_t>& a, uint64_t v) { a.store(v, kPayloadStore); }

// R2: after the payload loads, before re-reading seq.
inline void reader_fence() {
  if constexpr (!kTsan) std::atomic_thread_fence(std::memory_order_acquire);
}
// W1: after making seq odd, before the payload stores.
inline void writer_fence() {
  if constexpr (!kTsan) std::atomic_thread_fence(std::memory_order_release);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace larder::layout::sync
