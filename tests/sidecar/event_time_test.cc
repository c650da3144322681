// Unit tests of RFC 3339 event-time parsing. No broker.
#include "decode/event_time.h"

#include <gtest/gtest.h>

namespace larder::sidecar {
namespace {

int64_t ms(const char* s) {
  int64_t out = -1;
  EXPECT_TRUE(parse_rfc3339_ms(s, &out)) << s;
  return out;
}

bool rejects(const char* s) {
  int64_t out = -1;
  return !parse_rfc3339_ms(s, &out);
}

TEST(EventTimeTest, Valid) {
  EXPECT_EQ(ms("1970-01-01T00:00:00Z"), 0);
  EXPECT_EQ(ms("1970-01-01T00:00:00.001Z"), 1);
  EXPECT_EQ(ms("2024-05-01T12:30:00.123Z"), 1714566600123);
  EXPECT_EQ(ms("2024-05-01t12:30:00.123z"), 1714566600123);
  EXPECT_EQ(ms("2024-05-01 12:30:00.123Z"), 1714566600123);
  EXPECT_EQ(ms("2024-05-01T14:30:00.123+02:00"), 1714566600123);
  EXPECT_EQ(ms("2024-05-01T07:00:00.123-05:30"), 1714566600123);
  EXPECT_EQ(ms("2024-05-01T12:30:00.1239999Z"), 1714566600123);  // truncated
  EXPECT_EQ(ms("2024-05-01T12:30:00.5Z"), 1714566600500);
  EXPECT_EQ(ms("2024-02-29T00:00:00Z"), 1709164800000);  // leap year
  EXPECT_EQ(ms("2000-02-29T00:00:00Z"), 951782400000);
  EXPECT_EQ(ms("2016-12-31T23:59:60Z"), 1483228800000);  // leap second
  EXPECT_EQ(ms("9999-12-31T23:59:59.999Z"), kMaxEventTimeMs);
  EXPECT_EQ(days_from_civil(1970, 1, 1), 0);
}

TEST(EventTimeTest, Invalid) {
  EXPECT_TRUE(rejects(""));
  EXPECT_TRUE(rejects("2024-05-01"));
  EXPECT_TRUE(rejects("2024-05-01T12:30:00"));  // no offset
  EXPECT_TRUE(rejects("2024-05-01T12:30Z"));
  EXPECT_TRUE(rejects("2024-05-01T12:30:00.Z"));     // empty fraction
  EXPECT_TRUE(rejects("2024-05-01T12:30:00+0200"));  // offset needs a colon
  EXPECT_TRUE(rejects("2024-05-01T12:30:00+24:00"));
  EXPECT_TRUE(rejects("2024-05-01T12:30:00Zjunk"));
  EXPECT_TRUE(rejects("2023-02-29T00:00:00Z"));
  EXPECT_TRUE(rejects("1900-02-29T00:00:00Z"));
  EXPECT_TRUE(rejects("2024-04-31T00:00:00Z"));
  EXPECT_TRUE(rejects("2024-00-10T00:00:00Z"));
  EXPECT_TRUE(rejects("2024-05-01T24:00:00Z"));
  EXPECT_TRUE(rejects("2024-05-01T12:60:00Z"));
  EXPECT_TRUE(rejects("2024-05-01T12:30:61Z"));
  EXPECT_TRUE(rejects("1969-12-31T23:59:59Z"));  // before the epoch
  EXPECT_TRUE(rejects("1970-01-01T00:30:00+01:00"));
  EXPECT_TRUE(rejects("+2024-05-01T12:30:00Z"));
  EXPECT_TRUE(rejects("2024-5-01T12:30:00Z"));
}

}  // namespace
}  // namespace larder::sidecar
