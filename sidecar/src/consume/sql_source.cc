// A database polled as a Source (see sql_source.h). Everything here runs on
// the source's thread, but check() and resume() (main thread, before run())
// and not_ready_reason() and render_metrics() (HTTP threads).
#include "consume/sql_source.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <thread>

#include "consume/backoff.h"
#include "larder/layout/clock.h"
#include "observe/metrics.h"
#include "snapshot/bootstrap.h"

namespace larder::sidecar {
namespace {

// 0001-01-01T00:00:00Z in microseconds: the first query's lower bound for
// timestamp cursors (what every driver can print).
constexpr int64_t kFirstTimestampUs = -62135596800LL * 1'000'000;
// Between two looks at the stop flag while waiting.
constexpr auto kStopCheck = std::chrono::milliseconds(50);

bool fits(InputType input, sql::ColumnType column) {
  using sql::ColumnType;
  switch (input) {
    case InputType::kInteger: return column == ColumnType::kInt;
    case InputType::kNumber: return column == ColumnType::kInt || column == ColumnType::kFloat;
    case InputType::kNumberOrBool:
      return column == ColumnType::kInt || column == ColumnType::kFloat || column == ColumnType::kBool;
    case InputType::kBool: return column == ColumnType::kBool;
    case InputType::kString: return column == ColumnType::kText;
    case InputType::kVector: return false;
    case InputType::kScalar:
      return column == ColumnType::kText || column == ColumnType::kInt || column == ColumnType::kBool;
  }
  return false;
}

const char* wanted(InputType input) {
  switch (input) {
    case InputType::kInteger: return "an integer column";
    case InputType::kNumber: return "an integer or floating-point column";
    case InputType::kNumberOrBool: return "a number or boolean column";
    case InputType::kBool: return "a boolean column";
    case InputType::kString: return "a text column";
    case InputType::kVector: return "a list of numbers (no column type maps to a vector field)";
    case InputType::kScalar: return "a text, integer or boolean column";
  }
  return "?";
}

// The url without its user (for logs and the position id).
std::string url_for_logs(const std::string& url) {
  const size_t scheme = url.find("://");
  const size_t at = url.find('@');
  if (scheme == std::string::npos || at == std::string::npos || at < scheme) return url;
  return url.substr(0, scheme + 3) + url.substr(at + 1);
}

uint64_t fnv1a(std::string_view s, uint64_t h = 1469598103934665603ull) {
  for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}

}  // namespace

struct SqlSource::RowCtx {
  SqlSource* self;
  const Polled* p;
  const sql::Result* r;
  size_t row;
  int64_t now_ms;
};

SqlSource::SqlSource(const Config& config, size_t index, Pipeline& pipeline, SourceLane& lane,
                     const std::atomic<int>& stop_requests, std::unique_ptr<sql::Connection> connection)
    : db_(config.databases[index]),
      pipeline_(pipeline),
      lane_(lane),
      stop_requests_(stop_requests),
      conn_(std::move(connection)),
      builder_(config.schema(), config.decode_options()),
      reject_log_(kRejectReasonCount, 10, std::chrono::milliseconds(1000)),
      work_token_(pipeline.work) {
  for (const PolledTableConfig& t : db_.tables) {
    auto p = std::make_unique<Polled>();
    p->config = &t;
    polled_.push_back(std::move(p));
  }
  completions_.resize(256);
  status_ = fmt::format("{}: not polled yet", name());
  set_sync(layout::SyncState::kCatchingUp);
}

SqlSource::~SqlSource() = default;

std::string SqlSource::name() const { return fmt::format("{} ({})", db_.path, sql_driver_name(db_.driver)); }

std::string SqlSource::position_id() const {
  // The tables' queries and cursors: another query or cursor column means
  // other positions. Not the server's address: one database has many names.
  uint64_t h = fnv1a(sql_driver_name(db_.driver));
  std::string tables;
  for (const PolledTableConfig& t : db_.tables) {
    for (const std::string* s : {&t.table, &t.query, &t.cursor_column, &t.tie_column}) h = fnv1a(*s + '\0', h);
    tables += (tables.empty() ? "" : ",") + t.table;
  }
  return fmt::format("sql {} tables={} q={:016x}", sql_driver_name(db_.driver), tables, h);
}

void SqlSource::check() {
  sql::Connection& c = *conn_;
  if (!c.connect()) {
    throw StartError(2, fmt::format("{}.url: cannot connect to {} ({}): {}", db_.path, url_for_logs(db_.url),
                                    sql_driver_name(db_.driver), c.error()));
  }
  for (auto& p : polled_) {
    std::vector<sql::ColumnInfo> columns;
    if (!c.describe(p->config->query, &columns)) {
      throw StartError(2, fmt::format("{}.query: the server refused it: {}", p->config->path, c.error()));
    }
    plan_table(*p, columns);
  }
  spdlog::info("{}: connected to {}; polling {} tables every {} ms (settle {} ms)", name(), url_for_logs(db_.url),
               polled_.size(), db_.poll_interval_ms, db_.settle_ms);
  set_state(layout::ConnectionState::kConnected);
}

void SqlSource::plan_table(Polled& p, const std::vector<sql::ColumnInfo>& columns) {
  const PolledTableConfig& t = *p.config;
  auto fail = [&](const std::string& key, const std::string& what) {
    throw StartError(2, fmt::format("{}{}: {}", t.path, key.empty() ? "" : "." + key, what));
  };
  std::string listed;
  for (const sql::ColumnInfo& c : columns) {
    listed += fmt::format("{}{} ({})", listed.empty() ? "" : ", ", c.name, c.server_type);
    p.column_names.push_back(c.name);
  }
  auto find = [&](const std::string& key, const std::string& name) -> int {
    int found = -1;
    for (size_t i = 0; i < columns.size(); ++i) {
      if (columns[i].name != name) continue;
      if (found >= 0) fail(key, fmt::format("the query returns two columns named \"{}\"", name));
      found = static_cast<int>(i);
    }
    if (found < 0) fail(key, fmt::format("the query has no column \"{}\" (it returns: {})", name, listed));
    return found;
  };
  auto type_of = [&](int i) { return columns[static_cast<size_t>(i)].type; };
  auto described = [&](int i) {
    return fmt::format("column \"{}\" is {}", columns[static_cast<size_t>(i)].name,
                       columns[static_cast<size_t>(i)].server_type);
  };
  using sql::ColumnType;
  const std::optional<uint32_t> table = builder_.find_table(t.table);
  if (!table) fail("table", fmt::format("no table \"{}\"", t.table));
  p.table = *table;
  p.key = find("key", t.key_column);
  p.key_type = type_of(p.key);
  if (p.key_type != ColumnType::kText && p.key_type != ColumnType::kInt) {
    fail("key", described(p.key) + ": a key must be a text or integer column");
  }
  p.cursor = find("cursor", t.cursor_column);
  p.cursor_type = type_of(p.cursor);
  if (p.cursor_type != ColumnType::kInt && p.cursor_type != ColumnType::kTimestamp) {
    fail("cursor", described(p.cursor) + ": a cursor must be an integer or timestamp column");
  }
  if (!t.tie_column.empty()) {
    p.tie = find("tie", t.tie_column);
    if (type_of(p.tie) != ColumnType::kInt) fail("tie", described(p.tie) + ": a tie must be an integer column");
  }
  if (!t.event_time_column.empty()) {
    p.event_time = find("event_time", t.event_time_column);
    p.event_type = type_of(p.event_time);
    if (p.event_type != ColumnType::kTimestamp && p.event_type != ColumnType::kInt) {
      fail("event_time",
           described(p.event_time) + ": event time must be a timestamp or an integer of milliseconds since 1970");
    }
  }
  if (!t.deleted_column.empty()) {
    p.deleted = find("deleted", t.deleted_column);
    if (type_of(p.deleted) != ColumnType::kBool) fail("deleted", described(p.deleted) + ": expected a boolean");
  }
  // Columns -> inputs: the configured pairs, else every input by its name.
  const std::vector<UpdateBuilder::Input> inputs = builder_.inputs(p.table);
  auto input_index = [&](const std::string& name) -> std::optional<uint32_t> {
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (inputs[i].name == name) return static_cast<uint32_t>(i);
    }
    return std::nullopt;
  };
  std::vector<std::pair<std::string, std::string>> pairs = t.columns;
  if (pairs.empty()) {
    for (const UpdateBuilder::Input& in : inputs) pairs.emplace_back(in.name, in.name);
  }
  std::vector<bool> fed(inputs.size(), false);
  for (const auto& [column, field] : pairs) {
    const std::string key = t.columns.empty() ? std::string() : "columns." + column;
    const std::optional<uint32_t> in = input_index(field);
    if (!in) {
      const std::optional<std::string> why = builder_.why_not_an_input(p.table, field);
      fail(key, fmt::format("table \"{}\" has no field or input \"{}\"{}", t.table, field, why ? ": " + *why : ""));
    }
    const int col = find(key, column);
    if (!fits(inputs[*in].type, type_of(col))) {
      fail(key, fmt::format("{}, but field \"{}\" of table \"{}\" needs {}", described(col), field, t.table,
                            wanted(inputs[*in].type)));
    }
    p.inputs.push_back(Input{col, *in, type_of(col)});
    fed[*in] = true;
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!fed[i] && !t.columns.empty()) {
      fail("columns", fmt::format("no column feeds \"{}\" of table \"{}\"", inputs[i].name, t.table));
    }
  }
  const int64_t floor = p.cursor_type == ColumnType::kTimestamp ? kFirstTimestampUs : sql::PollCursor::kMin;
  p.cursor_state = std::make_unique<sql::PollCursor>(p.tie >= 0, t.page_rows, floor);
}

