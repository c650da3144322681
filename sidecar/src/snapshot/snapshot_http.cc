// GET /snapshot (see snapshot_http.h). install_snapshot_route(): main thread;
// the handler and its content provider: HTTP worker threads.
#include "snapshot/snapshot_http.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <memory>

#include "larder/layout/clock.h"
#include "larder/snapshot/snapshot_file.h"
#include "snapshot/snapshot_thread.h"

namespace larder::sidecar {

bool bearer_token_matches(std::string_view authorization, std::string_view token) {
  constexpr std::string_view kScheme = "Bearer ";
  if (token.empty() || authorization.size() != kScheme.size() + token.size()) return false;
  // OR of the differences over every byte: no early exit on the first
  // mismatch, so the time says nothing about how much of a guess was right.
  volatile unsigned char diff = 0;
  for (size_t i = 0; i < authorization.size(); ++i) {
    const char want = i < kScheme.size() ? kScheme[i] : token[i - kScheme.size()];
    diff = diff | static_cast<unsigned char>(authorization[i] ^ want);
  }
  return diff == 0;
}

void install_snapshot_route(httplib::Server& server, const Config& config, ImageExchange& images) {
  // Shared by the handler and the provider's releaser, which may run after
  // the handler returned.
  auto busy = std::make_shared<std::atomic<bool>>(false);
  server.Get("/snapshot", [&config, &images, busy](const httplib::Request& req, httplib::Response& res) {
    const std::string& token = config.snapshot.token;
    if (!token.empty() && !bearer_token_matches(req.get_header_value("Authorization"), token)) {
      res.status = 401;
      res.set_header("WWW-Authenticate", "Bearer");
      spdlog::warn("snapshot: refused GET /snapshot from {} (no or wrong bearer token)", req.remote_addr);
      return;
    }
    // acq_rel: the releaser's release store ends the previous response;
    // nothing else is published through the flag.
    if (busy->exchange(true, std::memory_order_acq_rel)) {
      res.status = 503;
      res.set_header("Retry-After", "5");
      res.set_content("a snapshot is being served already; retry later\n", "text/plain; charset=utf-8");
      return;
    }
    const int64_t t0 = layout::now_mono_ns();
    std::shared_ptr<const SegmentImage> image = images.request(kImageWait);
    if (!image) {
      busy->store(false, std::memory_order_release);
      res.status = 503;
      res.set_content("the writer thread did not copy the segment (stopping, or out of memory)\n",
                      "text/plain; charset=utf-8");
      return;
    }
    spdlog::info("snapshot: serving a snapshot to {} ({} byte image, {})", req.remote_addr, image->bytes.size(),
                 describe_position(*image));
    res.set_header("Cache-Control", "no-store");
    const std::string segment = config.segment.name;
    const std::string peer = req.remote_addr;
    res.set_chunked_content_provider(
        "application/octet-stream",
        [image, segment, peer, t0](size_t, httplib::DataSink& sink) {
          try {
            snapshot::WriteOptions options;
            options.threads = 1;  // the host's cores belong to the model servers
            const snapshot::SnapshotInfo info = snapshot::write_snapshot(
                segment, image->bytes,
                [&sink](const void* data, size_t size) { return sink.write(static_cast<const char*>(data), size); },
                options);
            sink.done();
            spdlog::info("snapshot: served {} bytes to {} in {:.3f} s",
                         snapshot::kSnapshotHeaderBytes + info.payload_bytes, peer,
                         static_cast<double>(layout::now_mono_ns() - t0) / 1e9);
            return true;
          } catch (const std::exception& e) {
            spdlog::warn("snapshot: serving a snapshot to {} failed: {}", peer, e.what());
            return false;
          }
        },
        [busy](bool) { busy->store(false, std::memory_order_release); });
  });
}

}  // namespace larder::sidecar
