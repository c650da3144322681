// libFuzzer target for the read side: the input is the bytes of a segment
// file (the seeds in fuzz/corpus/read_segment are real segments that
// fuzz/make_read_corpus.cc wrote). It is written to a file in a private
// directory under /dev/shm and opened through the normal open path, so the
// real validation runs; then everything a reader or larderctl can do with a
// segment runs over it: the C++ client (open, tables, get, get_many, every
// accessor of every row it returns, info, sync, stats), larderctl's dump
// loop and verify (tools/segment_verify.h), and the C ABI (every function,
// including accessors with field indexes of the wrong type or out of range).
//
// Nothing may crash, read outside a buffer or overflow (ASan, UBSan): a bad
// length, offset or index gives a refusal at open or kCorrupt for the row.
// The same body runs under g++ through replay_main.cc (the ctest
// fuzz.read_segment_replay). Single-threaded.
// The deprecated C functions are untrusted-input paths too: called on purpose.
#define LARDER_ALLOW_DEPRECATED

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "larder/client.h"
#include "larder/larder.h"
#include "larder/layout/segment_file.h"
#include "larder/layout/table_view.h"
#include "segment_verify.h"

namespace {

using namespace larder;  // NOLINT: the target exercises the whole read side

constexpr char kName[] = "segment";
// A reader gives up on an odd slot after this many retries; the fuzzer's
// inputs are full of odd slots, so keep each give-up cheap.
constexpr uint32_t kRetries = 4;
constexpr size_t kMaxKeys = 48;  // keys looked up per table

void check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "read_segment_fuzz: check failed: %s\n", what);
    std::abort();
  }
}

// Keeps values alive so the reads are not optimised away.
volatile uint64_t g_sink;
void consume(uint64_t v) { g_sink = g_sink + v; }
void consume(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  consume(bits);
}
void consume_bytes(const void* p, size_t n) {
  uint64_t h = 0;
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = h * 31 + b[i];
  consume(h);
}

// A private directory for one input's segment file, removed with it (per
// input: libFuzzer may end the process without running static destructors).
class ScratchDir {
 public:
  ScratchDir() {
    char tmpl[] = "/dev/shm/larder-fuzz-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      std::perror("read_segment_fuzz: mkdtemp under /dev/shm");
      std::abort();
    }
    dir_ = tmpl;
    path_ = dir_ + "/" + kName;
  }
  ~ScratchDir() {
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  const std::string& dir() const { return dir_; }
  void write(const uint8_t* data, size_t size) const {
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    check(fd >= 0, "create the segment file");
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pwrite(fd, data + done, size - done, static_cast<off_t>(done));
      check(n > 0, "write the segment file");
      done += static_cast<size_t>(n);
    }
    ::close(fd);
  }

 private:
  std::string dir_, path_;
};

// Every accessor of a row the client returned as found.
void read_row(const Table& t, const RowView& row, std::string_view key) {
  check(row.key() == key, "a found row holds its key");
  consume(static_cast<uint64_t>(row.event_time_ms()));
  consume(static_cast<uint64_t>(row.apply_unix_ns()));
  for (const Field& f : t.fields()) {
    consume(uint64_t{row.valid(f)});
    consume(row.as_f64(f));
    switch (f.type) {
      case FieldType::kInt64: consume(static_cast<uint64_t>(row.i64(f))); break;
      case FieldType::kFloat64: consume(row.f64(f)); break;
      case FieldType::kFloat32: consume(static_cast<double>(row.f32(f))); break;
      case FieldType::kBool: consume(uint64_t{row.boolean(f)}); break;
      case FieldType::kFloat32Vector: {
        const std::span<const float> v = row.vector(f);
        check(v.size() == f.count, "a vector has its dimensions");
        for (float x : v) consume(static_cast<double>(x));
        break;
      }
      case FieldType::kString: {
        const std::string_view s = row.string(f);
        check(s.size() <= f.count, "a string fits its max_len");
        consume_bytes(s.data(), s.size());
        break;
      }
    }
  }
}

