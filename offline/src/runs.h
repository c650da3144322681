// Run files: the decoded updates of a key-by-key larder-backfill, split by
// key hash into k temporary files so that one file's updates sort in a
// bounded amount of memory (docs/backfill.md, "Order of the replay").
//
//   RunWriter   a directory of its own (mkdtemp) with files run-0 .. run-(k-1);
//               add() appends an update to one of them through a buffer per
//               run; the directory and its files are removed by the
//               destructor (also when an exception unwinds past it)
//   RunData     run files read back whole, every record checked; their
//               updates as Replay::DecodedEvent, in the order they were added
//
// Record (native byte order: the files never leave the process that wrote
// them):
//
//   u32 body length (the bytes after this field)
//   u8  op (sidecar::UpdateOp)      u8 flags (1: event id, 2: pinned_after)
//   u16 table
//   i64 arrival_ms                  i64 event_time_ms
//   [u64 event_id]                  [i64 pinned_after_ms]
//   u16 key length   u16 values   u16 sources
//   key bytes
//   per value:  u16 field, u8 type, then int64/bool: i64; float64/float32:
//               f64; string: u32 length + bytes; vector: u32 count + f32s
//   per source: u16 source, f64 value, u64 distinct
//
// Reading trusts nothing: the file must be exactly as long and hold exactly
// as many records as were written, and every length, count, type and table
// index is checked against what holds it; a failed check is an error naming
// the file and the record's offset.
//
// Threading: one thread.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "decode/decoder.h"
#include "larder/offline/engine.h"

namespace larder::offline {

class RunWriter {
 public:
  // Makes `parent`/larder-backfill-XXXXXX with `runs` empty files. Each run
  // buffers `buffer_bytes` before a write. Throws std::runtime_error naming
  // the directory and the system's reason.
  RunWriter(const std::string& parent, uint32_t runs, size_t buffer_bytes = size_t{1} << 16);
  ~RunWriter();  // removes the directory and what is left in it
  RunWriter(const RunWriter&) = delete;
  RunWriter& operator=(const RunWriter&) = delete;

  // Appends update `u` of `batch`, arrived at arrival_ms, to run `run`.
  // Throws std::runtime_error on a write error (e.g. the disk full).
  void add(uint32_t run, const sidecar::DecodedBatch& batch, const sidecar::DecodedUpdate& u, int64_t arrival_ms);
  // Writes what is buffered.
  void finish();

  uint32_t runs() const noexcept { return static_cast<uint32_t>(runs_.size()); }
  uint64_t bytes(uint32_t run) const { return runs_.at(run).bytes; }
  uint64_t records(uint32_t run) const { return runs_.at(run).records; }
  uint64_t values(uint32_t run) const { return runs_.at(run).values; }
  uint64_t sources(uint32_t run) const { return runs_.at(run).sources; }
  std::string path(uint32_t run) const;
  const std::string& dir() const noexcept { return dir_; }
  // Removes run `run`'s file (once it is read back: frees its disk space).
  void remove(uint32_t run);

 private:
  struct Run {
    std::string buffer;
    uint64_t bytes = 0;  // written and buffered
    uint64_t records = 0;
    uint64_t values = 0;
    uint64_t sources = 0;
  };
  void write_out(uint32_t run);

  std::string dir_;
  std::vector<Run> runs_;
  size_t buffer_bytes_;
};

// Run files read back. Several may be read into one RunData (runs of
// neighbouring hash ranges replayed together); seal() then makes the spans.
struct RunData {
  std::vector<std::vector<char>> files;      // the files' bytes; keys and strings point into them
  size_t files_used = 0;                     // files[0, files_used) hold the runs read since clear()
  std::vector<Replay::DecodedEvent> events;  // in the order added, file after file
  std::vector<FieldValue> values;            // events' values point into these
  std::vector<SourceValue> sources;
  std::vector<float> floats;  // vector values, aligned
  // Per event: its first value, value count, first source, source count.
  std::vector<std::array<size_t, 4>> firsts;
  std::vector<std::pair<size_t, size_t>> vector_at;  // (value, first float) of vector values

  void clear();
  // Points each event's values and sources (and vector values' data) at
  // their storage, once every file is read.
  void seal();
};

// Appends run `run` of `writer` to `out`. `tables`: the schema's table
// count. Throws std::runtime_error naming the file and the offset of the
// first record that does not check.
void read_run(const RunWriter& writer, uint32_t run, uint32_t tables, RunData& out);

// The same, of a file of `records` records and `bytes` bytes at `path`.
void read_run_file(const std::string& path, uint64_t bytes, uint64_t records, uint32_t tables, RunData& out);

// The pieces of read_run_file, for a caller that reorders the records in
// memory before parsing them (larder-backfill).
//
// Reads the file at `path` into `file` (resized), which must hold exactly
// `bytes` bytes. Throws std::runtime_error naming the file.
void load_run_file(const std::string& path, uint64_t bytes, std::vector<char>& file);
// The record at data[at]: its whole length, its table and its key, checked
// to lie within data[0, size) (the rest of it is checked by parse_records).
// false when they do not.
bool scan_record(const char* data, size_t size, size_t at, uint32_t tables, size_t* length, uint32_t* table,
                 std::string_view* key) noexcept;
// Appends the records of data[0, bytes) to `out`, every one checked; keys
// and strings point into `data`. Errors name `where`.
void parse_records(const char* data, size_t bytes, const std::string& where, uint32_t tables, RunData& out);

}  // namespace larder::offline
