// Where a polled table is: the cursor logic of the database source
// (docs/sidecar.md, "Database polling"), kept apart from any connection so
// that it is tested on its own. Pure: one instance per polled table, used by
// the source's thread (and the main thread before it starts).
//
// In memory the cursor is exact: (cursor, tie) of the last row handed to the
// writer, and the next query asks for the rows after it. Stored in the
// segment it is coarser, one SourceBlock partition per table:
//
//   next_offset = encode(C)   every row whose cursor is below C is applied
//
// and rows *at* C may or may not be. A resumed poller therefore asks again
// for every row with cursor >= C and applies the rows at C a second time.
// That repeat is bounded (one group of rows sharing a cursor value) and
// harmless: the same row carries the same event time, which the table's
// last-write-wins order keeps as it is. The tie id is not stored: a count
// of rows applied at C (skip_updates) would skip an unapplied row as soon as
// one of those rows is updated and leaves C before the restart, and the
// writer stores one 96-bit position per update, too little for two 64-bit
// values. So the stored position can repeat a row once, never skip one.
//
// The rows of a page go to the writer up to a few hundred per WorkItem, and
// each row's update carries its own place (WorkItem::update_next_offsets):
// the writer stores next_offset = encode(C) (skip_updates 0) with the effect
// of the update of a row at C, so a kill between two rows of one item
// leaves the position of the last row applied, as if each row were an item
// of its own. The item's offset is encode(C) - 1 of its last row, stored
// after its last update: a refused row at the end moves the position too.
//
// Without a tie column, a full page may end inside a group of rows sharing
// the last cursor value: the next query starts at that value again
// (inclusive), repeating those rows once; a page made of one cursor value
// only doubles the page size for the next query, so it always moves on.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>

namespace larder::sidecar::sql {

// Order-preserving int64 <-> uint64 (the sign bit flipped): stored offsets
// compare like the cursors they encode.
constexpr uint64_t encode_cursor(int64_t c) noexcept { return static_cast<uint64_t>(c) ^ (uint64_t{1} << 63); }
constexpr int64_t decode_cursor(uint64_t v) noexcept { return static_cast<int64_t>(v ^ (uint64_t{1} << 63)); }

class PollCursor {
 public:
  static constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  static constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  // Largest page a tie group without a tie column may grow to.
  static constexpr uint32_t kMaxPageRows = 1'000'000;

  // `floor`: the first query's lower bound (exclusive), below every real
  // cursor value: INT64_MIN for integers, 0001-01-01 for timestamps (the
  // first query still excludes NULL cursors).
  PollCursor(bool has_tie, uint32_t page_rows, int64_t floor) noexcept
      : has_tie_(has_tie), page_rows_(page_rows), limit_(page_rows), after_(floor), after_tie_(kMin) {}

  // Resumes at a stored position: rows with cursor >= decode(next_offset).
  void resume(uint64_t next_offset) noexcept {
    const int64_t c = decode_cursor(next_offset);
    if (c == kMin || c - 1 < after_) return;  // below the floor: from the start
    after_ = c - 1;
    after_tie_ = kMax;  // (cursor, tie) > (c - 1, MAX)  <=>  cursor >= c
  }

  // The next query's bounds: rows after (after(), after_tie()), limit().
  int64_t after() const noexcept { return after_; }
  int64_t after_tie() const noexcept { return after_tie_; }
  uint32_t limit() const noexcept { return limit_; }

  // A row of the current page was handed over (rows come in cursor order).
  void row(int64_t cursor, int64_t tie) noexcept {
    if (page_rows_seen_ == 0) first_cursor_ = cursor;
    ++page_rows_seen_;
    last_cursor_ = cursor;
    last_tie_ = tie;
  }

  // The page ended with `rows` rows (those passed to row(), plus rows
  // skipped without a cursor). Returns true when the table is caught up
  // (the page was not full).
  bool end_page(size_t rows) noexcept {
    const bool full = rows >= limit_;
    if (page_rows_seen_ > 0) {
      if (has_tie_) {
        after_ = last_cursor_;
        after_tie_ = last_tie_;
        limit_ = page_rows_;
      } else if (!full) {
        after_ = last_cursor_;  // every row at last_cursor_ was in this page
        limit_ = page_rows_;
      } else if (first_cursor_ == last_cursor_) {
        // One cursor value filled the page: ask again with room for more.
        after_ = last_cursor_ == kMin ? kMin : last_cursor_ - 1;
        limit_ = std::min<uint32_t>(kMaxPageRows, limit_ * 2);
      } else {
        after_ = last_cursor_ - 1;  // the group at last_cursor_ may go on: again
        limit_ = page_rows_;
      }
    }
    page_rows_seen_ = 0;
    return !full;
  }

  // The stored position after a row at `cursor` (the WorkItem's offset is
  // this minus one). nullopt for INT64_MIN, which has no offset below it.
  static std::optional<uint64_t> item_offset(int64_t cursor) noexcept {
    if (cursor == kMin) return std::nullopt;
    return encode_cursor(cursor) - 1;
  }

 private:
  bool has_tie_;
  uint32_t page_rows_;
  uint32_t limit_;
  int64_t after_;
  int64_t after_tie_;
  size_t page_rows_seen_ = 0;
  int64_t first_cursor_ = 0;
  int64_t last_cursor_ = 0;
  int64_t last_tie_ = 0;
};

}  // namespace larder::sidecar::sql
