// libFuzzer target for the message decoder (sidecar/src/decode/decoder.h): any byte
// string must decode or be rejected with a named reason, never crash, hang
// or leak; an accepted batch must be internally consistent. Single-threaded.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "decode/decoder.h"

namespace {

using larder::layout::FieldType;

larder::layout::Schema fuzz_schema() {
  larder::layout::Schema s;
  larder::layout::TableSpec users;
  users.name = "users";
  users.key_max_len = 16;
  users.capacity = 64;
  users.fields = {{"n", FieldType::kInt64, 1}, {"x", FieldType::kFloat64, 1}, {"f", FieldType::kFloat32, 1},
                  {"b", FieldType::kBool, 1},  {"s", FieldType::kString, 8},  {"v", FieldType::kFloat32Vector, 3}};
  s.tables.push_back(users);
  larder::layout::TableSpec open;
  open.name = "open";
  open.key_max_len = 16;
  open.capacity = 64;
  open.fields = {{"n", FieldType::kInt64, 1}};
  s.tables.push_back(open);
  return s;
}

void check(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static larder::sidecar::Decoder decoder(fuzz_schema(), {{false}, {true}});
  static larder::sidecar::DecodedBatch batch;
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  const larder::sidecar::DecodeResult r = decoder.decode(body, batch);
  if (!r.ok) {
    check(batch.empty());
    check(std::strcmp(larder::sidecar::reject_reason_name(r.reason), "unknown_reason") != 0);
    return 0;
  }
  check(!batch.empty());
  for (size_t i = 0; i < batch.size(); ++i) {
    const auto& u = batch.update(i);
    check(u.table < 2);
    const std::string_view key = batch.key(u);
    check(!key.empty() && key.size() <= 16);
    for (const larder::FieldValue& v : batch.values(u)) {
      switch (v.type) {
        case FieldType::kString:
          check(v.length <= 8);
          {
            // Read every byte so ASan sees a dangling or short buffer.
            volatile unsigned sum = 0;
            for (uint32_t k = 0; k < v.length; ++k) sum = sum + static_cast<const unsigned char*>(v.data)[k];
          }
          break;
        case FieldType::kFloat32Vector:
          check(v.length == 3);
          for (uint32_t k = 0; k < 3; ++k) check(std::isfinite(static_cast<const float*>(v.data)[k]));
          break;
        default: break;
      }
    }
  }
  return 0;
}
