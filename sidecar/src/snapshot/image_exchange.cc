// The image hand-over between requesters and the writer thread (see
// image_exchange.h). request(): snapshot thread and HTTP workers; serve():
// writer thread; close(): writer thread or main.
#include "snapshot/image_exchange.h"

#include <spdlog/spdlog.h>

#include "larder/layout/clock.h"

namespace larder::sidecar {

std::shared_ptr<const SegmentImage> ImageExchange::request(std::chrono::milliseconds timeout) {
  // Released after the lock: dropping an image's last reference runs
  // recycle(), which takes mutex_.
  std::shared_ptr<const SegmentImage> dropped;
  std::unique_lock<std::mutex> lock(mutex_);
  if (closed_) return nullptr;
  // The first copy that starts from now on answers this request; one that
  // started before it (generation <= started_) may predate the ask.
  const uint64_t wanted = started_ + 1;
  // release: pairs with serve()'s acquire load; serve() then takes mutex_,
  // which orders everything else.
  requested_.store(true, std::memory_order_release);
  ++waiting_;
  cv_.wait_for(lock, timeout, [&] { return closed_ || finished_ >= wanted; });
  --waiting_;
  // The copy of generation finished_ >= wanted, or null when it failed.
  std::shared_ptr<const SegmentImage> out = finished_ >= wanted && !closed_ ? image_ : nullptr;
  // The last waiter lets go of the exchange's reference, so an image lives
  // only as long as its users (and its buffer returns to spare_).
  if (waiting_ == 0) dropped = std::move(image_);
  lock.unlock();
  return out;
}

void ImageExchange::serve(const Writer& writer) {
  // acquire: pairs with request()'s release store. A request that sets the
  // flag after this load is seen at the next round (<= 20 ms later).
  if (!requested_.load(std::memory_order_acquire)) return;
  std::vector<unsigned char> buffer;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // relaxed: under mutex_, which request() also holds when it sets it.
    requested_.store(false, std::memory_order_relaxed);
    ++started_;
    buffer.swap(spare_);
  }
  // The deleter hands the buffer back: the exchange outlives its images.
  std::shared_ptr<SegmentImage> image(new SegmentImage, [this](SegmentImage* p) { recycle(p); });
  image->bytes.swap(buffer);
  bool ok = true;
  try {
    const int64_t t0 = layout::now_mono_ns();
    image->taken_unix_ns = layout::now_unix_ns();
    writer.copy_image(&image->bytes);
    image->position = writer.position(0);
    image->copy_ns = layout::now_mono_ns() - t0;
  } catch (const std::exception& e) {
    // std::bad_alloc for a segment larger than the free memory, mostly.
    spdlog::error("snapshot: copying the segment failed: {}", e.what());
    ok = false;
  }
  // Both released after the lock (see request()): the previous image, and
  // this one when nobody waits for it any more (every requester timed out).
  std::shared_ptr<const SegmentImage> published = ok ? std::move(image) : nullptr;
  std::shared_ptr<const SegmentImage> unclaimed;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++finished_;
    image_.swap(published);
    if (waiting_ == 0) unclaimed = std::move(image_);
  }
  cv_.notify_all();
}

void ImageExchange::close() {
  std::shared_ptr<const SegmentImage> dropped;  // released after the lock (see request())
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    dropped = std::move(image_);
  }
  cv_.notify_all();
}

uint64_t ImageExchange::copies() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return finished_;
}

void ImageExchange::recycle(SegmentImage* image) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (spare_.capacity() < image->bytes.capacity()) spare_.swap(image->bytes);
  }
  delete image;
}

}  // namespace larder::sidecar