void SqlSource::resume(std::span<const std::optional<SourcePosition>> stored) {
  for (size_t i = 0; i < polled_.size() && i < stored.size(); ++i) {
    Polled& p = *polled_[i];
    if (!stored[i] || p.cursor_state == nullptr) continue;
    p.cursor_state->resume(stored[i]->next_offset);
    const int64_t c = sql::decode_cursor(stored[i]->next_offset);
    p.last_cursor.store(c, std::memory_order_relaxed);
    spdlog::info("{}: {}: resuming at cursor {} (rows at that cursor are read again)", name(), p.config->table, c);
  }
}

void SqlSource::set_state(layout::ConnectionState s) {
  lane_.connection_state.store(static_cast<uint32_t>(s), std::memory_order_relaxed);  // relaxed: see pipeline.h
}

void SqlSource::set_sync(layout::SyncState s) {
  sync_ = s;
  lane_.sync_state.store(static_cast<uint32_t>(s), std::memory_order_relaxed);  // relaxed: see pipeline.h
}

void SqlSource::set_status(std::string status) {
  std::lock_guard<std::mutex> lock(health_mu_);
  status_ = std::move(status);
}

int SqlSource::run() {
  Backoff backoff(db_.reconnect.base_s, db_.reconnect.cap_s);
  auto wait = [&](std::chrono::milliseconds d) {
    const auto until = std::chrono::steady_clock::now() + d;
    while (!stopping() && std::chrono::steady_clock::now() < until) {
      // Alive while idle between polls (/healthz reads it).
      pipeline_.metrics.consumer_heartbeat_mono_ns.set(layout::now_mono_ns());
      process_completions();
      std::this_thread::sleep_for(
          std::min<std::chrono::nanoseconds>(kStopCheck, until - std::chrono::steady_clock::now()));
    }
  };
  while (!stopping()) {
    if (!conn_->connected()) {
      set_state(layout::ConnectionState::kDisconnected);
      if (!conn_->connect()) {
        const auto delay = backoff.next();
        spdlog::warn("{}: cannot connect: {}; retrying in {} ms", name(), conn_->error(), delay.count());
        set_status(fmt::format("{}: disconnected: {}", name(), conn_->error()));
        wait(delay);
        continue;
      }
      reconnects_.fetch_add(1, std::memory_order_relaxed);
      spdlog::info("{}: reconnected to {}", name(), url_for_logs(db_.url));
      set_state(layout::ConnectionState::kConnected);
    }
    if (!poll_all()) {
      failures_.fetch_add(1, std::memory_order_relaxed);
      if (!conn_->connected()) {
        spdlog::error("{}: connection lost: {}", name(), conn_->error());
        set_state(layout::ConnectionState::kDisconnected);
        if (sync_ == layout::SyncState::kReady) set_sync(layout::SyncState::kCatchingUp);
        set_status(fmt::format("{}: disconnected: {}", name(), conn_->error()));
        for (auto& p : polled_) p->caught_up = false;
        const auto delay = backoff.next();
        wait(delay);
      } else {
        // The server answered with an error (a query it refused): retry at
        // the poll interval, the error in the log and in /readyz.
        spdlog::error("{}: poll failed: {}", name(), conn_->error());
        set_status(fmt::format("{}: poll failed: {}", name(), conn_->error()));
        wait(std::chrono::milliseconds(db_.poll_interval_ms));
      }
      continue;
    }
    backoff.reset();
    wait(std::chrono::milliseconds(db_.poll_interval_ms));
  }
  spdlog::info("{}: stop requested; waiting for {} rows in flight", name(), outstanding_);
  wait_window(0);
  set_state(layout::ConnectionState::kStopped);
  spdlog::info("{}: stopped cleanly ({} polls)", name(), polls_.load());
  return 0;
}

