// Kafka as a Source (see kafka_source.h). Everything here runs on the Kafka
// source's thread, but not_ready_reason() and render_metrics() (HTTP threads).
#include "consume/kafka_source.h"

#include <fmt/format.h>
#include <librdkafka/rdkafka.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "larder/layout/clock.h"
#include "observe/metrics.h"
#include "snapshot/bootstrap.h"

namespace larder::sidecar {
namespace {

// Kafka's internal topics: a regex never matches them.
constexpr const char* kInternalTopics[] = {"__consumer_offsets", "__transaction_state", "__share_group_state",
                                           "__cluster_metadata"};

// rd_kafka_consumer_poll waits at most this long when nothing is in flight
// (the stop flag is checked between waits).
constexpr int kIdleWaitMs = 100;
// While the writer holds our messages, poll often so completions are
// processed (and commits and readiness follow) soon after the apply.
constexpr int kBusyWaitMs = 1;
// Messages taken from librdkafka's queue and decoded before they are handed
// to the writer in one enqueue: one wake-up of the writer thread per batch
// instead of per message. The messages are already fetched, so a batch costs
// no waiting; small enough that the writer starts on it within ~100 us.
constexpr size_t kPollBatch = 128;
// Updates in flight, beside kafka.max_in_flight messages: messages of many
// updates keep only this many decoded at once, so the batches the writer
// reads are still in the caches and the spare batches stay few (1,000
// messages of 100 updates would be ~10 MB of batches).
constexpr uint64_t kMaxInFlightUpdates = 16'384;
constexpr auto kWatermarkInterval = std::chrono::milliseconds(100);

void rebalance_trampoline(rd_kafka_t*, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* partitions,
                          void* opaque) {
  static_cast<KafkaSource*>(opaque)->on_rebalance(err, partitions);
}

void error_trampoline(rd_kafka_t*, int err, const char* reason, void* opaque) {
  static_cast<KafkaSource*>(opaque)->on_error(err, reason);
}

}  // namespace

std::vector<std::pair<std::string, std::string>> kafka_default_properties() {
  return {
      // The broker answers a fetch as soon as one message is there: a
      // feature's freshness first; a backlog fills the fetches anyway.
      {"fetch.min.bytes", "1"},
      // A seek or a new assignment waits for the fetch in flight; an empty
      // one is held this long (librdkafka's 500 ms would delay a resume).
      {"fetch.wait.max.ms", "100"},
      // Prefetched per partition: at the source's highest measured rate
      // (docs/performance.md, "Kafka source") over 100 ms of messages, far
      // more than a fetch round trip, without librdkafka's 100,000 per
      // partition (up to 64 MB queued in the sidecar's memory).
      {"queued.min.messages", "20000"},
  };
}

KafkaSource::KafkaSource(const Config& config, Pipeline& pipeline, SourceLane& lane,
                         const std::atomic<int>& stop_requests)
    : config_(config),
      kc_(config.kafka),
      pipeline_(pipeline),
      lane_(lane),
      stop_requests_(stop_requests),
      decoder_(make_message_decoder(config.schema(), config.decode_options(), config.kafka.format)),
      reject_log_(kRejectReasonCount, 10, std::chrono::milliseconds(1000)),
      work_token_(pipeline.work),
      slot_count_(size_t{config.kafka.partitions_per_topic} * config.kafka.topic_ranges()) {
  slots_ = std::make_unique<Slot[]>(slot_count_);
  if (kc_.regex) {
    range_topic_.resize(kc_.max_topics);
    for (const std::string& t : kc_.topics) {
      if (t.front() != '^') continue;
      // Checked by the config already; librdkafka compiles it the same way.
      std::unique_ptr<regex_t, void (*)(regex_t*)> re(new regex_t, [](regex_t* r) {
        ::regfree(r);
        delete r;
      });
      if (::regcomp(re.get(), t.c_str(), REG_EXTENDED | REG_NOSUB) != 0) {
        re.release();  // nothing to free: regcomp failed
        throw StartError(2, fmt::format("kafka.topics: invalid regex \"{}\"", t));
      }
      patterns_.push_back(std::move(re));
    }
    table_ = std::make_unique<KafkaTopicTable>(
        fmt::format("{}/.{}.kafka-topics", config.segment.dir, config.segment.name), position_id(), kc_.max_topics);
  } else {
    range_topic_ = kc_.topics;
  }
  completions_.resize(64);
  spare_limit_ = size_t{config.kafka.max_in_flight} + kPollBatch;
  pending_.reserve(kPollBatch);
  status_ =
      fmt::format("kafka: waiting for the group's partition assignment (bootstrap servers {})", kc_.bootstrap_servers);
  set_sync(layout::SyncState::kCatchingUp);
}

KafkaSource::~KafkaSource() {
  if (rk_ != nullptr) rd_kafka_destroy(rk_);
}

uint32_t KafkaSource::partitions_needed() const { return static_cast<uint32_t>(slot_count_); }

std::string KafkaSource::position_id() const {
  // The topics and their slot layout: the same names with another layout
  // would put offsets in the wrong slots. Not the servers: one cluster has
  // many names (DNS, per-host listeners).
  std::string topics;
  for (const std::string& t : kc_.topics) topics += (topics.empty() ? "" : ",") + t;
  // With a regex the ranges are given by the topic table; their count fixes
  // the layout too.
  if (kc_.regex)
    return fmt::format("kafka topics={} slots={} ranges={}", topics, kc_.partitions_per_topic, kc_.max_topics);
  return fmt::format("kafka topics={} slots={}", topics, kc_.partitions_per_topic);
}

void KafkaSource::resume(std::span<const std::optional<SourcePosition>> stored) {
  // The table first, even for a replay: the ranges' owners must not change
  // under positions stored before.
  if (kc_.regex) load_topic_table(stored);
  if (kc_.start == KafkaStart::kEarliest) {
    spdlog::info("kafka: start is \"earliest\": the stored positions are ignored, every partition is replayed");
    return;
  }
  size_t resumed = 0;
  for (size_t i = 0; i < std::min(stored.size(), slot_count_); ++i) {
    if (!stored[i]) continue;
    // A range the table gives no topic: its positions are retired (load_topic_table).
    if (range_topic_[i / kc_.partitions_per_topic].empty()) continue;
    Slot& s = slots_[i];
    s.known = true;
    s.next_ = s.applied_next = s.committed_next = stored[i]->next_offset;
    s.applied.store(static_cast<int64_t>(s.applied_next), std::memory_order_relaxed);
    if (stored[i]->skip_updates > 0) {
      s.skip_offset = stored[i]->next_offset;
      s.skip_updates = stored[i]->skip_updates;
    }
    ++resumed;
    spdlog::info("kafka: {}[{}]: resuming at stored offset {} (skipping {} updates of it already applied)",
                 range_topic_[i / kc_.partitions_per_topic], i % kc_.partitions_per_topic, stored[i]->next_offset,
                 stored[i]->skip_updates);
  }
  if (resumed == 0)
    spdlog::info("kafka: no stored position; partitions start at their {} offset",
                 kc_.start == KafkaStart::kLatest ? "latest" : "earliest");
}

void KafkaSource::set_state(layout::ConnectionState s) {
  // relaxed: a status report (see pipeline.h).
  lane_.connection_state.store(static_cast<uint32_t>(s), std::memory_order_relaxed);
}

void KafkaSource::set_sync(layout::SyncState s) {
  sync_ = s;
  lane_.sync_state.store(static_cast<uint32_t>(s), std::memory_order_relaxed);  // relaxed: see pipeline.h
}

void KafkaSource::set_status(std::string status) {
  std::lock_guard<std::mutex> lock(health_mu_);
  status_ = std::move(status);
}

void KafkaSource::take_spare_batch(DecodedBatch& into) {
  if (spare_batches_.empty()) return;
  into = std::move(spare_batches_.back());
  spare_batches_.pop_back();
}

void KafkaSource::load_topic_table(std::span<const std::optional<SourcePosition>> stored) {
  std::string why;
  const KafkaTopicTable::Load loaded = table_->load(&why);
  std::vector<bool> has_positions(kc_.max_topics, false);
  bool any = false;
  for (size_t i = 0; i < std::min(stored.size(), slot_count_); ++i) {
    if (stored[i]) has_positions[i / kc_.partitions_per_topic] = any = true;
  }
  bool changed = false;
  if (!any) {
    // No position stored (a new segment, or positions cleared with a change
    // of kafka.topics): nothing can belong to a range, so start a new table.
    if (loaded != KafkaTopicTable::Load::kMissing) {
      spdlog::info("kafka: the segment stores no position: topic table {} starts empty", table_->path());
    }
    table_->clear();
    changed = loaded != KafkaTopicTable::Load::kMissing;
  } else {
    if (loaded == KafkaTopicTable::Load::kDamaged) {
      spdlog::error("kafka: topic table {} is damaged ({}): the topics' stored positions cannot be told apart",
                    table_->path(), why);
    } else if (loaded == KafkaTopicTable::Load::kMissing) {
      spdlog::error("kafka: topic table {} is missing, but the segment stores positions: they cannot be told apart",
                    table_->path());
    } else if (loaded == KafkaTopicTable::Load::kOtherSource) {
      spdlog::error("kafka: topic table {} is for other kafka.topics or max_topics: its ranges are not used",
                    table_->path());
    }
    if (loaded == KafkaTopicTable::Load::kLoaded && segment_restored_) {
      spdlog::error(
          "kafka: the segment was restored from a snapshot or a peer: topic table {} was written beside the segment "
          "it replaced, so its ranges are not trusted",
          table_->path());
    }
    if (loaded != KafkaTopicTable::Load::kLoaded || segment_restored_) table_->clear();
    // A range with positions but no topic: they are of a topic nobody can
    // name now. Retired, so that no other topic resumes at them.
    for (uint32_t r = 0; r < kc_.max_topics; ++r) {
      if (has_positions[r] && table_->topic_of(r).empty() && !table_->retired(r)) {
        table_->retire(r);
        changed = true;
        spdlog::error(
            "kafka: topic range {} holds stored positions of a topic the table does not name: retired (never given "
            "to a topic; the topic itself starts at kafka.start). Delete the segment to start clean",
            r);
      }
    }
  }
  if (changed && !table_->save(&why)) {
    throw StartError(2, fmt::format("kafka: cannot write the topic table: {}", why));
  }
  std::lock_guard<std::mutex> lock(health_mu_);
  for (uint32_t r = 0; r < kc_.max_topics; ++r) {
    range_topic_[r] = table_->topic_of(r);
    if (!range_topic_[r].empty()) spdlog::info("kafka: topic \"{}\" holds position range {}", range_topic_[r], r);
  }
}

bool KafkaSource::matches(const char* topic) const {
  for (const std::string& t : kc_.topics) {
    if (t.front() != '^' && t == topic) return true;
  }
  // Kafka's own topics are never matched by a pattern (as the Java
  // consumer's exclude.internal.topics); listed by name they are consumed.
  for (const char* internal : kInternalTopics) {
    if (std::strcmp(topic, internal) == 0) return false;
  }
  for (const auto& re : patterns_) {
    if (::regexec(re.get(), topic, 0, nullptr, 0) == 0) return true;
  }
  return false;
}

int KafkaSource::range_for(const std::string& topic) {
  const int have = table_->range_of(topic);
  if (have >= 0) return have;
  std::string why;
  const int r = table_->assign(topic, &why);
  if (r >= 0) {
    {
      std::lock_guard<std::mutex> lock(health_mu_);
      range_topic_[static_cast<size_t>(r)] = topic;
    }
    spdlog::info("kafka: topic \"{}\" matches kafka.topics: given position range {} (topic table {})", topic, r,
                 table_->path());
    return r;
  }
  if (!why.empty()) {
    // Not consumed this time; the next metadata read or assignment retries.
    spdlog::error("kafka: topic \"{}\" is not consumed: cannot save its position range: {}", topic, why);
    set_status(fmt::format("kafka: topic {} is not consumed: the topic table cannot be saved", topic));
    return -1;
  }
  if (over_limit_.insert(topic).second) {
    topics_refused_.fetch_add(1, std::memory_order_relaxed);
    spdlog::error(
        "kafka: topic \"{}\" matches kafka.topics but is not consumed: all {} position ranges are taken "
        "(kafka.max_topics). Raise max_topics (the segment's positions are then cleared and the topics replayed)",
        topic, kc_.max_topics);
    set_status(fmt::format("kafka: topic {} is not consumed: more topics match than kafka.max_topics ({})", topic,
                           kc_.max_topics));
  }
  return -1;
}

KafkaSource::Slot* KafkaSource::slot_of(const char* topic, int32_t partition, uint32_t* index) {
  if (partition < 0 || static_cast<uint32_t>(partition) >= kc_.partitions_per_topic) return nullptr;
  for (size_t t = 0; t < range_topic_.size(); ++t) {
    if (range_topic_[t] == topic) {
      *index = static_cast<uint32_t>(t * kc_.partitions_per_topic + static_cast<uint32_t>(partition));
      return &slots_[*index];
    }
  }
  return nullptr;
}

int KafkaSource::run() {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  std::vector<std::pair<std::string, std::string>> settings = {
      {"bootstrap.servers", kc_.bootstrap_servers},
      {"group.id", kc_.group_id},
      {"client.id", kc_.client_id},
      // Offsets are committed by commit() only, up to what the writer applied.
      {"enable.auto.commit", "false"},
      {"enable.auto.offset.store", "false"},
      {"auto.offset.reset", kc_.start == KafkaStart::kLatest ? "latest" : "earliest"},
      {"enable.partition.eof", "false"},
  };
  for (auto& p : kafka_default_properties()) settings.push_back(std::move(p));
  if (kc_.regex && kc_.assignment == KafkaAssignment::kGroup) {
    // librdkafka re-matches a regex subscription when it refreshes the
    // metadata (kafka.properties may still override it).
    settings.emplace_back("topic.metadata.refresh.interval.ms", std::to_string(kc_.metadata_interval_ms));
    // The group's own matching skips Kafka's internal topics too.
    std::string ignored;
    for (const char* internal : kInternalTopics) {
      if (std::find(kc_.topics.begin(), kc_.topics.end(), internal) != kc_.topics.end()) continue;
      ignored += fmt::format("{}^{}$", ignored.empty() ? "" : ",", internal);
    }
    settings.emplace_back("topic.blacklist", ignored);
  }
  settings.insert(settings.end(), kc_.properties.begin(), kc_.properties.end());
  if (!kc_.sasl_password.empty()) settings.emplace_back("sasl.password", kc_.sasl_password);
  for (const auto& [key, value] : settings) {
    if (rd_kafka_conf_set(conf, key.c_str(), value.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) {
      spdlog::critical("kafka: setting {}: {}", key, err);
      rd_kafka_conf_destroy(conf);
      set_state(layout::ConnectionState::kStopped);
      return 2;
    }
  }
  rd_kafka_conf_set_opaque(conf, this);
  rd_kafka_conf_set_rebalance_cb(conf, rebalance_trampoline);
  rd_kafka_conf_set_error_cb(conf, error_trampoline);
  rk_ = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  if (rk_ == nullptr) {  // conf is still ours on failure
    rd_kafka_conf_destroy(conf);
    spdlog::critical("kafka: cannot create the consumer: {}", err);
    set_state(layout::ConnectionState::kStopped);
    return 2;
  }
  rd_kafka_poll_set_consumer(rk_);  // callbacks are served by rd_kafka_consumer_poll below
  const bool group = kc_.assignment == KafkaAssignment::kGroup;
  if (group) {
    rd_kafka_topic_partition_list_t* topics = rd_kafka_topic_partition_list_new(static_cast<int>(kc_.topics.size()));
    for (const std::string& t : kc_.topics) rd_kafka_topic_partition_list_add(topics, t.c_str(), RD_KAFKA_PARTITION_UA);
    const rd_kafka_resp_err_t sub = rd_kafka_subscribe(rk_, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (sub != RD_KAFKA_RESP_ERR_NO_ERROR) {
      spdlog::critical("kafka: cannot subscribe: {}", rd_kafka_err2str(sub));
      set_state(layout::ConnectionState::kStopped);
      return 2;
    }
  }
  std::string topic_list;
  for (const std::string& t : kc_.topics) topic_list += (topic_list.empty() ? "" : ", ") + t;
  spdlog::info("kafka: consuming {} from {}, {}, group \"{}\" (start {}, {} stored positions per topic)", topic_list,
               kc_.bootstrap_servers, group ? "partitions shared by the group" : "every partition (assignment all)",
               kc_.group_id, kafka_start_name(kc_.start), kc_.partitions_per_topic);
  last_commit_ = last_watermarks_ = std::chrono::steady_clock::now();
  auto next_metadata = std::chrono::steady_clock::now();

  while (stop_requests_.load() == 0) {
    process_completions();
    const auto now = std::chrono::steady_clock::now();
    if (!group && now >= next_metadata) {
      // New partitions and topics appear through metadata: soon while
      // nothing is assigned, then every kMetadataInterval.
      const bool ok = assign_all();
      next_metadata =
          std::chrono::steady_clock::now() +
          (ok && assignment_seen_ ? std::chrono::milliseconds(kc_.metadata_interval_ms)
                                  : std::chrono::milliseconds(std::min<int64_t>(1000, kc_.metadata_interval_ms)));
    }
    if (now - last_commit_ >= std::chrono::milliseconds(kc_.commit_interval_ms)) commit(false);
    if (now - last_watermarks_ >= kWatermarkInterval) refresh_watermarks();
    pipeline_.metrics.consumer_heartbeat_mono_ns.set(layout::now_mono_ns());
    if (outstanding_ >= kc_.max_in_flight || outstanding_updates_ >= kMaxInFlightUpdates) {
      // The window is full: the writer's completions open it again (this
      // is the source's only backpressure, as the AMQP prefetch).
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      continue;
    }
    poll_batch(std::min<uint64_t>(kPollBatch, kc_.max_in_flight - outstanding_),
               outstanding_ > 0 ? kBusyWaitMs : kIdleWaitMs);
  }
  hand_over();
  spdlog::info("kafka: stop requested; waiting for {} in-flight messages", outstanding_);
  drain();
  commit(true);
  // Leaves the group (assignment group): the revoke (on_rebalance) drains
  // and commits again.
  if (!group) revoke_all("stop");
  const rd_kafka_resp_err_t closed = rd_kafka_consumer_close(rk_);
  if (closed != RD_KAFKA_RESP_ERR_NO_ERROR) spdlog::warn("kafka: closing the consumer: {}", rd_kafka_err2str(closed));
  rd_kafka_destroy(rk_);
  rk_ = nullptr;
  set_state(layout::ConnectionState::kStopped);
  spdlog::info("kafka: stopped cleanly ({} commits, {} rebalances)", commits_.load(), rebalances_.load());
  return 0;
}

void KafkaSource::poll_batch(size_t room, int wait_ms) {
  // rd_kafka_consumer_poll rather than rd_kafka_consume_batch_queue: the
  // release notes of librdkafka 2.0 (Debian 12's) list known issues of the
  // batch calls (outdated messages after a seek or a rebalance), and the
  // poll costs the same per message once the messages are fetched.
  // Callbacks (a rebalance) run inside a poll; revoke_all hands pending_
  // over first, so what was decoded before it is applied before the revoke.
  rd_kafka_message_t* m = rd_kafka_consumer_poll(rk_, wait_ms);
  size_t taken = 0;
  while (m != nullptr) {
    handle_message(m);
    rd_kafka_message_destroy(m);
    if (++taken >= room || outstanding_updates_ + pending_updates_ >= kMaxInFlightUpdates) break;
    m = rd_kafka_consumer_poll(rk_, 0);
  }
  hand_over();
}

void KafkaSource::hand_over() {
  SidecarMetrics& metrics = pipeline_.metrics;
  if (pending_received_ > 0) {
    metrics.messages_received.add(pending_received_);
    pending_received_ = 0;
    set_state(layout::ConnectionState::kConnected);
  }
  if (pending_.empty()) return;
  const int64_t now = layout::now_mono_ns();
  for (WorkItem& item : pending_) {
    item.enqueued_mono_ns = now;
    metrics.stage_receive_seconds.observe_ns(now - item.received_mono_ns);
  }
  metrics.consumer_heartbeat_mono_ns.set(now);
  // Write point of the hand-over progress (see SidecarMetrics).
  if (metrics.work_enqueued.value() == metrics.work_done.value_acquire()) metrics.backlog_start_mono_ns.set(now);
  pipeline_.work.enqueue_bulk(work_token_, std::make_move_iterator(pending_.begin()), pending_.size());
  metrics.work_enqueued.add_release(pending_.size());
  outstanding_ += pending_.size();
  outstanding_updates_ += pending_updates_;
  pending_updates_ = 0;
  pending_.clear();
}

void KafkaSource::handle_message(rd_kafka_message_t* m) {
  if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) return;
    errors_.fetch_add(1, std::memory_order_relaxed);
    uint64_t suppressed = 0;
    if (reject_log_.allow(static_cast<size_t>(RejectReason::kInternal), &suppressed)) {
      spdlog::warn("kafka: consume error{}: {} (suppressed_since_last={})",
                   m->rkt != nullptr ? fmt::format(" on {}[{}]", rd_kafka_topic_name(m->rkt), m->partition) : "",
                   rd_kafka_message_errstr(m), suppressed);
    }
    return;
  }
  const int64_t received = layout::now_mono_ns();
  ++pending_received_;
  uint32_t index = 0;
  Slot* s = slot_of(rd_kafka_topic_name(m->rkt), m->partition, &index);
  if (s == nullptr || !s->assigned || m->offset < 0) return;  // not assigned to us (on_rebalance refused it)
  const uint64_t offset = static_cast<uint64_t>(m->offset);
  if (s->expect_first) {
    s->expect_first = false;
    if (s->known && offset < s->next_) {
      int64_t low = -1, high = -1;
      if (rd_kafka_query_watermark_offsets(rk_, rd_kafka_topic_name(m->rkt), m->partition, &low, &high, 5000) ==
              RD_KAFKA_RESP_ERR_NO_ERROR &&
          high < static_cast<int64_t>(s->next_)) {
        // The partition ends before the stored position: the topic was
        // deleted and re-created.
        spdlog::error(
            "kafka: {}[{}] ends at offset {}, before the stored position {}: the topic was deleted and re-created, "
            "and its messages before offset {} will be taken as applied. Stop the sidecar, delete the segment and "
            "start again to replay it",
            rd_kafka_topic_name(m->rkt), m->partition, high, s->next_, s->next_);
      }
    }
    if (s->known && offset > s->next_) {
      // Offsets are not dense (compaction, transaction markers): only a
      // low watermark past the stored position means the log lost updates.
      int64_t low = -1, high = -1;
      const rd_kafka_resp_err_t e =
          rd_kafka_query_watermark_offsets(rk_, rd_kafka_topic_name(m->rkt), m->partition, &low, &high, 5000);
      if (e == RD_KAFKA_RESP_ERR_NO_ERROR && low > static_cast<int64_t>(s->next_)) {
        spdlog::error(
            "sync: retention gap: {}[{}] resumes at stored offset {}, but the topic's first retained offset is {}: "
            "offsets {}..{} are gone and their updates are missing from the table. The segment is INCOMPLETE "
            "(readers see it, /readyz fails) and keeps applying the topic. Recover by restoring a newer snapshot or "
            "bootstrapping from a peer (docs/operations.md, \"Retention gap\")",
            rd_kafka_topic_name(m->rkt), m->partition, s->next_, low, s->next_, low - 1);
        set_sync(layout::SyncState::kIncomplete);
        set_status(fmt::format("kafka: INCOMPLETE: retention gap on {}[{}] at offset {}", rd_kafka_topic_name(m->rkt),
                               m->partition, s->next_));
      }
    }
  }
  if (s->known && offset < s->next_) return;  // before the resume point: applied already
  uint32_t skip = 0;
  if (offset == s->skip_offset) {
    skip = s->skip_updates;
    s->skip_offset = ~0ull;
  }
  s->known = true;
  s->next_ = offset + 1;

  const std::string_view body(static_cast<const char*>(m->payload), m->payload != nullptr ? m->len : 0);
  WorkItem& item = pending_.emplace_back();
  take_spare_batch(item.batch);
  const int64_t decode_start = layout::now_mono_ns();
  DecodeResult result = decoder_->decode(body, item.batch);
  pipeline_.metrics.decode_seconds.observe_ns(layout::now_mono_ns() - decode_start);

  item.source = lane_.index;
  item.partition = lane_.partition_base + index;
  item.offset = offset;
  item.skip_updates = skip;
  item.received_mono_ns = received;
  if (!result.ok) {
    // No dead-letter topic: skip it (its position is stored past it) and count it.
    note_reject(result.reason, fmt::format("{}[{}]@{}", rd_kafka_topic_name(m->rkt), m->partition, offset),
                result.detail);
    item.batch.clear();
    item.position_only = true;
  }
  pending_updates_ += item.batch.size();
}

void KafkaSource::note_reject(RejectReason reason, const std::string& where, std::string_view detail) {
  const size_t r = static_cast<size_t>(reason);
  pipeline_.metrics.messages_rejected[r].add();
  pipeline_.pending_rejects.fetch_add(1, std::memory_order_relaxed);  // relaxed: a count, see pipeline.h
  uint64_t suppressed = 0;
  if (reject_log_.allow(r, &suppressed)) {
    spdlog::warn("reject: reason={} kafka={} detail=\"{}\" skipped (no dead-letter topic) suppressed_since_last={}",
                 reject_reason_name(reason), where, detail, suppressed);
  }
}

void KafkaSource::process_completions() {
  bool progressed = false;
  for (;;) {
    const size_t n = lane_.done.try_dequeue_bulk(completions_.begin(), completions_.size());
    if (n == 0) break;
    const int64_t picked_up = layout::now_mono_ns();
    for (size_t i = 0; i < n; ++i) {
      Completion& c = completions_[i];
      pipeline_.metrics.stage_pickup_seconds.observe_ns(picked_up - c.applied_mono_ns);
      --outstanding_;
      outstanding_updates_ -= std::min<uint64_t>(outstanding_updates_, c.batch.size());
      const uint32_t index = c.partition - lane_.partition_base;
      if (index < slot_count_ && c.offset != kNoOffset) {
        Slot& s = slots_[index];
        s.applied_next = std::max(s.applied_next, c.offset + 1);
        s.applied.store(static_cast<int64_t>(s.applied_next), std::memory_order_relaxed);
        progressed = true;
        if (c.outcome == Outcome::kRejected) {
          const std::string detail =
              c.reason == RejectReason::kTableFull
                  ? fmt::format("update {}: a table is full (raise its capacity)", c.refused_update)
                  : fmt::format("update {}: the writer refused it", c.refused_update);
          note_reject(c.reason,
                      fmt::format("{}[{}]@{}", range_topic_[index / kc_.partitions_per_topic],
                                  index % kc_.partitions_per_topic, c.offset),
                      detail);
        }
      }
      if (spare_batches_.size() < spare_limit_) spare_batches_.push_back(std::move(c.batch));
    }
    if (n < completions_.size()) break;
  }
  if (!progressed || sync_ != layout::SyncState::kCatchingUp || !assignment_seen_) return;
  // READY once every assigned partition reached its target (kafka_source.h).
  size_t assigned = 0;
  for (size_t i = 0; i < slot_count_; ++i) {
    const Slot& s = slots_[i];
    if (!s.assigned) continue;
    ++assigned;
    if (s.target < 0) return;
    const bool reached =
        s.target == 0 || (s.known && s.applied_next >= static_cast<uint64_t>(s.target)) || (!s.known && s.from_end);
    if (!reached) return;
  }
  set_sync(layout::SyncState::kReady);
  set_status("");
  spdlog::info("sync: READY: kafka: {} assigned partitions applied up to their high watermarks at assignment",
               assigned);
}

void KafkaSource::refresh_watermarks() {
  last_watermarks_ = std::chrono::steady_clock::now();
  bool all_known = true;
  for (size_t i = 0; i < slot_count_; ++i) {
    Slot& s = slots_[i];
    if (!s.assigned) continue;
    int64_t low = -1, high = -1;
    const char* topic = range_topic_[i / kc_.partitions_per_topic].c_str();
    const int32_t partition = static_cast<int32_t>(i % kc_.partitions_per_topic);
    // The cached watermarks of the last fetch reply: no request.
    if (rd_kafka_get_watermark_offsets(rk_, topic, partition, &low, &high) == RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0) {
      s.high_watermark.store(high, std::memory_order_relaxed);
      if (s.target < 0) s.target = high;
    } else {
      all_known = false;
    }
  }
  // A caught-up partition gets no completion to re-check readiness: check here.
  if (all_known && sync_ == layout::SyncState::kCatchingUp && assignment_seen_ && outstanding_ == 0) {
    bool reached = true;
    for (size_t i = 0; i < slot_count_ && reached; ++i) {
      const Slot& s = slots_[i];
      if (!s.assigned) continue;
      reached =
          s.target == 0 || (s.known && s.applied_next >= static_cast<uint64_t>(s.target)) || (!s.known && s.from_end);
    }
    if (reached) {
      set_sync(layout::SyncState::kReady);
      set_status("");
      spdlog::info("sync: READY: kafka: the assigned partitions are applied up to their high watermarks");
    }
  }
}

void KafkaSource::commit(bool sync) {
  last_commit_ = std::chrono::steady_clock::now();
  rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(8);
  for (size_t i = 0; i < slot_count_; ++i) {
    Slot& s = slots_[i];
    if (!s.assigned || !s.known || s.applied_next <= s.committed_next) continue;
    rd_kafka_topic_partition_t* p = rd_kafka_topic_partition_list_add(
        list, range_topic_[i / kc_.partitions_per_topic].c_str(), static_cast<int32_t>(i % kc_.partitions_per_topic));
    p->offset = static_cast<int64_t>(s.applied_next);
    s.committed_next = s.applied_next;
  }
  if (list->cnt > 0) {
    const rd_kafka_resp_err_t e = rd_kafka_commit(rk_, list, sync ? 0 : 1);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
      commits_.fetch_add(1, std::memory_order_relaxed);
    } else {
      commit_failures_.fetch_add(1, std::memory_order_relaxed);
      spdlog::warn("kafka: committing the applied offsets failed: {} (the segment's positions are unaffected)",
                   rd_kafka_err2str(e));
    }
  }
  rd_kafka_topic_partition_list_destroy(list);
}

