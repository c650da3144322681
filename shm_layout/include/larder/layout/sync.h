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

// Pairs with a store_release of the same word: what was stored before that
// store is visible after this load (segment state, writer_pid, undo_armed).
template <class T>
inline T load_acquire(const std::atomic<T>& a) {
  return a.load(std::memory_order_acquire);
}
// No ordering: the writer reading its own words, or a word read on its own
// (counters, heartbeat) where a stale value is harmless.
template <class T>
inline T load_relaxed(const std::atomic<T>& a) {
  return a.load(std::memory_order_relaxed);
}
// Publishes every store made before it to a load_acquire of the same word.
template <class T>
inline void store_release(std::atomic<T>& a, T v) {
  a.store(v, std::memory_order_release);
}
// No ordering: a word inside a window another word publishes, or one read
// on its own (counters).
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

// Orders this thread's shared-memory stores as written against the
// compiler only: what a process killed by a signal between two of them
// leaves behind. Pairs with the restarting writer's repair, which reads the
// words in the order they were stored (the journal entry before the word it
// guards). No CPU fence: a killed process's retired stores still reach memory.
inline void signal_fence() { std::atomic_signal_fence(std::memory_order_seq_cst); }

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace larder::layout::sync