bool SqlSource::poll_all() {
  for (size_t i = 0; i < polled_.size(); ++i) {
    Polled& p = *polled_[i];
    bool caught_up = false;
    // One clock reading per sweep of a table: the settle bound stays put
    // while its pages are read (rows newer than it wait for the next sweep).
    const std::optional<int64_t> now = conn_->server_now_us();
    if (!now) return false;
    std::optional<int64_t> before;
    if (p.cursor_type == sql::ColumnType::kTimestamp) before = *now - db_.settle_ms * 1000;
    while (!caught_up && !stopping()) {
      if (!poll_page(i, before, *now, &caught_up)) return false;
    }
    p.caught_up = caught_up;
  }
  process_completions();
  if (sync_ == layout::SyncState::kCatchingUp && !stopping()) {
    bool all = true;
    for (const auto& p : polled_) all = all && p->caught_up;
    if (all) {
      wait_window(0);  // caught up means applied, not only handed over
      set_sync(layout::SyncState::kReady);
      set_status("");
      spdlog::info(
          "sync: READY: {}: every polled table is caught up and applied (timestamp cursors up to the "
          "server's clock minus settle, {} ms)",
          name(), db_.settle_ms);
    }
  }
  return true;
}

bool SqlSource::poll_page(size_t index, std::optional<int64_t> before, int64_t now_us, bool* caught_up) {
  Polled& p = *polled_[index];
  sql::PollCursor& cur = *p.cursor_state;
  sql::CursorQuery q;
  q.select = p.config->query;
  q.cursor_column = p.config->cursor_column;
  q.cursor_type = p.cursor_type;
  q.tie_column = p.config->tie_column;
  q.after_cursor = cur.after();
  q.after_tie = cur.after_tie();
  q.before_cursor = before;
  q.limit = cur.limit();
  // At most about two pages in flight: the writer's pace is the poller's.
  wait_window((cur.limit() + kRowsPerItem - 1) / kRowsPerItem);
  std::unique_ptr<sql::Result> r = conn_->poll(q);
  polls_.fetch_add(1, std::memory_order_relaxed);
  pipeline_.metrics.consumer_heartbeat_mono_ns.set(layout::now_mono_ns());
  if (r == nullptr) return false;
  const std::span<const sql::ColumnInfo> cols = r->columns();
  bool same = cols.size() == p.column_names.size();
  for (size_t i = 0; same && i < cols.size(); ++i) same = cols[i].name == p.column_names[i];
  if (!same) {
    // The table changed under the query (a column added or dropped): the
    // mapping checked at start no longer holds.
    spdlog::critical("{}: {}: the query's columns changed since start; restart the sidecar to check them again", name(),
                     p.config->path);
    set_status(fmt::format("{}: {}: the query's columns changed since start", name(), p.config->path));
    return false;
  }
  const int64_t now_ms = now_us / 1000;
  const size_t n = r->rows();
  for (size_t row = 0; row < n; ++row) add_row(p, index, *r, row, now_ms);
  hand_over(p);  // the page's last rows: an item never spans two pages
  *caught_up = cur.end_page(n);
  if (p.cursor_type == sql::ColumnType::kTimestamp) {
    const int64_t last = p.last_cursor.load(std::memory_order_relaxed);
    p.lag_us.store(last == kNoCursor ? -1 : std::max<int64_t>(0, now_us - last), std::memory_order_relaxed);
  }
  if (!*caught_up && sync_ == layout::SyncState::kCatchingUp) {
    set_status(fmt::format("{}: catching up on table \"{}\" (at cursor {})", name(), p.config->table,
                           p.last_cursor.load(std::memory_order_relaxed)));
  }
  return true;
}

