// Metrics storage and the Prometheus text rendering (see metrics.h). The
// constructors run on the main thread before the other threads start;
// render_metrics, not_ready_reason and not_alive_reason run on the HTTP thread.
#include "observe/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace larder::sidecar {
namespace {

// Bucket bounds (seconds). Decode and apply take microseconds; the lag from
// event time to visibility spans network, broker queueing and producer clocks.
constexpr std::initializer_list<double> kWorkBucketsS = {1e-6,   2.5e-6, 5e-6, 1e-5,   2.5e-5, 5e-5, 1e-4,
                                                         2.5e-4, 5e-4,   1e-3, 2.5e-3, 1e-2,   1e-1};
// Pipeline stages: microseconds on an idle host, milliseconds when the
// threads wait for a CPU.
constexpr std::initializer_list<double> kStageBucketsS = {2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4,
                                                          1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1,  1};
constexpr std::initializer_list<double> kLagBucketsS = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                        1,     2.5,    5,     10,   30,    60,   300, 900,  3600};

double seconds(int64_t ns) { return static_cast<double>(ns) / 1e9; }

}  // namespace

Histogram::Histogram(std::initializer_list<double> upper_bounds_s) {
  if (upper_bounds_s.size() == 0 || upper_bounds_s.size() > kMaxHistogramBuckets) {
    throw std::invalid_argument(fmt::format("a histogram takes 1..{} bounds", kMaxHistogramBuckets));
  }
  double prev = -1;
  for (double b : upper_bounds_s) {
    if (!(b > prev) || !std::isfinite(b)) throw std::invalid_argument("histogram bounds must ascend and be finite");
    bounds_s_[bucket_count_] = b;
    bounds_ns_[bucket_count_] = static_cast<uint64_t>(std::llround(b * 1e9));
    prev = b;
    ++bucket_count_;
  }
}

uint64_t Histogram::Snapshot::count() const noexcept {
  uint64_t n = 0;
  for (uint64_t c : counts) n += c;
  return n;
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.upper_bounds_s.assign(bounds_s_.begin(), bounds_s_.begin() + static_cast<ptrdiff_t>(bucket_count_));
  s.counts.resize(bucket_count_ + 1);
  // relaxed: statistics; no consistent snapshot is promised (see metrics.h).
  for (size_t i = 0; i <= bucket_count_; ++i) s.counts[i] = counts_[i].load(std::memory_order_relaxed);
  s.sum_s = sum_s_.load(std::memory_order_relaxed);
  return s;
}

SidecarMetrics::SidecarMetrics()
    : decode_seconds(kWorkBucketsS),
      stage_receive_seconds(kStageBucketsS),
      stage_pickup_seconds(kStageBucketsS),
      apply_seconds(kWorkBucketsS),
      stage_handover_seconds(kStageBucketsS),
      stage_apply_seconds(kStageBucketsS),
      visible_lag_seconds(kLagBucketsS) {}

std::string escape_label_value(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
  return out;
}

std::string format_sample_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

void PrometheusText::family(std::string_view name, std::string_view type, std::string_view help) {
  // HELP text escapes only \ and newline.
  std::string h;
  for (char c : help) {
    if (c == '\\')
      h += "\\\\";
    else if (c == '\n')
      h += "\\n";
    else
      h += c;
  }
  out_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, h, name, type);
}

void PrometheusText::line(std::string_view name, std::string_view labels, std::string_view value) {
  out_ += name;
  if (!labels.empty()) {
    out_ += '{';
    out_ += labels;
    out_ += '}';
  }
  out_ += ' ';
  out_ += value;
  out_ += '\n';
}

void PrometheusText::sample(std::string_view name, std::string_view labels, uint64_t value) {
  line(name, labels, fmt::format("{}", value));
}
void PrometheusText::sample(std::string_view name, std::string_view labels, int64_t value) {
  line(name, labels, fmt::format("{}", value));
}
void PrometheusText::sample(std::string_view name, std::string_view labels, double value) {
  line(name, labels, format_sample_value(value));
}

