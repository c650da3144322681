// What the decoder tests share (decoder_test.cc: JSON; format_decoder_test.cc:
// Protocol Buffers and Avro): the aggregate and distinct_count tables they
// build, a decoded batch walked into comparable text, and the check of a
// refused message. Header-only.
#pragma once

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "config/ingest.h"
#include "decode/decoder.h"
#include "larder/layout/schema.h"

namespace larder::sidecar::decoder_test {

// An aggregate of `source` (empty: counts events) over a one-hour window.
inline layout::AggregateSpec aggregate(const char* name, const char* source, layout::AggregateFn fn) {
  layout::AggregateSpec spec;
  spec.name = name;
  spec.source = source;
  spec.fn = fn;
  spec.window_ms = 3'600'000;
  return spec;
}

// The distinct_count tests' table "d": a string field (country), an int64
// field (n) and an int64 field bucketized from the member "amount" (band,
// distinct_options()); the caller adds the aggregates.
inline layout::TableSpec distinct_table() {
  using layout::FieldType;
  layout::TableSpec t;
  t.name = "d";
  t.capacity = 16;
  t.fields = {{"country", FieldType::kString, 4}, {"n", FieldType::kInt64, 1}, {"band", FieldType::kInt64, 1}};
  return t;
}

inline std::vector<TableDecodeOptions> distinct_options() {
  std::vector<TableDecodeOptions> o(1);
  o[0].fields.resize(3);
  o[0].fields[2] = {"amount", TransformChain::parse_yaml("[{bucketize: {boundaries: [10, 100]}}]")};
  return o;
}

// A batch as comparable text, one line per update: table, op, key, event
// time, id, every value (by field index) and every aggregate source (value
// and distinct hash, by source index). Two decoders agree on a message when
// their dumps are equal.
inline std::string dump(const DecodedBatch& b) {
  using layout::FieldType;
  std::string out;
  for (size_t i = 0; i < b.size(); ++i) {
    const DecodedUpdate& u = b.update(i);
    out += fmt::format("t{} op{} {} @{} id={} event_id={}:", u.table, static_cast<int>(u.op), b.key(u), u.event_time_ms,
                       b.id(u), u.event_id);
    for (const FieldValue& v : b.values(u)) {
      switch (v.type) {
        case FieldType::kString:
          out += fmt::format(" {}=\"{}\"", v.field, std::string_view(static_cast<const char*>(v.data), v.length));
          break;
        case FieldType::kFloat32Vector: {
          out += fmt::format(" {}=[", v.field);
          for (uint32_t k = 0; k < v.length; ++k) out += fmt::format("{},", static_cast<const float*>(v.data)[k]);
          out += "]";
          break;
        }
        case FieldType::kInt64:
        case FieldType::kBool: out += fmt::format(" {}={}", v.field, v.i64); break;
        default: out += fmt::format(" {}={}", v.field, v.f64);
      }
    }
    for (const SourceValue& sv : b.sources(u)) out += fmt::format(" src{}={}/{}", sv.source, sv.value, sv.distinct);
    out += "\n";
  }
  return out;
}

// A refusal as every decoder must make it: not ok, for `reason`, with a
// detail, and nothing left in the batch. `what` (the body, or a part of it)
// is printed with a failure.
inline void expect_refused(const DecodeResult& r, const DecodedBatch& batch, RejectReason reason,
                           std::string_view what) {
  EXPECT_FALSE(r.ok) << what;
  EXPECT_EQ(std::string(reject_reason_name(r.reason)), std::string(reject_reason_name(reason)))
      << what << " -> " << r.detail;
  EXPECT_FALSE(r.detail.empty()) << what;
  EXPECT_TRUE(batch.empty()) << "a rejected message leaves no updates: " << what;
}

}  // namespace larder::sidecar::decoder_test
