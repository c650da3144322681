// The pager: a thread of the writer that takes the page work of a
// generation switch off the writer thread (generation.cc).
//
// It does two things, and nothing else:
//  - populate(): enters the pages of the next generation's file in the page
//    table (madvise MADV_POPULATE_WRITE, or MADV_COLLAPSE into 2 MiB pages
//    when the writer's huge-page policy asks), front to back, ahead of the
//    copy. The kernel zeroes each tmpfs page on its first fault; here that
//    cost is paid on another core instead of inside the copy's stores.
//  - retire(): unmaps a retired generation. When no reader maps it any more
//    this frees its pages (the file was unlinked by the rename over it),
//    which takes as long as allocating them did.
//
// Why this does not break the single-writer rule: that rule is about the
// bytes of a segment readers can see. Neither call writes a byte. Populating
// a page of a tmpfs file that posix_fallocate already allocated makes the
// kernel map it (zeroing it first if it was never touched, which is what
// reading it would return anyway); the next generation is not published
// while it is populated, so no reader maps it yet. A collapse moves a
// range's contents into a 2 MiB page under the page locks, so the writer's
// own stores into N+1 meanwhile wait for it and are kept. Unmapping a retired
// generation changes only this process's page table: readers that map it
// keep their own mapping and its pages. The writer thread stays the only
// one that stores into either file.
//
// Lifetime: the thread starts at the first call and is joined by the
// destructor, after it has unmapped everything handed to it; a range given
// to populate() is left before stop_populating() returns, so the writer can
// unmap it (an abandoned switch) without the pager thread touching it after.
// Threading: every member function is called by the writer thread; the
// pager thread runs run() only.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "larder/layout/segment_file.h"

namespace larder::writer {

class Pager {
 public:
  Pager() = default;
  Pager(const Pager&) = delete;
  Pager& operator=(const Pager&) = delete;
  ~Pager();

  // Starts populating [base, base + bytes), front to back in chunks of
  // kChunkBytes; populated() says how far it got. A range already being
  // populated is left first (stop_populating).
  void populate(void* base, uint64_t bytes, bool collapse);
  // Bytes from the start of the current range that are populated (acquire:
  // pairs with the pager thread's release store after each chunk).
  uint64_t populated() const { return populated_.load(std::memory_order_acquire); }
  // Stops populating and waits until the pager thread is out of the range.
  void stop_populating();
  // Unmaps `file` on the pager thread.
  void retire(std::unique_ptr<layout::MappedFile> file);
  // Waits until every file handed to retire() is unmapped (their pages
  // count against the directory's free space until then).
  void wait_retired();

  static constexpr uint64_t kChunkBytes = uint64_t{2} << 20;

 private:
  void start_locked();
  void run();

  std::mutex mu_;
  std::condition_variable wake_;  // the pager thread waits on it for work
  std::condition_variable idle_;  // the writer waits on it in stop_populating, wait_retired
  std::thread thread_;
  bool stop_ = false;
  // The range to populate; `range_gen_` changes with each new range, so the
  // pager thread notices a range replaced while it worked on a chunk.
  char* base_ = nullptr;
  uint64_t bytes_ = 0;
  bool collapse_ = false;
  uint64_t range_gen_ = 0;
  bool in_range_ = false;  // the pager thread is inside madvise on the range
  std::atomic<uint64_t> populated_{0};
  std::vector<std::unique_ptr<layout::MappedFile>> retired_;
  bool unmapping_ = false;
};

}  // namespace larder::writer