void SqlSource::add_row(Polled& p, size_t index, const sql::Result& r, size_t row, int64_t now_ms) {
  std::string error;
  sql::Cell cursor, tie;
  if (!r.cell(row, static_cast<size_t>(p.cursor), &cursor, &error) || cursor.null ||
      (p.tie >= 0 && (!r.cell(row, static_cast<size_t>(p.tie), &tie, &error) || tie.null))) {
    // No place in the cursor order: the query's WHERE never returns it
    // again, so skipping it loses nothing a later poll would bring.
    pipeline_.metrics.messages_received.add();
    p.skipped.fetch_add(1, std::memory_order_relaxed);
    note_reject(RejectReason::kMissingMember, fmt::format("{} row {}", p.config->table, row),
                error.empty() ? std::string("the cursor or tie column is NULL") : error);
    return;
  }
  const std::optional<uint64_t> offset = sql::PollCursor::item_offset(cursor.i);
  p.cursor_state->row(cursor.i, tie.i);
  if (!offset) {
    pipeline_.metrics.messages_received.add();
    p.skipped.fetch_add(1, std::memory_order_relaxed);
    note_reject(RejectReason::kOutOfRange, fmt::format("{} row {}", p.config->table, row), "cursor is -2^63");
    return;
  }
  if (open_rows_ == 0) {
    open_.received_mono_ns = layout::now_mono_ns();
    open_.source = lane_.index;
    open_.partition = lane_.partition_base + static_cast<uint32_t>(index);
    open_.batch.clear();
    open_.update_next_offsets.clear();
  }
  RowCtx ctx{this, &p, &r, row, now_ms};
  const DecodeResult result =
      builder_.append(open_.batch, now_ms, RejectReason::kWrongType, &SqlSource::walk_row, &ctx);
  if (result.ok) {
    // This row's place, stored with its update (sql/cursor.h).
    open_.update_next_offsets.push_back(*offset + 1);
  } else {
    // Refused: no update; the next update's place (or the item's own,
    // stored after its last) moves past it.
    note_reject(result.reason,
                fmt::format("{} key={} cursor={}", p.config->table, result.key.empty() ? "?" : result.key, cursor.i),
                result.detail);
  }
  open_.offset = *offset;
  open_last_cursor_ = cursor.i;
  if (++open_rows_ == kRowsPerItem) hand_over(p);
}

