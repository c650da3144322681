// The sidecar's metrics: counters and histograms that the consumer and writer
// threads update on every message, and the Prometheus text rendering (format
// 0.0.4) that the HTTP thread serves on /metrics (docs/operations.md lists
// every metric).
//
// Cost on the hot paths: an update is one relaxed read-modify-write of a
// lock-free atomic (no lock, no allocation). Several source threads (a
// RabbitMQ and a Kafka source) update the same "consumer" counters, so an
// update must not be a load and a store. Any thread may read them; a reader
// sees each value whole but not a consistent snapshot across values (a
// histogram's _sum may lag its buckets by an observation). That is what
// Prometheus expects of a scrape.
//
// Threads: SidecarMetrics lives in the Pipeline. Each member names the thread
// that writes it; the HTTP thread only reads. render_metrics() and
// not_ready_reason() run on the HTTP thread.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "decode/reject_reason.h"
#include "larder/client.h"

namespace larder::sidecar {

// A monotonic counter. add() and value() are safe from any thread.
class Counter {
 public:
  // Any thread. Lock-free, never allocates.
  void add(uint64_t n = 1) noexcept {
    // relaxed: a statistic; readers want the number, nothing written before it.
    value_.fetch_add(n, std::memory_order_relaxed);
  }
  // relaxed: a statistic; readers want the number, not the writes before it.
  uint64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

  // The same with release/acquire order, for counters that publish other
  // values written before them (the progress counters below).
  void add_release(uint64_t n = 1) noexcept {
    // release: pairs with value_acquire(), publishing what was written before it.
    value_.fetch_add(n, std::memory_order_release);
  }
  // acquire: pairs with add_release(); what was written before it is visible.
  uint64_t value_acquire() const noexcept { return value_.load(std::memory_order_acquire); }

 private:
  std::atomic<uint64_t> value_{0};
  static_assert(std::atomic<uint64_t>::is_always_lock_free);
};

// A gauge set by one thread and read by others (a plain relaxed atomic).
class Gauge {
 public:
  Gauge() = default;
  explicit Gauge(int64_t initial) : value_(initial) {}
  // relaxed: a gauge is a value of its own; a Counter's release/acquire
  // publishes it where order matters (see SidecarMetrics).
  void set(int64_t v) noexcept { value_.store(v, std::memory_order_relaxed); }
  int64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }  // relaxed: as set()

 private:
  std::atomic<int64_t> value_{0};
};

inline constexpr size_t kMaxHistogramBuckets = 20;

// A histogram of durations with fixed upper bounds (seconds, ascending); any
// thread may observe. Bucket i counts observations v with bound[i-1] < v <=
// bound[i] (Prometheus `le` semantics); the last, implicit bucket is +Inf.
class Histogram {
 public:
  // Throws std::invalid_argument unless 1..kMaxHistogramBuckets ascending bounds.
  explicit Histogram(std::initializer_list<double> upper_bounds_s);

  // Any thread. A negative duration counts as 0. Lock-free, never
  // allocates: a linear scan over at most kMaxHistogramBuckets bounds.
  void observe_ns(int64_t ns) noexcept {
    const uint64_t v = ns < 0 ? 0 : static_cast<uint64_t>(ns);
    size_t i = 0;
    while (i < bucket_count_ && v > bounds_ns_[i]) ++i;
    // relaxed: statistics; a scrape may see _sum lag the buckets by an
    // observation, which Prometheus accepts.
    counts_[i].fetch_add(1, std::memory_order_relaxed);
    // The sum in double seconds: event-time lags of a backfill (months each)
    // would overflow an integer nanosecond sum.
    sum_s_.fetch_add(static_cast<double>(v) * 1e-9, std::memory_order_relaxed);
  }

