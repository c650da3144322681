// The consumer loop (see consumer.h). Every function here runs on the
// consumer thread.
#include "consume/consumer.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include "larder/layout/clock.h"

namespace larder::sidecar {
namespace {

// amqp_consume_message waits at most this long when nothing is in flight;
// never 0 or infinite (rabbitmq-c services heartbeats only while waiting, and
// a zero timeout never reports a missed heartbeat).
constexpr int kIdleWaitMs = 200;
// While the writer holds our messages, poll more often so acks go out soon
// after the apply and the prefetch window refills.
constexpr int kBusyWaitMs = 1;
constexpr auto kStatsInterval = std::chrono::seconds(60);

// The AMQP message_id of a delivery (its first kMaxLoggedIdBytes), or "".
std::string_view message_id_of(const amqp_envelope_t& envelope) {
  const amqp_basic_properties_t& p = envelope.message.properties;
  if (!(p._flags & AMQP_BASIC_MESSAGE_ID_FLAG)) return {};
  return {static_cast<const char*>(p.message_id.bytes), std::min<size_t>(p.message_id.len, kMaxLoggedIdBytes)};
}

}  // namespace

Consumer::Consumer(const Config& config, Pipeline& pipeline, SourceLane& lane, const std::atomic<int>& stop_requests)
    : config_(config),
      pipeline_(pipeline),
      lane_(lane),
      stop_requests_(stop_requests),
      decoder_(make_message_decoder(config.schema(), config.decode_options(), config.rabbitmq.format)),
      backoff_(config.rabbitmq.reconnect.base_s, config.rabbitmq.reconnect.cap_s),
      reject_log_(kRejectReasonCount, 10, std::chrono::milliseconds(1000)),
      work_token_(pipeline.work),
      last_stats_log_(std::chrono::steady_clock::now()),
      stream_(config.rabbitmq.queue.type == QueueType::kStream) {
  completions_.resize(64);
  if (stream_ && config.rabbitmq.queue.stream_offset_is_number) {
    next_offset_ = static_cast<uint64_t>(config.rabbitmq.queue.stream_offset_number);
  }
  ack_batch_ = std::max<uint64_t>(1, config.rabbitmq.prefetch / 4);
}

void Consumer::set_state(layout::ConnectionState state) {
  // relaxed: a status report; it orders nothing else (see pipeline.h).
  lane_.connection_state.store(static_cast<uint32_t>(state), std::memory_order_relaxed);
}

DecodedBatch Consumer::take_spare_batch() {
  if (spare_batches_.empty()) return DecodedBatch();
  DecodedBatch b = std::move(spare_batches_.back());
  spare_batches_.pop_back();
  return b;
}

bool Consumer::sleep_interruptible(std::chrono::milliseconds delay) {
  const auto until = std::chrono::steady_clock::now() + delay;
  while (std::chrono::steady_clock::now() < until) {
    pipeline_.metrics.consumer_heartbeat_mono_ns.set(layout::now_mono_ns());
    if (stop_requests_.load() > 0) return false;
    process_completions(nullptr);  // old-epoch completions: recycle and drop
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return stop_requests_.load() == 0;
}

void Consumer::resume_stream_at(uint64_t next_offset, uint32_t skip_updates) {
  next_offset_ = next_offset;
  skip_offset_ = skip_updates > 0 ? next_offset : kNoOffset;
  skip_updates_ = skip_updates;
}

int Consumer::run() {
  const RabbitConfig& rc = config_.rabbitmq;
  spdlog::info("consumer: queue \"{}\" ({}), broker {}, prefetch {}, heartbeat {} s, format {}", rc.queue.name,
               queue_type_name(rc.queue.type), rc.url.to_string(), rc.prefetch, rc.heartbeat_s, decoder_->describe());
  bool immediate_retry = false;
  while (stop_requests_.load() == 0) {
    ++epoch_;
    tracker_.reset();
    blocked_ = false;
    outstanding_work_ = 0;
    unsent_ack_tag_ = 0;
    unsent_ack_count_ = 0;
    set_state(layout::ConnectionState::kConnecting);
    pipeline_.metrics.consumer_heartbeat_mono_ns.set(layout::now_mono_ns());
    std::unique_ptr<AmqpSession> session;
    bool established = false;  // a failure after this loses a connection; before, it fails an attempt
    try {
      const std::string tag = fmt::format("larder-sidecar.{}.{}", ::getpid(), epoch_);
      StreamAttach attach;
      attach.from = next_offset_;
      // relaxed: a hint (see pipeline.h); a new connection is not at the tail yet.
      pipeline_.stream_at_tail.store(false, std::memory_order_relaxed);
      pipeline_.metrics.connect_attempts.add();
      session = AmqpSession::connect(rc, tag, stream_ ? &attach : nullptr);
      if (stream_) {
        requested_ = next_offset_;
        first_of_epoch_ = true;
        // A retention gap: the stream's first message is after the offset
        // asked for. (Not "the first delivery is after it": offsets are not
        // dense, the broker's own chunks at segment starts take offsets that
        // are never delivered, and a position may name one of them.)
        gap_pending_ = attach.first != kNoOffset && requested_ != kNoOffset && attach.first > requested_;
        if (attach.tail != kNoOffset && requested_ != kNoOffset && attach.tail + 1 < requested_) {
          // The last applied offset (requested_ - 1) is past the stream's end.
          spdlog::error(
              "consumer: stream \"{}\" ends at offset {}, before the stored position {}: the stream was deleted and "
              "re-created, and its messages before offset {} will be taken as applied. Stop the sidecar, delete the "
              "segment and start again to replay it",
              rc.queue.name, attach.tail, requested_, requested_);
        }
        pipeline_.stream_tail.store(attach.tail, std::memory_order_relaxed);
        // release: publishes stream_tail to the writer thread's acquire load.
        pipeline_.stream_probes.fetch_add(1, std::memory_order_release);
        spdlog::info("consumer: stream \"{}\": tail at offset {}{}; subscribing at {}", rc.queue.name,
                     attach.tail == kNoOffset ? std::string("none (empty)") : std::to_string(attach.tail),
                     attach.first == kNoOffset ? std::string() : fmt::format(", first at {}", attach.first),
                     next_offset_ == kNoOffset ? "\"" + rc.queue.stream_offset + "\" (rabbitmq.queue.stream_offset)"
                                               : std::to_string(next_offset_));
      }
      ++stats_.connections;
      pipeline_.metrics.connects.add();
      established = true;
      set_state(layout::ConnectionState::kConnected);
      spdlog::info("consumer: connected to {} (epoch {}), consuming \"{}\"", rc.url.to_string(), epoch_, rc.queue.name);
      backoff_.reset();
      immediate_retry = false;
      serve(*session);
      // A requested stop, drained: close the handshake politely.
      session->close();
      session.reset();
      release_all();
      set_state(layout::ConnectionState::kStopped);
      spdlog::info("consumer: stopped cleanly ({})", stats_line());
      return 0;
    } catch (const SessionError& e) {
      if (session != nullptr && e.failure() == SessionFailure::kConsumerCancelled) {
        try {
          session->close();  // the connection itself is healthy: say goodbye
        } catch (const SessionError&) {
        }
      }
      session.reset();  // rabbitmq-c state is dead after a failure: destroy, never reuse
      release_all();    // the broker redelivers them, dead letters not yet confirmed included
      set_state(layout::ConnectionState::kDisconnected);
      if (established) pipeline_.metrics.connections_lost.add();
      if (outstanding_work_ > 0) {
        spdlog::info(
            "consumer: {} applied-or-in-flight messages of epoch {} will not be acked; the broker redelivers them",
            outstanding_work_, epoch_);
      }
      if (e.failure() == SessionFailure::kConsumerCancelled && !immediate_retry) {
        // Documented behaviour: re-declare the queue and resubscribe at once.
        spdlog::warn("consumer: {}; re-declaring the topology and resubscribing", e.what());
        immediate_retry = true;
        continue;
      }
      const auto delay = backoff_.next();
      spdlog::warn("consumer: {} ({}); reconnecting in {} ms (attempt {}, ceiling {:.1f} s)", e.what(),
                   session_failure_name(e.failure()), delay.count(), backoff_.attempt(), backoff_.ceiling_s());
      if (!sleep_interruptible(delay)) break;
    }
  }
  set_state(layout::ConnectionState::kStopped);
  spdlog::info("consumer: stopped while disconnected; unacked messages stay on the broker");
  return 0;
}

void Consumer::serve(AmqpSession& session) {
  auto drain_deadline = std::chrono::steady_clock::time_point::max();
  bool quiet = false;  // the last wait returned nothing
  for (;;) {
    // After a quiet wait, ack whatever is applied; otherwise ack in batches.
    process_completions(&session, quiet || session.cancelled());
    log_stats_if_due(false);

    const int stops = stop_requests_.load();
    if (stops > 0 && !session.cancelled()) {
      spdlog::info("consumer: stop requested; cancelling the consumer and draining {} in-flight messages",
                   tracker_.in_flight());
      session.cancel();
      drain_deadline = std::chrono::steady_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(config_.rabbitmq.drain_timeout_s * 1000));
      quiet = false;
    }
    if (session.cancelled()) {
      if (tracker_.in_flight() == 0 && unsent_ack_tag_ == 0 && quiet) return;  // all acked or rejected
      if (stops > 1 || std::chrono::steady_clock::now() > drain_deadline) {
        spdlog::warn("consumer: drain abandoned with {} messages in flight; the broker redelivers them",
                     tracker_.in_flight());
        return;
      }
    }

    const int wait_ms = tracker_.in_flight() > 0 || unsent_ack_tag_ != 0 ? kBusyWaitMs
                        : session.cancelled()                            ? 20
                                                                         : kIdleWaitMs;
    amqp_envelope_t envelope;
    const ConsumeEvent event = session.next(wait_ms, &envelope);
    quiet = event == ConsumeEvent::kTimeout;
    if (stream_) {
      // relaxed: a hint (see pipeline.h). Quiet with nothing in flight: the
      // broker had nothing more for us.
      if (quiet && tracker_.in_flight() == 0 && !session.cancelled()) {
        pipeline_.stream_at_tail.store(true, std::memory_order_relaxed);
      } else if (event == ConsumeEvent::kDelivery) {
        pipeline_.stream_at_tail.store(false, std::memory_order_relaxed);
      }
    }
    // Liveness for /healthz: a delivery refreshes it from its decode clock
    // read (handle_delivery), anything else here, at most kIdleWaitMs apart.
    if (event != ConsumeEvent::kDelivery) pipeline_.metrics.consumer_heartbeat_mono_ns.set(layout::now_mono_ns());
    switch (event) {
      case ConsumeEvent::kDelivery:
        if (!handle_delivery(session, envelope)) amqp_destroy_envelope(&envelope);
        break;
      case ConsumeEvent::kBlocked:
        blocked_ = true;
        spdlog::warn("consumer: the broker blocked the connection (memory or disk alarm); consuming continues");
        break;
      case ConsumeEvent::kUnblocked:
        blocked_ = false;
        spdlog::info("consumer: the broker unblocked the connection");
        break;
      case ConsumeEvent::kTimeout:
      case ConsumeEvent::kHandled: break;
    }
  }
}

bool Consumer::handle_delivery(AmqpSession& session, amqp_envelope_t& envelope) {
  const int64_t received = layout::now_mono_ns();
  ++stats_.deliveries;
  SidecarMetrics& metrics = pipeline_.metrics;
  metrics.messages_received.add();
  if (envelope.redelivered) metrics.messages_redelivered.add();
  const uint64_t tag = envelope.delivery_tag;
  tracker_.delivered(tag);
  bool kept = false;
  // Kept until settled (see held_): rabbitmq-c's envelope owns its memory.
  // Tags of one channel are consecutive; were one not, that delivery would
  // be rejected rather than published if refused (held() finds nothing).
  if (session.publishes_dead_letters() && (held_.empty() || tag == held_.back().tag + 1)) {
    held_.push_back(Held{tag, true, envelope});
    kept = true;
  }
  uint64_t offset = kNoOffset;
  uint64_t gap_from = kNoOffset;
  uint32_t skip = 0;
  if (stream_) {
    if (!stream_offset_of(envelope, &offset)) {
      dead_letter(session, tag, RejectReason::kNoStreamOffset, "a stream delivery without an x-stream-offset header",
                  "", "");
      return kept;
    }
    if (first_of_epoch_) {
      first_of_epoch_ = false;
      if (gap_pending_ && offset > requested_) gap_from = requested_;
    }
    if (next_offset_ != kNoOffset && offset < next_offset_ && gap_from == kNoOffset) {
      // Before the resume point (a stream delivers whole chunks): applied
      // already. Ack, apply nothing.
      tracker_.settle(tag, true);
      ++unsent_ack_count_;
      return kept;
    }
    if (offset == skip_offset_) {
      skip = skip_updates_;
      skip_offset_ = kNoOffset;
    }
    next_offset_ = offset + 1;
  }
  const std::string_view body(static_cast<const char*>(envelope.message.body.bytes), envelope.message.body.len);
  DecodedBatch batch = take_spare_batch();
  const int64_t decode_start = layout::now_mono_ns();
  DecodeResult result = decoder_->decode(body, batch);
  const int64_t decode_end = layout::now_mono_ns();
  metrics.decode_seconds.observe_ns(decode_end - decode_start);
  metrics.consumer_heartbeat_mono_ns.set(decode_end);
  if (!result.ok) {
    if (offset != kNoOffset) {
      // A stream: the writer stores the position past it, then it is acked.
      note_reject(tag, result.reason, result.detail, result.update_id, result.key, message_id_of(envelope));
      batch.clear();
      hand_over(WorkItem{0, 0, epoch_, tag, offset, 0, true, gap_from, std::move(batch), received}, decode_end);
      return kept;
    }
    spare_batches_.push_back(std::move(batch));
    dead_letter(session, tag, result.reason, result.detail, result.update_id, result.key);
    return kept;
  }
  hand_over(WorkItem{0, 0, epoch_, tag, offset, skip, false, gap_from, std::move(batch), received}, decode_end);
  return kept;
}

void Consumer::hand_over(WorkItem&& item, int64_t now_mono_ns) {
  SidecarMetrics& metrics = pipeline_.metrics;
  // Write point of the hand-over progress (see SidecarMetrics): when nothing
  // was pending, a backlog begins now; then publish the count with release.
  if (metrics.work_enqueued.value() == metrics.work_done.value_acquire()) {
    metrics.backlog_start_mono_ns.set(now_mono_ns);
  }
  item.source = lane_.index;
  item.partition = lane_.partition_base;  // a stream has one partition
  item.enqueued_mono_ns = layout::now_mono_ns();
  metrics.stage_receive_seconds.observe_ns(item.enqueued_mono_ns - item.received_mono_ns);
  pipeline_.work.enqueue(work_token_, std::move(item));
  metrics.work_enqueued.add_release();
  ++outstanding_work_;
}

void Consumer::dead_letter(AmqpSession& session, uint64_t tag, RejectReason reason, std::string_view detail,
                           std::string_view update_id, std::string_view key) {
  amqp_envelope_t* original = held(tag);
  note_reject(tag, reason, detail, update_id, key, original != nullptr ? message_id_of(*original) : std::string_view());
  if (config_.rabbitmq.queue.type == QueueType::kStream) {
    // Streams have no dead-lettering and ignore rejects; the ack (a credit)
    // is what lets consumption go on. The reject is counted and logged.
    tracker_.settle(tag, true);
    return;
  }
  // A blocked connection stops being read at the broker's end as soon as it
  // publishes, acks included: reject instead until it is unblocked.
  if (original != nullptr && session.publishes_dead_letters() && !blocked_) {
    // The tag stays in flight until the broker confirms the copy
    // (settle_dead_letters), so no multiple-ack covers it before.
    const uint64_t seq =
        session.publish_dead_letter(*original, DeadLetterNote{reject_reason_name(reason), detail, update_id, key});
    pending_dead_letters_.push_back(PendingDeadLetter{seq, tag});
    return;
  }
  // The reject goes out now, before any multiple-ack whose range covers this
  // tag can be sent (take_ack() only reaches past this tag afterwards).
  session.reject(tag);
  ++stats_.reject_frames;
  tracker_.settle(tag, false);
  release(tag);
}

void Consumer::settle_dead_letters(AmqpSession& session) {
  std::vector<PublishConfirm>& confirms = session.confirms();
  for (const PublishConfirm& c : confirms) {
    for (auto it = pending_dead_letters_.begin(); it != pending_dead_letters_.end();) {
      if (c.multiple ? it->seq > c.seq : it->seq != c.seq) {
        ++it;
        continue;
      }
      const uint64_t tag = it->tag;
      it = pending_dead_letters_.erase(it);
      if (c.ack) {
        // The copy is on the dead-letter exchange: the original goes with
        // the next multiple-ack.
        tracker_.settle(tag, true);
        ++unsent_ack_count_;
        pipeline_.metrics.dead_letters_published.add();
      } else {
        spdlog::warn("consumer: the broker refused the dead letter of tag {}; rejecting the original instead", tag);
        session.reject(tag);
        ++stats_.reject_frames;
        tracker_.settle(tag, false);
      }
      release(tag);
    }
  }
  confirms.clear();
}

amqp_envelope_t* Consumer::held(uint64_t tag) {
  if (held_.empty() || tag < held_.front().tag) return nullptr;
  const uint64_t i = tag - held_.front().tag;
  if (i >= held_.size() || held_[i].tag != tag || !held_[i].live) return nullptr;
  return &held_[i].envelope;
}

void Consumer::release(uint64_t tag) {
  if (amqp_envelope_t* e = held(tag)) {
    amqp_destroy_envelope(e);
    held_[tag - held_.front().tag].live = false;
  }
  while (!held_.empty() && !held_.front().live) held_.pop_front();
}

void Consumer::release_all() {
  for (Held& h : held_) {
    if (h.live) amqp_destroy_envelope(&h.envelope);
  }
  held_.clear();
  pending_dead_letters_.clear();
}

void Consumer::note_reject(uint64_t tag, RejectReason reason, std::string_view detail, std::string_view update_id,
                           std::string_view key, std::string_view message_id) {
  const size_t r = static_cast<size_t>(reason);
  ++stats_.rejected_by_reason[r];
  pipeline_.metrics.messages_rejected[r].add();
  pipeline_.pending_rejects.fetch_add(1, std::memory_order_relaxed);  // relaxed: a count, see pipeline.h
  uint64_t suppressed = 0;
  if (reject_log_.allow(r, &suppressed)) {
    spdlog::warn(
        "reject: reason={} tag={} id=\"{}\" key=\"{}\" message_id=\"{}\" detail=\"{}\" suppressed_since_last={}",
        reject_reason_name(reason), tag, update_id, key, message_id, detail, suppressed);
  }
}

void Consumer::process_completions(AmqpSession* session, bool flush_acks) {
  for (;;) {
    const size_t n = lane_.done.try_dequeue_bulk(completions_.begin(), completions_.size());
    if (n == 0) break;
    const int64_t picked_up = layout::now_mono_ns();
    for (size_t i = 0; i < n; ++i) {
      Completion& c = completions_[i];
      pipeline_.metrics.stage_pickup_seconds.observe_ns(picked_up - c.applied_mono_ns);
      if (c.epoch != epoch_ || session == nullptr) {
        ++stats_.stale_completions_dropped;  // its channel is gone; the broker redelivers it
      } else {
        --outstanding_work_;
        if (c.outcome == Outcome::kApplied || c.outcome == Outcome::kSkipped) {
          tracker_.settle(c.delivery_tag, true);
          ++unsent_ack_count_;
          release(c.delivery_tag);
        } else {
          std::string_view update_id, key;
          if (c.refused_update < c.batch.size()) {
            const DecodedUpdate& u = c.batch.update(c.refused_update);
            update_id = c.batch.id(u);
            key = c.batch.key(u).substr(0, kMaxLoggedIdBytes);
          }
          const std::string detail =
              c.reason == RejectReason::kTableFull
                  ? fmt::format("update {}: a table is full (raise its capacity)", c.refused_update)
              : c.reason == RejectReason::kArenaFull
                  ? fmt::format("update {}: the table's aggregate arena is full (raise arena_chunks)", c.refused_update)
                  : fmt::format("update {}: the writer refused it", c.refused_update);
          dead_letter(*session, c.delivery_tag, c.reason, detail, update_id, key);
        }
      }
      if (spare_batches_.size() < config_.rabbitmq.prefetch + 16u) spare_batches_.push_back(std::move(c.batch));
    }
    if (n < completions_.size()) break;
  }
  if (session == nullptr) return;
  if (!session->confirms().empty()) settle_dead_letters(*session);
  if (const uint64_t tag = tracker_.take_ack()) unsent_ack_tag_ = tag;
  // A multiple-ack of unsent_ack_tag_ covers only applied deliveries (see
  // AckTracker); holding it back a little is safe: rejects of higher tags
  // have gone out already, and a later ack covers these too.
  if (unsent_ack_tag_ != 0 && (flush_acks || unsent_ack_count_ >= ack_batch_)) {
    session->ack_up_to(unsent_ack_tag_);
    ++stats_.ack_frames;
    pipeline_.metrics.messages_acked.add(unsent_ack_count_);
    unsent_ack_tag_ = 0;
    unsent_ack_count_ = 0;
  }
}

std::string Consumer::stats_line() const {
  // The metrics' own numbers under their names (larder_<name>_total), so a
  // log line and a scrape never disagree; ack_frames and reject_frames count
  // frames on the wire (one basic.ack may cover many messages).
  const SidecarMetrics& m = pipeline_.metrics;
  uint64_t rejected = 0;
  std::string by_reason;
  for (RejectReason r : all_reject_reasons()) {
    const uint64_t n = m.messages_rejected[static_cast<size_t>(r)].value();
    rejected += n;
    if (n > 0) by_reason += fmt::format(" {}={}", reject_reason_name(r), n);
  }
  return fmt::format(
      "messages_received={} messages_applied={} updates_applied={} updates_duplicate={} updates_late={} "
      "messages_acked={} ack_frames={} messages_rejected={}{} dead_letters_published={} reject_frames={} "
      "connections_lost={}",
      m.messages_received.value(), m.messages_applied.value(), m.updates_applied.value(), m.updates_duplicate.value(),
      m.updates_late.value(), m.messages_acked.value(), stats_.ack_frames, rejected, by_reason,
      m.dead_letters_published.value(), stats_.reject_frames, m.connections_lost.value());
}

void Consumer::log_stats_if_due(bool force) {
  const auto now = std::chrono::steady_clock::now();
  if (!force && now - last_stats_log_ < kStatsInterval) return;
  last_stats_log_ = now;
  spdlog::info("stats: {}", stats_line());
}

}  // namespace larder::sidecar
