// larderctl publish (publish_command.h). Single-threaded: one rabbitmq-c
// connection, used on the main thread only.
//
// A row becomes one update object; the sidecar's Decoder (built from the same
// config, or the live segment's schema) decodes it alone, so every check the
// sidecar makes (types, lengths, dims, transforms' domains, aggregates,
// event-time bounds) is made here with the sidecar's wording. Rows that pass
// are joined into JSON arrays of at most max_message_bytes and max_updates,
// published mandatory and persistent with publisher confirms; each message
// carries its sequence number as message_id, so a basic.return names the
// message it returns.
#include "publish_command.h"

#include <amqp.h>
#include <fmt/format.h>
#include <simdjson.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "consume/amqp_session.h"
#include "decode/decoder.h"
#include "snapshot_commands.h"  // json_string, the exit codes

namespace larder::ctl {
namespace {

constexpr amqp_channel_t kChannel = 1;
constexpr int kFrameMax = 131072;
constexpr size_t kConfirmWindow = 64;  // unconfirmed messages in flight

class UsageError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};
class OpenError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

// How a CSV cell of a column becomes JSON: CSV has no types, so the schema
// says which member is a number, a string, a bool or a vector.
enum class CellKind : uint8_t { kNumber, kString, kBool, kVector, kUnknown };

struct Column {
  std::string name;
  CellKind kind = CellKind::kUnknown;
};

std::map<std::string, CellKind> cell_kinds(const layout::TableSpec& spec, const sidecar::TableDecodeOptions* opt) {
  std::map<std::string, CellKind> kinds;
  for (size_t f = 0; f < spec.fields.size(); ++f) {
    const layout::FieldSpec& fs = spec.fields[f];
    const sidecar::FieldIngest* in = opt != nullptr && f < opt->fields.size() ? &opt->fields[f] : nullptr;
    const std::string member = in != nullptr && !in->from.empty() ? in->from : fs.name;
    if (in != nullptr && !in->transform.empty()) {
      kinds[member] = in->transform.string_input() ? CellKind::kString : CellKind::kNumber;
    } else if (member == fs.name) {
      switch (fs.type) {
        case layout::FieldType::kString: kinds[member] = CellKind::kString; break;
        case layout::FieldType::kBool: kinds[member] = CellKind::kBool; break;
        case layout::FieldType::kFloat32Vector: kinds[member] = CellKind::kVector; break;
        default: kinds[member] = CellKind::kNumber; break;
      }
    } else {
      kinds.emplace(member, fs.type == layout::FieldType::kString ? CellKind::kString : CellKind::kNumber);
    }
  }
  for (const layout::AggregateSpec& a : spec.aggregates) {
    if (!a.source.empty()) kinds.emplace(a.source, CellKind::kNumber);
  }
  return kinds;
}

// A JSON number as RFC 8259 writes it (the decoder then checks its range).
bool json_number(std::string_view s) {
  size_t i = 0;
  if (i < s.size() && s[i] == '-') ++i;
  if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  if (s[i] == '0') {
    ++i;
  } else {
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  }
  if (i < s.size() && s[i] == '.') {
    ++i;
    if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) return false;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) return false;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  }
  return i == s.size();
}

bool non_finite_word(std::string_view s) {
  std::string lower;
  for (char c : s) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return lower == "nan" || lower == "-nan" || lower == "inf" || lower == "-inf" || lower == "+inf" ||
         lower == "infinity" || lower == "-infinity";
}

// One input row, its members as JSON text (absent members are left out).
struct Row {
  size_t line = 0;
  std::vector<std::pair<std::string, std::string>> members;  // column -> JSON value
  std::string problem_column;                                // set when the row cannot become an update
  std::string problem;
};