bool KafkaSource::drain() {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(kc_.drain_timeout_s * 1000));
  process_completions();
  while (outstanding_ > 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      spdlog::warn("kafka: {} messages still in flight after {} s; not waiting longer", outstanding_,
                   kc_.drain_timeout_s);
      return false;
    }
    // The writer's done queue has no blocking wait; it answers within a bulk.
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    process_completions();
  }
  return true;
}

void KafkaSource::on_rebalance(int err, rd_kafka_topic_partition_list_t* partitions) {
  rebalances_.fetch_add(1, std::memory_order_relaxed);
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    assign_partitions(partitions, false);
    return;
  }
  revoke_all(err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS ? "rebalance"
                                                         : rd_kafka_err2str(static_cast<rd_kafka_resp_err_t>(err)));
  rd_kafka_assign(rk_, nullptr);
}

void KafkaSource::assign_partitions(rd_kafka_topic_partition_list_t* partitions, bool incremental) {
  {
    assignment_seen_ = true;
    set_state(layout::ConnectionState::kConnected);
    rd_kafka_topic_partition_list_t* mine = rd_kafka_topic_partition_list_new(partitions->cnt);
    std::string listed;
    for (int k = 0; k < partitions->cnt; ++k) {
      const rd_kafka_topic_partition_t& tp = partitions->elems[k];
      // A regex: the topic's range first (saved before any of its messages
      // can be handed over); the group matched the topic already.
      if (kc_.regex && range_for(tp.topic) < 0) continue;
      uint32_t index = 0;
      Slot* s = slot_of(tp.topic, tp.partition, &index);
      if (s == nullptr) {
        spdlog::error(
            "kafka: {}[{}] is not consumed: kafka.partitions_per_topic is {}, so it has no stored position. Raise "
            "partitions_per_topic (the segment's positions are then cleared and the topics replayed)",
            tp.topic, tp.partition, kc_.partitions_per_topic);
        set_status(fmt::format("kafka: {}[{}] has no stored position (raise kafka.partitions_per_topic)", tp.topic,
                               tp.partition));
        continue;
      }
      rd_kafka_topic_partition_t* p = rd_kafka_topic_partition_list_add(mine, tp.topic, tp.partition);
      s->assigned = true;
      s->live.store(true, std::memory_order_relaxed);
      s->target = -1;
      s->from_end = false;
      if (s->known) {
        // The segment's position (everything handed over was applied before
        // the last revoke): the truth, whatever the group committed.
        p->offset = static_cast<int64_t>(s->next_);
        s->expect_first = true;
      } else {
        s->from_end = kc_.start == KafkaStart::kLatest;
        p->offset = s->from_end ? RD_KAFKA_OFFSET_END : RD_KAFKA_OFFSET_BEGINNING;
      }
      listed += fmt::format("{}{}[{}]@{}", listed.empty() ? "" : " ", tp.topic, tp.partition,
                            s->known ? std::to_string(s->next_) : (s->from_end ? "latest" : "earliest"));
    }
    if (incremental) {
      rd_kafka_error_t* e = rd_kafka_incremental_assign(rk_, mine);
      if (e != nullptr) {
        spdlog::error("kafka: assign failed: {}", rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
      }
    } else {
      const rd_kafka_resp_err_t e = rd_kafka_assign(rk_, mine);
      if (e != RD_KAFKA_RESP_ERR_NO_ERROR) spdlog::error("kafka: assign failed: {}", rd_kafka_err2str(e));
    }
    rd_kafka_topic_partition_list_destroy(mine);
    size_t total = 0;
    for (size_t i = 0; i < slot_count_; ++i) total += slots_[i].assigned ? 1 : 0;
    spdlog::info("kafka: assigned {} partitions: {}", total, listed.empty() ? "none" : listed);
    if (sync_ == layout::SyncState::kCatchingUp) {
      set_status(fmt::format("kafka: catching up on {} assigned partitions", total));
    }
  }
}

void KafkaSource::revoke_all(const char* why) {
  // Everything decoded is handed over and applied first, so the segment's
  // positions are exact when the partitions come back.
  hand_over();
  spdlog::info("kafka: partitions revoked ({}); applying {} in-flight messages first", why, outstanding_);
  drain();
  commit(true);
  for (size_t i = 0; i < slot_count_; ++i) {
    Slot& s = slots_[i];
    s.assigned = false;
    s.expect_first = false;
    s.live.store(false, std::memory_order_relaxed);
  }
}

bool KafkaSource::assign_all() {
  // Metadata of every topic (one request); the topics' partitions that are
  // not assigned yet are added to the assignment.
  const rd_kafka_metadata_t* md = nullptr;
  const rd_kafka_resp_err_t e = rd_kafka_metadata(rk_, 1, nullptr, &md, 5000);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    spdlog::warn("kafka: cannot read the topics' metadata from {}: {}; retrying", kc_.bootstrap_servers,
                 rd_kafka_err2str(e));
    if (!assignment_seen_) {
      set_status(fmt::format("kafka: cannot read the topics' metadata from {}: {}", kc_.bootstrap_servers,
                             rd_kafka_err2str(e)));
    }
    return false;
  }
  set_state(layout::ConnectionState::kConnected);
  rd_kafka_topic_partition_list_t* added = rd_kafka_topic_partition_list_new(8);
  // The topics to consume: the listed ones, or (regex) the listed names and
  // every topic of the cluster a pattern matches, in name order (the order
  // new ones are given ranges in).
  std::vector<std::string> wanted;
  size_t named = 0;
  for (const std::string& t : kc_.topics) {
    if (t.front() == '^') continue;
    wanted.push_back(t);
    ++named;
  }
  if (kc_.regex) {
    std::vector<std::string> matched;
    for (int i = 0; i < md->topic_cnt; ++i) {
      const char* name = md->topics[i].topic;
      if (name == nullptr || md->topics[i].err != RD_KAFKA_RESP_ERR_NO_ERROR || !matches(name)) continue;
      if (std::find(wanted.begin(), wanted.end(), name) == wanted.end()) matched.emplace_back(name);
    }
    std::sort(matched.begin(), matched.end());
    wanted.insert(wanted.end(), matched.begin(), matched.end());
  }
  size_t found = 0;  // of the listed names
  for (size_t w = 0; w < wanted.size(); ++w) {
    const std::string& t = wanted[w];
    const rd_kafka_metadata_topic_t* mt = nullptr;
    for (int i = 0; i < md->topic_cnt; ++i) {
      if (t == md->topics[i].topic && md->topics[i].err == RD_KAFKA_RESP_ERR_NO_ERROR) mt = &md->topics[i];
    }
    if (mt == nullptr) {
      if (missing_logged_.insert(t).second) spdlog::warn("kafka: topic \"{}\" does not exist (yet); waiting for it", t);
      continue;
    }
    if (w < named) ++found;
    if (kc_.regex && range_for(t) < 0) continue;  // the range is saved before any partition is assigned
    for (int p = 0; p < mt->partition_cnt; ++p) {
      uint32_t index = 0;
      const Slot* s = slot_of(t.c_str(), mt->partitions[p].id, &index);
      if (s != nullptr && s->assigned) continue;
      if (s == nullptr && !refused_.insert(fmt::format("{}[{}]", t, mt->partitions[p].id)).second) continue;
      rd_kafka_topic_partition_list_add(added, t.c_str(), mt->partitions[p].id);
    }
  }
  rd_kafka_metadata_destroy(md);
  // Assignment seen once every listed topic exists (a regex alone: at the
  // first metadata read, even with no topic matching yet).
  if (added->cnt > 0 || (!assignment_seen_ && found >= named)) assign_partitions(added, true);
  rd_kafka_topic_partition_list_destroy(added);
  return true;
}

