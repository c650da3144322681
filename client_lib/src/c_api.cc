// The C ABI over the C++ client. No exception crosses it: open functions
// catch and return codes; the read functions are noexcept already.
#include "larder/larder.h"

#include <cstring>
#include <new>
#include <string>

#include "larder/client.h"

struct larder_segment {
  larder::Segment segment;
};

struct larder_table {
  larder::Table table;
};

namespace {

int fail(int code, const char* message, char* err, size_t errlen) {
  if (err != nullptr && errlen > 0) {
    std::strncpy(err, message, errlen - 1);
    err[errlen - 1] = '\0';
  }
  return code;
}

template <class F>
int guarded(F&& f, char* err, size_t errlen) {
  try {
    f();
    return LARDER_E_OK;
  } catch (const larder::Error& e) {
    return fail(static_cast<int>(e.code()), e.what(), err, errlen);
  } catch (const std::bad_alloc&) {
    return fail(LARDER_E_SYSTEM, "out of memory", err, errlen);
  } catch (const std::exception& e) {
    return fail(LARDER_E_SYSTEM, e.what(), err, errlen);
  }
}

const larder::Field& field_at(const larder_table* t, uint32_t field) { return t->table.fields()[field]; }

larder::RowView view(const larder_table* t, const void* row) {
  return t->table.view(static_cast<const uint64_t*>(row));
}

larder_read_result to_c(const larder::ReadResult& r) {
  return larder_read_result{static_cast<int32_t>(r.status), 0, r.event_time_ms, r.apply_unix_ns};
}

}  // namespace

extern "C" {

int larder_open(const char* name, const char* dir, larder_segment** out, char* err, size_t errlen) {
  if (out == nullptr || name == nullptr) return fail(LARDER_E_INVALID_ARGUMENT, "name and out are required", err, errlen);
  *out = nullptr;
  return guarded(
      [&] {
        larder::ClientOptions options;
        if (dir != nullptr && dir[0] != '\0') options.dir = dir;
        auto seg = std::make_unique<larder_segment>();
        seg->segment = larder::Segment::open(name, options);
        *out = seg.release();
      },
      err, errlen);
}

void larder_close(larder_segment* segment) { delete segment; }

larder_segment_info larder_segment_stat(const larder_segment* segment) {
  const larder::SegmentInfo i = segment->segment.info();
  larder_segment_info c{};
  c.state = static_cast<uint32_t>(i.state);
  c.connection = static_cast<uint32_t>(i.connection);
  c.layout_version = i.layout_version;
  c.schema_fingerprint = i.schema_fingerprint;
  c.writer_pid = i.writer_pid;
  c.heartbeat_age_ms = i.heartbeat_age_ms;
  c.updates_applied = i.updates_applied;
  c.messages_rejected = i.messages_rejected;
  c.last_apply_unix_ns = i.last_apply_unix_ns;
  return c;
}

int larder_writer_alive(const larder_segment* segment, int64_t max_heartbeat_age_ms) {
  return segment->segment.writer_alive(max_heartbeat_age_ms) ? 1 : 0;
}

int larder_table_open(const larder_segment* segment, const char* name, larder_table** out, char* err,
                      size_t errlen) {
  if (segment == nullptr || out == nullptr || name == nullptr) {
    return fail(LARDER_E_INVALID_ARGUMENT, "segment, name and out are required", err, errlen);
  }
  *out = nullptr;
  return guarded(
      [&] {
        auto t = std::make_unique<larder_table>();
        t->table = segment->segment.table(name);
        *out = t.release();
      },
      err, errlen);
}

void larder_table_close(larder_table* table) { delete table; }

size_t larder_table_row_bytes(const larder_table* table) { return table->table.row_words() * 8; }

uint32_t larder_table_field_count(const larder_table* table) {
  return static_cast<uint32_t>(table->table.fields().size());
}

larder_field_info larder_table_field(const larder_table* table, uint32_t index) {
  if (index >= table->table.fields().size()) return larder_field_info{nullptr, 0, 0};
  const larder::Field& f = field_at(table, index);
  return larder_field_info{f.name.data(), static_cast<int32_t>(f.type), f.count};
}

int32_t larder_field_index(const larder_table* table, const char* name) {
  const auto& fields = table->table.fields();
  for (size_t i = 0; i < fields.size(); ++i) {
    if (fields[i].name == name) return static_cast<int32_t>(i);
  }
  return -1;
}

larder_read_result larder_get(const larder_table* table, const void* key, size_t key_len, void* row,
                              int64_t max_age_ms) {
  return to_c(table->table.get(std::string_view(static_cast<const char*>(key), key_len),
                               static_cast<uint64_t*>(row), larder::ReadOptions{max_age_ms}));
}

void larder_get_many(const larder_table* table, const void* const* keys, const size_t* key_lens, size_t n,
                     void* rows, larder_read_result* results, int64_t max_age_ms) {
  const size_t row_words = table->table.row_words();
  auto* out = static_cast<uint64_t*>(rows);
  constexpr size_t kChunk = 64;
  std::string_view views[kChunk];
  larder::ReadResult rs[kChunk];
  for (size_t base = 0; base < n; base += kChunk) {
    const size_t m = std::min(kChunk, n - base);
    for (size_t i = 0; i < m; ++i) views[i] = std::string_view(static_cast<const char*>(keys[base + i]), key_lens[base + i]);
    table->table.get_many(std::span<const std::string_view>(views, m), out + base * row_words,
                          std::span<larder::ReadResult>(rs, m), larder::ReadOptions{max_age_ms});
    for (size_t i = 0; i < m; ++i) results[base + i] = to_c(rs[i]);
  }
}

int larder_row_valid(const larder_table* table, const void* row, uint32_t field) {
  if (field >= table->table.fields().size()) return 0;
  return view(table, row).valid(field_at(table, field)) ? 1 : 0;
}

int64_t larder_row_int64(const larder_table* table, const void* row, uint32_t field) {
  return view(table, row).i64(field_at(table, field));
}
double larder_row_float64(const larder_table* table, const void* row, uint32_t field) {
  return view(table, row).f64(field_at(table, field));
}
float larder_row_float32(const larder_table* table, const void* row, uint32_t field) {
  return view(table, row).f32(field_at(table, field));
}
int larder_row_bool(const larder_table* table, const void* row, uint32_t field) {
  return view(table, row).boolean(field_at(table, field)) ? 1 : 0;
}
double larder_row_as_double(const larder_table* table, const void* row, uint32_t field) {
  return view(table, row).as_f64(field_at(table, field));
}
const float* larder_row_vector(const larder_table* table, const void* row, uint32_t field, uint32_t* dims) {
  const auto v = view(table, row).vector(field_at(table, field));
  if (dims != nullptr) *dims = static_cast<uint32_t>(v.size());
  return v.data();
}
const char* larder_row_string(const larder_table* table, const void* row, uint32_t field, uint32_t* len) {
  const auto s = view(table, row).string(field_at(table, field));
  if (len != nullptr) *len = static_cast<uint32_t>(s.size());
  return s.data();
}

const char* larder_status_name(int32_t status) { return larder::status_name(static_cast<larder::Status>(status)); }
int64_t larder_now_unix_ms(void) { return larder::now_unix_ms(); }

}  // extern "C"
