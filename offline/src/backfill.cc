// larder-backfill: a point-in-time join from the command line. For each row
// of a spine (table, key, timestamp, label columns...) it writes what a
// Larder reader would have read for that key at that instant, replaying event
// files through the offline engine (larder/offline/engine.h): the sidecar's
// decoder, transforms, aggregates and writer. docs/backfill.md.
//
// Streaming: the events are read a line at a time and applied in arrival
// order, so memory follows the live keys and their aggregate state (the
// scratch segment) plus the spine, which is read whole and sorted by time;
// the results wait in memory (a row copy per spine row) to be written in
// spine order.
//
// Exit codes: 0 done; 1 bad input (a file:line error, out-of-order events, a
// refused event with --strict); 2 bad usage or config.
//
// Threading: one thread.
#include <fmt/format.h>
#include <simdjson.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <queue>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "decode/event_time.h"
#include "larder/offline/engine.h"
#include "observe/json_text.h"

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
// quotes (RFC 4180).
class LineReader {
 public:
  explicit LineReader(const std::string& path) : path_(path) {
    file_ = path == "-" ? stdin : std::fopen(path.c_str(), "rb");
    if (file_ == nullptr) throw UsageError(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  }
  ~LineReader() {
    if (file_ != nullptr && file_ != stdin) std::fclose(file_);
    std::free(buf_);
  }
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // The next line without its end of line; false at the end of the file.
  bool next(std::string_view* line) {
    const ssize_t n = getline(&buf_, &cap_, file_);
    if (n < 0) {
      if (std::ferror(file_)) throw InputError(fmt::format("{}: read error: {}", path_, std::strerror(errno)));
      return false;
    }
    ++line_;
    size_t len = static_cast<size_t>(n);
    while (len > 0 && (buf_[len - 1] == '\n' || buf_[len - 1] == '\r')) --len;
    *line = std::string_view(buf_, len);
    return true;
  }
  size_t line() const noexcept { return line_; }
  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
  FILE* file_ = nullptr;
  char* buf_ = nullptr;
  size_t cap_ = 0;
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
  if (parse_int(cell, &i)) {
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
  bool strict = false;
  bool quiet = false;
  size_t show_rejections = 10;
};

struct SourceOrder {
  // Smallest arrival first; ties: the earlier file.
  bool operator()(const std::pair<int64_t, size_t>& a, const std::pair<int64_t, size_t>& b) const {
    return a.first != b.first ? a.first > b.first : a.second > b.second;
  }
};

int run(const Options& o) {
  const auto started = std::chrono::steady_clock::now();
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

  // The spine, whole, in the partition, read in time order (stable).
  Spine spine = read_spine(o.spine, common);
  const size_t spine_total = spine.rows.size();
  std::erase_if(spine.rows, [&](const SpineRow& r) { return !engine->in_partition(r.key); });
  std::vector<size_t> order(spine.rows.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return spine.rows[a].at_ms < spine.rows[b].at_ms; });
  std::vector<uint8_t> spine_tables(engine->schema().tables.size(), 0);
  for (const SpineRow& r : spine.rows) spine_tables[r.table] = 1;

  std::unique_ptr<Replay> replay = engine->start();
  std::vector<std::unique_ptr<EventSource>> sources;
  for (const std::string& path : o.events) {
    if (format_of(path) == Format::kCsv) {
      sources.push_back(std::make_unique<CsvEvents>(path, common, replay->builder()));
    } else {
      sources.push_back(std::make_unique<JsonlEvents>(path, common));
    }
  }
  std::priority_queue<std::pair<int64_t, size_t>, std::vector<std::pair<int64_t, size_t>>, SourceOrder> heads;
  for (size_t s = 0; s < sources.size(); ++s) {
    if (sources[s]->advance()) heads.emplace(sources[s]->current().arrival_ms, s);
  }

  const bool progress = !o.quiet && isatty(STDERR_FILENO);
  auto last_progress = std::chrono::steady_clock::now();
  uint64_t read = 0, shown = 0;
  auto elapsed_s = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(); };
  // Applies every event that arrived at or before `until`.
  auto apply_until = [&](int64_t until) {
    while (!heads.empty() && heads.top().first <= until) {
      const size_t s = heads.top().second;
      heads.pop();
      EventSource& src = *sources[s];
      ++read;
      if (!src.skipped()) {
        const larder::sidecar::DecodeResult r = src.apply(*replay);
        if (!r.ok) {
          const std::string what = fmt::format("{}:{}: {}: {}", src.path(), src.current().line,
                                               larder::sidecar::reject_reason_name(r.reason), r.detail);
          if (o.strict) throw InputError(what + " (--strict)");
          if (shown++ < o.show_rejections) {
            if (progress) std::fputc('\n', stderr);
            std::fprintf(stderr, "larder-backfill: refused %s\n", what.c_str());
          }
        }
      }
      if (src.advance()) heads.emplace(src.current().arrival_ms, s);
      if (progress && (read & 0xffff) == 0) {
        const auto now = std::chrono::steady_clock::now();
        if (now - last_progress >= std::chrono::seconds(1)) {
          last_progress = now;
          const double t = elapsed_s();
          std::fprintf(stderr, "\rlarder-backfill: %llu events, %.0f/s, %s   ", static_cast<unsigned long long>(read),
                       read / t,
                       larder::sidecar::format_rfc3339_ms(std::max<int64_t>(0, src.current().arrival_ms)).c_str());
        }
      }
    }
  };

  std::vector<Result> results(spine.rows.size());
  std::vector<larder::Row> rows;
  for (size_t t = 0; t < engine->schema().tables.size(); ++t) rows.push_back(replay->table(t).make_row());
  uint64_t found = 0;
  for (size_t i : order) {
    const SpineRow& sr = spine.rows[i];
    apply_until(sr.at_ms);
    larder::Row& row = rows[sr.table];
    Result& res = results[i];
    res.read = replay->read(sr.table, sr.key, sr.at_ms, row);
    if (res.read.found()) {
      ++found;
      const size_t words = replay->table(sr.table).row_words();
      res.row.assign(row.data(), row.data() + words);
    }
  }
  // The events after the last spine instant change no answer, but are read:
  // the summary counts them and a malformed line is still an error.
  apply_until(INT64_MAX);
  replay->flush();
  if (progress) std::fputc('\n', stderr);

  write_output(o.out, spine, results, *replay, spine_tables);

  const larder::offline::ReplayCounters& c = replay->counters();
  const double t = elapsed_s();
  std::fprintf(stderr,
               "larder-backfill: %llu events read (%llu in partition %s: %llu applied, %llu stale, %llu duplicates, "
               "%llu late, %llu refused by the decoder, %llu by the writer); %zu of %zu spine rows (%llu found) "
               "in %.2f s, %.0f events/s\n",
               static_cast<unsigned long long>(read), static_cast<unsigned long long>(c.events + c.rejected),
               o.partition.c_str(), static_cast<unsigned long long>(c.applied),
               static_cast<unsigned long long>(c.stale), static_cast<unsigned long long>(c.duplicates),
               static_cast<unsigned long long>(c.late), static_cast<unsigned long long>(c.rejected),
               static_cast<unsigned long long>(c.refused), spine.rows.size(), spine_total,
               static_cast<unsigned long long>(found), t, read / std::max(t, 1e-9));
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
