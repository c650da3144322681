// Builds DecodedBatches from typed values, for the formats whose bodies are
// not JSON (Protocol Buffers, Avro; decode/message_decoder.h). It applies
// the JSON decoder's rules to each value (decoder.h, docs/message-format.md):
// the same inputs per table, transforms, aggregate sources, duplicate and
// unknown-field refusals, key and event-time checks, with the same reject
// reasons and details. A format's decoder walks its bytes and calls the
// setters below; a setter refuses a bad value by throwing an internal
// rejection that run() turns into its DecodeResult.
//
// Threading: like Decoder, one thread at a time (the consumer thread).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/ingest.h"
#include "decode/decoder.h"

namespace larder::sidecar {

// The wire value an input accepts, from every target that reads it.
enum class InputType : uint8_t {
  kInteger,       // an int64 field without a transform reads it: integers only
  kNumber,        // floats, transforms: any number
  kNumberOrBool,  // only aggregate sources read it: a number or a bool (1/0)
  kBool,          // a bool field
  kString,        // a string field or a vocabulary transform
  kVector,        // a vector field: a list of numbers
  kScalar,        // only distinct_counts read it: a string, an integer or a bool
};
const char* input_type_name(InputType type) noexcept;

class UpdateBuilder {
 public:
  // Throws std::invalid_argument like Decoder's constructor.
  UpdateBuilder(const layout::Schema& schema, const std::vector<TableDecodeOptions>& options);
  ~UpdateBuilder();
  UpdateBuilder(const UpdateBuilder&) = delete;
  UpdateBuilder& operator=(const UpdateBuilder&) = delete;

  // --- At start: what the tables accept.
  struct Input {
    std::string name;
    InputType type;
  };
  size_t table_count() const noexcept;
  const std::string& table_name(uint32_t table) const;
  std::optional<uint32_t> find_table(std::string_view name) const;
  bool allow_unknown_fields(uint32_t table) const;
  // The members a message may send for `table`, by input index.
  std::vector<Input> inputs(uint32_t table) const;
  // Names a message may not send (computed fields, aggregates), with why.
  std::optional<std::string> why_not_an_input(uint32_t table, std::string_view name) const;

  // --- Per message. `walk(ctx)` reads the body and calls the setters.
  // Any rejection (thrown by a setter or reject()) ends it; `out` is then
  // empty. now_unix_ms < 0: read CLOCK_REALTIME when a bound needs it.
  // `malformed` is the reason for an unexpected failure inside `walk`.
  DecodeResult run(DecodedBatch& out, int64_t now_unix_ms, RejectReason malformed, void (*walk)(void* ctx), void* ctx);
  // --- Several records into one batch (a page of database rows): as run(),
  // but adds to `out` instead of clearing it, and a rejection removes only
  // what this call added, so each record is taken or refused on its own.
  // The string and vector values it adds point nowhere until finish(out),
  // called once after the last append and before `out` is read or moved
  // to another thread.
  DecodeResult append(DecodedBatch& out, int64_t now_unix_ms, RejectReason malformed, void (*walk)(void* ctx),
                      void* ctx);
  static void finish(DecodedBatch& out) noexcept;
  [[noreturn]] void reject(RejectReason reason, std::string detail);
  // "update 3" (or "update" for a single one), for details.
  std::string where() const;

  // --- Per update, in any order between begin_update() and end_update().
  void begin_update(size_t index, bool batch);
  void set_table(uint32_t table);              // a table from the config
  void set_table_name(std::string_view name);  // unknown_table when no such table
  bool has_table() const noexcept;
  uint32_t current_table() const noexcept;  // after has_table()
  void set_key(std::string_view key);
  void set_event_time_ms(int64_t ms);            // bad_event_time outside [0, 9999-12-31]
  void set_event_time_text(std::string_view s);  // RFC 3339
  void set_op(std::string_view op);              // upsert, delete or unpin
  void set_id(std::string_view id);
  void set_fields_present();
  bool is_upsert() const noexcept;
  // One member of `fields`, by the input index of the update's table (set
  // first). Each input may come once per update (duplicate_member).
  void input_integer(uint32_t input, int64_t v);
  void input_double(uint32_t input, double v);
  void input_bool(uint32_t input, bool v);
  void input_string(uint32_t input, std::string_view v);
  // The member sent as null (JSON `null`): where every reader is a
  // transform that takes a missing value (impute, ordinal, one_hot), the
  // value they make of it, exactly as the JSON decoder does; else
  // wrong_type. Each input may come once per update, null or not.
  void input_null(uint32_t input);
  void vector_begin(uint32_t input);
  void vector_push(double v);
  // `n` little-endian float32s at `le` (packed on the wire), in one go.
  void vector_push_floats(const char* le, size_t n);
  void vector_end();
  // A member the table does not have: ignored with allow_unknown_fields,
  // else unknown_field (with the JSON decoder's detail).
  void unknown_input(std::string_view name);
  // Checks the envelope and adds the update to the batch.
  void end_update();

 private:
  struct State;
  std::unique_ptr<Decoder::Impl> impl_;
  std::unique_ptr<State> state_;
};

}  // namespace larder::sidecar