void KafkaSource::on_error(int err, const char* reason) {
  errors_.fetch_add(1, std::memory_order_relaxed);
  const auto code = static_cast<rd_kafka_resp_err_t>(err);
  if (code == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
    set_state(layout::ConnectionState::kDisconnected);
    set_status(fmt::format("kafka: all brokers are down ({}): {}", kc_.bootstrap_servers, reason));
    spdlog::error("kafka: all brokers are down (bootstrap servers {}): {}; retrying", kc_.bootstrap_servers, reason);
    return;
  }
  char fatal[512];
  if (rk_ != nullptr && rd_kafka_fatal_error(rk_, fatal, sizeof fatal) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    spdlog::critical("kafka: fatal error: {}", fatal);
    set_status(fmt::format("kafka: fatal error: {}", fatal));
    return;
  }
  uint64_t suppressed = 0;
  if (reject_log_.allow(static_cast<size_t>(RejectReason::kInternal), &suppressed)) {
    spdlog::warn("kafka: {}: {} (suppressed_since_last={})", rd_kafka_err2name(code), reason, suppressed);
  }
}

std::string KafkaSource::not_ready_reason() const {
  // relaxed: a status report (see pipeline.h).
  if (lane_.sync_state.load(std::memory_order_relaxed) == static_cast<uint32_t>(layout::SyncState::kReady)) return {};
  std::lock_guard<std::mutex> lock(health_mu_);
  return status_;
}