// larderctl dump's loop: every slot, read whole under the seqlock, judged
// by check_row, then printed field by field. Returns the live keys seen.
std::vector<std::string> dump(const layout::MappedFile& m, uint32_t table, const Table& t) {
  const layout::TableDescriptor& d = layout::table_descriptor(m.data(), table);
  const layout::TableGeometry geo = layout::table_geometry(m.data(), d);
  std::vector<uint64_t> words(geo.slot_words);
  const RowView row = t.view(words.data() + 1);
  std::vector<std::string> keys;
  for (uint64_t i = 0; i < geo.slot_count; ++i) {
    if (layout::read_whole_slot(geo, geo.slot(i), words.data(), kRetries) != layout::SlotRead::kMatch) continue;
    if (words[0] == 0) continue;
    if (t.check_row(words.data() + 1) != Status::kOk) {
      // A row judged corrupt is not printed, but its key view must still
      // stay inside the buffer.
      check(row.key().size() <= size_t{geo.key_words} * 8, "the key view stays in the row");
      continue;
    }
    if (layout::meta_state(words[0]) != layout::SlotState::kLive) continue;
    read_row(t, row, row.key());
    if (keys.size() < kMaxKeys) keys.emplace_back(row.key());
  }
  return keys;
}

void exercise_table(const layout::MappedFile& m, uint32_t index, const Table& t) {
  consume(t.stats().live_keys);
  consume(t.slot_count() + t.key_max_len());
  std::vector<std::string> keys = dump(m, index, t);
  keys.emplace_back("");                        // invalid
  keys.emplace_back(t.key_max_len() + 1, 'k');  // invalid: too long
  keys.emplace_back("u1");                      // the seeds' keys
  keys.emplace_back("item:7");
  Row row = t.make_row();
  for (const std::string& k : keys) {
    for (const int64_t max_age : {int64_t{0}, int64_t{1}, INT64_MAX}) {
      const ReadResult r = t.get(k, row, ReadOptions{max_age});
      if (r.found()) {
        read_row(t, row, k);
        consume(static_cast<uint64_t>(r.age_ms()));
      }
    }
  }
  std::vector<std::string_view> views(keys.begin(), keys.end());
  RowBatch batch = t.make_batch(views.size());
  std::vector<ReadResult> results(views.size());
  t.get_many(views, batch, results, ReadOptions{1});
  for (size_t i = 0; i < views.size(); ++i) {
    if (results[i].found()) read_row(t, batch.row(i), views[i]);
  }
}

