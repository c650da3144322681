// One interface over the message formats a source may carry (config/format.h,
// docs/message-format.md): JSON v1 (decoder.h), Protocol Buffers and Avro.
// Each turns a body into a DecodedBatch with the same rules, reject reasons
// and details; a source holds a MessageDecoder and does not know the format.
//
// Threading: built on the main thread at start (or by the consumer thread
// that owns it); used by one thread at a time afterwards.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "config/format.h"
#include "config/ingest.h"
#include "decode/decoder.h"
#include "larder/layout/schema.h"

namespace larder::sidecar {

class MessageDecoder {
 public:
  virtual ~MessageDecoder() = default;

  // Decodes `body` into `out` (cleared first); on failure `out` is empty.
  // Never throws on any input. Event-time bounds are checked against
  // `now_unix_ms`, or CLOCK_REALTIME (read at most once) when it is < 0.
  virtual DecodeResult decode(std::string_view body, DecodedBatch& out, int64_t now_unix_ms) = 0;
  DecodeResult decode(std::string_view body, DecodedBatch& out) { return decode(body, out, -1); }

  // "json", "protobuf shop.UserUpdate", "avro users.avsc": for the start log.
  virtual std::string describe() const = 0;
};

// The decoder `format` selects for the tables of `schema`. Reads and checks
// the format's schema file against the tables (message type, member names
// and types). Throws ConfigError, its message starting with format.path,
// e.g. `rabbitmq.format.message: no message type "shop.Usr" in users.proto`.
std::unique_ptr<MessageDecoder> make_message_decoder(const layout::Schema& schema,
                                                     const std::vector<TableDecodeOptions>& options,
                                                     const FormatConfig& format);

}  // namespace larder::sidecar
