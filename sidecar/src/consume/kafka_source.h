// Kafka as a Source, with librdkafka (docs/sidecar.md, "Kafka").
//
// Guarantees:
//  * Positions: topic i of kafka.topics, partition p stores its position in
//    the lane's partition i * partitions_per_topic + p (with a regex in
//    kafka.topics: the topic's range i from the topic table beside the
//    segment, kafka_topic_table.h, given once when the topic is first
//    assigned and kept across restarts), with each update
//    (apply/writer_thread.h). Those positions are the truth: at start and on
//    every assignment a partition seeks to the segment's next offset (and
//    skips the updates of that message applied before a kill), so nothing is
//    lost and nothing is applied out of order, whatever the group's committed
//    offsets say. A partition the segment has no position for starts at
//    kafka.start (earliest, or latest).
//  * Commits: offsets are committed (asynchronously, every commit_interval,
//    and synchronously on revoke and stop) only up to what the writer has
//    applied. They serve monitoring (consumer-group lag in Kafka's tools);
//    a lost commit costs nothing.
//  * Rebalance (eager): on revoke the source stops handing over, waits until
//    the writer has applied every message in flight, commits, then lets the
//    partitions go; a partition that comes back seeks to the segment's
//    position again.
//  * Refused messages (undecodable, or an update the writer refused) are
//    skipped and counted (no dead-letter topic): logged with their reason,
//    counted in larder_messages_rejected_total, their position stored past
//    them.
//  * Retention: a partition that resumes at a stored offset the topic no
//    longer holds (below its low watermark) makes the segment INCOMPLETE.
//
// Hand-over: up to kPollBatch fetched messages are polled and decoded, then
// handed to the writer in one enqueue (one wake-up per batch). At most
// kafka.max_in_flight messages and kMaxInFlightUpdates updates are handed
// over and not yet applied; their decoded batches come back with the
// completions and are reused.
//
// Readiness: CATCHING_UP until the group has assigned partitions and each
// assigned partition has been applied up to the high watermark it had when
// it was first fetched after the assignment; then READY for the life of the
// process (as a stream, docs/sidecar.md). Unreachable bootstrap servers keep
// it CATCHING_UP, the connection state DISCONNECTED, /readyz failing with
// librdkafka's error, and log that error: brokers may come later.
//
// Regex subscriptions: assignment all matches the cluster's topics against
// the patterns (POSIX extended regcomp, as librdkafka) every
// kafka.metadata_interval; assignment group leaves the matching to
// librdkafka (topic.metadata.refresh.interval.ms, set to the same interval)
// and gives each topic of an assignment its range. A topic beyond
// kafka.max_topics is not consumed: logged once, counted in
// larder_kafka_topics_refused, named on /readyz while catching up.
//
// Threads: run() and everything it calls (librdkafka's callbacks included:
// they are served by rd_kafka_consumer_poll) on the source's thread; the
// SourceHealth methods on HTTP threads read atomics and take health_mu_.
#pragma once

#include <regex.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "config/config.h"
#include "consume/kafka_topic_table.h"
#include "consume/source.h"
#include "decode/decoder.h"
#include "decode/message_decoder.h"
#include "observe/logging.h"

struct rd_kafka_s;
struct rd_kafka_topic_partition_list_s;
struct rd_kafka_message_s;

namespace larder::sidecar {

// The librdkafka settings the source gives every consumer before
// kafka.properties (which may override each of them).
std::vector<std::pair<std::string, std::string>> kafka_default_properties();

class KafkaSource final : public Source {
 public:
  KafkaSource(const Config& config, Pipeline& pipeline, SourceLane& lane, const std::atomic<int>& stop_requests);
  ~KafkaSource() override;
  KafkaSource(const KafkaSource&) = delete;
  KafkaSource& operator=(const KafkaSource&) = delete;

  const char* kind() const noexcept override { return "kafka"; }
  uint32_t partitions_needed() const override;
  std::string position_id() const override;
  void resume(std::span<const std::optional<SourcePosition>> stored) override;
  void segment_restored() override { segment_restored_ = true; }
  int run() override;
  std::string not_ready_reason() const override;
  void render_metrics(std::string& out) const override;

  // librdkafka callbacks (static trampolines in the .cc). Source thread.
  void on_rebalance(int err, rd_kafka_topic_partition_list_s* partitions);
  void on_error(int err, const char* reason);

 private:
  // One lane partition: a (topic, partition) of the subscription.
  struct Slot {
    // Source thread only.
    bool assigned = false;
    bool known = false;            // next_ is known: from the segment (resume) or a delivery
    bool from_end = false;         // assigned without a position, kafka.start latest
    uint64_t next_ = 0;            // the first offset not yet handed to the writer
    uint64_t applied_next = 0;     // the first offset not yet applied (valid when stored)
    uint64_t committed_next = 0;   // last committed
    uint64_t skip_offset = ~0ull;  // the resumed message whose first skip_updates are applied
    uint32_t skip_updates = 0;
    bool expect_first = false;  // no message yet since its seek to a stored offset
    int64_t target = -1;        // the high watermark first seen after the assignment; -1 unknown
    bool caught_up = false;
    // Read by HTTP threads (relaxed: statistics).
    std::atomic<int64_t> high_watermark{-1};
    std::atomic<int64_t> applied{-1};  // applied next offset; -1 none
    std::atomic<bool> live{false};     // assigned
  };