void SqlSource::hand_over(Polled& p) {
  if (open_rows_ == 0) return;
  SidecarMetrics& metrics = pipeline_.metrics;
  UpdateBuilder::finish(open_.batch);
  const int64_t decoded = layout::now_mono_ns();
  metrics.messages_received.add(open_rows_);
  metrics.decode_seconds.observe_ns(decoded - open_.received_mono_ns);
  metrics.consumer_heartbeat_mono_ns.set(decoded);
  p.rows.fetch_add(open_rows_, std::memory_order_relaxed);
  p.last_cursor.store(open_last_cursor_, std::memory_order_relaxed);

  WorkItem item;
  item.source = open_.source;
  item.partition = open_.partition;
  item.offset = open_.offset;
  item.received_mono_ns = open_.received_mono_ns;
  // Every row refused: nothing to apply, the position moves past them.
  item.position_only = open_.batch.empty();
  item.batch = std::move(open_.batch);
  item.update_next_offsets = std::move(open_.update_next_offsets);
  open_rows_ = 0;
  // The next item's buffers: a batch the writer handed back, if any.
  if (!spare_batches_.empty()) {
    open_.batch = std::move(spare_batches_.back());
    spare_batches_.pop_back();
  }
  if (!spare_offsets_.empty()) {
    open_.update_next_offsets = std::move(spare_offsets_.back());
    spare_offsets_.pop_back();
  }
  // Write point of the hand-over progress (see SidecarMetrics).
  if (metrics.work_enqueued.value() == metrics.work_done.value_acquire()) metrics.backlog_start_mono_ns.set(decoded);
  item.enqueued_mono_ns = layout::now_mono_ns();
  metrics.stage_receive_seconds.observe_ns(item.enqueued_mono_ns - item.received_mono_ns);
  pipeline_.work.enqueue(work_token_, std::move(item));
  metrics.work_enqueued.add_release();
  ++outstanding_;
}