// The C ABI over the same file.
void exercise_c_abi(const std::string& dir, const std::vector<std::string>& tables) {
  larder_segment* seg = nullptr;
  char err[256];
  if (larder_open(kName, dir.c_str(), &seg, err, sizeof err) != LARDER_E_OK) return;
  const larder_segment_info info = larder_segment_stat(seg);
  consume(info.updates_applied + info.writer_pid);
  consume(static_cast<uint64_t>(larder_writer_alive(seg, 1000)));
  consume(static_cast<uint64_t>(larder_segment_state(seg)));
  larder_sync_info_t sync;
  larder_segment_sync_info(seg, &sync);
  check(std::memchr(sync.source_id, '\0', sizeof sync.source_id) != nullptr, "the source id is terminated");
  for (uint32_t p = 0; p <= sync.partition_count && p < 70; ++p) {
    larder_position_t pos;
    consume(static_cast<uint64_t>(larder_segment_position(seg, p, &pos)) + pos.next_offset);
  }
  for (const std::string& name : tables) {
    larder_table* t = nullptr;
    if (larder_table_open(seg, name.c_str(), &t, err, sizeof err) != LARDER_E_OK) continue;
    const size_t row_bytes = larder_table_row_bytes(t);
    const uint32_t nfields = larder_table_field_count(t);
    consume(row_bytes + larder_row_validity_offset(t) + larder_row_key_offset(t));
    for (uint32_t f = 0; f <= nfields + 1; ++f) {
      const larder_field_info fi = larder_table_field(t, f);
      if (fi.name != nullptr) check(larder_field_index(t, fi.name) >= 0, "a field's name finds a field");
      const uint32_t off = larder_row_field_offset(t, f);
      check(off == UINT32_MAX || off < row_bytes, "a field offset lies inside the row");
    }
    std::vector<uint64_t> row((row_bytes + 7) / 8);
    const char* keys[] = {"u1", "u2", "item:7", "x"};
    for (const char* k : keys) {
      larder_read_result r;
      if (larder_get_into(t, k, std::strlen(k), row.data(), 1, &r) != LARDER_OK && r.status != LARDER_STALE) continue;
      // Every accessor with every field index, whatever the field's type,
      // and two indexes past the end.
      for (uint32_t f = 0; f <= nfields + 1; ++f) {
        consume(static_cast<uint64_t>(larder_row_valid(t, row.data(), f)));
        consume(static_cast<uint64_t>(larder_row_int64(t, row.data(), f)));
        consume(larder_row_float64(t, row.data(), f));
        consume(static_cast<double>(larder_row_float32(t, row.data(), f)));
        consume(static_cast<uint64_t>(larder_row_bool(t, row.data(), f)));
        consume(larder_row_as_double(t, row.data(), f));
        uint32_t dims = 0, len = 0;
        const float* v = larder_row_vector(t, row.data(), f, &dims);
        if (v != nullptr) consume_bytes(v, sizeof(float) * dims);
        const char* s = larder_row_string(t, row.data(), f, &len);
        if (s != nullptr) consume_bytes(s, len);
      }
    }
    const void* many_keys[] = {keys[0], keys[1], keys[2], keys[3]};
    const size_t lens[] = {2, 2, 6, 1};
    std::vector<uint64_t> rows(row.size() * 4);
    larder_read_result results[4];
    larder_get_many(t, many_keys, lens, 4, rows.data(), results, 1);
    // The gathers: every scalar field and every vector field.
    std::vector<uint32_t> scalars, vectors;
    uint32_t dims = 0;
    for (uint32_t f = 0; f < nfields; ++f) {
      const larder_field_info fi = larder_table_field(t, f);
      if (fi.type == LARDER_FLOAT32_VECTOR) {
        vectors.push_back(f);
        dims += fi.count;
      } else {
        scalars.push_back(f);
      }
    }
    const char fixed[] = "u1\0\0\0\0u2\0\0\0\0item:7";
    std::vector<double> scalar_out(3 * scalars.size());
    std::vector<float> vector_out(3 * size_t{dims});
    int32_t status[3];
    int64_t times[3];
    consume(static_cast<uint64_t>(larder_gather(t, fixed, sizeof fixed - 1, nullptr, 6, 3, scalars.data(),
                                                scalars.size(), scalar_out.data(), NAN, vectors.data(), vectors.size(),
                                                vector_out.data(), NAN, status, times, 1)));
    for (double x : scalar_out) consume(x);
    for (float x : vector_out) consume(static_cast<double>(x));
    larder_table_close(t);
  }
  larder_close(seg);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ScratchDir dir;
  dir.write(data, size);
  std::vector<std::string> tables;
  try {
    ClientOptions options;
    options.dir = dir.dir();
    options.max_retries = kRetries;
    const Segment seg = Segment::open(kName, options);
    consume(seg.info().updates_applied);
    consume(uint64_t{seg.writer_alive()} + uint64_t{seg.retired()} + static_cast<uint64_t>(seg.state()));
    const SyncInfo sync = seg.sync();
    consume(sync.partitions.size() + sync.source_id.size());
    tables = seg.table_names();
    const auto m = layout::MappedFile::open_read_only(layout::segment_path(dir.dir(), kName), kName);
    for (uint32_t i = 0; i < tables.size(); ++i) {
      // A name shared by two tables resolves to the first: exercise that
      // one only, with the descriptor index it came from.
      bool shadowed = false;
      for (uint32_t j = 0; j < i; ++j) shadowed = shadowed || tables[j] == tables[i];
      if (shadowed) continue;
      exercise_table(*m, i, seg.table(tables[i]));
    }
    // larderctl verify, as if no writer were attached and as if one were.
    for (const verify::WriterCheck w : {verify::WriterCheck::kAssumeAbsent, verify::WriterCheck::kAssumeLive}) {
      verify::Options vo;
      vo.writer = w;
      vo.max_retries = kRetries;
      vo.live_rounds = 2;
      const verify::Report r = verify::verify_segment(m->data(), vo);
      consume(r.slots_checked + r.problems.size() + r.repairs.size());
    }
  } catch (const Error& e) {
    // A refusal at open: it must name a reason.
    check(e.what()[0] != '\0', "a refusal says why");
    return 0;
  }
  exercise_c_abi(dir.dir(), tables);
  return 0;
}