void PrometheusText::histogram(std::string_view name, std::string_view help, const Histogram::Snapshot& h) {
  family(name, "histogram", help);
  const std::string bucket = fmt::format("{}_bucket", name);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.upper_bounds_s.size(); ++i) {
    cumulative += h.counts[i];
    line(bucket, fmt::format("le=\"{}\"", format_sample_value(h.upper_bounds_s[i])), fmt::format("{}", cumulative));
  }
  cumulative += h.counts.back();
  line(bucket, "le=\"+Inf\"", fmt::format("{}", cumulative));
  line(fmt::format("{}_sum", name), "", format_sample_value(h.sum_s));
  line(fmt::format("{}_count", name), "", fmt::format("{}", cumulative));
}

void PrometheusText::histograms(std::string_view name, std::string_view help,
                                const std::vector<LabelledHistogram>& series) {
  family(name, "histogram", help);
  const std::string bucket = fmt::format("{}_bucket", name);
  for (const LabelledHistogram& s : series) {
    uint64_t cumulative = 0;
    for (size_t i = 0; i < s.h.upper_bounds_s.size(); ++i) {
      cumulative += s.h.counts[i];
      line(bucket, fmt::format("{},le=\"{}\"", s.labels, format_sample_value(s.h.upper_bounds_s[i])),
           fmt::format("{}", cumulative));
    }
    cumulative += s.h.counts.back();
    line(bucket, fmt::format("{},le=\"+Inf\"", s.labels), fmt::format("{}", cumulative));
    line(fmt::format("{}_sum", name), s.labels, format_sample_value(s.h.sum_s));
    line(fmt::format("{}_count", name), s.labels, fmt::format("{}", cumulative));
  }
}

const char* connection_state_name(uint32_t state) noexcept {
  switch (static_cast<layout::ConnectionState>(state)) {
    case layout::ConnectionState::kUnknown: return "unknown";
    case layout::ConnectionState::kConnecting: return "connecting";
    case layout::ConnectionState::kConnected: return "connected";
    case layout::ConnectionState::kDisconnected: return "disconnected";
    case layout::ConnectionState::kStopped: return "stopped";
  }
  return "unknown";
}

