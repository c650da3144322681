// How other threads get a consistent image of the segment: they ask, the
// writer thread copies it between two bulks of messages, and they wait for it.
//
//   snapshot thread / HTTP worker            writer thread
//   -----------------------------            -------------
//   request() -- requested_ (flag) -------->  serve(): Writer::copy_image(),
//     waits on cv_                              writer.position(0)
//   <----------- image_ (shared_ptr) ------  published under mutex_, cv_ notified
//
// The writer thread never blocks on a requester: serve() takes mutex_ only
// to pick a buffer and to publish the result, and does the copy (a memcpy
// of the segment) without it. The consumer thread never waits on either:
// messages queue up in Pipeline::work (bounded by the prefetch) while the
// writer copies.
//
// Requests coalesce: every requester waiting when a copy starts gets that
// copy. A copy always starts after the request that receives it (the
// generation test in request()), so the image is never older than the ask.
//
// Buffers: an image is a segment-sized vector. When the last holder of an
// image drops it, its buffer goes back to a one-buffer spare list, so the
// periodic snapshots reuse one allocation and the writer's copy does not
// page-fault a fresh buffer each time. The exchange must outlive every image
// it handed out (it lives in the Pipeline, which main destroys last).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "larder/writer/writer.h"

namespace larder::sidecar {

// One consistent copy of the segment.
struct SegmentImage {
  std::vector<unsigned char> bytes;        // Writer::copy_image()
  std::optional<SourcePosition> position;  // partition 0's stored position at the copy
  int64_t taken_unix_ns = 0;               // when the copy was taken
  int64_t copy_ns = 0;                     // how long the writer thread paused for it
};

class ImageExchange {
 public:
  ImageExchange() = default;
  ImageExchange(const ImageExchange&) = delete;
  ImageExchange& operator=(const ImageExchange&) = delete;

  // Asks the writer thread for a copy taken after this call and waits for
  // it, at most `timeout`. Returns nullptr on timeout, once the writer thread
  // has stopped (close()), or when the copy failed (the reason is logged by
  // the writer thread). Any thread but the writer thread.
  std::shared_ptr<const SegmentImage> request(std::chrono::milliseconds timeout);

  // Takes a copy if one was requested, else returns at once (one acquire
  // load). Writer thread, between bulks.
  void serve(const Writer& writer);

  // The writer thread is gone: fails every waiting and later request.
  // Writer thread (on its way out) or main.
  void close();

  // Copies taken so far (tests, metrics). Any thread.
  uint64_t copies() const;

 private:
  void recycle(SegmentImage* image);

  std::atomic<bool> requested_{false};  // set by request() under mutex_; read by serve() without it
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  uint64_t started_ = 0;                       // generations of copies started (guarded by mutex_)
  uint64_t finished_ = 0;                      // generations finished, successful or not (guarded by mutex_)
  uint64_t waiting_ = 0;                       // requesters inside request() (guarded by mutex_)
  bool closed_ = false;                        // guarded by mutex_
  std::shared_ptr<const SegmentImage> image_;  // the last finished copy, or null if it failed (mutex_)
  std::vector<unsigned char> spare_;           // a returned buffer (mutex_)
};

}  // namespace larder::sidecar
