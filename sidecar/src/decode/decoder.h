// Message format v1 decoder (docs/message-format.md): a message body (one
// JSON object or an array of them) to a DecodedBatch of typed updates whose
// field values are resolved to the schema's field indexes, ready for
// larder::Writer::apply/remove.
//
// One message member can feed several targets (docs/aggregates.md): the
// declared fields computed `from` it (each through its own transform), and
// the table's aggregate sources, which get either the member's raw value or,
// when the source names a declared field, that field's value. The decoder
// resolves all of that once, at construction, into a per-table map from
// member name to targets, so decoding a member is one lookup.
//
// A message decodes whole or not at all: the first problem stops decoding and
// is reported as a RejectReason plus a human-readable detail.
//
// Threading: a Decoder holds a simdjson parser and scratch buffers, so it is
// used by one thread at a time (the sidecar's consumer thread). A
// DecodedBatch owns all its storage and may be moved to another thread (the
// writer thread) and back for reuse.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "config/ingest.h"
#include "decode/pod_buffer.h"
#include "decode/reject_reason.h"
#include "larder/layout/schema.h"
#include "larder/writer/writer.h"

namespace larder::sidecar {

// kUnpin (docs/operations.md): deletes the key only when its stored event
// time is beyond pinned_after_ms (a key pinned by a future event time);
// otherwise it is ignored like a stale delete.
enum class UpdateOp : uint8_t { kUpsert = 0, kDelete = 1, kUnpin = 2 };

// How much of an update's `id` and `key` logs and dead-letter headers carry.
inline constexpr size_t kMaxLoggedIdBytes = 128;

struct DecodedUpdate {
  uint32_t table = 0;
  UpdateOp op = UpdateOp::kUpsert;
  int64_t event_time_ms = 0;
  uint32_t key_offset = 0;  // into DecodedBatch::bytes
  uint32_t key_length = 0;
  uint32_t values_begin = 0;  // into DecodedBatch::values
  uint32_t values_count = 0;
  uint32_t sources_begin = 0;  // into DecodedBatch::sources: aggregate inputs (upserts only)
  uint32_t sources_count = 0;
  uint64_t event_id = 0;   // larder::event_id_hash of the update's `id`; 0 when absent or ""
  uint32_t id_offset = 0;  // the update's `id` (first kMaxLoggedIdBytes), into DecodedBatch::bytes
  uint32_t id_length = 0;
  int64_t pinned_after_ms = 0;  // kUnpin only: the decoder's clock plus the table's max_future_skew
};

// The updates of one message. FieldValue::data of strings and vectors points
// into `bytes` / `floats`; moving the batch keeps those pointers valid
// (vectors move their buffers), copying it does not, so it is move-only.
class DecodedBatch {
 public:
  DecodedBatch() = default;
  DecodedBatch(DecodedBatch&&) noexcept = default;
  DecodedBatch& operator=(DecodedBatch&&) noexcept = default;
  DecodedBatch(const DecodedBatch&) = delete;
  DecodedBatch& operator=(const DecodedBatch&) = delete;

  // Empties the batch and keeps its capacity.
  void clear() noexcept;

  size_t size() const noexcept { return updates_.size(); }
  bool empty() const noexcept { return updates_.empty(); }
  const DecodedUpdate& update(size_t i) const noexcept { return updates_[i]; }
  std::string_view key(const DecodedUpdate& u) const noexcept { return {bytes_.data() + u.key_offset, u.key_length}; }
  std::span<const FieldValue> values(const DecodedUpdate& u) const noexcept {
    return {values_.data() + u.values_begin, u.values_count};
  }
  // The update's aggregate source values, by source index
  // (layout::plan_aggregates(table).sources), for Writer::apply.
  std::span<const SourceValue> sources(const DecodedUpdate& u) const noexcept {
    return {sources_.data() + u.sources_begin, u.sources_count};
  }
  // The update's own `id` (its first kMaxLoggedIdBytes; "" when absent), for
  // logs and dead letters.
  std::string_view id(const DecodedUpdate& u) const noexcept { return {bytes_.data() + u.id_offset, u.id_length}; }
  // The message's first `id`, if any (for logs).
  const std::string& first_id() const noexcept { return first_id_; }

 private:
  friend class Decoder;
  friend class UpdateBuilder;
  PodBuffer<DecodedUpdate> updates_;
  PodBuffer<FieldValue> values_;
  PodBuffer<SourceValue> sources_;
  PodBuffer<char> bytes_;    // keys and string values
  PodBuffer<float> floats_;  // vector values
  std::string first_id_;
};

struct DecodeResult {
  bool ok = true;
  RejectReason reason = RejectReason::kBadJson;  // meaningful when !ok
  std::string detail;                            // e.g. `update 3: field "ctr": expected a number`
  // When !ok: the refused update's `id` and `key` as far as the decoder read
  // them before the problem (first kMaxLoggedIdBytes each; "" when not read).
  std::string update_id;
  std::string key;

  static DecodeResult success() { return {}; }
};

class Decoder {
 public:
  // `options` is indexed like schema.tables (missing entries use defaults).
  // Throws std::invalid_argument when the options do not fit the schema (a
  // transform on a string field, a string-input transform on a member that
  // another target reads as a number, ...); Config validates all of that
  // with key paths first.
  Decoder(const layout::Schema& schema, std::vector<TableDecodeOptions> options);
  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  // Decodes `body` into `out` (cleared first). On failure `out` is left
  // empty. Never throws on any input; allocates only to grow buffers.
  // Event-time bounds (TableDecodeOptions::event_time) are checked against
  // CLOCK_REALTIME, read at most once per message.
  DecodeResult decode(std::string_view body, DecodedBatch& out);
  // Same, against `now_unix_ms` instead of the clock (tests).
  DecodeResult decode(std::string_view body, DecodedBatch& out, int64_t now_unix_ms);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace larder::sidecar
