// The pager (pager.h).
#include "pager.h"

#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older kernels refuse it (EINVAL)
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25  // Linux 6.1
#endif

namespace larder::writer {

Pager::~Pager() {
  {
    std::lock_guard lock(mu_);
    if (!thread_.joinable()) return;
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();  // run() unmaps what it was given before it returns
}

void Pager::start_locked() {
  if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
}

void Pager::populate(void* base, uint64_t bytes, bool collapse) {
  stop_populating();
  std::lock_guard lock(mu_);
  base_ = static_cast<char*>(base);
  bytes_ = bytes;
  collapse_ = collapse;
  ++range_gen_;
  populated_.store(0, std::memory_order_release);
  start_locked();
  wake_.notify_all();
}

void Pager::stop_populating() {
  std::unique_lock lock(mu_);
  base_ = nullptr;
  bytes_ = 0;
  ++range_gen_;
  idle_.wait(lock, [this] { return !in_range_; });
}

void Pager::retire(std::unique_ptr<layout::MappedFile> file) {
  if (!file) return;
  std::lock_guard lock(mu_);
  retired_.push_back(std::move(file));
  start_locked();
  wake_.notify_all();
}

void Pager::wait_retired() {
  std::unique_lock lock(mu_);
  idle_.wait(lock, [this] { return retired_.empty() && !unmapping_; });
}

void Pager::run() {
  // Below the writer and the readers on a busy machine: page work can wait,
  // updates and lookups should not (the writer populates what the copy
  // needs itself when this thread falls behind, generation.cc).
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), 10);
  std::unique_lock lock(mu_);
  while (true) {
    if (!retired_.empty()) {
      std::vector<std::unique_ptr<layout::MappedFile>> files;
      files.swap(retired_);
      unmapping_ = true;
      lock.unlock();
      files.clear();  // munmap; the last mapping of an unlinked file frees its pages
      lock.lock();
      unmapping_ = false;
      idle_.notify_all();
      continue;
    }
    const uint64_t done = populated_.load(std::memory_order_relaxed);
    if (base_ != nullptr && done < bytes_ && !stop_) {
      const uint64_t gen = range_gen_;
      char* at = base_ + done;
      const uint64_t len = std::min(kChunkBytes, bytes_ - done);
      const bool collapse = collapse_;
      in_range_ = true;
      lock.unlock();
      // Best effort: a refused collapse (no free 2 MiB page) populates 4 KiB
      // pages; a refused populate (a kernel before 5.14) leaves the copy to
      // fault as it goes.
      if (!collapse || ::madvise(at, len, MADV_COLLAPSE) != 0) ::madvise(at, len, MADV_POPULATE_WRITE);
      lock.lock();
      in_range_ = false;
      // release: pairs with populated()'s acquire load by the writer.
      if (gen == range_gen_) populated_.store(done + len, std::memory_order_release);
      idle_.notify_all();
      continue;
    }
    if (stop_) return;
    wake_.wait(lock);
  }
}

}  // namespace larder::writer
