// Unit tests of the ack watermark (AckTracker) and reconnect backoff. No broker.
#include "consume/ack_tracker.h"

#include <gtest/gtest.h>

#include "consume/backoff.h"

namespace larder::sidecar {
namespace {

TEST(AckTrackerTest, AcksTheContiguousAppliedPrefix) {
  AckTracker t;
  for (uint64_t tag = 1; tag <= 5; ++tag) t.delivered(tag);
  EXPECT_EQ(t.take_ack(), 0u);
  EXPECT_TRUE(t.settle(2, true));
  EXPECT_EQ(t.take_ack(), 0u) << "tag 1 is still in flight";
  EXPECT_TRUE(t.settle(1, true));
  EXPECT_EQ(t.take_ack(), 2u);
  EXPECT_EQ(t.take_ack(), 0u) << "nothing new";
  EXPECT_TRUE(t.settle(4, true));
  EXPECT_TRUE(t.settle(3, false));  // rejected on the wire before the ack of 4
  EXPECT_EQ(t.take_ack(), 4u);
  EXPECT_EQ(t.in_flight(), 1u);
  EXPECT_FALSE(t.settle(4, true)) << "settled twice";
  EXPECT_FALSE(t.settle(99, true)) << "never delivered";
}

TEST(AckTrackerTest, NeverAcksARejectedTag) {
  AckTracker t;
  t.delivered(1);
  t.delivered(2);
  t.settle(1, true);
  t.settle(2, false);
  EXPECT_EQ(t.take_ack(), 1u) << "the ack names the last applied tag, not the rejected one";
  t.delivered(3);
  t.settle(3, false);
  EXPECT_EQ(t.take_ack(), 0u) << "only rejects since the last ack";
  EXPECT_EQ(t.unsettled_window(), 0u);
}

TEST(AckTrackerTest, ResetForgetsTheOldChannel) {
  AckTracker t;
  t.delivered(1);
  t.reset();
  EXPECT_EQ(t.in_flight(), 0u);
  EXPECT_FALSE(t.settle(1, true));
  t.delivered(1);
  EXPECT_TRUE(t.settle(1, true));
  EXPECT_EQ(t.take_ack(), 1u);
}

TEST(BackoffTest, FullJitterUnderAGrowingCappedCeiling) {
  Backoff b(0.5, 30.0, 12345);
  double last_ceiling = 0;
  for (int i = 0; i < 20; ++i) {
    const double ceiling = b.ceiling_s();
    EXPECT_GE(ceiling, last_ceiling);
    EXPECT_LE(ceiling, 30.0);
    last_ceiling = ceiling;
    const auto d = b.next();
    EXPECT_GE(d.count(), 0);
    EXPECT_LE(d.count(), static_cast<int64_t>(ceiling * 1000));
  }
  EXPECT_EQ(last_ceiling, 30.0);
  b.reset();
  EXPECT_EQ(b.ceiling_s(), 0.5);
}

}  // namespace
}  // namespace larder::sidecar
