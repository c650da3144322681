// Ingest options: how the decoder turns a message's members into a table's
// field values (`from`, `transform`, allow_unknown_fields). They are
// configuration, not schema: the segment and its fingerprint do not cover
// them. Config builds them (Config::decode_options()); Decoder reads them.
// Plain data: built on the main thread at start, read-only afterwards.
#pragma once

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
};

// Per-table decoding options that are not part of the segment schema.
struct TableDecodeOptions {
  bool allow_unknown_fields = false;
  // Indexed like the table's fields; missing entries use the defaults (the
  // member of the field's own name, no transform).
  std::vector<FieldIngest> fields;
};

}  // namespace larder::sidecar