void SqlSource::walk_row(void* opaque) {
  const RowCtx& ctx = *static_cast<const RowCtx*>(opaque);
  UpdateBuilder& b = ctx.self->builder_;
  const Polled& p = *ctx.p;
  std::string error;
  auto cell = [&](int column) {
    sql::Cell c;
    if (!ctx.r->cell(ctx.row, static_cast<size_t>(column), &c, &error)) b.reject(RejectReason::kOutOfRange, error);
    return c;
  };
  b.begin_update(0, false);
  b.set_table(p.table);
  const sql::Cell key = cell(p.key);
  if (key.null) b.reject(RejectReason::kMissingMember, fmt::format("key column \"{}\" is NULL", p.config->key_column));
  // set_key keeps a view until end_update: the text must outlive the call.
  std::string key_text;
  if (p.key_type == sql::ColumnType::kInt) {
    key_text = std::to_string(key.i);
    b.set_key(key_text);
  } else {
    b.set_key(key.s);
  }
  if (p.event_time >= 0) {
    const sql::Cell e = cell(p.event_time);
    if (e.null) {
      b.reject(RejectReason::kBadEventTime,
               fmt::format("event_time column \"{}\" is NULL", p.config->event_time_column));
    }
    // Floor division: microseconds before 1970 round down, as they order.
    b.set_event_time_ms(p.event_type == sql::ColumnType::kTimestamp ? (e.i >= 0 ? e.i / 1000 : (e.i - 999) / 1000)
                                                                    : e.i);
  } else if (p.cursor_type == sql::ColumnType::kTimestamp) {
    const int64_t us = cell(p.cursor).i;
    b.set_event_time_ms(us >= 0 ? us / 1000 : (us - 999) / 1000);
  } else {
    b.set_event_time_ms(ctx.now_ms);
  }
  if (p.deleted >= 0) {
    const sql::Cell d = cell(p.deleted);
    if (!d.null && d.i != 0) {
      b.set_op("delete");
      b.end_update();
      return;
    }
  }
  b.set_fields_present();
  for (const Input& in : p.inputs) {
    const sql::Cell c = cell(in.column);
    if (c.null) continue;  // absent: the field keeps its default (or what a transform makes of a missing value)
    switch (in.type) {
      case sql::ColumnType::kInt: b.input_integer(in.input, c.i); break;
      case sql::ColumnType::kFloat: b.input_double(in.input, c.f); break;
      case sql::ColumnType::kBool: b.input_bool(in.input, c.i != 0); break;
      case sql::ColumnType::kText: b.input_string(in.input, c.s); break;
      default: b.reject(RejectReason::kWrongType, fmt::format("column {} has a type Larder does not read", in.column));
    }
  }
  b.end_update();
}

