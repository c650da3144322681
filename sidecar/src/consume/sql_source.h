// A database polled for changed rows, as a Source (docs/sidecar.md,
// "Database polling"): one per `databases:` entry, on its own thread, with
// one Connection (consume/sql/driver.h: PostgreSQL or MariaDB).
//
// Each polled table is asked, every poll_interval, for the rows after its
// cursor in cursor order (CursorQuery), a page at a time until a page comes
// back short; each row becomes one update (an upsert of its mapped columns,
// or a delete when its `deleted` column is true) built by the same
// UpdateBuilder as the binary message formats, so the tables' rules, reject
// reasons and transforms are the same. The rows of a page go to the writer
// kRowsPerItem to a WorkItem, each update with its own stored position, so
// the writer applies them through its batched upsert. The cursor, its
// stored form and why it can repeat a row once but never skip one:
// consume/sql/cursor.h.
//
// Settle margin: a timestamp cursor is only read up to the server's clock
// minus `settle`. A transaction that began earlier and commits later writes
// an updated_at older than rows already read; rows younger than the margin
// are not read yet, so such a transaction is seen as long as it commits
// within `settle` of its timestamp. A longer margin tolerates longer
// transactions and delays every change by as much. Integer cursors have no
// clock: their rows must become visible in cursor order (a sequence taken
// at commit time, not at insert).
//
// Start: connect() and describe() every query (unknown columns, a column
// whose type does not fit its field, an unreachable server) before any
// thread runs: check() throws StartError with the config path.
//
// Readiness: CATCHING_UP until every table's last poll came back short and
// everything handed over is applied; then READY. For a timestamp cursor
// "short" is below the sweep's bound, the server's clock minus `settle`:
// READY does not wait for rows the margin holds back, which arrive within
// settle + poll_interval as every later change does (waiting for them
// would delay every start by the margin and promise no more freshness than
// the source keeps afterwards). A lost connection makes it
// CATCHING_UP again (with the server's error as the reason) until it is back
// and caught up; it reconnects with backoff (database.reconnect).
//
// Threads: run() and what it calls on the source's thread; the SourceHealth
// methods on HTTP threads read atomics and take health_mu_.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "config/config.h"
#include "consume/source.h"
#include "consume/sql/cursor.h"
#include "consume/sql/driver.h"
#include "decode/update_builder.h"
#include "observe/logging.h"

namespace larder::sidecar {

class SqlSource final : public Source {
 public:
  // `db` is config.databases[index]; `connection` its driver's, not connected.
  SqlSource(const Config& config, size_t index, Pipeline& pipeline, SourceLane& lane,
            const std::atomic<int>& stop_requests, std::unique_ptr<sql::Connection> connection);
  ~SqlSource() override;
  SqlSource(const SqlSource&) = delete;
  SqlSource& operator=(const SqlSource&) = delete;

  const char* kind() const noexcept override { return "database"; }
  uint32_t partitions_needed() const override { return static_cast<uint32_t>(db_.tables.size()); }
  std::string position_id() const override;
  void resume(std::span<const std::optional<SourcePosition>> stored) override;
  int run() override;
  std::string not_ready_reason() const override;
  void render_metrics(std::string& out) const override;

  // Connects and checks every polled table's columns against its mapping.
  // Main thread, before run(). Throws StartError (exit code 2).
  void check();

 private:
  static constexpr int64_t kNoCursor = std::numeric_limits<int64_t>::min();
  // Rows per WorkItem: enough that the writer's batched upsert gets long
  // runs and the queue, completion and position costs spread over many
  // rows; a page's rows arrive together, so this delays none of them.
  static constexpr size_t kRowsPerItem = 256;
  static constexpr size_t kSpareItems = 64;
  struct Input {
    int column = -1;  // in the query's result
    uint32_t input = 0;
    sql::ColumnType type = sql::ColumnType::kOther;
  };
  struct Polled {
    const PolledTableConfig* config = nullptr;
    uint32_t table = 0;
    std::vector<std::string> column_names;  // as describe() returned them
    int key = -1, cursor = -1, tie = -1, event_time = -1, deleted = -1;
    sql::ColumnType key_type = sql::ColumnType::kText, cursor_type = sql::ColumnType::kInt,
                    event_type = sql::ColumnType::kTimestamp;
    std::vector<Input> inputs;
    std::unique_ptr<sql::PollCursor> cursor_state;
    bool caught_up = false;
    // Read by HTTP threads (relaxed: statistics).
    std::atomic<uint64_t> rows{0};
    std::atomic<uint64_t> skipped{0};
    std::atomic<int64_t> last_cursor{kNoCursor};
    std::atomic<int64_t> lag_us{-1};  // server time - cursor of the last row (timestamp cursors); -1 unknown
  };
  struct RowCtx;

  void plan_table(Polled& p, const std::vector<sql::ColumnInfo>& columns);
  // Polls every table until each is caught up (or a failure, or a stop).
  // False when the connection failed.
  bool poll_all();
  // One page of one table. False on a failure.
  bool poll_page(size_t index, std::optional<int64_t> before, int64_t now_us, bool* caught_up);
  // Adds one row of a page to the open item; hands it over when full.
  void add_row(Polled& p, size_t index, const sql::Result& r, size_t row, int64_t now_ms);
  // Hands the open item (if any rows) to the writer.
  void hand_over(Polled& p);
  static void walk_row(void* ctx);
  void process_completions();
  void wait_window(size_t limit);
  void note_reject(RejectReason reason, const std::string& where, std::string_view detail);
  void set_state(layout::ConnectionState s);
  void set_sync(layout::SyncState s);
  void set_status(std::string status);
  bool stopping() const { return stop_requests_.load(std::memory_order_relaxed) > 0; }
  std::string name() const;

  const DatabaseConfig& db_;
  Pipeline& pipeline_;
  SourceLane& lane_;
  const std::atomic<int>& stop_requests_;
  std::unique_ptr<sql::Connection> conn_;
  UpdateBuilder builder_;
  RateLimiter reject_log_;
  moodycamel::ProducerToken work_token_;
  std::vector<std::unique_ptr<Polled>> polled_;
  std::vector<Completion> completions_;
  // The item being filled from a page (add_row) and its row count.
  WorkItem open_;
  size_t open_rows_ = 0;
  int64_t open_last_cursor_ = 0;
  // Buffers the writer handed back, for the next items.
  std::vector<DecodedBatch> spare_batches_;
  std::vector<std::vector<uint64_t>> spare_offsets_;
  uint64_t outstanding_ = 0;  // items handed over, not yet completed
  layout::SyncState sync_ = layout::SyncState::kCatchingUp;

  std::atomic<uint64_t> polls_{0};
  std::atomic<uint64_t> failures_{0};
  std::atomic<uint64_t> reconnects_{0};
  mutable std::mutex health_mu_;
  std::string status_;  // guarded by health_mu_
};

}  // namespace larder::sidecar