  struct Snapshot {
    std::vector<double> upper_bounds_s;  // without +Inf
    std::vector<uint64_t> counts;        // per bucket, not cumulative; size = bounds + 1 (+Inf)
    double sum_s = 0;
    uint64_t count() const noexcept;
  };
  // Any thread.
  Snapshot snapshot() const;

 private:
  size_t bucket_count_ = 0;  // finite bounds
  std::array<double, kMaxHistogramBuckets> bounds_s_{};
  std::array<uint64_t, kMaxHistogramBuckets> bounds_ns_{};
  std::array<std::atomic<uint64_t>, kMaxHistogramBuckets + 1> counts_{};
  std::atomic<double> sum_s_{0};
  static_assert(std::atomic<double>::is_always_lock_free);
};

// Everything the consumer and writer threads count. The per-table numbers are
// not here: the HTTP thread reads them from the segment (what readers see).
struct SidecarMetrics {
  SidecarMetrics();

  // Source threads (every source adds to these).
  Counter messages_received;                                  // deliveries, including redeliveries
  Counter messages_redelivered;                               // deliveries with the redelivered flag
  Counter messages_acked;                                     // messages covered by a sent basic.ack
  std::array<Counter, kRejectReasonCount> messages_rejected;  // dead-lettered, by reason
  Counter connect_attempts;                                   // AmqpSession::connect calls, failed ones too
  Counter connects;                                           // connections established
  Counter connections_lost;                                   // established connections that failed
  Counter dead_letters_published;                             // copies with x-larder-* headers, confirmed
  Histogram decode_seconds;                                   // Decoder::decode per message
  // Where publish-to-visible time goes inside the sidecar, per message (CLOCK_MONOTONIC):
  Histogram stage_receive_seconds;  // delivery returned by the broker connection -> handed to the writer
  Histogram stage_pickup_seconds;   // writer's completion -> the consumer took it (acks follow)
  // Progress of the hand-over to the writer (readiness; see not_ready_reason).
  // Write point: backlog_start_mono_ns, then work_enqueued.add_release();
  // pairs with the value_acquire() in not_ready_reason, so a probe that sees
  // a message pending also sees when the backlog began.
  Counter work_enqueued;             // messages handed to the writer thread, all epochs
  Gauge backlog_start_mono_ns;       // set when a message is handed over while none was pending
  Gauge consumer_heartbeat_mono_ns;  // refreshed per delivery and per idle wait (<= 200 ms apart)

  // Writer thread.
  Counter messages_applied;   // every update of the message reached shared memory
  Counter updates_applied;    // single upserts and deletes applied (stale ones excluded)
  Counter updates_duplicate;  // an event id applied before (tables with aggregates): ignored, acked
  Counter updates_late;       // aggregate inputs older than the allowed lateness, fields older than the row
  // Write point: last_done_mono_ns, then work_done.add_release(); pairs with
  // the value_acquire() in not_ready_reason.
  Counter work_done;                 // messages the writer finished (applied or refused)
  Gauge last_done_mono_ns;           // when work_done last grew
  Gauge writer_heartbeat_mono_ns;    // refreshed every writer-loop iteration (<= 20 ms apart)
  Histogram apply_seconds;           // apply_batch per message
  Histogram stage_handover_seconds;  // handed to the writer -> dequeued by the writer thread (its wake-up)
  Histogram stage_apply_seconds;     // dequeued -> applied (visible), behind the bulk's earlier messages
  Histogram visible_lag_seconds;     // apply time - event_time, per applied update
  Gauge source_lag_ms{-1};           // stream queues: the lag StreamSync last computed; -1 unknown or not a stream

  // Snapshot thread (snapshot/snapshot_thread.h): the last periodic snapshot
  // written to snapshot.dir. Write point: the gauges, then
  // snapshots_written.add_release(); a scrape reads them without ordering
  // (each is a value of its own).
  Counter snapshots_written;    // files written
  Counter snapshot_failures;    // attempts that wrote no file
  Gauge snapshot_last_unix_ns;  // when the last written snapshot's image was taken (0: none yet)
  Gauge snapshot_last_bytes;    // its file size
  Gauge snapshot_last_ns;       // how long it took: copy, compression and write