namespace {

void counter(PrometheusText& p, const char* name, const char* help, uint64_t v) {
  p.family(name, "counter", help);
  p.sample(name, "", v);
}

// Messages and updates: what arrived, what was applied, acked or rejected.
void render_message_metrics(PrometheusText& p, const SidecarMetrics& m) {
  counter(p, "larder_messages_received_total", "Messages delivered by the broker, redeliveries included.",
          m.messages_received.value());
  counter(p, "larder_messages_redelivered_total", "Deliveries the broker flagged as redelivered.",
          m.messages_redelivered.value());
  counter(p, "larder_messages_applied_total", "Messages whose every update reached shared memory.",
          m.messages_applied.value());
  p.family("larder_messages_rejected_total", "counter", "Messages dead-lettered (or, on streams, skipped), by reason.");
  for (RejectReason r : all_reject_reasons()) {
    p.sample("larder_messages_rejected_total", fmt::format("reason=\"{}\"", reject_reason_name(r)),
             m.messages_rejected[static_cast<size_t>(r)].value());
  }
  counter(p, "larder_messages_acked_total",
          "Messages acknowledged to the broker: applied ones, and refused ones once their dead letter was confirmed.",
          m.messages_acked.value());
  counter(p, "larder_dead_letters_published_total",
          "Copies of refused messages, with x-larder-* headers, that the broker confirmed on the dead-letter exchange.",
          m.dead_letters_published.value());
  counter(p, "larder_updates_applied_total", "Single upserts and deletes applied to the segment.",
          m.updates_applied.value());
  counter(p, "larder_updates_duplicate_total",
          "Updates ignored because their event id was applied before (tables with aggregates; acked, not rejected).",
          m.updates_duplicate.value());
  counter(p, "larder_updates_late_total",
          "Updates with nothing applied: aggregate inputs older than the allowed lateness and fields older than the "
          "row (acked, not rejected).",
          m.updates_late.value());
  // Read done before enqueued so that in-flight never goes negative.
  const uint64_t done = m.work_done.value_acquire();
  const uint64_t enqueued = m.work_enqueued.value_acquire();
  p.family("larder_messages_in_flight", "gauge", "Messages decoded and handed to the writer, not yet applied.");
  p.sample("larder_messages_in_flight", "", enqueued >= done ? enqueued - done : uint64_t{0});
}

// The broker connection: attempts, connections made and lost, and the
// current state. A broker restart is one lost connection however many
// attempts the reconnect takes.
void render_connection_metrics(PrometheusText& p, const SidecarMetrics& m, uint32_t connection_state) {
  counter(p, "larder_connect_attempts_total", "Attempts to connect to the broker, failed ones included.",
          m.connect_attempts.value());
  counter(p, "larder_connects_total", "Broker connections established.", m.connects.value());
  counter(p, "larder_connections_lost_total",
          "Established broker connections that failed; each starts a reconnect with backoff.",
          m.connections_lost.value());
  p.family("larder_connection_state", "gauge", "Broker connection state: 1 for the current state, else 0.");
  for (uint32_t s = 1; s <= static_cast<uint32_t>(layout::ConnectionState::kStopped); ++s) {
    p.sample("larder_connection_state", fmt::format("state=\"{}\"", connection_state_name(s)),
             uint64_t{s == connection_state ? 1u : 0u});
  }
}

// Durations: decode, apply, event-to-visible, and the writer thread's liveness.
void render_timing_metrics(PrometheusText& p, const SidecarMetrics& m, int64_t now_mono_ns) {
  p.histogram("larder_decode_duration_seconds", "Time to decode one message (consumer thread).",
              m.decode_seconds.snapshot());
  p.histogram("larder_apply_duration_seconds", "Time to apply one message to shared memory (writer thread).",
              m.apply_seconds.snapshot());
  p.histograms("larder_pipeline_stage_seconds",
               "Time each message spends in each stage inside the sidecar, from its delivery to its ack.",
               {{"stage=\"receive\"", m.stage_receive_seconds.snapshot()},
                {"stage=\"handover\"", m.stage_handover_seconds.snapshot()},
                {"stage=\"apply\"", m.stage_apply_seconds.snapshot()},
                {"stage=\"pickup\"", m.stage_pickup_seconds.snapshot()}});
  p.histogram("larder_event_to_visible_seconds",
              "Apply time minus event_time of each applied update (includes producer clock skew).",
              m.visible_lag_seconds.snapshot());

  p.family("larder_writer_thread_heartbeat_age_seconds", "gauge", "Time since the writer thread last made a round.");
  p.sample("larder_writer_thread_heartbeat_age_seconds", "", seconds(now_mono_ns - m.writer_heartbeat_mono_ns.value()));
}

// One per-table metric family: its name, type, help and how a table's
// sample is written (some write none, e.g. before the first apply).
struct TableMetric {
  const char* name;
  const char* type;
  const char* help;
  void (*emit)(PrometheusText& p, const char* name, const std::string& labels, const TableStats& s,
               int64_t now_unix_ns);
};

constexpr TableMetric kTableMetrics[] = {
    {"larder_table_live_keys", "gauge", "Live keys in the table.",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t) {
       p.sample(name, labels, s.live_keys);
     }},
    {"larder_table_capacity", "gauge", "Live keys the table may hold (new keys beyond it are refused).",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t) {
       p.sample(name, labels, s.capacity);
     }},
    {"larder_table_slots", "gauge", "Hash slots of the table.",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t) {
       p.sample(name, labels, s.slot_count);
     }},
    {"larder_table_load_factor", "gauge", "Live keys / slots.",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t) {
       p.sample(name, labels,
                s.slot_count == 0 ? 0.0 : static_cast<double>(s.live_keys) / static_cast<double>(s.slot_count));
     }},
    {"larder_table_tombstones", "gauge", "Deleted slots not yet reclaimed.",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t) {
       p.sample(name, labels, s.tombstones);
     }},
    {"larder_table_upserts_total", "counter", "Upserts applied to the table (segment lifetime).",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t) {
       p.sample(name, labels, s.upserts);
     }},
    {"larder_table_deletes_total", "counter", "Deletes applied to the table (segment lifetime).",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t) {
       p.sample(name, labels, s.deletes);
     }},
    {"larder_table_stale_ignored_total", "counter", "Updates ignored as older than the row (segment lifetime).",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t) {
       p.sample(name, labels, s.stale_ignored);
     }},
    {"larder_table_full_rejected_total", "counter", "New keys refused because the table was full (segment lifetime).",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t) {
       p.sample(name, labels, s.full_rejected);
     }},
    {"larder_table_freshness_seconds", "gauge", "Now minus the last apply to the table; absent before the first.",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t now_unix_ns) {
       if (s.last_apply_unix_ns > 0) p.sample(name, labels, seconds(now_unix_ns - s.last_apply_unix_ns));
     }},
    {"larder_table_event_age_seconds", "gauge",
     "Now minus the newest event_time in the table; absent before the first.",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t now_unix_ns) {
       if (s.max_event_time_ms > 0) p.sample(name, labels, seconds(now_unix_ns - s.max_event_time_ms * 1'000'000));
     }},
    // Tables with aggregates only (docs/aggregates.md).
    {"larder_table_aggregate_events_total", "counter", "Events folded into the table's aggregates.",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t) {
       if (s.aggregates > 0) p.sample(name, labels, s.aggregate_events);
     }},
    {"larder_table_late_dropped_total", "counter",
     "Aggregate inputs dropped as older than the allowed lateness (segment lifetime).",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t) {
       if (s.aggregates > 0) p.sample(name, labels, s.late_dropped);
     }},
    {"larder_table_outside_window_total", "counter",
     "Aggregate inputs within the allowed lateness whose bucket had already left every window (segment lifetime).",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t) {
       if (s.aggregates > 0) p.sample(name, labels, s.outside_window);
     }},
    {"larder_table_duplicates_total", "counter",
     "Events ignored because their id was applied before (segment lifetime).",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t) {
       if (s.aggregates > 0) p.sample(name, labels, s.duplicates);
     }},
    {"larder_table_dedup_evictions_total", "counter",
     "Event ids forgotten before their horizon because the dedup set was full: raise dedup.capacity.",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t) {
       if (s.aggregates > 0) p.sample(name, labels, s.dedup_evictions);
     }},
    {"larder_table_aggregate_refreshes_total", "counter",
     "Keys whose aggregates were rewritten because a bucket left a window.",
     [](PrometheusText& p, const char* name, const std::string& labels, const TableStats& s, int64_t) {
       if (s.aggregates > 0) p.sample(name, labels, s.refreshes);
     }},
};

