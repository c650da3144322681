// The HTTP listener (see metrics_server.h). bind/start/stop: main thread;
// metrics/healthz/readyz and sample_segment: HTTP worker threads.
#include "observe/metrics_server.h"

#include <httplib.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include "larder/layout/clock.h"
#include "snapshot/snapshot_http.h"

namespace larder::sidecar {
namespace {

constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";
constexpr const char* kTextContentType = "text/plain; charset=utf-8";

}  // namespace

MetricsServer::MetricsServer(const Config& config, const Pipeline& pipeline)
    : config_(config), pipeline_(pipeline), server_(std::make_unique<httplib::Server>()) {
  // A small fixed pool: scrapes and probes are rare and cheap. One request
  // per connection, so a client that keeps its connection open cannot hold
  // a worker while a probe waits.
  server_->new_task_queue = [] { return new httplib::ThreadPool(kHttpWorkers); };
  server_->set_keep_alive_max_count(1);
  // SO_REUSEADDR (a restart may bind while old connections sit in
  // TIME_WAIT) but not cpp-httplib's default SO_REUSEPORT, which would let a
  // second sidecar share the port and answer half of the scrapes.
  server_->set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  server_->set_read_timeout(std::chrono::seconds(5));
  server_->set_write_timeout(std::chrono::seconds(5));
  auto reply = [](httplib::Response& res, const Reply& r, const char* type) {
    res.status = r.status;
    res.set_content(r.body, type);
  };
  server_->Get("/metrics", [this, reply](const httplib::Request&, httplib::Response& res) {
    reply(res, metrics(), kMetricsContentType);
  });
  server_->Get("/healthz", [this, reply](const httplib::Request&, httplib::Response& res) {
    reply(res, healthz(), kTextContentType);
  });
  server_->Get("/readyz", [this, reply](const httplib::Request&, httplib::Response& res) {
    reply(res, readyz(), kTextContentType);
  });
}

MetricsServer::~MetricsServer() { stop(); }

int MetricsServer::bind(std::string* error) {
  const MetricsConfig& mc = config_.metrics;
  int port = -1;
  if (mc.port == 0) {
    port = server_->bind_to_any_port(mc.host);
  } else if (server_->bind_to_port(mc.host, mc.port)) {
    port = mc.port;
  }
  if (port < 0) {
    *error = fmt::format(
        "cannot listen on {} (address in use, or not an address of this host?): set metrics.listen "
        "to a free HOST:PORT, or \"\" to turn the listener off",
        mc.listen);
  }
  return port;
}

void MetricsServer::serve_snapshots(ImageExchange& images) { install_snapshot_route(*server_, config_, images); }

void MetricsServer::start() {
  thread_ = std::thread([this] {
    if (!server_->listen_after_bind()) spdlog::error("metrics: the HTTP listener stopped with an error");
  });
}

void MetricsServer::stop() {
  if (!thread_.joinable()) return;
  server_->stop();
  thread_.join();
}

SegmentSample MetricsServer::sample_segment() {
  SegmentSample s;
  std::lock_guard<std::mutex> lock(segment_mutex_);
  if (segment_open_ && segment_.retired()) segment_open_ = false;
  if (!segment_open_) {
    try {
      ClientOptions options;
      options.dir = config_.segment.dir;
      Segment segment = Segment::open(config_.segment.name, options);
      std::vector<Table> tables;
      for (const std::string& name : segment.table_names()) tables.push_back(segment.table(name));
      segment_ = std::move(segment);
      tables_ = std::move(tables);
      segment_open_ = true;
    } catch (const Error& e) {
      s.error = e.what();
      return s;
    }
  }
  s.open = true;
  s.info = segment_.info();
  s.sync = segment_.sync();
  s.tables.reserve(tables_.size());
  for (const Table& t : tables_) s.tables.push_back({t.name(), t.stats()});
  return s;
}

MetricsServer::Reply MetricsServer::metrics() {
  const SegmentSample segment = sample_segment();
  // relaxed: a status report; it orders nothing else (see pipeline.h).
  const uint32_t state = pipeline_.connection_state.load(std::memory_order_relaxed);
  std::string text = render_metrics(pipeline_.metrics, state, segment, layout::now_unix_ns(), layout::now_mono_ns());
  // Each source's own families (e.g. Kafka's per-partition lag).
  for (const auto& lane : pipeline_.lanes) {
    if (lane->health != nullptr) lane->health->render_metrics(text);
  }
  return {200, std::move(text)};
}

MetricsServer::Reply MetricsServer::healthz() {
  // A connect attempt makes several RPCs, each bounded by rpc_timeout_s.
  const double consumer_limit_s = 4 * config_.rabbitmq.rpc_timeout_s + 10;
  const std::string reason =
      not_alive_reason(pipeline_.metrics, consumer_limit_s, kWriterLivenessLimitS, layout::now_mono_ns());
  return reason.empty() ? Reply{200, "ok\n"} : Reply{503, reason + "\n"};
}

MetricsServer::Reply MetricsServer::readyz() {
  const SegmentSample segment = sample_segment();
  // relaxed: a status report; it orders nothing else (see pipeline.h).
  const uint32_t state = pipeline_.connection_state.load(std::memory_order_relaxed);
  ReadyPolicy policy;
  policy.max_lag_s = config_.metrics.ready_max_lag_s;
  std::string reason;
  // A source's own reason first: it names the cause (brokers down, a
  // partition catching up), where the segment's state only says CATCHING_UP.
  for (const auto& lane : pipeline_.lanes) {
    if (lane->health != nullptr && reason.empty()) reason = lane->health->not_ready_reason();
  }
  if (reason.empty()) reason = not_ready_reason(pipeline_.metrics, state, segment, policy, layout::now_mono_ns());
  return reason.empty() ? Reply{200, "ok\n"} : Reply{503, "not ready: " + reason + "\n"};
}

}  // namespace larder::sidecar