void KafkaSource::render_metrics(std::string& out) const {
  PrometheusText p;
  struct Row {
    std::string labels;
    int64_t high, applied;
    bool live;
  };
  std::vector<Row> rows;
  std::unique_lock<std::mutex> names(health_mu_);  // range_topic_
  for (size_t i = 0; i < slot_count_; ++i) {
    const Slot& s = slots_[i];
    // relaxed: statistics (kafka_source.h).
    const bool live = s.live.load(std::memory_order_relaxed);
    const int64_t high = s.high_watermark.load(std::memory_order_relaxed);
    const int64_t applied = s.applied.load(std::memory_order_relaxed);
    if (!live && applied < 0) continue;
    rows.push_back(
        Row{fmt::format("topic=\"{}\",partition=\"{}\"", escape_label_value(range_topic_[i / kc_.partitions_per_topic]),
                        i % kc_.partitions_per_topic),
            high, applied, live});
  }
  names.unlock();
  p.family("larder_kafka_partition_assigned", "gauge", "1 when the group assigned this partition to this sidecar.");
  for (const Row& r : rows) p.sample("larder_kafka_partition_assigned", r.labels, int64_t{r.live ? 1 : 0});
  p.family("larder_kafka_partition_high_watermark", "gauge",
           "The partition's high watermark (next offset to be produced) from the last fetch; -1 unknown.");
  for (const Row& r : rows) p.sample("larder_kafka_partition_high_watermark", r.labels, r.high);
  p.family("larder_kafka_partition_applied_offset", "gauge",
           "The next offset to apply: everything before it is in the segment; -1 none.");
  for (const Row& r : rows) p.sample("larder_kafka_partition_applied_offset", r.labels, r.applied);
  p.family("larder_kafka_partition_lag_messages", "gauge",
           "Messages in the partition not yet applied: high watermark - applied offset (assigned partitions).");
  for (const Row& r : rows) {
    if (r.live && r.high >= 0)
      p.sample("larder_kafka_partition_lag_messages", r.labels,
               std::max<int64_t>(0, r.high - std::max<int64_t>(0, r.applied)));
  }
  p.family("larder_kafka_commits_total", "counter", "Offset commits sent (applied offsets only).");
  p.sample("larder_kafka_commits_total", "", commits_.load(std::memory_order_relaxed));
  p.family("larder_kafka_commit_failures_total", "counter", "Offset commits the group coordinator refused.");
  p.sample("larder_kafka_commit_failures_total", "", commit_failures_.load(std::memory_order_relaxed));
  p.family("larder_kafka_rebalances_total", "counter", "Partition assignments and revocations.");
  p.sample("larder_kafka_rebalances_total", "", rebalances_.load(std::memory_order_relaxed));
  p.family("larder_kafka_errors_total", "counter", "Errors librdkafka reported (brokers down, consume errors).");
  p.sample("larder_kafka_errors_total", "", errors_.load(std::memory_order_relaxed));
  if (kc_.regex) {
    p.family("larder_kafka_topics_refused", "gauge",
             "Topics matching kafka.topics that are not consumed: more match than kafka.max_topics.");
    p.sample("larder_kafka_topics_refused", "", topics_refused_.load(std::memory_order_relaxed));
  }
  out += p.text();
}

}  // namespace larder::sidecar
