// The writer thread (see writer_thread.h). Every function here runs on the
// writer thread.
#include "apply/writer_thread.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <vector>

#include "larder/layout/clock.h"

namespace larder::sidecar {

Outcome apply_batch(Writer& writer, const DecodedBatch& batch, RejectReason* reason, uint64_t* stale, uint64_t* applied,
                    const LagRecorder* lag, uint64_t* duplicates, uint64_t* late, const StreamPlace* place,
                    uint32_t* refused_update) {
  Outcome outcome = Outcome::kApplied;
  const size_t n = batch.size();
  if (place != nullptr && place->skip_updates >= n) {
    // Nothing left to apply (no updates, or all applied before a restart).
    writer.set_position(SourcePosition{place->partition, place->offset + 1, 0});
    return outcome;
  }
  // The position stored with update i: the message is wholly applied after
  // its last update only.
  auto position_after = [&](size_t i) {
    const bool last = i + 1 == n;
    if (!place->next_offsets.empty()) {
      return SourcePosition{place->partition, last ? place->offset + 1 : place->next_offsets[i], 0};
    }
    return SourcePosition{place->partition, last ? place->offset + 1 : place->offset,
                          last ? 0u : static_cast<uint32_t>(i + 1)};
  };
  auto tally = [&](size_t i, ApplyResult r) {
    switch (r) {
      case ApplyResult::kApplied:
        if (applied != nullptr) ++*applied;
        if (lag != nullptr) lag->histogram->observe_ns((lag->now_unix_ms - batch.update(i).event_time_ms) * 1'000'000);
        break;
      case ApplyResult::kStale:
        if (stale != nullptr) ++*stale;
        break;
      case ApplyResult::kDuplicate:
        if (duplicates != nullptr) ++*duplicates;
        break;
      case ApplyResult::kLate:
        if (late != nullptr) ++*late;
        break;
      case ApplyResult::kTableFull:
      case ApplyResult::kArenaFull:
      case ApplyResult::kInvalid:
        if (outcome == Outcome::kApplied) {
          *reason = r == ApplyResult::kTableFull   ? RejectReason::kTableFull
                    : r == ApplyResult::kArenaFull ? RejectReason::kArenaFull
                                                   : RejectReason::kInternal;
          if (refused_update != nullptr) *refused_update = static_cast<uint32_t>(i);
        }
        outcome = Outcome::kRejected;
        break;
    }
  };
  // Runs of upserts go through Writer::upsert_many, up to kRun at a time, so
  // the writer prefetches the next keys' slots while it applies each one
  // (docs/performance.md, "Batched upserts"); deletes and unpins one by one.
  // The first updates of a run wait on their slots (nothing fetched them
  // ahead), so a run takes a whole message of a few hundred updates at once.
  constexpr size_t kRun = 256;
  // Per thread, not per call: initialising kRun entries (about 24 KB) cost
  // a one-update message more than its apply (apply_batch is not reentrant).
  static thread_local std::array<Upsert, kRun> run;
  static thread_local std::array<SourcePosition, kRun> positions;
  static thread_local std::array<ApplyResult, kRun> results;
  size_t i = place != nullptr ? place->skip_updates : 0;
  while (i < n) {
    const DecodedUpdate& u = batch.update(i);
    if (u.op == UpdateOp::kUpsert) {
      size_t m = 0;
      for (; m < kRun && i + m < n && batch.update(i + m).op == UpdateOp::kUpsert; ++m) {
        const DecodedUpdate& x = batch.update(i + m);
        run[m] = Upsert{x.table, batch.key(x), x.event_time_ms, batch.values(x), batch.sources(x), x.event_id, nullptr};
        if (place != nullptr) {
          positions[m] = position_after(i + m);
          run[m].position = &positions[m];
        }
      }
      writer.upsert_many(std::span(run.data(), m), std::span(results.data(), m));
      for (size_t k = 0; k < m; ++k) tally(i + k, results[k]);
      i += m;
      continue;
    }
    if (place != nullptr) writer.stage_position(position_after(i));
    ApplyResult r = ApplyResult::kInvalid;
    switch (u.op) {
      case UpdateOp::kUpsert: break;  // above
      case UpdateOp::kDelete: r = writer.remove(u.table, batch.key(u), u.event_time_ms); break;
      case UpdateOp::kUnpin: r = writer.unpin(u.table, batch.key(u), u.event_time_ms, u.pinned_after_ms); break;
    }
    tally(i, r);
    ++i;
  }
  return outcome;
}

namespace {

// The newest event time of a message's updates; 0 when it has none.
int64_t newest_event_ms(const DecodedBatch& batch) noexcept {
  int64_t newest = 0;
  for (size_t i = 0; i < batch.size(); ++i) newest = std::max(newest, batch.update(i).event_time_ms);
  return newest;
}

// Applies one WorkItem; a stream message's position goes with it.
Outcome apply_item(Writer& writer, const WorkItem& item, StreamSync* sync, RejectReason* reason,
                   uint32_t* refused_update, uint64_t* applied, const LagRecorder* lag, uint64_t* duplicates,
                   uint64_t* late) {
  if (item.offset == kNoOffset) {
    return apply_batch(writer, item.batch, reason, nullptr, applied, lag, duplicates, late, nullptr, refused_update);
  }
  // The stream sync follows the RabbitMQ stream only (partition 0 of lane 0).
  const bool streamed = sync != nullptr && item.source == 0;
  if (streamed && item.gap_from != kNoOffset) sync->gap(item.gap_from, item.offset);
  Outcome outcome = Outcome::kSkipped;
  if (item.position_only) {
    writer.set_position(SourcePosition{item.partition, item.offset + 1, 0});
  } else {
    // A poller's rows carry one place per update; anything else does not
    // match the batch and would store wrong positions: refuse it whole.
    if (!item.update_next_offsets.empty() && item.update_next_offsets.size() != item.batch.size()) {
      *reason = RejectReason::kInternal;
      return Outcome::kRejected;
    }
    const StreamPlace place{item.offset, item.skip_updates, item.partition, item.update_next_offsets};
    outcome = apply_batch(writer, item.batch, reason, nullptr, applied, lag, duplicates, late, &place, refused_update);
  }
  if (streamed) sync->applied(item.offset, item.position_only ? 0 : newest_event_ms(item.batch));
  return outcome;
}

}  // namespace

layout::SyncState combined_sync_state(const Pipeline& pipeline) noexcept {
  // Ordered from least to most ready; the segment shows the least ready.
  bool any_incomplete = false, any_catching_up = false, any_ready = false;
  for (const auto& lane : pipeline.lanes) {
    // relaxed: a status report (see pipeline.h).
    switch (static_cast<layout::SyncState>(lane->sync_state.load(std::memory_order_relaxed))) {
      case layout::SyncState::kIncomplete: any_incomplete = true; break;
      case layout::SyncState::kCatchingUp: any_catching_up = true; break;
      case layout::SyncState::kReady: any_ready = true; break;
      case layout::SyncState::kUnknown: break;
    }
  }
  if (any_incomplete) return layout::SyncState::kIncomplete;
  if (any_catching_up) return layout::SyncState::kCatchingUp;
  return any_ready ? layout::SyncState::kReady : layout::SyncState::kUnknown;
}

layout::ConnectionState combined_connection_state(const Pipeline& pipeline) noexcept {
  bool any_disconnected = false, any_connecting = false, any_connected = false;
  for (const auto& lane : pipeline.lanes) {
    // relaxed: a status report (see pipeline.h).
    switch (static_cast<layout::ConnectionState>(lane->connection_state.load(std::memory_order_relaxed))) {
      case layout::ConnectionState::kDisconnected: any_disconnected = true; break;
      case layout::ConnectionState::kConnecting: any_connecting = true; break;
      case layout::ConnectionState::kConnected: any_connected = true; break;
      default: break;
    }
  }
  if (any_disconnected) return layout::ConnectionState::kDisconnected;
  if (any_connecting) return layout::ConnectionState::kConnecting;
  return any_connected ? layout::ConnectionState::kConnected : layout::ConnectionState::kStopped;
}

namespace {

// What the log last said about generation switches.
struct SwitchSeen {
  bool active = false;
  uint64_t switches = 0;
  std::string error;
};

// Logs a switch starting, finishing or refused, and sets its gauges.
void report_switch(const Writer& writer, SidecarMetrics& metrics, SwitchSeen* seen) {
  const SwitchProgress p = writer.switch_progress();
  metrics.generation.set(static_cast<int64_t>(p.generation));
  metrics.switch_active.set(p.active ? 1 : 0);
  metrics.switch_copied_slots.set(static_cast<int64_t>(p.slots_copied));
  metrics.switch_total_slots.set(static_cast<int64_t>(p.slots_total));
  metrics.switches.set(static_cast<int64_t>(p.switches));
  metrics.switch_last_ns.set(p.last_duration_ns);
  if (p.active && !seen->active) {
    spdlog::info("writer: generation switch started: copying {} slots into generation {}", p.slots_total,
                 p.generation + 1);
  }
  if (p.switches != seen->switches) {
    // A small table's switch can start and finish inside one maintain pass,
    // between two looks: its start is still worth a line of its own.
    if (!seen->active) {
      spdlog::info("writer: generation switch started: copied into generation {} within one maintenance pass",
                   p.generation);
    }
    spdlog::info("writer: generation {} published in {:.3f} s; readers follow by themselves", p.generation,
                 static_cast<double>(p.last_duration_ns) / 1e9);
  }
  if (!p.last_error.empty() && p.last_error != seen->error) spdlog::error("writer: {}", p.last_error);
  seen->active = p.active;
  seen->switches = p.switches;
  seen->error = p.last_error;
}

}  // namespace

void run_writer_thread(Writer& writer, Pipeline& pipeline, StreamSync* sync) {
  moodycamel::ConsumerToken ctok(pipeline.work);
  // One producer token per lane's done queue: this thread is its only producer.
  std::vector<moodycamel::ProducerToken> ptoks;
  ptoks.reserve(pipeline.lanes.size());
  for (auto& lane : pipeline.lanes) ptoks.emplace_back(lane->done);
  std::array<WorkItem, 64> items;
  uint32_t reported_state = ~0u;
  layout::SyncState reported_sync = layout::SyncState::kUnknown;
  bool sync_reported = false;
  int64_t last_maintain_ns = 0;
  uint64_t table_full_logged = 0;
  uint64_t arena_full_logged = 0;
  SidecarMetrics& metrics = pipeline.metrics;
  SwitchSeen switch_seen;

  for (;;) {
    const size_t n =
        pipeline.work.wait_dequeue_bulk_timed(ctok, items.begin(), items.size(), std::chrono::microseconds(20'000));
    // The sync state first: a new target reaches the segment before this
    // bulk's updates, and READY is decided on what the last bulk applied.
    if (sync != nullptr) sync->poll(layout::now_unix_ns() / 1'000'000);
    uint64_t applied_updates = 0, applied_messages = 0, duplicates = 0, late = 0;
    // One wall-clock read per bulk: the bulk applies within microseconds,
    // well under the millisecond resolution of event times.
    const LagRecorder lag{&metrics.visible_lag_seconds, n > 0 ? layout::now_unix_ns() / 1'000'000 : 0};
    int64_t t0 = n > 0 ? layout::now_mono_ns() : 0;
    const int64_t dequeued = t0;
    for (size_t i = 0; i < n; ++i) {
      WorkItem& item = items[i];
      metrics.stage_handover_seconds.observe_ns(dequeued - item.enqueued_mono_ns);
      Completion c;
      c.partition = item.partition;
      c.offset = item.offset;
      c.epoch = item.epoch;
      c.delivery_tag = item.delivery_tag;
      c.outcome =
          apply_item(writer, item, sync, &c.reason, &c.refused_update, &applied_updates, &lag, &duplicates, &late);
      const int64_t t1 = layout::now_mono_ns();
      metrics.apply_seconds.observe_ns(t1 - t0);
      metrics.stage_apply_seconds.observe_ns(t1 - dequeued);
      c.applied_mono_ns = t1;
      t0 = t1;
      // A poller's item holds many rows, each a message of its own to the
      // metrics (as when each had an item of its own): count its rows applied.
      if (c.outcome == Outcome::kApplied) {
        applied_messages += item.update_next_offsets.empty() ? 1 : item.update_next_offsets.size();
      }
      if (c.outcome == Outcome::kRejected && c.reason == RejectReason::kTableFull && table_full_logged++ % 1000 == 0) {
        spdlog::error(
            "writer: a table is full; new keys are refused and their messages dead-lettered "
            "(raise the table's capacity; {} such messages so far)",
            table_full_logged);
      }
      if (c.outcome == Outcome::kRejected && c.reason == RejectReason::kArenaFull && arena_full_logged++ % 1000 == 0) {
        spdlog::error(
            "writer: a table's aggregate arena is full; events of keys that need one more bucket are refused and "
            "their messages dead-lettered (raise the table's arena_chunks; {} such messages so far)",
            arena_full_logged);
      }
      c.batch = std::move(item.batch);
      c.update_next_offsets = std::move(item.update_next_offsets);
      const uint32_t lane = item.source < ptoks.size() ? item.source : 0;
      pipeline.lanes[lane]->done.enqueue(ptoks[lane], std::move(c));
    }
    if (n > 0) {
      metrics.messages_applied.add(applied_messages);
      metrics.updates_applied.add(applied_updates);
      metrics.updates_duplicate.add(duplicates);
      metrics.updates_late.add(late);
      // Write point of the writer's progress (see SidecarMetrics): the
      // timestamp, then the count with release. t0 is the last apply's end.
      metrics.last_done_mono_ns.set(t0);
      metrics.work_done.add_release(n);
    }

    // relaxed: status reports forwarded to the segment (see pipeline.h).
    const uint32_t state = static_cast<uint32_t>(combined_connection_state(pipeline));
    pipeline.connection_state.store(state, std::memory_order_relaxed);
    if (state != reported_state) {
      writer.set_connection_state(static_cast<layout::ConnectionState>(state));
      reported_state = state;
    }
    const layout::SyncState sync_state = combined_sync_state(pipeline);
    if (!sync_reported || sync_state != reported_sync) {
      writer.set_sync_state(sync_state);
      reported_sync = sync_state;
      sync_reported = true;
    }
    // relaxed: a count; exchange moves each reject into the segment once.
    if (const uint64_t rejects = pipeline.pending_rejects.exchange(0, std::memory_order_relaxed)) {
      writer.add_messages_rejected(rejects);
    }
    // Aggregates whose buckets left a window, a slice at a time between bulks
    // of messages, so that a boundary many keys share neither stalls updates
    // nor waits for the next maintain().
    if (writer.refresh_due()) writer.refresh(0, 2048);
    // A generation switch copies a slice between bulks too, so that it
    // finishes at the pace of the copy, not of maintain().
    if (writer.switch_active()) writer.switch_step();
    // A snapshot's copy, when one was asked for: between bulks, so the
    // image holds whole messages only.
    pipeline.images.serve(writer);
    const int64_t now = layout::now_mono_ns();
    metrics.writer_heartbeat_mono_ns.set(now);
    if (now - last_maintain_ns >= std::chrono::nanoseconds(kMaintainInterval).count()) {
      writer.maintain();  // heartbeat + incremental tombstone reclaim, automatic growth
      last_maintain_ns = now;
      report_switch(writer, metrics, &switch_seen);
    }
    // acquire: pairs with main's release store, after the consumer's last
    // enqueue, so an empty queue seen after it stays empty.
    if (n == 0 && pipeline.writer_stop.load(std::memory_order_acquire) && pipeline.work.size_approx() == 0) {
      break;
    }
  }
  // relaxed: the consumer has stopped (writer_stop); this takes the last count.
  if (const uint64_t rejects = pipeline.pending_rejects.exchange(0, std::memory_order_relaxed)) {
    writer.add_messages_rejected(rejects);
  }
  writer.set_connection_state(layout::ConnectionState::kStopped);
  writer.heartbeat();
  pipeline.images.close();  // no more copies: waiting requesters give up
}

}  // namespace larder::sidecar
