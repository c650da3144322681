// Names of the reject reasons (see reject_reason.h). Any thread.
#include "decode/reject_reason.h"

namespace larder::sidecar {

const char* reject_reason_name(RejectReason reason) noexcept {
  switch (reason) {
    case RejectReason::kBadJson: return "bad_json";
    case RejectReason::kNotObject: return "not_object";
    case RejectReason::kEmptyBatch: return "empty_batch";
    case RejectReason::kMissingMember: return "missing_member";
    case RejectReason::kWrongMemberType: return "wrong_member_type";
    case RejectReason::kDuplicateMember: return "duplicate_member";
    case RejectReason::kUnknownTable: return "unknown_table";
    case RejectReason::kUnknownField: return "unknown_field";
    case RejectReason::kWrongType: return "wrong_type";
    case RejectReason::kOutOfRange: return "out_of_range";
    case RejectReason::kNonFinite: return "non_finite";
    case RejectReason::kEmptyKey: return "empty_key";
    case RejectReason::kKeyTooLong: return "key_too_long";
    case RejectReason::kStringTooLong: return "string_too_long";
    case RejectReason::kVectorLength: return "vector_length";
    case RejectReason::kBadEventTime: return "bad_event_time";
    case RejectReason::kBadOp: return "bad_op";
    case RejectReason::kBadValue: return "bad_value";
    case RejectReason::kEventTimeInFuture: return "event_time_in_future";
    case RejectReason::kEventTimeTooOld: return "event_time_too_old";
    case RejectReason::kTableFull: return "table_full";
    case RejectReason::kArenaFull: return "aggregate_arena_full";
    case RejectReason::kNoStreamOffset: return "no_stream_offset";
    case RejectReason::kBadProtobuf: return "bad_protobuf";
    case RejectReason::kBadAvro: return "bad_avro";
    case RejectReason::kUnknownSchemaId: return "unknown_schema_id";
    case RejectReason::kInternal: return "internal";
  }
  return "unknown_reason";
}

std::array<RejectReason, kRejectReasonCount> all_reject_reasons() noexcept {
  std::array<RejectReason, kRejectReasonCount> out{};
  for (size_t i = 0; i < kRejectReasonCount; ++i) out[i] = static_cast<RejectReason>(i);
  return out;
}

}  // namespace larder::sidecar
