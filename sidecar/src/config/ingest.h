// Ingest options: how the decoder turns a message's members into a table's
// field values (`from`, `transform`, allow_unknown_fields). They are
// configuration, not schema: the segment and its fingerprint do not cover
// them. Config builds them (Config::decode_options()); Decoder reads them.
// Plain data: built on the main thread at start, read-only afterwards.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/transform.h"

namespace larder::sidecar {

// How a declared field gets its value from a message (ingest config, not part
// of the segment schema).
struct FieldIngest {
  // The `fields` member the field is computed from; "" (or the field's own
  // name): the member of the field's name. Several fields may share a member.
  std::string from;
  // Applied to the member's value before it is stored; empty: stored as is.
  // Its output converts to the field's type (int64 output into a float
  // field; Config rejects float64 output into an int64 field).
  TransformChain transform;
  // A list `from: [a, b, c]`: the members, in order, that make the array a
  // `project` step reads (from is then ""). The field is written when an
  // update carries all of them; some but not all rejects the message.
  std::vector<std::string> from_members;
};

// Event-time bounds (docs/sidecar.md, `event_time`): the decoder rejects an
// update whose event time lies more than max_future_skew_ms ahead of the
// sidecar's clock (event_time_in_future), or before min_event_time_ms
// (event_time_too_old). A plain struct is unbounded; Config fills in the
// documented defaults (kDefaultMaxFutureSkewMs, kDefaultMinEventTimeMs).
struct EventTimeBounds {
  static constexpr int64_t kOff = -1;
  int64_t max_future_skew_ms = kOff;  // >= 0, or kOff: no upper bound
  int64_t min_event_time_ms = 0;      // 0: every valid event time passes
};

// Five minutes: NTP keeps producer clocks within milliseconds, so this only
// catches broken clocks and wrong units, never honest skew.
inline constexpr int64_t kDefaultMaxFutureSkewMs = 5 * 60 * 1000;
// 2000-01-01T00:00:00Z: a time in seconds (1.7e9 ms, January 1970) is too old.
inline constexpr int64_t kDefaultMinEventTimeMs = 946684800000;

// Per-table decoding options that are not part of the segment schema.
struct TableDecodeOptions {
  bool allow_unknown_fields = false;
  // Indexed like the table's fields; missing entries use the defaults (the
  // member of the field's own name, no transform).
  std::vector<FieldIngest> fields;
  EventTimeBounds event_time;
};

}  // namespace larder::sidecar
