// The consumer loop: owns the broker connection (one AmqpSession at a time),
// decodes deliveries, hands them to the writer thread, acknowledges what the
// writer has applied, dead-letters what cannot be applied, and reconnects
// with backoff when the connection fails.
//
// Delivery guarantees (docs/sidecar.md):
//  * A message is acked only after the writer reports it applied to shared
//    memory; a crash before that makes the broker redeliver it (at least
//    once). Redeliveries are harmless under last-write-wins.
//  * A message that cannot be decoded or applied is dead-lettered: a copy
//    with x-larder-* headers (reason, detail, the update's id and key) is
//    published to the dead-letter exchange in confirm mode, and the original
//    is acked only once the broker confirms the copy. If the broker nacks the
//    copy, the original is rejected with requeue=false (the broker
//    dead-letters it, without the headers). Either way the tag stays
//    unsettled until then, so no multiple-ack covers it early (AckTracker).
//    A crash in between redelivers the original: its dead letter may be
//    published twice.
//  * Each connection is an epoch; completions of an older epoch are dropped,
//    never acked on a newer connection (the broker redelivers them).
//  * Stream queues (docs/sidecar.md, "Positions, resume and readiness"): each
//    WorkItem carries its x-stream-offset; the consumer subscribes at the
//    next offset it has not handed to the writer (at start: the stored
//    position), acks and drops deliveries before it (a stream delivers whole
//    chunks), hands undecodable messages to the writer as position-only
//    items, and flags a retention gap when the first delivery comes from
//    after the offset it asked for.
//
// Threading: run() runs on the consumer thread (the RabbitMQ source's
// thread, consume/rabbitmq_source.h); nothing here is shared except the
// Pipeline, its lane and the stop flag.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string_view>
#include <vector>

#include "apply/pipeline.h"
#include "config/config.h"
#include "consume/ack_tracker.h"
#include "consume/amqp_session.h"
#include "consume/backoff.h"
#include "decode/decoder.h"
#include "decode/message_decoder.h"
#include "observe/logging.h"

namespace larder::sidecar {

struct ConsumerStats {
  uint64_t deliveries = 0;
  uint64_t ack_frames = 0;                 // basic.ack frames sent (multiple=true: one may ack many messages)
  uint64_t reject_frames = 0;              // basic.reject frames sent (one message each)
  uint64_t stale_completions_dropped = 0;  // from an older connection epoch
  uint64_t connections = 0;
  std::array<uint64_t, kRejectReasonCount> rejected_by_reason{};
};

class Consumer {
 public:
  // `stop_requests` counts SIGTERM/SIGINT: 1 starts a graceful drain, 2 or
  // more abandons the drain (unacked messages are redelivered later).
  // `lane`: this source's lane in `pipeline` (its completions, its states).
  Consumer(const Config& config, Pipeline& pipeline, SourceLane& lane, const std::atomic<int>& stop_requests);
  ~Consumer() { release_all(); }
  Consumer(const Consumer&) = delete;
  Consumer& operator=(const Consumer&) = delete;

  // Stream queues: resume at `next_offset` (a stored position), skipping the
  // first `skip_updates` updates of that message. Call before run().
  void resume_stream_at(uint64_t next_offset, uint32_t skip_updates);

  // Consumes until a stop is requested and the drain has finished. Returns
  // the process exit code (0 after a clean stop).
  int run();

  const ConsumerStats& stats() const { return stats_; }

 private:
  void serve(AmqpSession& session);
  // Returns true when it kept `envelope` (held_ owns it now).
  bool handle_delivery(AmqpSession& session, amqp_envelope_t& envelope);
  // Settles what the writer finished. Acks the watermark when at least
  // ack_batch_ messages are waiting for an ack, or when flush_acks is true.
  void process_completions(AmqpSession* session, bool flush_acks = false);
  void dead_letter(AmqpSession& session, uint64_t tag, RejectReason reason, std::string_view detail,
                   std::string_view update_id, std::string_view key);
  // Settles dead letters the broker confirmed (ack the original) or refused
  // (reject it).
  void settle_dead_letters(AmqpSession& session);
  // The held delivery of `tag`, or nullptr.
  amqp_envelope_t* held(uint64_t tag);
  // Destroys the held delivery of `tag` (it is settled) and drops the settled
  // prefix of held_.
  void release(uint64_t tag);
  void release_all();
  // Hands a WorkItem to the writer thread; `now_mono_ns` may start a backlog.
  void hand_over(WorkItem&& item, int64_t now_mono_ns);
  // Counts and logs a refused message (the part of dead_letter() that does
  // not settle it).
  void note_reject(uint64_t tag, RejectReason reason, std::string_view detail, std::string_view update_id,
                   std::string_view key, std::string_view message_id);
  void set_state(layout::ConnectionState state);
  bool sleep_interruptible(std::chrono::milliseconds delay);
  void log_stats_if_due(bool force);
  // "messages_received=N ... connections_lost=N": the stats and shutdown log lines.
  std::string stats_line() const;
  DecodedBatch take_spare_batch();

  const Config& config_;
  Pipeline& pipeline_;
  SourceLane& lane_;
  const std::atomic<int>& stop_requests_;
  std::unique_ptr<MessageDecoder> decoder_;  // the queue's format (rabbitmq.format)
  AckTracker tracker_;
  Backoff backoff_;
  RateLimiter reject_log_;
  moodycamel::ProducerToken work_token_;
  std::vector<DecodedBatch> spare_batches_;
  std::vector<Completion> completions_;
  uint64_t epoch_ = 0;
  uint64_t outstanding_work_ = 0;  // WorkItems of the current epoch not yet completed
  uint64_t unsent_ack_tag_ = 0;    // applied watermark not yet acked on the wire
  uint64_t unsent_ack_count_ = 0;  // messages that ack will cover
  uint64_t ack_batch_ = 1;         // prefetch / 4: fewer ack frames, window stays open
  bool blocked_ = false;           // connection.blocked received, no unblocked since
  ConsumerStats stats_;
  // Deliveries of this epoch kept until they are settled, so that a refused
  // one can be published as a dead letter with its body and properties (the
  // writer refuses after the delivery was handed over). Tags on a channel
  // are consecutive: held_[tag - held_.front().tag]. Non-stream queues only.
  struct Held {
    uint64_t tag = 0;
    bool live = false;
    amqp_envelope_t envelope{};
  };
  std::deque<Held> held_;
  // Dead letters published and not yet confirmed: publish sequence -> tag.
  struct PendingDeadLetter {
    uint64_t seq = 0;
    uint64_t tag = 0;
  };
  std::deque<PendingDeadLetter> pending_dead_letters_;
  std::chrono::steady_clock::time_point last_stats_log_;

  // Stream queues (kNoOffset: unknown).
  const bool stream_;
  uint64_t next_offset_ = kNoOffset;  // the first offset not yet handed to the writer
  uint64_t skip_offset_ = kNoOffset;  // the resumed message whose first skip_updates_ updates are applied
  uint32_t skip_updates_ = 0;
  uint64_t requested_ = kNoOffset;  // the offset this epoch subscribed at
  bool first_of_epoch_ = false;     // no delivery yet on this connection
  bool gap_pending_ = false;        // the stream's first offset is after requested_
};

}  // namespace larder::sidecar
