// Why a message was dead-lettered instead of applied. One enumerator per
// reason, each with a stable snake_case name used in logs, metrics and
// docs/message-format.md. Pure data: safe on any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace larder::sidecar {

enum class RejectReason : uint8_t {
  kBadJson = 0,        // not well-formed JSON (or trailing content after it)
  kNotObject,          // the body, or an element of a batch, is not an object
  kEmptyBatch,         // the body is an empty array
  kMissingMember,      // table, key, event_time, or fields (for an upsert) is absent
  kWrongMemberType,    // a top-level member has the wrong JSON type
  kDuplicateMember,    // a member or field name appears twice in one object
  kUnknownTable,       // `table` names no table of the schema
  kUnknownField,       // a field the table does not have (and allow_unknown_fields is false)
  kWrongType,          // a field value of the wrong JSON type (or a fraction for int64)
  kOutOfRange,         // an integer outside int64, or a number outside float32
  kNonFinite,          // a number that does not fit a finite double (e.g. 1e999)
  kEmptyKey,           // `key` is ""
  kKeyTooLong,         // `key` longer than the table's key_max_len bytes
  kStringTooLong,      // a string field longer than its max_len bytes
  kVectorLength,       // a vector with other than `dims` elements
  kBadEventTime,       // event_time is not a valid ms integer or RFC 3339 timestamp
  kBadOp,              // op is neither "upsert" nor "delete"
  kBadValue,           // a field's transform refused its input (outside the domain, e.g. log1p of -2,
                       // or a non-finite result)
  kEventTimeInFuture,  // event_time further ahead of the writer's clock than the table's max_future_skew
  kEventTimeTooOld,    // event_time before the table's min_event_time (e.g. seconds sent as milliseconds)
  kTableFull,          // the writer refused a new key: the table holds `capacity` keys
  kArenaFull,          // the writer refused an event: its key needs an aggregate arena chunk and none is free
  kNoStreamOffset,     // a delivery from a stream queue without its x-stream-offset header
  kBadProtobuf,        // not a well-formed Protobuf message (truncated, a bad tag or length, trailing bytes)
  kBadAvro,            // not a well-formed Avro datum of the schema (truncated, a bad length or union branch)
  kUnknownSchemaId,    // a Confluent wire-format header with another schema id than the configured one
  kInternal,           // the writer refused an update the decoder accepted (a bug)
};

inline constexpr size_t kRejectReasonCount = static_cast<size_t>(RejectReason::kInternal) + 1;

// The stable name, e.g. "unknown_field". Never null.
const char* reject_reason_name(RejectReason reason) noexcept;

// Every reason, in enumerator order (for tests and per-reason counters).
std::array<RejectReason, kRejectReasonCount> all_reject_reasons() noexcept;

}  // namespace larder::sidecar
