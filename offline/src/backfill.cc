// larder-backfill: a point-in-time join from the command line. For each row
// of a spine (table, key, timestamp, label columns...) it writes what a
// Larder reader would have read for that key at that instant, replaying event
// files through the offline engine (larder/offline/engine.h): the sidecar's
// decoder, transforms, aggregates and writer. docs/backfill.md.
//
// Streaming: the events are read once, in arrival order, and decoded; key by
// key (the default, replay_by_key) their updates go to run files split by
// key hash and each run is replayed key after key; in arrival order
// (replay_arrival) they are applied as they come. Memory follows the live
// keys and their aggregate state (the scratch segment), one run read back,
// and the spine, which is read whole; the results wait in memory (a row
// copy per spine row) to be written in spine order.
//
// Exit codes: 0 done; 1 bad input (a file:line error, out-of-order events, a
// refused event with --strict); 2 bad usage or config.
//
// Threading: one thread.
#include <fcntl.h>
#include <fmt/format.h>
#include <simdjson.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <bit>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <queue>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "decode/event_time.h"
#include "larder/layout/table_view.h"
#include "larder/offline/engine.h"
#include "observe/json_text.h"
#include "runs.h"

namespace {

using larder::offline::Engine;
using larder::offline::Replay;
using larder::sidecar::InputType;
using larder::sidecar::UpdateBuilder;

constexpr int kExitInput = 1;
constexpr int kExitUsage = 2;

// A problem of the input: "file:line: what".
class InputError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};
class UsageError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Format : uint8_t { kCsv, kJsonl };

Format format_of(const std::string& path) {
  auto ends = [&](std::string_view s) { return path.size() >= s.size() && path.ends_with(s); };
  if (ends(".csv")) return Format::kCsv;
  if (ends(".jsonl") || ends(".ndjson") || ends(".json")) return Format::kJsonl;
  throw UsageError(fmt::format("{}: name it .csv, or .jsonl (.ndjson, .json) for JSON Lines", path));
}

