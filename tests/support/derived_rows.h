// Rows whose every field is derived from one counter, so that a row mixing
// two versions (a torn read) is detectable: verify() recomputes each field
// from `clicks` and compares, and the event time must equal the counter too.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "larder/client.h"
#include "larder/writer/writer.h"
#include "support/test_segment.h"

namespace larder::testing {

inline constexpr uint32_t kDerivedDims = 16;

// Table "rows": the every-type table with a 16-dim vector and a string
// "tag" long enough for "v" + 8 digits.
inline layout::TableSpec derived_table(uint64_t capacity) {
  layout::TableSpec t = every_type_table("rows", capacity, kDerivedDims);
  t.key_max_len = 24;
  t.fields[5] = {"tag", layout::FieldType::kString, 12};
  return t;
}

inline std::string derived_key(uint64_t k) { return "key:" + std::to_string(k); }

// Writes version c of key k (event time c).
inline ApplyResult write_derived(Writer& w, uint64_t k, int64_t c) {
  float emb[kDerivedDims];
  for (uint32_t i = 0; i < kDerivedDims; ++i) emb[i] = static_cast<float>((c + i) % 65536);
  const std::string tag = "v" + std::to_string(c % 100000000);
  const FieldValue values[] = {
      FieldValue::int64(0, c),
      FieldValue::float64(1, static_cast<double>(c) * 0.5 + static_cast<double>(k)),
      FieldValue::float32(2, static_cast<float>(c % 4096)),
      FieldValue::boolean(3, (c & 1) != 0),
      FieldValue::vector(4, emb),
      FieldValue::string(5, tag),
  };
  return w.upsert(0, derived_key(k), c, values);
}

// Version c of key k as one upsert of a batch (Writer::upsert_many): the
// same values as write_derived, kept here so that the Upsert's spans stay
// valid. Not copyable: the spans point into it.
struct DerivedUpsert {
  float emb[kDerivedDims];
  std::string key, tag;
  FieldValue values[6];

  DerivedUpsert() = default;
  DerivedUpsert(const DerivedUpsert&) = delete;
  DerivedUpsert& operator=(const DerivedUpsert&) = delete;

  Upsert set(uint64_t k, int64_t c) {
    for (uint32_t i = 0; i < kDerivedDims; ++i) emb[i] = static_cast<float>((c + i) % 65536);
    key = derived_key(k);
    tag = "v" + std::to_string(c % 100000000);
    values[0] = FieldValue::int64(0, c);
    values[1] = FieldValue::float64(1, static_cast<double>(c) * 0.5 + static_cast<double>(k));
    values[2] = FieldValue::float32(2, static_cast<float>(c % 4096));
    values[3] = FieldValue::boolean(3, (c & 1) != 0);
    values[4] = FieldValue::vector(4, emb);
    values[5] = FieldValue::string(5, tag);
    Upsert u;
    u.key = key;
    u.event_time_ms = c;
    u.values = values;
    return u;
  }
};

// Resolved fields of the "rows" table for verify_derived().
struct DerivedFields {
  Field clicks, spend, ctr, premium, embedding, tag;

  static DerivedFields of(const Table& t) {
    return {t.field("clicks"),  t.field("spend"),     t.field("ctr"),
            t.field("premium"), t.field("embedding"), t.field("tag")};
  }
  // Fields in the declaration order of derived_table().
  static DerivedFields in_order(const std::vector<Field>& f) { return {f[0], f[1], f[2], f[3], f[4], f[5]}; }
};

// True when the row is one consistent version of key k. Never allocates.
inline bool verify_derived(const RowView& row, const DerivedFields& f, uint64_t k, int64_t event_time_ms) {
  const int64_t c = row.i64(f.clicks);
  if (event_time_ms != c || row.event_time_ms() != c) return false;
  if (row.f64(f.spend) != static_cast<double>(c) * 0.5 + static_cast<double>(k)) return false;
  if (row.f32(f.ctr) != static_cast<float>(c % 4096)) return false;
  if (row.boolean(f.premium) != ((c & 1) != 0)) return false;
  const auto emb = row.vector(f.embedding);
  for (uint32_t i = 0; i < kDerivedDims; ++i) {
    if (emb[i] != static_cast<float>((c + i) % 65536)) return false;
  }
  char expect[24];
  const int n = std::snprintf(expect, sizeof expect, "v%lld", static_cast<long long>(c % 100000000));
  if (row.string(f.tag) != std::string_view(expect, static_cast<size_t>(n))) return false;
  for (const Field* field : {&f.clicks, &f.spend, &f.ctr, &f.premium, &f.embedding, &f.tag}) {
    if (!row.valid(*field)) return false;
  }
  return true;
}

}  // namespace larder::testing
