// The database source's cursor logic and the strict text values of its
// drivers (consume/sql/cursor.h, consume/sql/text_values.h): no server.
#include <gtest/gtest.h>

#include <cmath>

#include "consume/sql/cursor.h"
#include "consume/sql/text_values.h"

namespace larder::sidecar::sql {
namespace {

TEST(SqlCursor, EncodingKeepsTheOrder) {
  const int64_t values[] = {PollCursor::kMin, -5, -1, 0, 1, 1'700'000'000'000'000, PollCursor::kMax};
  for (size_t i = 0; i + 1 < std::size(values); ++i) {
    EXPECT_LT(encode_cursor(values[i]), encode_cursor(values[i + 1]));
    EXPECT_EQ(decode_cursor(encode_cursor(values[i])), values[i]);
  }
  // The writer stores offset + 1 after a row: exactly the row's cursor.
  EXPECT_EQ(decode_cursor(*PollCursor::item_offset(-7) + 1), -7);
  EXPECT_FALSE(PollCursor::item_offset(PollCursor::kMin));
}

TEST(SqlCursor, WithATieTheNextPageStartsAfterTheLastRow) {
  PollCursor c(/*has_tie=*/true, 3, PollCursor::kMin);
  EXPECT_EQ(c.after(), PollCursor::kMin);
  c.row(10, 1);
  c.row(10, 2);
  c.row(10, 5);
  EXPECT_FALSE(c.end_page(3));  // full: more to come
  EXPECT_EQ(c.after(), 10);
  EXPECT_EQ(c.after_tie(), 5);
  EXPECT_EQ(c.limit(), 3u);
  c.row(10, 9);
  EXPECT_TRUE(c.end_page(1));
  EXPECT_EQ(c.after(), 10);
  EXPECT_EQ(c.after_tie(), 9);
  // An empty page keeps the cursor.
  EXPECT_TRUE(c.end_page(0));
  EXPECT_EQ(c.after(), 10);
  EXPECT_EQ(c.after_tie(), 9);
}

TEST(SqlCursor, WithoutATieAFullPageReadsItsLastCursorAgain) {
  PollCursor c(/*has_tie=*/false, 3, PollCursor::kMin);
  c.row(1, 0);
  c.row(2, 0);
  c.row(2, 0);
  EXPECT_FALSE(c.end_page(3));
  // More rows at cursor 2 may follow: cursor > 1 again, never > 2.
  EXPECT_EQ(c.after(), 1);
  EXPECT_EQ(c.limit(), 3u);
  // A page of one cursor value grows the next page until it moves on.
  c.row(2, 0);
  c.row(2, 0);
  c.row(2, 0);
  EXPECT_FALSE(c.end_page(3));
  EXPECT_EQ(c.after(), 1);
  EXPECT_EQ(c.limit(), 6u);
  for (int i = 0; i < 4; ++i) c.row(2, 0);
  c.row(3, 0);
  EXPECT_TRUE(c.end_page(5));
  EXPECT_EQ(c.after(), 3);  // a short page holds every row up to its last cursor
  EXPECT_EQ(c.limit(), 3u);
}

TEST(SqlCursor, ResumeReadsTheStoredCursorAgain) {
  PollCursor c(/*has_tie=*/true, 100, PollCursor::kMin);
  c.resume(encode_cursor(42));
  // (cursor, tie) > (41, MAX): every row at 42, none before.
  EXPECT_EQ(c.after(), 41);
  EXPECT_EQ(c.after_tie(), PollCursor::kMax);
  // A stored position below the floor (or the smallest value) starts over.
  PollCursor t(true, 100, -1000);
  t.resume(encode_cursor(-1000));
  EXPECT_EQ(t.after(), -1000);
  EXPECT_EQ(t.after_tie(), PollCursor::kMin);
}

TEST(SqlTextValues, IntegersAreWholeAndInRange) {
  EXPECT_EQ(parse_int("-9223372036854775808"), PollCursor::kMin);
  EXPECT_EQ(parse_int("42"), 42);
  EXPECT_FALSE(parse_int("9223372036854775808"));
  EXPECT_FALSE(parse_int(" 1"));
  EXPECT_FALSE(parse_int("1 "));
  EXPECT_FALSE(parse_int("1.0"));
  EXPECT_FALSE(parse_int(""));
  EXPECT_FALSE(parse_int("+1"));
}

TEST(SqlTextValues, FloatsTakePostgresSpellingsOnly) {
  EXPECT_EQ(parse_float("1.5"), 1.5);
  EXPECT_EQ(parse_float("-2e-3"), -2e-3);
  EXPECT_TRUE(std::isnan(*parse_float("NaN")));
  EXPECT_EQ(parse_float("-Infinity"), -HUGE_VAL);
  EXPECT_FALSE(parse_float("inf"));
  EXPECT_FALSE(parse_float("0x10"));
  EXPECT_FALSE(parse_float("1.5x"));
  EXPECT_FALSE(parse_float(""));
}

TEST(SqlTextValues, TimestampsAreUtcMicroseconds) {
  EXPECT_EQ(parse_timestamp("1970-01-01 00:00:00"), 0);
  EXPECT_EQ(parse_timestamp("1970-01-01 00:00:00.000001+00"), 1);
  EXPECT_EQ(parse_timestamp("1970-01-01 01:00:00+01"), 0);
  EXPECT_EQ(parse_timestamp("1969-12-31 23:59:59.5"), -500'000);
  EXPECT_EQ(parse_timestamp("2024-02-29 12:34:56.789+05:30"), 1709190296789000);
  EXPECT_EQ(parse_timestamp("0001-01-01 00:00:00"), -62135596800LL * 1'000'000);
  EXPECT_FALSE(parse_timestamp("2023-02-29 00:00:00"));
  EXPECT_FALSE(parse_timestamp("2024-01-01 24:00:00"));
  EXPECT_FALSE(parse_timestamp("2024-01-01T00:00:00"));
  EXPECT_FALSE(parse_timestamp("2024-01-01 00:00:00.1234567"));
  EXPECT_FALSE(parse_timestamp("2024-01-01 00:00:00+"));
  EXPECT_FALSE(parse_timestamp("2024-01-01 00:00:00 BC"));
  EXPECT_FALSE(parse_timestamp("infinity"));
  EXPECT_FALSE(parse_timestamp("12024-01-01 00:00:00"));
}

TEST(SqlTextValues, TimestampsPrintAndParseBack) {
  const int64_t values[] = {int64_t{0}, int64_t{-1}, int64_t{1709190296789000}, -62135596800LL * 1'000'000,
                            253402300799LL * 1'000'000 + 999'999};
  for (const int64_t us : values) {
    const std::optional<std::string> s = format_timestamp(us);
    ASSERT_TRUE(s) << us;
    EXPECT_EQ(parse_timestamp(*s), us) << *s;
  }
  EXPECT_EQ(format_timestamp(-1), "1969-12-31 23:59:59.999999");
  EXPECT_FALSE(format_timestamp(-62135596800LL * 1'000'000 - 1));
  EXPECT_FALSE(format_timestamp(PollCursor::kMax));
}

TEST(SqlTextValues, IdentifiersAreQuoted) {
  EXPECT_EQ(quote_identifier("updated_at"), "\"updated_at\"");
  EXPECT_EQ(quote_identifier("a\"b"), "\"a\"\"b\"");
  EXPECT_EQ(quote_identifier("a`b", '`'), "`a``b`");
  EXPECT_FALSE(quote_identifier(""));
  EXPECT_FALSE(quote_identifier(std::string_view("a\0b", 3)));
}

}  // namespace
}  // namespace larder::sidecar::sql
