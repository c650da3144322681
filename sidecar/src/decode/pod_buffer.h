// A growable array of trivially copyable values, for the arenas of a
// DecodedBatch (decoder.h). A decoder appends a few of them per field, and
// std::vector's push_back and range insert, with their reallocation paths,
// were too big to be inlined into the decoding loops: each append was a
// call. Here the append is a compare and a store (or a memcpy), and growth
// is one out-of-line function; clear() keeps the capacity, so a batch
// reused across messages stops allocating once it has seen its largest.
//
// Move-only, like DecodedBatch; moving keeps the elements where they are
// (pointers into them stay valid). Not thread-safe, like std::vector.
#pragma once

#include <cstddef>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>

namespace larder::sidecar {

template <class T>
class PodBuffer {
  static_assert(std::is_trivially_copyable_v<T> && std::is_trivially_destructible_v<T>,
                "elements are moved with memcpy and never destroyed");

 public:
  PodBuffer() = default;
  PodBuffer(PodBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)), cap_(std::exchange(o.cap_, 0)) {}
  PodBuffer& operator=(PodBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      cap_ = std::exchange(o.cap_, 0);
    }
    return *this;
  }
  PodBuffer(const PodBuffer&) = delete;
  PodBuffer& operator=(const PodBuffer&) = delete;
  ~PodBuffer() { release(); }

  size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  T* data() noexcept { return data_; }
  const T* data() const noexcept { return data_; }
  T& operator[](size_t i) noexcept { return data_[i]; }
  const T& operator[](size_t i) const noexcept { return data_[i]; }
  T* begin() noexcept { return data_; }
  T* end() noexcept { return data_ + size_; }
  const T* begin() const noexcept { return data_; }
  const T* end() const noexcept { return data_ + size_; }
  T& back() noexcept { return data_[size_ - 1]; }

  // Keeps the capacity.
  void clear() noexcept { size_ = 0; }
  // Drops the elements from `n` on (n <= size()).
  void truncate(size_t n) noexcept { size_ = n; }

  void push_back(const T& v) {
    if (size_ == cap_) [[unlikely]]
      grow(size_ + 1);
    data_[size_++] = v;
  }
  // Appends `n` elements copied from `p` (which must not point into this
  // buffer: growing would move them).
  void append(const T* p, size_t n) {
    T* at = extend(n);
    if (n != 0) std::memcpy(at, p, n * sizeof(T));
  }
  // Appends `n` elements left for the caller to write; returns the first.
  T* extend(size_t n) {
    if (n > cap_ - size_) [[unlikely]]
      grow(size_ + n);
    T* at = data_ + size_;
    size_ += n;
    return at;
  }

 private:
  // Doubles the capacity (at least 16 elements, at least `need`). Throws
  // std::bad_alloc, which the decoders turn into a refusal.
  [[gnu::noinline]] void grow(size_t need) {
    size_t cap = cap_ < 8 ? 16 : cap_ * 2;
    if (cap < need) cap = need;
    T* fresh = static_cast<T*>(::operator new(cap * sizeof(T)));
    if (size_ != 0) std::memcpy(static_cast<void*>(fresh), data_, size_ * sizeof(T));
    release();
    data_ = fresh;
    cap_ = cap;
  }
  void release() noexcept {
    if (data_ != nullptr) ::operator delete(data_);
    data_ = nullptr;
  }

  T* data_ = nullptr;
  size_t size_ = 0;
  size_t cap_ = 0;
};

}  // namespace larder::sidecar