  Slot* slot_of(const char* topic, int32_t partition, uint32_t* index);
  // With a regex: the range of `topic`, given from the topic table (saved
  // before this returns) when it has none yet; -1 when every range is taken
  // (logged and counted once per topic) or the table could not be saved.
  int range_for(const std::string& topic);
  // With a regex: whether `topic` is listed by name or matches a pattern.
  bool matches(const char* topic) const;
  // With a regex: the topic table from the file, reconciled with `stored`.
  void load_topic_table(std::span<const std::optional<SourcePosition>> stored);
  // The topic of range r ("" none). Source thread; HTTP threads under health_mu_.
  const std::string& range_topic(size_t r) const { return range_topic_[r]; }
  // Adds `partitions` to the assignment, each at the segment's position
  // (incremental: keep the others; else replace the assignment).
  void assign_partitions(rd_kafka_topic_partition_list_s* partitions, bool incremental);
  // Assignment all: reads the topics' metadata and assigns the partitions
  // not assigned yet. False when the metadata could not be read.
  bool assign_all();
  // Applies everything in flight, commits, and marks every slot unassigned.
  void revoke_all(const char* why);
  // Takes up to `room` messages from librdkafka's queue (waiting `wait_ms`
  // for the first only), decodes them and hands them to the writer at once.
  void poll_batch(size_t room, int wait_ms);
  // Decodes a message into a WorkItem on pending_ (nothing is handed over yet).
  void handle_message(rd_kafka_message_s* m);
  // Hands pending_ to the writer thread in one enqueue (one wake-up).
  void hand_over();
  void process_completions();
  // Commits every slot whose applied offset moved. `sync`: wait for the reply.
  void commit(bool sync);
  // Waits until the writer has applied everything in flight (or the drain
  // timeout passed). Returns false on a timeout.
  bool drain();
  void refresh_watermarks();
  void note_reject(RejectReason reason, const std::string& where, std::string_view detail);
  void set_state(layout::ConnectionState s);
  void set_sync(layout::SyncState s);
  void set_status(std::string status);
  // Moves a spare batch (its buffers grown by earlier messages) into `into`.
  void take_spare_batch(DecodedBatch& into);

  const Config& config_;
  const KafkaConfig& kc_;
  Pipeline& pipeline_;
  SourceLane& lane_;
  const std::atomic<int>& stop_requests_;
  std::unique_ptr<MessageDecoder> decoder_;  // the records' format (kafka.format)
  RateLimiter reject_log_;
  moodycamel::ProducerToken work_token_;
  rd_kafka_s* rk_ = nullptr;
  std::unique_ptr<Slot[]> slots_;  // topic ranges x partitions_per_topic
  size_t slot_count_ = 0;
  // The topic of each range: kafka.topics, or (regex) the topic table's.
  // Written on the source thread under health_mu_ (render_metrics reads it).
  std::vector<std::string> range_topic_;
  std::unique_ptr<KafkaTopicTable> table_;                              // regex only
  std::vector<std::unique_ptr<regex_t, void (*)(regex_t*)>> patterns_;  // regex only: the '^' entries
  std::set<std::string> over_limit_;                                    // topics refused for max_topics (logged once)
  bool segment_restored_ = false;  // the topic table may not be the positions' (load_topic_table)
  std::vector<Completion> completions_;
  // Decoded batches back from the writer, reused: as many as can be in
  // flight, so that a steady stream allocates nothing per message.
  std::vector<DecodedBatch> spare_batches_;
  size_t spare_limit_ = 0;
  std::vector<WorkItem> pending_;     // decoded, not yet handed over (poll_batch)
  uint64_t pending_received_ = 0;     // messages received since the last hand-over
  uint64_t pending_updates_ = 0;      // their updates
  uint64_t outstanding_ = 0;          // WorkItems handed over and not yet completed
  uint64_t outstanding_updates_ = 0;  // their updates
  bool assignment_seen_ = false;
  std::set<std::string> missing_logged_;  // topics found missing (logged once)
  std::set<std::string> refused_;         // "topic[p]" beyond partitions_per_topic (logged once)
  layout::SyncState sync_ = layout::SyncState::kCatchingUp;
  std::chrono::steady_clock::time_point last_commit_;
  std::chrono::steady_clock::time_point last_watermarks_;

  std::atomic<uint64_t> commits_{0};
  std::atomic<uint64_t> commit_failures_{0};
  std::atomic<uint64_t> rebalances_{0};
  std::atomic<uint64_t> errors_{0};
  std::atomic<uint64_t> topics_refused_{0};  // distinct topics refused for max_topics
  mutable std::mutex health_mu_;
  std::string status_;  // guarded by health_mu_: why it is not ready ("" when ready)
};

}  // namespace larder::sidecar