void SqlSource::process_completions() {
  for (;;) {
    const size_t n = lane_.done.try_dequeue_bulk(completions_.begin(), completions_.size());
    if (n == 0) break;
    const int64_t picked_up = layout::now_mono_ns();
    for (size_t i = 0; i < n; ++i) {
      Completion& c = completions_[i];
      pipeline_.metrics.stage_pickup_seconds.observe_ns(picked_up - c.applied_mono_ns);
      --outstanding_;
      const uint32_t index = c.partition - lane_.partition_base;
      if (c.outcome == Outcome::kRejected && index < polled_.size()) {
        const std::string detail = c.reason == RejectReason::kTableFull
                                       ? std::string("a table is full (raise its capacity)")
                                       : std::string("the writer refused it");
        // The refused update's own row, when the item says which.
        const uint64_t next =
            c.refused_update < c.update_next_offsets.size() ? c.update_next_offsets[c.refused_update] : c.offset + 1;
        note_reject(c.reason, fmt::format("{} cursor={}", polled_[index]->config->table, sql::decode_cursor(next)),
                    detail);
      }
      if (spare_batches_.size() < kSpareItems) spare_batches_.push_back(std::move(c.batch));
      if (spare_offsets_.size() < kSpareItems) spare_offsets_.push_back(std::move(c.update_next_offsets));
    }
    if (n < completions_.size()) break;
  }
}

void SqlSource::wait_window(size_t limit) {
  process_completions();
  while (outstanding_ > limit) {
    // The writer's done queue has no blocking wait; it answers within a bulk.
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    process_completions();
  }
}

void SqlSource::note_reject(RejectReason reason, const std::string& where, std::string_view detail) {
  const size_t r = static_cast<size_t>(reason);
  pipeline_.metrics.messages_rejected[r].add();
  pipeline_.pending_rejects.fetch_add(1, std::memory_order_relaxed);  // relaxed: a count, see pipeline.h
  uint64_t suppressed = 0;
  if (reject_log_.allow(r, &suppressed)) {
    spdlog::warn("reject: reason={} {}={} detail=\"{}\" skipped suppressed_since_last={}", reject_reason_name(reason),
                 db_.path, where, detail, suppressed);
  }
}

std::string SqlSource::not_ready_reason() const {
  // relaxed: a status report (see pipeline.h).
  if (lane_.sync_state.load(std::memory_order_relaxed) == static_cast<uint32_t>(layout::SyncState::kReady)) return {};
  std::lock_guard<std::mutex> lock(health_mu_);
  return status_;
}

void SqlSource::render_metrics(std::string& out) const {
  PrometheusText p;
  auto labels = [&](const Polled& t) {
    return fmt::format("database=\"{}\",table=\"{}\"", escape_label_value(db_.path),
                       escape_label_value(t.config->table));
  };
  p.family("larder_database_rows_polled_total", "counter", "Rows read from the database and handed to the writer.");
  for (const auto& t : polled_)
    p.sample("larder_database_rows_polled_total", labels(*t), t->rows.load(std::memory_order_relaxed));
  p.family("larder_database_rows_skipped_total", "counter", "Rows without a cursor or tie value (NULL), skipped.");
  for (const auto& t : polled_) {
    p.sample("larder_database_rows_skipped_total", labels(*t), t->skipped.load(std::memory_order_relaxed));
  }
  p.family("larder_database_lag_seconds", "gauge",
           "The server's clock minus the timestamp cursor of the last row read (timestamp cursors; includes the "
           "settle margin).");
  for (const auto& t : polled_) {
    const int64_t lag = t->lag_us.load(std::memory_order_relaxed);
    if (lag >= 0) p.sample("larder_database_lag_seconds", labels(*t), static_cast<double>(lag) / 1e6);
  }
  p.family("larder_database_polls_total", "counter", "Page queries sent.");
  p.sample("larder_database_polls_total", fmt::format("database=\"{}\"", escape_label_value(db_.path)),
           polls_.load(std::memory_order_relaxed));
  p.family("larder_database_failures_total", "counter", "Polls that failed (connection lost or query refused).");
  p.sample("larder_database_failures_total", fmt::format("database=\"{}\"", escape_label_value(db_.path)),
           failures_.load(std::memory_order_relaxed));
  p.family("larder_database_reconnects_total", "counter", "Connections made again after a failure.");
  p.sample("larder_database_reconnects_total", fmt::format("database=\"{}\"", escape_label_value(db_.path)),
           reconnects_.load(std::memory_order_relaxed));
  out += p.text();
}

}  // namespace larder::sidecar