// The segment as readers see it; per-table families only while it is open.
void render_segment_metrics(PrometheusText& p, const SegmentSample& segment, int64_t now_unix_ns) {
  p.family("larder_segment_up", "gauge", "1 when the segment is open and ready for readers.");
  const bool up = segment.open && segment.info.state == SegmentState::kReady;
  p.sample("larder_segment_up", "", uint64_t{up ? 1u : 0u});
  if (!segment.open) return;
  const SegmentInfo& i = segment.info;
  p.family("larder_segment_bytes", "gauge", "Size of the segment file.");
  p.sample("larder_segment_bytes", "", i.segment_bytes);
  p.family("larder_writer_heartbeat_age_seconds", "gauge",
           "Age of the writer heartbeat in the segment header, as readers see it.");
  p.sample(
      "larder_writer_heartbeat_age_seconds", "",
      i.heartbeat_age_ms < 0 ? std::numeric_limits<double>::infinity() : static_cast<double>(i.heartbeat_age_ms) / 1e3);
  for (const TableMetric& metric : kTableMetrics) {
    p.family(metric.name, metric.type, metric.help);
    for (const SegmentSample::TableSample& t : segment.tables) {
      metric.emit(p, metric.name, fmt::format("table=\"{}\"", escape_label_value(t.name)), t.stats, now_unix_ns);
    }
  }
}