// RFC 4180: quoted cells may hold commas, "" and line breaks. `line` of each
// record is where it starts. Returns false on an unterminated quote.
bool parse_csv(std::string_view text, std::vector<std::vector<std::string>>* records, std::vector<size_t>* lines,
               size_t* bad_line) {
  std::vector<std::string> record;
  std::string cell;
  bool quoted = false, cell_started = false;
  size_t line = 1, record_line = 1;
  auto end_record = [&] {
    record.push_back(std::move(cell));
    cell.clear();
    if (!(record.size() == 1 && record[0].empty())) {  // skip blank lines
      records->push_back(std::move(record));
      lines->push_back(record_line);
    }
    record.clear();
    cell_started = false;
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          cell += '"';
          ++i;
        } else {
          quoted = false;
        }
      } else {
        if (c == '\n') ++line;
        cell += c;
      }
      continue;
    }
    if (c == '"' && cell.empty() && !cell_started) {
      quoted = true;
      cell_started = true;
    } else if (c == ',') {
      record.push_back(std::move(cell));
      cell.clear();
      cell_started = false;
    } else if (c == '\n') {
      if (!cell.empty() && cell.back() == '\r' && !cell_started) cell.pop_back();
      end_record();
      record_line = ++line;
    } else if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') {
      // the \n ends the record
    } else {
      cell += c;
    }
  }
  if (quoted) {
    *bad_line = record_line;
    return false;
  }
  if (!cell.empty() || !record.empty()) end_record();
  return true;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw OpenError(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<Row> rows_of_csv(const std::string& path, const std::string& text,
                             const std::map<std::string, CellKind>& kinds, const PublishOptions& o) {
  std::vector<std::vector<std::string>> records;
  std::vector<size_t> lines;
  size_t bad_line = 0;
  if (!parse_csv(text, &records, &lines, &bad_line)) {
    throw UsageError(fmt::format("{}:{}: a quoted cell is never closed", path, bad_line));
  }
  if (records.empty()) throw UsageError(fmt::format("{}: no header line", path));
  std::vector<Column> header;
  std::set<std::string> seen;
  for (const std::string& name : records[0]) {
    if (!seen.insert(name).second) throw UsageError(fmt::format("{}:{}: column \"{}\" twice", path, lines[0], name));
    auto k = kinds.find(name);
    header.push_back({name, k == kinds.end() ? CellKind::kUnknown : k->second});
  }
  std::vector<Row> rows;
  rows.reserve(records.size() - 1);
  for (size_t r = 1; r < records.size(); ++r) {
    Row row;
    row.line = lines[r];
    const std::vector<std::string>& cells = records[r];
    if (cells.size() != header.size()) {
      row.problem = fmt::format("{} cells, the header has {}", cells.size(), header.size());
      rows.push_back(std::move(row));
      continue;
    }
    for (size_t c = 0; c < cells.size(); ++c) {
      const std::string& cell = cells[c];
      const Column& col = header[c];
      if (cell.empty()) continue;  // no value: the update leaves the field as it is
      std::string value;
      const bool special = col.name == o.key_column || col.name == o.id_column;
      if (special) {
        value = json_string(cell);
      } else if (col.name == o.event_time_column) {
        value = json_number(cell) ? cell : json_string(cell);  // ms, or RFC 3339 (the decoder checks)
      } else if (col.name == o.delete_column) {
        value = cell;
      } else {
        switch (col.kind) {
          case CellKind::kString: value = json_string(cell); break;
          case CellKind::kBool: value = cell == "true" || cell == "false" ? cell : json_string(cell); break;
          case CellKind::kVector: value = !cell.empty() && cell.front() == '[' ? cell : json_string(cell); break;
          case CellKind::kNumber:
          case CellKind::kUnknown:
            if (non_finite_word(cell)) {
              row.problem_column = col.name;
              row.problem = fmt::format("non_finite: \"{}\" is not a finite number", cell);
            }
            // Not a number: a string, which the decoder refuses as wrong_type with its detail.
            value = json_number(cell) ? cell : json_string(cell);
            break;
        }
      }
      row.members.emplace_back(col.name, std::move(value));
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

std::vector<Row> rows_of_jsonl(const std::string& text) {
  simdjson::dom::parser parser;
  std::vector<Row> rows;
  size_t line = 0, pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view l(text.data() + pos, end - pos);
    pos = end + 1;
    ++line;
    while (!l.empty() && (l.back() == '\r' || l.back() == ' ' || l.back() == '\t')) l.remove_suffix(1);
    if (l.empty()) continue;
    Row row;
    row.line = line;
    simdjson::dom::element doc;
    if (parser.parse(l.data(), l.size()).get(doc) != simdjson::SUCCESS) {
      row.problem = "bad_json: not a JSON value";
    } else if (!doc.is_object()) {
      row.problem = "not_object: a line holds one JSON object";
    } else {
      for (auto [name, value] : doc.get_object()) {
        if (value.is_null()) continue;  // no value: the update leaves the field as it is
        row.members.emplace_back(std::string(name), simdjson::minify(value));
      }
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

struct RowError {
  size_t line = 0;
  std::string column;
  std::string reason;  // a reject reason (docs/message-format.md) or a problem of the row
  std::string detail;
};

// The column a decoder detail names (`field "x"`), else "".
std::string column_of(const std::string& detail) {
  for (const char* marker : {"field \"", "member \""}) {
    const size_t at = detail.find(marker);
    if (at == std::string::npos) continue;
    const size_t from = at + std::strlen(marker);
    const size_t to = detail.find('"', from);
    if (to != std::string::npos) return detail.substr(from, to - from);
  }
  return "";
}

// The update object of a row, or an error. Deletes carry no fields.
std::optional<std::string> update_of(const Row& row, const PublishOptions& o, RowError* err) {
  err->line = row.line;
  if (!row.problem.empty()) {
    err->column = row.problem_column;
    const size_t colon = row.problem.find(':');
    err->reason = row.problem.substr(0, colon);
    err->detail = colon == std::string::npos ? row.problem : row.problem.substr(colon + 2);
    if (err->reason.find(' ') != std::string::npos) err->reason = "bad_row";
    return std::nullopt;
  }
  const std::string* key = nullptr;
  const std::string* event_time = nullptr;
  const std::string* id = nullptr;
  bool is_delete = o.delete_all;
  std::string fields;
  for (const auto& [name, value] : row.members) {
    if (name == o.key_column) {
      key = &value;
    } else if (!o.event_time_column.empty() && name == o.event_time_column) {
      event_time = &value;
    } else if (!o.id_column.empty() && name == o.id_column) {
      id = &value;
    } else if (!o.delete_column.empty() && name == o.delete_column) {
      if (value != "true" && value != "false") {
        *err = {row.line, name, "bad_row", fmt::format("the delete column holds true or false, not {}", value)};
        return std::nullopt;
      }
      is_delete = is_delete || value == "true";
    } else {
      fields += (fields.empty() ? "" : ",") + json_string(name) + ":" + value;
    }
  }
  if (key == nullptr) {
    *err = {row.line, o.key_column, "missing_member", "missing key"};
    return std::nullopt;
  }
  std::string time_text = o.event_time_column.empty() ? std::to_string(o.event_time_ms) : "";
  if (event_time != nullptr) time_text = *event_time;
  if (time_text.empty()) {
    *err = {row.line, o.event_time_column, "missing_member", "missing event time"};
    return std::nullopt;
  }
  // A key given as a number in JSON Lines: its text, as a string.
  std::string key_text = !key->empty() && key->front() == '"' ? *key : json_string(*key);
  std::string u = "{\"table\":" + json_string(o.table) + ",\"key\":" + key_text + ",\"event_time\":" + time_text;
  if (id != nullptr) u += ",\"id\":" + (!id->empty() && id->front() == '"' ? *id : json_string(*id));
  if (is_delete) {
    u += ",\"op\":\"delete\"}";
  } else {
    u += ",\"fields\":{" + fields + "}}";
  }
  return u;
}

std::string password_of(const PublishOptions& o) {
  if (!o.password_file.empty()) {
    std::string p = read_file(o.password_file);
    while (!p.empty() && (p.back() == '\n' || p.back() == '\r')) p.pop_back();
    return p;
  }
  const char* v = std::getenv(o.password_env.c_str());
  if (v == nullptr) {
    throw UsageError(
        fmt::format("no broker password: set ${} (--password-env) or give --password-file", o.password_env));
  }
  return v;
}

struct Outcome {
  size_t messages = 0, confirmed = 0, returned = 0, nacked = 0;
  size_t confirmed_rows = 0, returned_rows = 0, nacked_rows = 0;
  uint64_t bytes = 0;
};

std::string reply_text(const amqp_rpc_reply_t& r) {
  if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) return amqp_error_string2(r.library_error);
  if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION) {
    if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
      const auto* m = static_cast<const amqp_channel_close_t*>(r.reply.decoded);
      return fmt::format("{} {}", m->reply_code,
                         std::string(static_cast<const char*>(m->reply_text.bytes), m->reply_text.len));
    }
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
      const auto* m = static_cast<const amqp_connection_close_t*>(r.reply.decoded);
      return fmt::format("{} {}", m->reply_code,
                         std::string(static_cast<const char*>(m->reply_text.bytes), m->reply_text.len));
    }
  }
  return "no reply";
}

class Publisher {
 public:
  explicit Publisher(const sidecar::RabbitConfig& rc) : conn_(amqp_new_connection()) {
    if (conn_ == nullptr) throw OpenError("amqp_new_connection failed (out of memory)");
    try {
      sidecar::open_amqp_socket(conn_, rc);
    } catch (const sidecar::SessionError& e) {
      throw OpenError(e.what());
    }
    const amqp_rpc_reply_t login = amqp_login(conn_, rc.url.vhost.c_str(), 0, kFrameMax, 0, AMQP_SASL_METHOD_PLAIN,
                                              rc.url.user.c_str(), rc.password.c_str());
    if (login.reply_type != AMQP_RESPONSE_NORMAL) {
      throw OpenError(fmt::format("login to {} as \"{}\" (password from {}): {}", rc.url.to_string(), rc.url.user,
                                  rc.password_source, reply_text(login)));
    }
    amqp_channel_open(conn_, kChannel);
    check("channel.open");
    amqp_confirm_select(conn_, kChannel);
    check("confirm.select");
  }
  ~Publisher() {
    if (conn_ != nullptr) {
      amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
      amqp_destroy_connection(conn_);
    }
  }
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  void publish(const std::string& exchange, const std::string& routing_key, const std::string& body, size_t rows,
               Outcome* out) {
    while (pending_.size() >= kConfirmWindow) wait_one(out);
    const uint64_t seq = ++seq_;
    const std::string id = std::to_string(seq);
    amqp_basic_properties_t props{};
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
    props.content_type = amqp_cstring_bytes("application/json");
    props.delivery_mode = 2;
    props.message_id = amqp_bytes_t{id.size(), const_cast<char*>(id.data())};
    const int status = amqp_basic_publish(
        conn_, kChannel, amqp_bytes_t{exchange.size(), const_cast<char*>(exchange.data())},
        amqp_bytes_t{routing_key.size(), const_cast<char*>(routing_key.data())},
        /*mandatory=*/1, /*immediate=*/0, &props, amqp_bytes_t{body.size(), const_cast<char*>(body.data())});
    if (status != AMQP_STATUS_OK) throw OpenError(fmt::format("basic.publish: {}", amqp_error_string2(status)));
    pending_[seq] = rows;
    ++out->messages;
    out->bytes += body.size();
  }

  void finish(Outcome* out) {
    while (!pending_.empty()) wait_one(out);
  }

 private:
  void check(const char* what) {
    const amqp_rpc_reply_t r = amqp_get_rpc_reply(conn_);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) throw OpenError(fmt::format("{}: {}", what, reply_text(r)));
  }

  // Settles every message up to `tag` (or only `tag`).
  void settle(uint64_t tag, bool multiple, bool ack, Outcome* out) {
    for (auto it = pending_.begin(); it != pending_.end() && it->first <= tag;) {
      if (!multiple && it->first != tag) {
        ++it;
        continue;
      }
      const size_t rows = it->second;
      if (!ack) {
        ++out->nacked;
        out->nacked_rows += rows;
      } else if (returned_.erase(it->first) != 0) {
        ++out->returned;
        out->returned_rows += rows;
      } else {
        ++out->confirmed;
        out->confirmed_rows += rows;
      }
      it = pending_.erase(it);
    }
  }

  void wait_one(Outcome* out) {
    amqp_frame_t frame;
    timeval timeout{30, 0};
    const int status = amqp_simple_wait_frame_noblock(conn_, &frame, &timeout);
    if (status == AMQP_STATUS_TIMEOUT) {
      throw OpenError(fmt::format("no publisher confirm within 30 s ({} messages unconfirmed)", pending_.size()));
    }
    if (status != AMQP_STATUS_OK) throw OpenError(fmt::format("waiting for confirms: {}", amqp_error_string2(status)));
    if (frame.frame_type != AMQP_FRAME_METHOD) return;
    switch (frame.payload.method.id) {
      case AMQP_BASIC_ACK_METHOD: {
        const auto* m = static_cast<const amqp_basic_ack_t*>(frame.payload.method.decoded);
        settle(m->delivery_tag, m->multiple != 0, true, out);
        break;
      }
      case AMQP_BASIC_NACK_METHOD: {
        const auto* m = static_cast<const amqp_basic_nack_t*>(frame.payload.method.decoded);
        settle(m->delivery_tag, m->multiple != 0, false, out);
        break;
      }
      case AMQP_BASIC_RETURN_METHOD: {
        // The returned message's content follows; its message_id is its sequence number.
        amqp_message_t message;
        const amqp_rpc_reply_t r = amqp_read_message(conn_, frame.channel, &message, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL) throw OpenError("reading a returned message: " + reply_text(r));
        if ((message.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) != 0) {
          const std::string id(static_cast<const char*>(message.properties.message_id.bytes),
                               message.properties.message_id.len);
          returned_.insert(std::strtoull(id.c_str(), nullptr, 10));
        }
        amqp_destroy_message(&message);
        break;
      }
      case AMQP_CHANNEL_CLOSE_METHOD: {
        const auto* m = static_cast<const amqp_channel_close_t*>(frame.payload.method.decoded);
        throw OpenError(fmt::format("the broker closed the channel: {} {}", m->reply_code,
                                    std::string(static_cast<const char*>(m->reply_text.bytes), m->reply_text.len)));
      }
      case AMQP_CONNECTION_CLOSE_METHOD: {
        const auto* m = static_cast<const amqp_connection_close_t*>(frame.payload.method.decoded);
        throw OpenError(fmt::format("the broker closed the connection: {} {}", m->reply_code,
                                    std::string(static_cast<const char*>(m->reply_text.bytes), m->reply_text.len)));
      }
      default: break;
    }
    amqp_maybe_release_buffers(conn_);
  }

  amqp_connection_state_t conn_;
  uint64_t seq_ = 0;                    // publish sequence number (the broker's delivery tag in confirm mode)
  std::map<uint64_t, size_t> pending_;  // unconfirmed: seq -> rows
  std::set<uint64_t> returned_;         // returned, awaiting their ack
};

int run(const PublishOptions& o, const layout::Schema* segment_schema) {
  if (o.config_path.empty() == (segment_schema == nullptr)) {
    throw UsageError("give the schema: --config FILE (the sidecar's config) or --segment NAME (a live segment)");
  }
  if (o.event_time_column.empty() == (o.event_time_ms < 0)) {
    throw UsageError("give --event-time COLUMN or --event-time-ms MS (one time for every row)");
  }
  if (o.max_updates == 0 || o.max_message_bytes < 64) {
    throw UsageError("--max-updates is at least 1 and --max-message-bytes at least 64");
  }
  std::string format = o.format;
  if (format.empty()) {
    const auto ends = [&](std::string_view suffix) {
      return o.file.size() >= suffix.size() &&
             o.file.compare(o.file.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends(".csv")) {
      format = "csv";
    } else if (ends(".jsonl") || ends(".ndjson") || ends(".json")) {
      format = "jsonl";
    } else {
      throw UsageError(fmt::format("{}: say --format csv or --format jsonl", o.file));
    }
  }

  layout::Schema schema;
  std::vector<sidecar::TableDecodeOptions> decode_options;
  sidecar::RabbitConfig rc;
  std::string config_exchange;  // the config's first binding's: where its sidecar listens
  if (!o.config_path.empty()) {
    sidecar::Config cfg;
    try {
      // The password is checked below, where it is needed (not for --dry-run).
      cfg = sidecar::load_config_file(o.config_path, sidecar::ConfigLoad{.require_secrets = false});
    } catch (const sidecar::ConfigError& e) {
      throw UsageError(fmt::format("{}: {}", o.config_path, e.what()));
    }
    schema = cfg.schema();
    decode_options = cfg.decode_options();
    rc = cfg.rabbitmq;
    if (!rc.bindings.empty()) config_exchange = rc.bindings.front().exchange;
  } else {
    schema = *segment_schema;
    for (size_t t = 0; t < schema.tables.size(); ++t) {
      sidecar::TableDecodeOptions d;
      d.event_time = {sidecar::kDefaultMaxFutureSkewMs, sidecar::kDefaultMinEventTimeMs};
      decode_options.push_back(std::move(d));
    }
  }
  if (!o.url.empty()) {
    std::string error;
    if (!sidecar::parse_amqp_url(o.url, &rc.url, &error)) throw UsageError("--url: " + error);
  }
  if (!o.ca_file.empty()) rc.tls.ca_file = o.ca_file;
  if (!o.cert_file.empty()) rc.tls.cert_file = o.cert_file;
  if (!o.key_file.empty()) rc.tls.key_file = o.key_file;
  if (o.no_verify_peer) rc.tls.verify_peer = rc.tls.verify_hostname = false;

  size_t table_index = schema.tables.size();
  std::string names;
  for (size_t t = 0; t < schema.tables.size(); ++t) {
    if (schema.tables[t].name == o.table) table_index = t;
    names += (t ? ", " : "") + schema.tables[t].name;
  }
  if (table_index == schema.tables.size()) {
    throw UsageError(fmt::format("no table \"{}\"; the tables are: {}", o.table, names));
  }
  const auto kinds = cell_kinds(schema.tables[table_index], &decode_options[table_index]);

  const std::string text = read_file(o.file);
  const std::vector<Row> rows = format == "csv" ? rows_of_csv(o.file, text, kinds, o) : rows_of_jsonl(text);

  // Every row through the sidecar's decoder, alone.
  sidecar::Decoder decoder(schema, decode_options);
  sidecar::DecodedBatch scratch;
  std::vector<std::string> updates;
  std::vector<RowError> errors;
  updates.reserve(rows.size());
  for (const Row& row : rows) {
    RowError err;
    std::optional<std::string> u = update_of(row, o, &err);
    if (u) {
      const sidecar::DecodeResult r = decoder.decode(*u, scratch);
      if (r.ok) {
        updates.push_back(std::move(*u));
        continue;
      }
      std::string detail = r.detail;
      // The decoder names the update ("update 0: ", "update: "); here the line does.
      for (const char* prefix : {"update 0: ", "update: "}) {
        if (detail.rfind(prefix, 0) == 0) detail.erase(0, std::strlen(prefix));
      }
      err = {row.line, column_of(detail), sidecar::reject_reason_name(r.reason), detail};
      if (err.column.empty() &&
          (r.reason == sidecar::RejectReason::kEmptyKey || r.reason == sidecar::RejectReason::kKeyTooLong)) {
        err.column = o.key_column;
      }
      if (err.column.empty() && detail.find("event_time") != std::string::npos) err.column = o.event_time_column;
    }
    errors.push_back(std::move(err));
  }
  for (const RowError& e : errors) {
    std::fprintf(stderr, "%s:%zu: column \"%s\": %s: %s\n", o.file.c_str(), e.line, e.column.c_str(), e.reason.c_str(),
                 e.detail.c_str());
  }
  if (!errors.empty() && !o.skip_bad) {
    std::fprintf(stderr, "larderctl publish: %zu bad row(s) of %zu, nothing sent (--skip-bad sends the others)\n",
                 errors.size(), rows.size());
    return kExitProblems;
  }

  // Messages: JSON arrays within both limits (a single update larger than
  // max_message_bytes goes alone).
  std::vector<std::pair<std::string, size_t>> messages;
  for (size_t i = 0; i < updates.size();) {
    std::string body = "[" + updates[i];
    size_t n = 1;
    for (++i; i < updates.size() && n < o.max_updates && body.size() + updates[i].size() + 2 <= o.max_message_bytes;
         ++i, ++n) {
      body += "," + updates[i];
    }
    body += "]";
    messages.emplace_back(std::move(body), n);
  }

  Outcome out;
  const std::string exchange = o.exchange.empty() ? config_exchange : o.exchange;
  const std::string routing_key = o.routing_key.empty() ? o.table : o.routing_key;
  if (!o.dry_run) {
    if (exchange.empty()) throw UsageError("give --exchange (the config has no binding to take it from)");
    if (rc.url.host.empty()) throw UsageError("give --url amqp://user@host:port/vhost");
    if (o.config_path.empty() || !o.password_file.empty()) {
      rc.password = password_of(o);
      rc.password_source = o.password_file.empty() ? "env " + o.password_env : "file " + o.password_file;
    } else if (rc.password.empty()) {
      throw UsageError(
          fmt::format("no broker password: {} names it in rabbitmq.password_env or password_file, "
                      "which cannot be read here",
                      o.config_path));
    }
    Publisher publisher(rc);
    for (const auto& [body, n] : messages) publisher.publish(exchange, routing_key, body, n, &out);
    publisher.finish(&out);
  }

  if (o.json) {
    std::printf(
        "{\"rows\":%zu,\"bad_rows\":%zu,\"sent_rows\":%zu,\"messages\":%zu,\"bytes\":%llu,\"confirmed\":%zu,"
        "\"confirmed_rows\":%zu,\"returned\":%zu,\"returned_rows\":%zu,\"nacked\":%zu,\"nacked_rows\":%zu,"
        "\"dry_run\":%s}\n",
        rows.size(), errors.size(), updates.size(), o.dry_run ? messages.size() : out.messages,
        static_cast<unsigned long long>(out.bytes), out.confirmed, out.confirmed_rows, out.returned, out.returned_rows,
        out.nacked, out.nacked_rows, o.dry_run ? "true" : "false");
  } else if (o.dry_run) {
    std::printf("%zu rows valid, %zu bad, in %zu messages (not sent: --dry-run)\n", updates.size(), errors.size(),
                messages.size());
  } else {
    std::printf(
        "%zu rows in %zu messages (%llu bytes) to exchange \"%s\", routing key \"%s\": %zu confirmed (%zu rows)",
        updates.size(), out.messages, static_cast<unsigned long long>(out.bytes), exchange.c_str(), routing_key.c_str(),
        out.confirmed, out.confirmed_rows);
    std::printf(", %zu returned unroutable (%zu rows), %zu nacked (%zu rows)", out.returned, out.returned_rows,
                out.nacked, out.nacked_rows);
    if (!errors.empty()) std::printf("; %zu bad rows skipped", errors.size());
    std::printf("\n");
    if (out.returned != 0) {
      std::fprintf(stderr,
                   "larderctl publish: %zu message(s) returned: no queue is bound to exchange \"%s\" with routing key "
                   "\"%s\" (is the sidecar's binding declared? see rabbitmq.bindings)\n",
                   out.returned, exchange.c_str(), routing_key.c_str());
    }
  }
  return out.returned != 0 || out.nacked != 0 ? kExitProblems : kExitOk;
}

}  // namespace

int cmd_publish(const PublishOptions& options, const layout::Schema* segment_schema) {
  try {
    return run(options, segment_schema);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "larderctl publish: %s\n", e.what());
    return kExitUsage;
  } catch (const OpenError& e) {
    std::fprintf(stderr, "larderctl publish: %s\n", e.what());
    return kExitOpen;
  }
}

}  // namespace larder::ctl
