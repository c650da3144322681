// libFuzzer targets for the Protocol Buffers and Avro decoders
// (sidecar/src/decode/message_decoder.h), built twice: LARDER_FUZZ_FORMAT 1
// is larder_fuzz_protobuf, 2 is larder_fuzz_avro. The schema files are the
// format tests' (tests/sidecar/formats/): Protobuf bodies are batches of
// larder.test.Update, Avro bodies one update.avsc datum after a Confluent
// header with schema id 7. Any byte string must decode or be rejected with a
// named reason, never crash, hang or leak; an accepted batch must be
// internally consistent. Single-threaded.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string_view>

#include "decode/message_decoder.h"
#include "sidecar/format_test_schema.h"

namespace {

namespace ft = larder::sidecar::format_test;
using larder::layout::FieldType;

void check(bool condition) {
  if (!condition) std::abort();
}

std::unique_ptr<larder::sidecar::MessageDecoder> make() {
  const std::string dir = std::string(LARDER_SOURCE_DIR) + "/tests/sidecar/formats";
#if LARDER_FUZZ_FORMAT == 1
  larder::sidecar::FormatConfig f = ft::protobuf(dir, "larder.test.Batch");
#else
  larder::sidecar::FormatConfig f = ft::avro(dir);
  f.confluent_schema_id = 7;
#endif
  return larder::sidecar::make_message_decoder(ft::schema(), ft::options(), f);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::unique_ptr<larder::sidecar::MessageDecoder> decoder = make();
  static larder::sidecar::DecodedBatch batch;
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  const larder::sidecar::DecodeResult r = decoder->decode(body, batch, 5000);
  if (!r.ok) {
    check(batch.empty());
    check(std::strcmp(larder::sidecar::reject_reason_name(r.reason), "unknown_reason") != 0);
    check(!r.detail.empty());
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
        case FieldType::kString: {
          check(v.length <= 2);
          volatile unsigned sum = 0;  // read every byte so ASan sees a dangling or short buffer
          for (uint32_t k = 0; k < v.length; ++k) sum = sum + static_cast<const unsigned char*>(v.data)[k];
          break;
        }
        case FieldType::kFloat32Vector:
          check(v.length == 3);
          for (uint32_t k = 0; k < 3; ++k) check(std::isfinite(static_cast<const float*>(v.data)[k]));
          break;
        case FieldType::kFloat64:
        case FieldType::kFloat32: check(std::isfinite(v.f64)); break;
        default: break;
      }
    }
  }
  return 0;
}