  // Writer thread: generation switches (Writer::switch_progress), set after
  // each bulk. Values of their own, read without ordering.
  Gauge generation;           // the segment generation being served
  Gauge switch_active;        // 1 while a switch is copying
  Gauge switch_copied_slots;  // of the switch in progress
  Gauge switch_total_slots;
  Gauge switches;        // switches published since start
  Gauge switch_last_ns;  // the last published switch, begin to publish
};

// What the HTTP thread read from the segment for one scrape or probe.
struct SegmentSample {
  bool open = false;  // false: the segment could not be opened
  std::string error;  // why, when !open
  SegmentInfo info;
  SyncInfo sync;  // the source positions and sync state readers see
  struct TableSample {
    std::string name;
    TableStats stats;
  };
  std::vector<TableSample> tables;
};

// Builds Prometheus text format 0.0.4. Label sets are passed preformatted,
// e.g. `table="users"` (values escaped with escape_label_value).
class PrometheusText {
 public:
  // "# HELP" and "# TYPE" lines; call once per metric family, before its samples.
  void family(std::string_view name, std::string_view type, std::string_view help);
  void sample(std::string_view name, std::string_view labels, uint64_t value);
  void sample(std::string_view name, std::string_view labels, int64_t value);
  void sample(std::string_view name, std::string_view labels, double value);
  // A whole histogram family: _bucket (cumulative, le="+Inf" last), _sum, _count.
  void histogram(std::string_view name, std::string_view help, const Histogram::Snapshot& h);
  // One family of several histograms, one per label set (e.g. `stage="apply"`).
  struct LabelledHistogram {
    std::string_view labels;
    Histogram::Snapshot h;
  };
  void histograms(std::string_view name, std::string_view help, const std::vector<LabelledHistogram>& series);

  const std::string& text() const noexcept { return out_; }

 private:
  void line(std::string_view name, std::string_view labels, std::string_view value);
  std::string out_;
};

// Escapes \, " and newline for a label value.
std::string escape_label_value(std::string_view v);
// A sample value: shortest round-trip decimal, "+Inf", "-Inf" or "NaN".
std::string format_sample_value(double v);

// The whole /metrics page. `now_unix_ns` and `now_mono_ns` are the clocks at
// the scrape.
std::string render_metrics(const SidecarMetrics& m, uint32_t connection_state, const SegmentSample& segment,
                           int64_t now_unix_ns, int64_t now_mono_ns);

// Readiness thresholds (docs/operations.md, "Metrics and probes").
struct ReadyPolicy {
  double max_lag_s = 30;                // unapplied messages waiting with no progress
  double max_writer_heartbeat_s = 1.0;  // writer thread (and segment heartbeat) age
};

// "" when ready, else a one-line reason. Not ready while the segment's sync
// state is CATCHING_UP or INCOMPLETE (stream queues; the reason names the
// offsets). HTTP thread.
std::string not_ready_reason(const SidecarMetrics& m, uint32_t connection_state, const SegmentSample& segment,
                             const ReadyPolicy& policy, int64_t now_mono_ns);

// The sync-state part of not_ready_reason(): "" for UNKNOWN and READY.
std::string not_synced_reason(const SyncInfo& sync);

// Liveness: "" when the consumer and writer threads are making rounds, else a
// one-line reason. `consumer_max_age_s` covers the longest blocking call of
// the consumer thread (a connect attempt, bounded by rpc_timeout_s). HTTP thread.
std::string not_alive_reason(const SidecarMetrics& m, double consumer_max_age_s, double writer_max_age_s,
                             int64_t now_mono_ns);

const char* connection_state_name(uint32_t state) noexcept;

}  // namespace larder::sidecar
