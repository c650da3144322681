// Delivery-tag bookkeeping for one channel of one connection epoch: which
// deliveries are still in flight, and the highest tag that may be acked with
// multiple=true.
//
// Invariant: take_ack() returns a tag T only when every delivery with a tag
// <= T has been settled (applied, or already rejected on the wire), and T
// itself was applied. A multiple=true ack of T therefore covers only
// deliveries settled as applied: rejected ones were settled with basic.reject
// first and are no longer outstanding at the broker, and no ack names a
// rejected tag. ("Applied" includes a refused message whose dead-letter copy
// the broker has confirmed: acking it is what the consumer wants.)
//
// Threading: consumer thread only (it owns the channel).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>

namespace larder::sidecar {

class AckTracker {
 public:
  enum class State : uint8_t { kInFlight = 0, kApplied = 1, kRejected = 2 };

  // Forgets everything (a new channel: tags restart at 1).
  void reset() {
    entries_.clear();
    pending_ack_ = 0;
    in_flight_ = 0;
  }

  // Records a new delivery. Tags on a channel increase strictly.
  void delivered(uint64_t tag) {
    entries_.push_back(Entry{tag, State::kInFlight});
    ++in_flight_;
  }

  // Marks `tag` applied or rejected. Returns false for a tag it does not
  // track (never delivered on this channel, or settled already).
  bool settle(uint64_t tag, bool applied) {
    Entry* e = find(tag);
    if (e == nullptr || e->state != State::kInFlight) return false;
    e->state = applied ? State::kApplied : State::kRejected;
    --in_flight_;
    return true;
  }

  // Pops the settled prefix and returns the tag to ack with multiple=true, or
  // 0 when there is nothing new to ack.
  uint64_t take_ack() {
    while (!entries_.empty() && entries_.front().state != State::kInFlight) {
      if (entries_.front().state == State::kApplied) pending_ack_ = entries_.front().tag;
      entries_.pop_front();
    }
    const uint64_t tag = pending_ack_;
    pending_ack_ = 0;
    return tag;
  }

  // Deliveries neither applied nor rejected yet.
  uint64_t in_flight() const { return in_flight_; }
  // Deliveries not yet acked or rejected on the wire (in flight, or settled
  // but waiting for take_ack()).
  size_t unsettled_window() const { return entries_.size(); }

 private:
  struct Entry {
    uint64_t tag;
    State state;
  };

  Entry* find(uint64_t tag) {
    if (entries_.empty() || tag < entries_.front().tag) return nullptr;
    // Tags are contiguous on a channel, so this is usually a direct hit.
    const uint64_t guess = tag - entries_.front().tag;
    if (guess < entries_.size() && entries_[guess].tag == tag) return &entries_[guess];
    for (Entry& e : entries_) {
      if (e.tag == tag) return &e;
    }
    return nullptr;
  }

  std::deque<Entry> entries_;
  uint64_t pending_ack_ = 0;
  uint64_t in_flight_ = 0;
};

}  // namespace larder::sidecar