// The periodic snapshots (snapshot.dir).
void render_snapshot_metrics(PrometheusText& p, const SidecarMetrics& m) {
  p.family("larder_snapshot_last_unix_seconds", "gauge",
           "When the image of the last snapshot written to snapshot.dir was taken (0: none yet).");
  p.sample("larder_snapshot_last_unix_seconds", "", seconds(m.snapshot_last_unix_ns.value()));
  p.family("larder_snapshot_bytes", "gauge", "Size of the last snapshot file written.");
  p.sample("larder_snapshot_bytes", "", m.snapshot_last_bytes.value());
  p.family("larder_snapshot_seconds", "gauge", "Time the last snapshot took: copy, compression and write.");
  p.sample("larder_snapshot_seconds", "", seconds(m.snapshot_last_ns.value()));
  counter(p, "larder_snapshots_total", "Snapshot files written to snapshot.dir.", m.snapshots_written.value());
  counter(p, "larder_snapshot_failures_total", "Periodic snapshots that wrote no file (the log says why).",
          m.snapshot_failures.value());
  p.family("larder_segment_generation", "gauge", "Generation of the segment the writer serves (0: never switched).");
  p.sample("larder_segment_generation", "", m.generation.value());
  p.family("larder_generation_switch_active", "gauge", "1 while a generation switch (growth, schema change) copies.");
  p.sample("larder_generation_switch_active", "", m.switch_active.value());
  p.family("larder_generation_switch_progress_ratio", "gauge",
           "Slots of the current generation the switch in progress has copied, over all (0 when none).");
  p.sample("larder_generation_switch_progress_ratio", "",
           m.switch_total_slots.value() > 0
               ? static_cast<double>(m.switch_copied_slots.value()) / static_cast<double>(m.switch_total_slots.value())
               : 0.0);
  counter(p, "larder_generation_switches_total", "Generation switches this sidecar published.", m.switches.value());
  p.family("larder_generation_switch_seconds", "gauge", "Time the last published switch took, begin to publish.");
  p.sample("larder_generation_switch_seconds", "", seconds(m.switch_last_ns.value()));
}

const char* sync_state_label(layout::SyncState s) noexcept {
  switch (s) {
    case layout::SyncState::kUnknown: return "unknown";
    case layout::SyncState::kCatchingUp: return "catching_up";
    case layout::SyncState::kReady: return "ready";
    case layout::SyncState::kIncomplete: return "incomplete";
  }
  return "unknown";
}

// The source positions and sync state (stream queues), as readers see them in
// the segment, and the writer's lag.
void render_source_metrics(PrometheusText& p, const SidecarMetrics& m, const SegmentSample& segment) {
  if (!segment.open) return;
  const SyncInfo& sync = segment.sync;
  p.family("larder_sync_state", "gauge",
           "The segment's sync state (stream sources): 1 for the current state, else 0; unknown for other queues.");
  for (layout::SyncState s : {layout::SyncState::kUnknown, layout::SyncState::kCatchingUp, layout::SyncState::kReady,
                              layout::SyncState::kIncomplete}) {
    p.sample("larder_sync_state", fmt::format("state=\"{}\"", sync_state_label(s)),
             uint64_t{s == sync.state ? 1u : 0u});
  }
  p.family("larder_source_incomplete", "gauge",
           "1 when the stream no longer held the offsets after the stored position (retention gap): restore a newer "
           "snapshot or bootstrap from a peer.");
  p.sample("larder_source_incomplete", "", uint64_t{sync.state == layout::SyncState::kIncomplete ? 1u : 0u});
  p.family("larder_source_offset", "gauge", "The next source offset to apply (the stored position), per partition.");
  for (const SyncInfo::Partition& part : sync.partitions) {
    if (part.next_offset)
      p.sample("larder_source_offset", fmt::format("partition=\"{}\"", part.partition), *part.next_offset);
  }
  p.family("larder_source_target_offset", "gauge",
           "CATCHING_UP: the offset replay must reach (the stream's tail when the consumer attached).");
  p.family("larder_source_lag_messages", "gauge", "CATCHING_UP: messages between the stored position and the target.");
  p.family("larder_source_first_retained_offset", "gauge",
           "INCOMPLETE: the first offset the stream still held when the gap was found.");
  for (const SyncInfo::Partition& part : sync.partitions) {
    const std::string labels = fmt::format("partition=\"{}\"", part.partition);
    if (part.target) {
      p.sample("larder_source_target_offset", labels, *part.target);
      const uint64_t next = part.next_offset.value_or(0);
      p.sample("larder_source_lag_messages", labels, *part.target + 1 > next ? *part.target + 1 - next : uint64_t{0});
    }
    if (part.first_retained) p.sample("larder_source_first_retained_offset", labels, *part.first_retained);
  }
  p.family("larder_source_lag_seconds", "gauge",
           "Stream queues: 0 at the tail, else now minus the newest event time of the last applied message.");
  const int64_t lag_ms = m.source_lag_ms.value();
  if (lag_ms >= 0) p.sample("larder_source_lag_seconds", "", static_cast<double>(lag_ms) / 1e3);
}

}  // namespace