bool parse_int(std::string_view s, int64_t* out) {
  if (s.empty()) return false;
  const char* b = s.data();
  if (*b == '+') ++b;
  auto [p, ec] = std::from_chars(b, s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

bool parse_double(std::string_view s, double* out) {
  if (s.empty()) return false;
  const char* b = s.data();
  if (*b == '+') ++b;
  auto [p, ec] = std::from_chars(b, s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

// A time cell: ms since the epoch, or RFC 3339.
bool parse_time(std::string_view s, int64_t* ms) {
  return parse_int(s, ms) || larder::sidecar::parse_rfc3339_ms(s, ms);
}

// ---------------------------------------------------------------------------
// Line and CSV reading

// Lines of a file, with their numbers; a CSV record may span lines inside
// quotes (RFC 4180). Read in blocks of 1 MiB, lines found with memchr: a
// line is a view into the block, copied only when it straddles two.
class LineReader {
 public:
  explicit LineReader(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw UsageError(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
    buf_.resize(kBlock);
  }
  ~LineReader() {
    if (fd_ >= 0) ::close(fd_);
  }
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // The next line without its end of line; false at the end of the file.
  // The view stays valid until the next call.
  bool next(std::string_view* line) {
    while (true) {
      const char* at = buf_.data() + begin_;
      if (const void* nl = std::memchr(at, '\n', end_ - begin_)) {
        const size_t len = static_cast<size_t>(static_cast<const char*>(nl) - at);
        begin_ += len + 1;
        return found(line, at, len);
      }
      if (eof_) {
        if (begin_ == end_) return false;
        const size_t len = end_ - begin_;
        begin_ = end_;
        return found(line, at, len);  // the last line, without an end of line
      }
      fill();
    }
  }
  size_t line() const noexcept { return line_; }
  const std::string& path() const noexcept { return path_; }

 private:
  static constexpr size_t kBlock = size_t{1} << 20;

  bool found(std::string_view* line, const char* at, size_t len) {
    ++line_;
    while (len > 0 && at[len - 1] == '\r') --len;
    *line = std::string_view(at, len);
    return true;
  }
  // More of the file after what is left of the block (moved to its front);
  // the block grows when one line fills it.
  void fill() {
    const size_t left = end_ - begin_;
    if (begin_ > 0) std::memmove(buf_.data(), buf_.data() + begin_, left);
    begin_ = 0;
    end_ = left;
    if (end_ == buf_.size()) buf_.resize(buf_.size() * 2);
    while (true) {
      const ssize_t n = ::read(fd_, buf_.data() + end_, buf_.size() - end_);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw InputError(fmt::format("{}: read error: {}", path_, std::strerror(errno)));
      if (n == 0) eof_ = true;
      end_ += static_cast<size_t>(n);
      return;
    }
  }

  std::string path_;
  int fd_ = -1;
  std::vector<char> buf_;
  size_t begin_ = 0, end_ = 0;  // the unread bytes of buf_
  bool eof_ = false;
  size_t line_ = 0;
};

// One CSV record into `cells` (views into `store` or the line). Returns false
// at the end of the file. `first_line`: the line the record starts on.
class CsvReader {
 public:
  explicit CsvReader(const std::string& path) : lines_(path) {}
  bool next(std::vector<std::string_view>* cells, size_t* first_line) {
    std::string_view line;
    do {
      if (!lines_.next(&line)) return false;
    } while (line.empty());
    *first_line = lines_.line();
    cells->clear();
    if (line.find('"') == std::string_view::npos) {  // the common case: no quotes, views into the line
      size_t pos = 0;
      while (true) {
        const size_t comma = line.find(',', pos);
        if (comma == std::string_view::npos) {
          cells->push_back(line.substr(pos));
          break;
        }
        cells->push_back(line.substr(pos, comma - pos));
        pos = comma + 1;
      }
      return true;
    }
    // Quoted cells: unescape into store_ (reserved so views stay valid).
    store_.clear();
    std::vector<std::pair<size_t, size_t>> spans;
    std::string text(line);
    size_t i = 0;
    while (true) {
      const size_t start = store_.size();
      if (i < text.size() && text[i] == '"') {
        ++i;
        while (true) {
          if (i >= text.size()) {
            std::string_view more;
            if (!lines_.next(&more)) {
              throw InputError(fmt::format("{}:{}: a quoted cell is never closed", lines_.path(), *first_line));
            }
            store_ += '\n';
            text.assign(more);
            i = 0;
            continue;
          }
          if (text[i] == '"') {
            if (i + 1 < text.size() && text[i + 1] == '"') {
              store_ += '"';
              i += 2;
              continue;
            }
            ++i;
            break;
          }
          store_ += text[i++];
        }
        // After the closing quote: a comma or the end of the record.
        if (i < text.size() && text[i] != ',') {
          throw InputError(fmt::format("{}:{}: text after a closing quote", lines_.path(), lines_.line()));
        }
      } else {
        while (i < text.size() && text[i] != ',') store_ += text[i++];
      }
      spans.emplace_back(start, store_.size() - start);
      if (i >= text.size()) break;
      ++i;  // the comma
      if (i == text.size()) {
        spans.emplace_back(store_.size(), 0);
        break;
      }
    }
    for (auto [at, len] : spans) cells->push_back(std::string_view(store_).substr(at, len));
    return true;
  }
  size_t line() const noexcept { return lines_.line(); }
  const std::string& path() const noexcept { return lines_.path(); }

 private:
  LineReader lines_;
  std::string store_;
};

// ---------------------------------------------------------------------------
// Events

// Options shared by every events and spine reader.
struct Common {
  const Engine* engine = nullptr;
  std::string default_table;  // --table, or the config's only table
};

// A CSV cell to the builder, by the input's type (CSV has no types: the
// schema says what a cell is; a cell of the wrong kind goes in as what it
// looks like, so the builder refuses it with the sidecar's reason).
void feed_cell(UpdateBuilder& b, uint32_t input, InputType type, std::string_view cell) {
  int64_t i = 0;
  double d = 0;
  switch (type) {
    case InputType::kString: b.input_string(input, cell); return;
    case InputType::kVector: {
      std::string_view s = cell;
      if (!s.empty() && s.front() == '[') s.remove_prefix(1);
      if (!s.empty() && s.back() == ']') s.remove_suffix(1);
      b.vector_begin(input);
      size_t pos = 0;
      while (pos < s.size()) {
        while (pos < s.size() && (s[pos] == ' ' || s[pos] == ',' || s[pos] == ';')) ++pos;
        if (pos >= s.size()) break;
        size_t end = pos;
        while (end < s.size() && s[end] != ' ' && s[end] != ',' && s[end] != ';') ++end;
        const std::string_view item = s.substr(pos, end - pos);
        if (!parse_double(item, &d)) {
          b.reject(larder::sidecar::RejectReason::kWrongType,
                   fmt::format("{}: a vector element \"{}\" is not a number", b.where(), item));
        }
        b.vector_push(d);
        pos = end;
      }
      b.vector_end();
      return;
    }
    default: break;
  }
  // A cell with a '.' is no integer: one from_chars less for most numbers.
  if (cell.find('.') == std::string_view::npos && parse_int(cell, &i)) {
    b.input_integer(input, i);
  } else if (cell == "true" || cell == "false") {
    b.input_bool(input, cell == "true");
  } else if (type != InputType::kScalar && parse_double(cell, &d)) {
    b.input_double(input, d);
  } else {
    b.input_string(input, cell);
  }
}

// One event ready to apply, from any reader.
struct Pending {
  int64_t arrival_ms = 0;
  size_t line = 0;
};

class EventSource {
 public:
  virtual ~EventSource() = default;
  // Reads the next event into the source's own buffer; false at the end.
  virtual bool advance() = 0;
  virtual const Pending& current() const = 0;
  // Applies the current event. Returns the decoder's result.
  virtual larder::sidecar::DecodeResult apply(Replay& replay) = 0;
  // Decodes the current event into `batch` without applying it, and says
  // its arrival time. Returns the decoder's result.
  virtual larder::sidecar::DecodeResult decode(Replay& replay, larder::sidecar::DecodedBatch& batch,
                                               int64_t* arrival_ms) = 0;
  // The event's key is outside the partition: not applied.
  virtual bool skipped() const { return false; }
  virtual const std::string& path() const = 0;
};

// Keeps the order check: non-decreasing arrival within a file.
void check_order(const std::string& path, size_t line, int64_t arrival, int64_t* previous, bool has_arrival_column) {
  if (arrival < *previous) {
    throw InputError(
        fmt::format("{}:{}: {} {} is before the previous event's {}: events must be in non-decreasing {} order (see "
                    "--help: sort the file first)",
                    path, line, has_arrival_column ? "arrival time" : "event time", arrival, *previous,
                    has_arrival_column ? "arrival" : "event-time"));
  }
  *previous = arrival;
}

class CsvEvents : public EventSource {
 public:
  CsvEvents(const std::string& path, const Common& common, UpdateBuilder& builder)
      : csv_(path), common_(common), builder_(builder) {
    std::vector<std::string_view> header;
    size_t line = 0;
    if (!csv_.next(&header, &line)) throw InputError(fmt::format("{}: empty file: no header line", path));
    for (size_t c = 0; c < header.size(); ++c) {
      const std::string name(header[c]);
      for (size_t d = 0; d < c; ++d) {
        if (header[d] == header[c]) throw InputError(fmt::format("{}:1: column \"{}\" twice", path, name));
      }
      if (name == "table") {
        table_col_ = static_cast<int>(c);
      } else if (name == "key") {
        key_col_ = static_cast<int>(c);
      } else if (name == "event_time") {
        time_col_ = static_cast<int>(c);
      } else if (name == "arrival_time") {
        arrival_col_ = static_cast<int>(c);
      } else if (name == "op") {
        op_col_ = static_cast<int>(c);
      } else if (name == "id") {
        id_col_ = static_cast<int>(c);
      }
      names_.push_back(name);
    }
    if (key_col_ < 0 || time_col_ < 0) {
      throw InputError(fmt::format("{}:1: the header needs a \"key\" and an \"event_time\" column", path));
    }
    if (table_col_ < 0) {
      if (common.default_table.empty()) {
        throw UsageError(fmt::format("{}: no \"table\" column and the config has several tables: say --table", path));
      }
      fixed_table_ = common.engine->table_index(common.default_table);
      if (fixed_table_ < 0) throw UsageError(fmt::format("--table {}: not in the config", common.default_table));
    }
    columns_.resize(common.engine->schema().tables.size());
  }

  bool advance() override {
    size_t line = 0;
    if (!csv_.next(&cells_, &line)) return false;
    current_.line = line;
    if (cells_.size() != names_.size()) {
      throw InputError(fmt::format("{}:{}: {} cells, the header has {}", path(), line, cells_.size(), names_.size()));
    }
    table_ = fixed_table_;
    if (table_ < 0) {
      auto t = builder_.find_table(cells_[table_col_]);
      table_ = t ? static_cast<int>(*t) : -1;  // unknown: the builder refuses it
    }
    skipped_ = !common_.engine->in_partition(cells_[key_col_]);
    // Parsed once: walk() takes an integer cell's value, else the text, which
    // the builder parses (RFC 3339) or refuses with the sidecar's reason.
    int64_t event_ms = -1;
    event_is_int_ = parse_int(cells_[time_col_], &event_ms);
    const bool event_ok = event_is_int_ || larder::sidecar::parse_rfc3339_ms(cells_[time_col_], &event_ms);
    event_ms_ = event_ms;
    if (arrival_col_ >= 0) {
      if (!parse_time(cells_[arrival_col_], &current_.arrival_ms)) {
        throw InputError(fmt::format("{}:{}: arrival_time \"{}\" is not ms since the epoch or RFC 3339", path(), line,
                                     cells_[arrival_col_]));
      }
    } else {
      // A bad event time: the builder refuses the event; keep the order.
      current_.arrival_ms = event_ok ? event_ms : previous_;
    }
    check_order(path(), line, current_.arrival_ms, &previous_, arrival_col_ >= 0);
    return true;
  }
  const Pending& current() const override { return current_; }
  bool skipped() const override { return skipped_; }
  const std::string& path() const override { return csv_.path(); }

  larder::sidecar::DecodeResult apply(Replay& replay) override {
    if (table_ >= 0) resolve(static_cast<uint32_t>(table_));
    return replay.apply_built(current_.arrival_ms, current_.arrival_ms, &walk, this);
  }
  larder::sidecar::DecodeResult decode(Replay& replay, larder::sidecar::DecodedBatch& batch,
                                       int64_t* arrival_ms) override {
    if (table_ >= 0) resolve(static_cast<uint32_t>(table_));
    *arrival_ms = current_.arrival_ms;
    return replay.decode_built(current_.arrival_ms, &walk, this, batch);
  }

 private:
  struct TableColumns {
    bool resolved = false;
    std::vector<int32_t> input;  // per CSV column: the input index, -1 unknown, -2 an envelope column
    std::vector<InputType> type;
  };

  void resolve(uint32_t t) {
    TableColumns& tc = columns_[t];
    if (tc.resolved) return;
    const std::vector<UpdateBuilder::Input> inputs = builder_.inputs(t);
    for (size_t c = 0; c < names_.size(); ++c) {
      const int ci = static_cast<int>(c);
      int32_t found = -1;
      InputType type = InputType::kNumber;
      if (ci == table_col_ || ci == key_col_ || ci == time_col_ || ci == arrival_col_ || ci == op_col_ ||
          ci == id_col_) {
        found = -2;
      } else {
        for (size_t i = 0; i < inputs.size(); ++i) {
          if (inputs[i].name == names_[c]) {
            found = static_cast<int32_t>(i);
            type = inputs[i].type;
          }
        }
      }
      tc.input.push_back(found);
      tc.type.push_back(type);
    }
    tc.resolved = true;
  }

  static void walk(void* ctx) {
    CsvEvents& s = *static_cast<CsvEvents*>(ctx);
    UpdateBuilder& b = s.builder_;
    const auto& cells = s.cells_;
    b.begin_update(0, false);
    if (s.table_ < 0) {
      b.set_table_name(cells[s.table_col_]);  // refuses: no such table
      return;
    }
    b.set_table(static_cast<uint32_t>(s.table_));
    b.set_key(cells[s.key_col_]);
    if (s.event_is_int_) {
      b.set_event_time_ms(s.event_ms_);
    } else {
      b.set_event_time_text(cells[s.time_col_]);
    }
    if (s.op_col_ >= 0 && !cells[s.op_col_].empty()) b.set_op(cells[s.op_col_]);
    if (s.id_col_ >= 0 && !cells[s.id_col_].empty()) b.set_id(cells[s.id_col_]);
    if (b.is_upsert()) {
      b.set_fields_present();
      const TableColumns& tc = s.columns_[static_cast<uint32_t>(s.table_)];
      for (size_t c = 0; c < cells.size(); ++c) {
        const int32_t input = tc.input[c];
        if (input == -2 || cells[c].empty()) continue;  // an envelope column, or no value
        if (input < 0) {
          b.unknown_input(s.names_[c]);
          continue;
        }
        feed_cell(b, static_cast<uint32_t>(input), tc.type[c], cells[c]);
      }
    }
    b.end_update();
  }

  CsvReader csv_;
  const Common& common_;
  UpdateBuilder& builder_;
  std::vector<std::string> names_;
  int table_col_ = -1, key_col_ = -1, time_col_ = -1, arrival_col_ = -1, op_col_ = -1, id_col_ = -1;
  int fixed_table_ = -1;
  std::vector<TableColumns> columns_;
  std::vector<std::string_view> cells_;
  Pending current_;
  int table_ = -1;
  bool skipped_ = false;
  bool event_is_int_ = false;  // the event_time cell is an integer: event_ms_
  int64_t event_ms_ = 0;
  int64_t previous_ = INT64_MIN;
};

// JSON Lines of message format v1: one message (an update object or a
// batch) per line; its arrival time is the `arrival_time` member of the
// object (of a batch's first update), ms or RFC 3339, else the newest
// `event_time` of its updates.
class JsonlEvents : public EventSource {
 public:
  JsonlEvents(const std::string& path, const Common& common) : lines_(path), common_(common) {}

  bool advance() override {
    std::string_view line;
    do {
      if (!lines_.next(&line)) return false;
    } while (line.find_first_not_of(" \t") == std::string_view::npos);
    line_.assign(line);
    current_.line = lines_.line();
    has_arrival_ = false;
    std::optional<int64_t> arrival = find_arrival();
    if (has_arrival_ && !arrival) {
      throw InputError(fmt::format("{}:{}: arrival_time is not ms since the epoch or RFC 3339", path(), current_.line));
    }
    current_.arrival_ms = arrival.value_or(previous_);  // unreadable: the decoder refuses the line
    seen_arrival_ |= has_arrival_;
    check_order(path(), current_.line, current_.arrival_ms, &previous_, seen_arrival_);
    return true;
  }
  const Pending& current() const override { return current_; }
  const std::string& path() const override { return lines_.path(); }
  larder::sidecar::DecodeResult apply(Replay& replay) override {
    return replay.apply_json(line_, has_arrival_ ? current_.arrival_ms : -1);
  }
  larder::sidecar::DecodeResult decode(Replay& replay, larder::sidecar::DecodedBatch& batch,
                                       int64_t* arrival_ms) override {
    *arrival_ms = has_arrival_ ? current_.arrival_ms : -1;
    return replay.decode_json(line_, arrival_ms, batch);
  }

 private:
  static std::optional<int64_t> time_of(simdjson::dom::element v) {
    int64_t ms = 0;
    if (v.is_int64()) return int64_t(v);
    if (v.is_uint64()) return std::nullopt;
    std::string_view s;
    if (v.get_string().get(s) == simdjson::SUCCESS && larder::sidecar::parse_rfc3339_ms(s, &ms)) return ms;
    return std::nullopt;
  }

  std::optional<int64_t> find_arrival() {
    simdjson::dom::element doc;
    if (parser_.parse(line_).get(doc) != simdjson::SUCCESS) return std::nullopt;
    simdjson::dom::element first = doc;
    if (doc.is_array()) {
      simdjson::dom::array a = doc.get_array();
      if (a.size() == 0) return std::nullopt;
      first = a.at(0);
    }
    if (!first.is_object()) return std::nullopt;
    simdjson::dom::element at;
    if (first.get_object().at_key("arrival_time").get(at) == simdjson::SUCCESS) {
      has_arrival_ = true;
      return time_of(at);
    }
    // The newest event time of its updates.
    std::optional<int64_t> newest;
    auto visit = [&](simdjson::dom::element u) {
      simdjson::dom::element t;
      if (!u.is_object() || u.get_object().at_key("event_time").get(t) != simdjson::SUCCESS) return;
      if (std::optional<int64_t> ms = time_of(t)) newest = std::max(newest.value_or(*ms), *ms);
    };
    if (doc.is_array()) {
      for (simdjson::dom::element u : doc.get_array()) visit(u);
    } else {
      visit(doc);
    }
    return newest;
  }

  LineReader lines_;
  const Common& common_;
  simdjson::dom::parser parser_;
  std::string line_;
  Pending current_;
  bool has_arrival_ = false;
  bool seen_arrival_ = false;
  int64_t previous_ = INT64_MIN;
};

// ---------------------------------------------------------------------------
// Spine

// A spine cell: text, and how it reads in JSON.
struct Cell {
  enum Kind : uint8_t { kAbsent, kString, kRaw } kind = kAbsent;  // kRaw: JSON text (number, bool, object...)
  std::string text;
};

struct SpineRow {
  std::vector<Cell> cells;  // by Spine::columns
  uint32_t table = 0;
  std::string key;
  int64_t at_ms = 0;
  size_t line = 0;
};

struct Spine {
  std::string path;
  std::vector<std::string> columns;
  std::vector<SpineRow> rows;
};

uint32_t spine_table(const Common& common, std::string_view name, const std::string& where) {
  if (name.empty()) {
    if (common.default_table.empty()) {
      throw InputError(fmt::format("{}: no table: add a \"table\" column or say --table", where));
    }
    name = common.default_table;
  }
  const int t = common.engine->table_index(name);
  if (t < 0) throw InputError(fmt::format("{}: table \"{}\" is not in the config", where, name));
  return static_cast<uint32_t>(t);
}

Spine read_spine(const std::string& path, const Common& common) {
  Spine spine;
  spine.path = path;
  if (format_of(path) == Format::kCsv) {
    CsvReader csv(path);
    std::vector<std::string_view> cells;
    size_t line = 0;
    if (!csv.next(&cells, &line)) throw InputError(fmt::format("{}: empty file: no header line", path));
    int table_col = -1, key_col = -1, time_col = -1;
    for (size_t c = 0; c < cells.size(); ++c) {
      spine.columns.emplace_back(cells[c]);
      if (cells[c] == "table") table_col = static_cast<int>(c);
      if (cells[c] == "key") key_col = static_cast<int>(c);
      if (cells[c] == "timestamp") time_col = static_cast<int>(c);
    }
    if (key_col < 0 || time_col < 0) {
      throw InputError(fmt::format("{}:1: the header needs a \"key\" and a \"timestamp\" column", path));
    }
    while (csv.next(&cells, &line)) {
      const std::string where = fmt::format("{}:{}", path, line);
      if (cells.size() != spine.columns.size()) {
        throw InputError(fmt::format("{}: {} cells, the header has {}", where, cells.size(), spine.columns.size()));
      }
      SpineRow row;
      row.line = line;
      row.table = spine_table(common, table_col >= 0 ? cells[table_col] : std::string_view(), where);
      row.key = std::string(cells[key_col]);
      if (!parse_time(cells[time_col], &row.at_ms)) {
        throw InputError(
            fmt::format("{}: timestamp \"{}\" is not ms since the epoch or RFC 3339", where, cells[time_col]));
      }
      for (std::string_view c : cells) row.cells.push_back(Cell{Cell::kString, std::string(c)});
      spine.rows.push_back(std::move(row));
    }
    return spine;
  }
  LineReader lines(path);
  simdjson::dom::parser parser;
  std::string_view line;
  while (lines.next(&line)) {
    if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
    const std::string where = fmt::format("{}:{}", path, lines.line());
    simdjson::dom::element doc;
    simdjson::dom::object obj;
    if (parser.parse(line.data(), line.size()).get(doc) != simdjson::SUCCESS || doc.get_object().get(obj)) {
      throw InputError(fmt::format("{}: not a JSON object", where));
    }
    SpineRow row;
    row.line = lines.line();
    std::string_view table, key;
    bool has_key = false, has_time = false;
    for (auto [name, value] : obj) {
      size_t c = 0;
      while (c < spine.columns.size() && spine.columns[c] != name) ++c;
      if (c == spine.columns.size()) spine.columns.emplace_back(name);
      if (row.cells.size() <= c) row.cells.resize(c + 1);
      std::string_view s;
      if (value.get_string().get(s) == simdjson::SUCCESS) {
        row.cells[c] = Cell{Cell::kString, std::string(s)};
      } else if (!value.is_null()) {
        row.cells[c] = Cell{Cell::kRaw, simdjson::minify(value)};
      }
      if (name == "table") table = s;
      if (name == "key") {
        if (value.get_string().get(key) != simdjson::SUCCESS) {
          throw InputError(fmt::format("{}: \"key\" is not a string", where));
        }
        has_key = true;
      }
      if (name == "timestamp") {
        std::optional<int64_t> ms;
        if (value.is_int64()) {
          ms = int64_t(value);
        } else {
          int64_t v = 0;
          if (value.is_string() && larder::sidecar::parse_rfc3339_ms(s, &v)) ms = v;
        }
        if (!ms) throw InputError(fmt::format("{}: \"timestamp\" is not ms since the epoch or RFC 3339", where));
        row.at_ms = *ms;
        has_time = true;
      }
    }
    if (!has_key || !has_time) throw InputError(fmt::format("{}: needs \"key\" and \"timestamp\"", where));
    row.table = spine_table(common, table, where);
    row.key = std::string(key);
    spine.rows.push_back(std::move(row));
  }
  return spine;
}

// ---------------------------------------------------------------------------
// Output

struct Result {
  larder::ReadResult read;
  std::vector<uint64_t> row;  // the row buffer (Table::row_words), when found
};

// A field column of the output: its name, and where each table has it.
struct OutField {
  std::string name;
  std::vector<int> field_of_table;  // per table: index into Table::fields(), -1 none
};

void json_escape(std::string& out, std::string_view s) {
  out += '"';
  larder::sidecar::append_json_escaped(out, s);
  out += '"';
}

void csv_escape(std::string& out, std::string_view s) {
  if (s.find_first_of(",\"\n\r") == std::string_view::npos) {
    out += s;
    return;
  }
  out += '"';
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
}

// A number literal that JSON accepts as is.
bool json_number_text(std::string_view s) {
  double d = 0;
  if (s.empty() || s.front() == '+' || s.front() == '.' || s.back() == '.') return false;
  if (s.size() > 1 && s[0] == '0' && std::isdigit(static_cast<unsigned char>(s[1]))) return false;
  if (s.find_first_not_of("-0123456789.eE+") != std::string_view::npos) return false;
  return parse_double(s, &d) && std::isfinite(d);
}

// The value of field `f` of a row as text: JSON (`json`) or a CSV cell
// (strings unquoted). Empty when not valid.
void format_value(std::string& out, const larder::RowView& row, const larder::Field& f, bool json) {
  using larder::layout::FieldType;
  auto number = [&](double v) {
    if (std::isfinite(v)) {
      fmt::format_to(std::back_inserter(out), "{}", v);
    } else {
      out += json ? "null" : (std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf"));
    }
  };
  switch (f.type) {
    case FieldType::kInt64: fmt::format_to(std::back_inserter(out), "{}", row.i64(f)); break;
    case FieldType::kFloat64: number(row.f64(f)); break;
    case FieldType::kFloat32: {
      const float v = row.f32(f);
      if (std::isfinite(v)) {
        fmt::format_to(std::back_inserter(out), "{}", v);
      } else {
        number(v);
      }
      break;
    }
    case FieldType::kBool: out += row.boolean(f) ? "true" : "false"; break;
    case FieldType::kFloat32Vector: {
      std::string text = "[";
      bool first = true;
      for (float v : row.vector(f)) {
        if (!first) text += ',';
        first = false;
        if (std::isfinite(v)) {
          fmt::format_to(std::back_inserter(text), "{}", v);
        } else {
          text += json ? "null" : (std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf"));
        }
      }
      text += ']';
      if (json) {
        out += text;
      } else {
        csv_escape(out, text);
      }
      break;
    }
    case FieldType::kString:
      if (json) {
        json_escape(out, row.string(f));
      } else {
        csv_escape(out, row.string(f));
      }
      break;
  }
}

class Output {
 public:
  explicit Output(const std::string& path) : path_(path) {
    file_ = path == "-" ? stdout : std::fopen(path.c_str(), "wb");
    if (file_ == nullptr) throw UsageError(fmt::format("cannot write {}: {}", path, std::strerror(errno)));
  }
  ~Output() {
    if (file_ != nullptr && file_ != stdout) std::fclose(file_);
  }
  std::string& buffer() { return buf_; }
  void maybe_flush() {
    if (buf_.size() >= (1u << 20)) flush();
  }
  void flush() {
    if (!buf_.empty() && std::fwrite(buf_.data(), 1, buf_.size(), file_) != buf_.size()) {
      throw InputError(fmt::format("{}: write error: {}", path_, std::strerror(errno)));
    }
    buf_.clear();
  }
  void close() {
    flush();
    if (std::fflush(file_) != 0 || (file_ != stdout && std::fclose(file_) != 0)) {
      file_ = nullptr;
      throw InputError(fmt::format("{}: write error: {}", path_, std::strerror(errno)));
    }
    file_ = nullptr;
  }

 private:
  std::string path_;
  FILE* file_ = nullptr;
  std::string buf_;
};

void write_output(const std::string& path, const Spine& spine, const std::vector<Result>& results, Replay& replay,
                  const std::vector<uint8_t>& spine_tables) {
  const Format format = format_of(path);
  // The field columns: the fields of the spine's tables, by name, in table order.
  std::vector<OutField> fields;
  const size_t tables = spine_tables.size();
  for (uint32_t t = 0; t < tables; ++t) {
    if (!spine_tables[t]) continue;
    const auto& tf = replay.table(t).fields();
    for (size_t f = 0; f < tf.size(); ++f) {
      auto it = std::find_if(fields.begin(), fields.end(), [&](const OutField& o) { return o.name == tf[f].name; });
      if (it == fields.end()) {
        fields.push_back(OutField{std::string(tf[f].name), std::vector<int>(tables, -1)});
        it = fields.end() - 1;
      }
      it->field_of_table[t] = static_cast<int>(f);
    }
  }
  std::vector<std::string> names = spine.columns;
  for (const OutField& f : fields) names.push_back(f.name);
  for (const char* n : {"found", "event_time", "computed_at"}) names.emplace_back(n);
  for (size_t a = 0; a < names.size(); ++a) {
    for (size_t b = 0; b < a; ++b) {
      if (names[a] == names[b]) {
        throw UsageError(
            fmt::format("{}: the spine has a column \"{}\", which the output also names for a field or "
                        "the result: rename it in the spine",
                        spine.path, names[a]));
      }
    }
  }
  Output out(path);
  std::string& buf = out.buffer();
  if (format == Format::kCsv) {
    for (size_t c = 0; c < names.size(); ++c) {
      if (c > 0) buf += ',';
      csv_escape(buf, names[c]);
    }
    buf += '\n';
  }
  for (size_t r = 0; r < spine.rows.size(); ++r) {
    const SpineRow& row = spine.rows[r];
    const Result& res = results[r];
    const larder::Table& table = replay.table(row.table);
    const bool found = res.read.found();
    const larder::RowView view = found ? table.view(res.row.data()) : larder::RowView();
    if (format == Format::kCsv) {
      for (size_t c = 0; c < spine.columns.size(); ++c) {
        if (c > 0) buf += ',';
        if (c < row.cells.size() && row.cells[c].kind != Cell::kAbsent) csv_escape(buf, row.cells[c].text);
      }
      for (const OutField& f : fields) {
        buf += ',';
        const int fi = f.field_of_table[row.table];
        if (!found || fi < 0 || !view.valid(table.fields()[fi])) continue;
        format_value(buf, view, table.fields()[fi], false);
      }
      if (found) {
        fmt::format_to(std::back_inserter(buf), ",true,{},{}\n", res.read.event_time_ms, res.read.computed_at_ms);
      } else {
        buf += ",false,,\n";
      }
    } else {
      buf += '{';
      bool first = true;
      auto member = [&](std::string_view name) {
        if (!first) buf += ',';
        first = false;
        json_escape(buf, name);
        buf += ':';
      };
      for (size_t c = 0; c < spine.columns.size(); ++c) {
        if (c >= row.cells.size() || row.cells[c].kind == Cell::kAbsent) continue;
        member(spine.columns[c]);
        const Cell& cell = row.cells[c];
        // A CSV spine's cells are text: numbers go out as numbers.
        if (cell.kind == Cell::kRaw || (spine.path.ends_with(".csv") && json_number_text(cell.text) &&
                                        spine.columns[c] != "key" && spine.columns[c] != "table")) {
          buf += cell.text;
        } else {
          json_escape(buf, cell.text);
        }
      }
      for (const OutField& f : fields) {
        member(f.name);
        const int fi = f.field_of_table[row.table];
        if (!found || fi < 0 || !view.valid(table.fields()[fi])) {
          buf += "null";
        } else {
          format_value(buf, view, table.fields()[fi], true);
        }
      }
      member("found");
      buf += found ? "true" : "false";
      member("event_time");
      if (found) {
        fmt::format_to(std::back_inserter(buf), "{}", res.read.event_time_ms);
      } else {
        buf += "null";
      }
      member("computed_at");
      if (found) {
        fmt::format_to(std::back_inserter(buf), "{}", res.read.computed_at_ms);
      } else {
        buf += "null";
      }
      buf += "}\n";
    }
    out.maybe_flush();
  }
  out.close();
}

// ---------------------------------------------------------------------------

struct Options {
  std::string config;
  std::vector<std::string> events;
  std::string spine;
  std::string out;
  std::string partition = "0/1";
  std::string table;
  std::string scratch_dir;
  std::string order = "key";
  std::string temp_dir;
  std::string memory = "256M";
  bool strict = false;
  bool quiet = false;
  size_t show_rejections = 10;
};

// A size: bytes, or a number with K, M or G (powers of 1024).
uint64_t parse_size(const std::string& text, const char* option) {
  uint64_t n = 0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, n);
  uint64_t unit = 1;
  if (ec == std::errc() && p + 1 == end) {
    switch (*p) {
      case 'k':
      case 'K':
        unit = uint64_t{1} << 10;
        ++p;
        break;
      case 'm':
      case 'M':
        unit = uint64_t{1} << 20;
        ++p;
        break;
      case 'g':
      case 'G':
        unit = uint64_t{1} << 30;
        ++p;
        break;
      default: break;
    }
  }
  if (ec != std::errc() || p != end || n == 0 || n > (UINT64_MAX >> 31)) {
    throw UsageError(fmt::format("{} {}: say a size, e.g. 512M or 2G", option, text));
  }
  return n * unit;
}

struct SourceOrder {
  // Smallest arrival first; ties: the earlier file.
  bool operator()(const std::pair<int64_t, size_t>& a, const std::pair<int64_t, size_t>& b) const {
    return a.first != b.first ? a.first > b.first : a.second > b.second;
  }
};

// What the user sees while the events are read: the refused events (the
// first few, with file:line), --strict, the progress line. A replay that
// starts again in arrival order reads the events again in the same order,
// so it shows only the refusals the first pass did not.
class Reporter {
 public:
  Reporter(const Options& o) : o_(o), progress_(!o.quiet && isatty(STDERR_FILENO)) {}
  void begin_pass() { seen_ = 0; }
  void refused(const EventSource& src, const larder::sidecar::DecodeResult& r) {
    const std::string what = fmt::format("{}:{}: {}: {}", src.path(), src.current().line,
                                         larder::sidecar::reject_reason_name(r.reason), r.detail);
    if (o_.strict) throw InputError(what + " (--strict)");
    if (seen_++ >= shown_ && shown_ < o_.show_rejections) {
      ++shown_;
      if (progress_) std::fputc('\n', stderr);
      std::fprintf(stderr, "larder-backfill: refused %s\n", what.c_str());
    }
  }
  // At most once a second, on a terminal.
  template <class Text>
  void progress(Text&& text) {
    if (!progress_) return;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::seconds(1)) return;
    last_ = now;
    std::fprintf(stderr, "\rlarder-backfill: %s   ", text().c_str());
  }
  void end_progress() {
    if (progress_) std::fputc('\n', stderr);
  }
  double elapsed_s() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  }

 private:
  const Options& o_;
  bool progress_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_ = started_;
  size_t seen_ = 0;   // refusals met in this pass
  size_t shown_ = 0;  // refusals shown, over all passes
};

// The event files, merged by arrival time (ties: the earlier file), each
// checked to be in non-decreasing arrival order.
class EventStream {
 public:
  EventStream(const Options& o, const Common& common, Replay& replay) {
    for (const std::string& path : o.events) {
      if (format_of(path) == Format::kCsv) {
        sources_.push_back(std::make_unique<CsvEvents>(path, common, replay.builder()));
      } else {
        sources_.push_back(std::make_unique<JsonlEvents>(path, common));
      }
    }
    for (size_t s = 0; s < sources_.size(); ++s) {
      if (sources_[s]->advance()) heads_.emplace(sources_[s]->current().arrival_ms, s);
    }
  }
  // Calls each(source) for every event in the partition that arrived at or
  // before `until`, in order; each() returns the decoder's result, which
  // `reporter` reports when it refused the event.
  template <class Each>
  void until(int64_t until, Reporter& reporter, Each&& each) {
    while (!heads_.empty() && heads_.top().first <= until) {
      const size_t s = heads_.top().second;
      heads_.pop();
      EventSource& src = *sources_[s];
      ++read_;
      if (!src.skipped()) {
        const larder::sidecar::DecodeResult r = each(src);
        if (!r.ok) reporter.refused(src, r);
      }
      if (src.advance()) heads_.emplace(src.current().arrival_ms, s);
      if ((read_ & 0xffff) == 0) {
        reporter.progress([&] {
          return fmt::format("{} events, {:.0f}/s, {}", read_, read_ / reporter.elapsed_s(),
                             larder::sidecar::format_rfc3339_ms(std::max<int64_t>(0, src.current().arrival_ms)));
        });
      }
    }
  }
  uint64_t read() const noexcept { return read_; }

 private:
  std::vector<std::unique_ptr<EventSource>> sources_;
  std::priority_queue<std::pair<int64_t, size_t>, std::vector<std::pair<int64_t, size_t>>, SourceOrder> heads_;
  uint64_t read_ = 0;
};

// One replay's answers: per spine row (spine.rows order) its read.
struct Answers {
  std::unique_ptr<Replay> replay;
  std::vector<Result> results;
  uint64_t found = 0;
  uint64_t read = 0;  // events read from the files
  std::string how;    // for the summary: the order of the replay
};

void answer(Replay& replay, const SpineRow& sr, std::vector<larder::Row>& rows, Result& res, uint64_t* found) {
  larder::Row& row = rows[sr.table];
  res.read = replay.read(sr.table, sr.key, sr.at_ms, row);
  if (res.read.found()) {
    ++*found;
    const size_t words = replay.table(sr.table).row_words();
    res.row.assign(row.data(), row.data() + words);
  }
}

std::vector<larder::Row> row_buffers(const Engine& engine, Replay& replay) {
  std::vector<larder::Row> rows;
  for (size_t t = 0; t < engine.schema().tables.size(); ++t) rows.push_back(replay.table(t).make_row());
  return rows;
}

// The replay rule in its own order: every event in arrival order, each
// spine row answered once the events that arrived by its instant are applied.
Answers replay_arrival(const Options& o, const Engine& engine, const Common& common, const Spine& spine,
                       Reporter& reporter) {
  Answers a;
  a.replay = engine.start();
  Replay& replay = *a.replay;
  reporter.begin_pass();
  EventStream stream(o, common, replay);
  auto apply = [&](EventSource& src) { return src.apply(replay); };
  std::vector<size_t> order(spine.rows.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t x, size_t y) { return spine.rows[x].at_ms < spine.rows[y].at_ms; });
  a.results.resize(spine.rows.size());
  std::vector<larder::Row> rows = row_buffers(engine, replay);
  for (size_t i : order) {
    stream.until(spine.rows[i].at_ms, reporter, apply);
    answer(replay, spine.rows[i], rows, a.results[i], &a.found);
  }
  // The events after the last spine instant change no answer, but are read:
  // the summary counts them and a malformed line is still an error.
  stream.until(INT64_MAX, reporter, apply);
  replay.flush();
  a.read = stream.read();
  return a;
}

// Why a key-by-key replay could answer otherwise than arrival order.
struct NotByKey {
  std::string why;
};

// A step of the key-by-key replay: an update of a run or a spine read.
struct Step {
  uint64_t hash;  // hash_key(key, the table's seed)
  int64_t time;   // arrival, or the read's instant
  uint64_t tag;   // kRead | spine row, or the update's index in the run
  uint32_t table;
};
constexpr uint64_t kRead = uint64_t{1} << 63;

// Key by key (docs/backfill.md, "Order of the replay"): a first pass reads
// the files once in arrival order, decodes each event and appends its
// updates to one of k run files by the top bits of the key's hash under its
// table's seed (the key's home slot in the scratch table); then each run,
// read back whole, is sorted by (hash, table, time; an update before a read
// at its instant, updates in input order, reads in spine order) and replayed
// key after key. Memory: the scratch segment and one run. Throws NotByKey
// where that order could answer otherwise than arrival order.
Answers replay_by_key(const Options& o, const Engine& engine, const Common& common, const Spine& spine,
                      Reporter& reporter) {
  Answers a;
  a.replay = engine.start();
  Replay& replay = *a.replay;
  const auto& tables = engine.schema().tables;
  std::vector<uint64_t> seeds;
  for (uint32_t t = 0; t < tables.size(); ++t) seeds.push_back(replay.key_hash_seed(t));

  // k: a power of two, so that a run's share of the input fits the budget
  // read back: at about kLoadedPerInputByte bytes of memory per byte of
  // input (the run file and its regrouped copy, about 56 bytes a record
  // each, against a CSV line of 32 bytes; JSON Lines take less).
  constexpr uint64_t kLoadedPerInputByte = 4;
  const uint64_t budget = parse_size(o.memory, "--memory");
  uint64_t input_bytes = 0;
  for (const std::string& path : o.events) {
    std::error_code ec;
    const uintmax_t size = std::filesystem::file_size(path, ec);
    if (!ec) input_bytes += size;
  }
  const uint64_t wanted = (input_bytes / std::max<uint64_t>(1, budget / kLoadedPerInputByte)) + 1;
  const uint32_t runs_k = static_cast<uint32_t>(std::bit_ceil(std::min<uint64_t>(wanted, 4096)));
  const int run_bits = std::countr_zero(runs_k);
  auto run_of = [&](uint64_t hash) { return run_bits == 0 ? 0u : static_cast<uint32_t>(hash >> (64 - run_bits)); };
  std::string temp_dir = o.temp_dir;
  if (temp_dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    temp_dir = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  }
  // Each run's write buffer: at most a quarter of the budget for all.
  const size_t buffer = std::clamp<uint64_t>(budget / 4 / runs_k, 4096, size_t{1} << 16);
  larder::offline::RunWriter runs(temp_dir, runs_k, buffer);

  // Pass 1: decode, split.
  reporter.begin_pass();
  {
    EventStream stream(o, common, replay);
    larder::sidecar::DecodedBatch batch;
    stream.until(INT64_MAX, reporter, [&](EventSource& src) {
      int64_t arrival = 0;
      larder::sidecar::DecodeResult r = src.decode(replay, batch, &arrival);
      if (!r.ok) return r;
      for (size_t i = 0; i < batch.size(); ++i) {
        const larder::sidecar::DecodedUpdate& u = batch.update(i);
        const std::string_view key = batch.key(u);
        if (!engine.in_partition(key)) {
          replay.note_skipped();
          continue;
        }
        if (u.event_id != 0 && !tables[u.table].aggregates.empty()) {
          // The dedup set's buckets hold the ids of many keys: which id an
          // insert evicts depends on the other keys' ids.
          throw NotByKey{"event ids on a table with aggregates"};
        }
        runs.add(run_of(larder::layout::hash_key(key, seeds[u.table])), batch, u, arrival);
      }
      return r;
    });
    runs.finish();
    a.read = stream.read();
  }

  // The spine rows of each run.
  std::vector<std::vector<size_t>> spine_of_run(runs_k);
  std::vector<uint64_t> spine_hash(spine.rows.size());
  for (size_t i = 0; i < spine.rows.size(); ++i) {
    const SpineRow& sr = spine.rows[i];
    spine_hash[i] = larder::layout::hash_key(sr.key, seeds[sr.table]);
    spine_of_run[run_of(spine_hash[i])].push_back(i);
  }

  // Pass 2: each run, key after key. A run is read whole, then its records
  // are reordered in memory by the next bits of their hashes into groups of
  // about kGroupEvents (a counting pass and one copy, stable, so each group
  // keeps input order), and each group is parsed, sorted and replayed while
  // its records, its steps and its keys' slots stay in the cache: the steps
  // of a whole run, sorted, would visit its records in a random order, a
  // miss (and a TLB miss) each.
  constexpr uint64_t kGroupEvents = 2048;
  for (auto& rows_of_run : spine_of_run) {
    std::sort(rows_of_run.begin(), rows_of_run.end(), [&](size_t x, size_t y) {
      return spine_hash[x] != spine_hash[y] ? spine_hash[x] < spine_hash[y] : x < y;
    });
  }
  a.results.resize(spine.rows.size());
  std::vector<larder::Row> rows = row_buffers(engine, replay);
  const auto table_count = static_cast<uint32_t>(tables.size());
  std::vector<char> file, grouped;
  std::vector<uint32_t> group_of;  // per record, in file order
  std::vector<size_t> group_start;
  larder::offline::RunData data;
  std::vector<Step> steps;
  uint64_t applied = 0;
  for (uint32_t r = 0; r < runs_k; ++r) {
    const std::string where = "run file " + runs.path(r);
    larder::offline::load_run_file(runs.path(r), runs.bytes(r), file);
    runs.remove(r);
    const uint64_t records = runs.records(r);
    const int group_bits =
        std::min(static_cast<int>(std::bit_width(records / kGroupEvents)), std::max(0, 48 - run_bits));
    auto group_of_hash = [&](uint64_t h) {
      return group_bits == 0 ? 0u : static_cast<uint32_t>((h << run_bits) >> (64 - group_bits));
    };
    // Count: each record's group, checking its bounds as it goes.
    group_of.clear();
    group_start.assign((size_t{1} << group_bits) + 1, 0);
    for (size_t at = 0; at < file.size();) {
      size_t length = 0;
      uint32_t table = 0;
      std::string_view key;
      if (!larder::offline::scan_record(file.data(), file.size(), at, table_count, &length, &table, &key)) {
        throw std::runtime_error(fmt::format("{}: the record at byte {} does not check", where, at));
      }
      const uint32_t g = group_of_hash(larder::layout::hash_key(key, seeds[table]));
      group_of.push_back(g);
      group_start[g + 1] += length;
      at += length;
    }
    if (group_of.size() != records) {
      throw std::runtime_error(fmt::format("{} holds {} records, {} were written", where, group_of.size(), records));
    }
    for (size_t g = 1; g < group_start.size(); ++g) group_start[g] += group_start[g - 1];
    // Copy: the records into their groups, in file order within each.
    grouped.resize(file.size());
    {
      std::vector<size_t> fill(group_start.begin(), group_start.end() - 1);
      size_t at = 0;
      for (uint32_t g : group_of) {
        uint32_t body = 0;
        std::memcpy(&body, file.data() + at, sizeof body);
        const size_t length = sizeof body + body;
        std::memcpy(grouped.data() + fill[g], file.data() + at, length);
        fill[g] += length;
        at += length;
      }
    }
    size_t next_read = 0;  // into spine_of_run[r], by hash
    for (size_t g = 0; g + 1 < group_start.size(); ++g) {
      data.clear();
      larder::offline::parse_records(grouped.data() + group_start[g], group_start[g + 1] - group_start[g], where,
                                     table_count, data);
      data.seal();
      steps.clear();
      for (size_t e = 0; e < data.events.size(); ++e) {
        const auto& ev = data.events[e];
        steps.push_back(Step{larder::layout::hash_key(ev.key, seeds[ev.table]), ev.arrival_ms, e, ev.table});
      }
      for (; next_read < spine_of_run[r].size() && group_of_hash(spine_hash[spine_of_run[r][next_read]]) == g;
           ++next_read) {
        const size_t i = spine_of_run[r][next_read];
        steps.push_back(Step{spine_hash[i], spine.rows[i].at_ms, kRead | i, spine.rows[i].table});
      }
      std::sort(steps.begin(), steps.end(), [](const Step& x, const Step& y) {
        if (x.hash != y.hash) return x.hash < y.hash;
        if (x.table != y.table) return x.table < y.table;
        if (x.time != y.time) return x.time < y.time;
        return x.tag < y.tag;
      });
      std::string_view key_of_group;
      for (size_t s = 0; s < steps.size(); ++s) {
        const Step& step = steps[s];
        const bool is_read = (step.tag & kRead) != 0;
        const size_t at = static_cast<size_t>(step.tag & ~kRead);
        const std::string_view key = is_read ? std::string_view(spine.rows[at].key) : data.events[at].key;
        if (s == 0 || step.hash != steps[s - 1].hash || step.table != steps[s - 1].table) {
          replay.begin_key();
          key_of_group = key;
        } else if (key != key_of_group) {
          throw NotByKey{"two keys of one 64-bit hash"};  // their steps would interleave
        }
        if (is_read) {
          answer(replay, spine.rows[at], rows, a.results[at], &a.found);
        } else {
          replay.apply_decoded(data.events[at]);
          ++applied;
        }
      }
      // The group's records are parsed again into `data` next: apply what
      // still points into them.
      replay.flush();
    }
    // A refusal depends on what the other keys hold at that moment, which
    // differs between the orders.
    if (replay.counters().refused > 0) throw NotByKey{"the writer refused events (table or aggregate arena full)"};
    reporter.progress([&] { return fmt::format("run {} of {}: {} updates applied", r + 1, runs_k, applied); });
  }
  a.how = fmt::format("key by key, {} run{}", runs_k, runs_k == 1 ? "" : "s");
  return a;
}

int run(const Options& o) {
  larder::offline::EngineOptions eo;
  eo.scratch_dir = o.scratch_dir;
  {
    unsigned i = 0, n = 0;
    char slash = 0;
    if (std::sscanf(o.partition.c_str(), "%u%c%u", &i, &slash, &n) != 3 || slash != '/' || n == 0 || i >= n) {
      throw UsageError(fmt::format("--partition {}: say i/n with 0 <= i < n, e.g. 0/4", o.partition));
    }
    eo.partition = i;
    eo.partitions = n;
  }
  if (o.order != "key" && o.order != "arrival")
    throw UsageError(fmt::format("--order {}: say key or arrival", o.order));
  parse_size(o.memory, "--memory");
  std::unique_ptr<Engine> engine;
  try {
    engine = Engine::open(o.config, eo);
  } catch (const std::exception& e) {
    throw UsageError(e.what());
  }
  Common common;
  common.engine = engine.get();
  common.default_table = o.table;
  if (common.default_table.empty() && engine->schema().tables.size() == 1) {
    common.default_table = engine->schema().tables[0].name;
  }
  if (!o.table.empty() && engine->table_index(o.table) < 0) {
    throw UsageError(fmt::format("--table {}: not in the config", o.table));
  }

  // The spine, whole, in the partition.
  Spine spine = read_spine(o.spine, common);
  const size_t spine_total = spine.rows.size();
  std::erase_if(spine.rows, [&](const SpineRow& r) { return !engine->in_partition(r.key); });
  std::vector<uint8_t> spine_tables(engine->schema().tables.size(), 0);
  for (const SpineRow& r : spine.rows) spine_tables[r.table] = 1;

  Reporter reporter(o);
  Answers a;
  if (o.order == "key") {
    try {
      a = replay_by_key(o, *engine, common, spine, reporter);
    } catch (const NotByKey& e) {
      a = Answers();  // the scratch segment and the run files go first
      a.how = fmt::format("in arrival order ({})", e.why);
    }
  } else {
    a.how = "in arrival order (--order arrival)";
  }
  if (a.replay == nullptr) {
    std::string how = std::move(a.how);
    a = replay_arrival(o, *engine, common, spine, reporter);
    a.how = std::move(how);
  }
  reporter.end_progress();

  write_output(o.out, spine, a.results, *a.replay, spine_tables);

  const larder::offline::ReplayCounters& c = a.replay->counters();
  const double t = reporter.elapsed_s();
  std::fprintf(stderr,
               "larder-backfill: %llu events read (%llu in partition %s: %llu applied, %llu stale, %llu duplicates, "
               "%llu late, %llu refused by the decoder, %llu by the writer); %zu of %zu spine rows (%llu found) "
               "in %.2f s, %.0f events/s, replayed %s\n",
               static_cast<unsigned long long>(a.read), static_cast<unsigned long long>(c.events + c.rejected),
               o.partition.c_str(), static_cast<unsigned long long>(c.applied),
               static_cast<unsigned long long>(c.stale), static_cast<unsigned long long>(c.duplicates),
               static_cast<unsigned long long>(c.late), static_cast<unsigned long long>(c.rejected),
               static_cast<unsigned long long>(c.refused), spine.rows.size(), spine_total,
               static_cast<unsigned long long>(a.found), t, a.read / std::max(t, 1e-9), a.how.c_str());
  if (o.strict && c.refused > 0) {
    throw InputError(fmt::format("the writer refused {} events (table or aggregate arena full; --strict)", c.refused));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "larder-backfill: for each spine row (table, key, timestamp, labels...), the features a Larder reader would "
      "have read at that instant, replayed from event files through the sidecar's own decoder, transforms, "
      "aggregates and writer (docs/backfill.md)."};
  app.footer(R"(Inputs:
  events  .csv: a header with key, event_time (ms or RFC 3339), optional table, arrival_time, op
          (upsert|delete|unpin), id, and the table's inputs by name (an empty cell: not sent).
          .jsonl: one message of format v1 per line (an update or a batch); its arrival time is
          the object's "arrival_time" member (ms or RFC 3339), else its newest event_time.
          Each file must be in non-decreasing arrival order (event-time order without arrival
          times); several files are merged. To sort:
            CSV, arrival time in column 4:
              (head -n1 ev.csv; tail -n+2 ev.csv | sort -t, -k4,4n -s) > sorted.csv
            JSON Lines, integer arrival_time:
              jq -r '[.arrival_time, tojson] | @tsv' ev.jsonl | sort -n -s -k1,1 | cut -f2- > sorted.jsonl
          (sort -s keeps the file's order among equal times; set LC_ALL=C for speed.)
          Replayed key by key from run files under --temp-dir (about twice the CSV's size),
          or with --order arrival as they come; the frame is the same.
  spine   .csv or .jsonl with key, timestamp (ms or RFC 3339), optional table, and any other
          columns, copied to the output. Read whole and sorted by timestamp; written in its order.
  out     .csv or .jsonl: the spine's columns, each field of its table(s) (empty / null when not
          valid), found, event_time and computed_at (ms).
Exit: 0 done, 1 bad input (file:line), 2 bad usage or config.)");
  Options o;
  app.add_option("--config", o.config, "the larder-sidecar config (its tables; sources are not used)")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--events", o.events, "event files (.csv, .jsonl), each in arrival order")->required();
  app.add_option("--spine", o.spine, "the spine (.csv, .jsonl)")->required()->check(CLI::ExistingFile);
  app.add_option("--out", o.out, "the output (.csv, .jsonl)")->required();
  app.add_option("--partition", o.partition,
                 "i/n: only keys in partition i of n (by key hash); n processes 0/n .. n-1/n write disjoint "
                 "outputs whose union is the 0/1 output")
      ->capture_default_str();
  app.add_option("--table", o.table, "the table of files without a \"table\" column (default: the config's only one)");
  app.add_option("--scratch-dir", o.scratch_dir,
                 "where the scratch segment goes (default $TMPDIR, else /tmp; a tmpfs such as /dev/shm is fastest)");
  app.add_option("--order", o.order,
                 "key: replay key by key from run files (the default; falls back to arrival order where that could "
                 "answer otherwise); arrival: in arrival order, the reference")
      ->capture_default_str();
  app.add_option("--temp-dir", o.temp_dir,
                 "where the key-by-key replay writes its run files, in a directory of its own (default $TMPDIR, "
                 "else /tmp)");
  app.add_option("--memory", o.memory,
                 "the memory one run of the key-by-key replay may take when read back (K, M, G); the run files "
                 "are as many as the input needs for that")
      ->capture_default_str();
  app.add_flag("--strict", o.strict, "an event the decoder or writer refuses is an error (default: counted, skipped)");
  app.add_flag("--quiet", o.quiet, "no progress line");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }
  try {
    return run(o);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "larder-backfill: %s\n", e.what());
    return kExitUsage;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "larder-backfill: %s\n", e.what());
    return kExitInput;
  }
}