std::string render_metrics(const SidecarMetrics& m, uint32_t connection_state, const SegmentSample& segment,
                           int64_t now_unix_ns, int64_t now_mono_ns) {
  PrometheusText p;
  render_message_metrics(p, m);
  render_connection_metrics(p, m, connection_state);
  render_timing_metrics(p, m, now_mono_ns);
  render_snapshot_metrics(p, m);
  render_segment_metrics(p, segment, now_unix_ns);
  render_source_metrics(p, m, segment);
  return p.text();
}

std::string not_synced_reason(const SyncInfo& sync) {
  const SyncInfo::Partition* part = sync.partitions.empty() ? nullptr : &sync.partitions.front();
  auto offset = [](const std::optional<uint64_t>& o) { return o ? std::to_string(*o) : std::string("none"); };
  switch (sync.state) {
    case layout::SyncState::kUnknown:
    case layout::SyncState::kReady: return "";
    case layout::SyncState::kCatchingUp:
      return fmt::format("catching up with the stream: next offset {}, target {}",
                         part ? offset(part->next_offset) : "none",
                         part && part->target ? std::to_string(*part->target) : "not known yet");
    case layout::SyncState::kIncomplete:
      return fmt::format(
          "incomplete: the stream no longer holds what follows the stored position (first retained offset {}, next "
          "offset {}); restore a newer snapshot or bootstrap from a peer",
          part ? offset(part->first_retained) : "none", part ? offset(part->next_offset) : "none");
  }
  return "";
}

std::string not_ready_reason(const SidecarMetrics& m, uint32_t connection_state, const SegmentSample& segment,
                             const ReadyPolicy& policy, int64_t now_mono_ns) {
  if (!segment.open) return "segment not open: " + segment.error;
  if (segment.info.state != SegmentState::kReady) return "segment is not ready for readers";
  if (std::string sync = not_synced_reason(segment.sync); !sync.empty()) return sync;
  if (connection_state != static_cast<uint32_t>(layout::ConnectionState::kConnected)) {
    return fmt::format("broker connection is {}", connection_state_name(connection_state));
  }
  const double writer_age = seconds(now_mono_ns - m.writer_heartbeat_mono_ns.value());
  if (writer_age > policy.max_writer_heartbeat_s) {
    return fmt::format("writer thread heartbeat is {:.3f} s old (limit {} s)", writer_age,
                       policy.max_writer_heartbeat_s);
  }
  const int64_t hb_ms = segment.info.heartbeat_age_ms;
  if (hb_ms < 0 || static_cast<double>(hb_ms) / 1e3 > policy.max_writer_heartbeat_s) {
    return fmt::format("segment heartbeat is {} ms old (limit {} s)", hb_ms, policy.max_writer_heartbeat_s);
  }
  // Read point of the progress counters (see SidecarMetrics): acquire, then
  // the timestamps written before them.
  const uint64_t done = m.work_done.value_acquire();
  const uint64_t enqueued = m.work_enqueued.value_acquire();
  if (enqueued > done) {
    const int64_t since = std::max(m.last_done_mono_ns.value(), m.backlog_start_mono_ns.value());
    const double stalled = seconds(now_mono_ns - since);
    if (stalled > policy.max_lag_s) {
      return fmt::format("{} messages delivered but not applied, no progress for {:.1f} s (limit {} s)",
                         enqueued - done, stalled, policy.max_lag_s);
    }
  }
  return "";
}

std::string not_alive_reason(const SidecarMetrics& m, double consumer_max_age_s, double writer_max_age_s,
                             int64_t now_mono_ns) {
  const double writer_age = seconds(now_mono_ns - m.writer_heartbeat_mono_ns.value());
  if (writer_age > writer_max_age_s) {
    return fmt::format("writer thread made no round for {:.3f} s (limit {} s)", writer_age, writer_max_age_s);
  }
  const double consumer_age = seconds(now_mono_ns - m.consumer_heartbeat_mono_ns.value());
  if (consumer_age > consumer_max_age_s) {
    return fmt::format("consumer thread made no round for {:.3f} s (limit {} s)", consumer_age, consumer_max_age_s);
  }
  return "";
}

}  // namespace larder::sidecar
