// Field groups end to end (CTest label "integration"): updates of two
// cadences published to the real broker, applied by the real larder-sidecar
// into one table, read back through the client library with each group's
// event time and age. An update older than the row but newer than its own
// group applies; one older than its group does not; a delete between two
// groups' times clears one and keeps the other.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "harness.h"
#include "larder/client.h"

namespace larder::test {
namespace {

using namespace std::chrono_literals;

class GroupsIntegrationTest : public SidecarTestBase {
 protected:
  bool setup() { return load_broker("groups_", false, false); }

  std::string config() const {
    return fmt::format(R"(segment: {{name: {name}}}
tables:
  - name: cards
    key_max_len: 32
    capacity: 1000
    fields:
      - {{name: credit_limit, type: float64, group: profile}}
      - {{name: last_amount, type: float64, group: activity}}
      - {{name: country, type: string, max_len: 4}}
    aggregates:
      - {{name: tx_7d, source: last_amount, fn: count, window: 7d, group: activity}}
rabbitmq:
  url: {url}
  password_env: LARDER_IT_PASSWORD
  queue: {{name: {name}, type: quorum}}
  bindings: [{{exchange: {name}, routing_keys: ["cards.#"]}}]
  prefetch: 100
  heartbeat_s: 5
  reconnect: {{base_s: 0.2, cap_s: 2}}
  drain_timeout_s: 5
logging: {{level: info}}
metrics: {{listen: "127.0.0.1:0"}}
)",
                       fmt::arg("name", name_), fmt::arg("url", env_.amqp_url));
  }

  static std::string upsert(const std::string& key, int64_t t, const std::string& fields) {
    return fmt::format(R"({{"table":"cards","key":"{}","event_time":{},"fields":{{{}}}}})", key, t, fields);
  }
  static std::string remove(const std::string& key, int64_t t) {
    return fmt::format(R"({{"table":"cards","key":"{}","event_time":{},"op":"delete"}})", key, t);
  }

  // Publishes `bodies`, then a marker update, and waits until the marker is
  // readable: the queue is applied in order, so everything before it is too.
  void publish_and_wait(const std::vector<std::string>& bodies, int marker) {
    std::vector<std::string> all = bodies;
    all.push_back(upsert("marker", now_unix_ms(), fmt::format(R"("country":"m{}")", marker)));
    client_->publish(name_, "cards.1", all);
    const std::string want = fmt::format("m{}", marker);
    const bool seen = wait_until(
        [&] {
          Segment seg = Segment::open(name_);
          Table cards = seg.table("cards");
          Row row = cards.make_row();
          return cards.get("marker", row).ok() && row.string(cards.field("country")) == want;
        },
        60s);
    ASSERT_TRUE(seen) << "the marker was not applied\n" << sidecar_->log_tail();
  }
};

TEST_F(GroupsIntegrationTest, EachGroupWinsOnItsOwnTime) {
  if (!setup()) return;
  sidecar_ = std::make_unique<SidecarProcess>(config(), name_, env_);
  sidecar_->start();
  ASSERT_TRUE(wait_until(
      [&] {
        const auto q = client_->inspect(name_);
        return q && q->second >= 1;
      },
      60s))
      << "the sidecar did not start consuming\n"
      << sidecar_->log_tail();

  const int64_t now = now_unix_ms();
  constexpr int64_t kDay = 24 * 3600 * 1000;
  publish_and_wait(
      {
          // card:1: activity now, then a credit limit written three days ago.
          upsert("card:1", now - 1000, R"("last_amount":12.5)"),
          upsert("card:1", now - 3 * kDay, R"("credit_limit":3000)"),
          // card:2: the other way round.
          upsert("card:2", now - 1000, R"("credit_limit":500)"),
          upsert("card:2", now - 3 * kDay, R"("last_amount":1.0)"),
          // card:3: a delete between its profile and its activity.
          upsert("card:3", now - 5000, R"("credit_limit":800)"),
          upsert("card:3", now - 2000, R"("last_amount":7.0)"),
          remove("card:3", now - 3000),
      },
      1);

  Segment seg = Segment::open(name_);
  Table cards = seg.table("cards");
  const Group profile = cards.group("profile");
  const Group activity = cards.group("activity");
  const Field limit = cards.field("credit_limit", FieldType::kFloat64);
  const Field amount = cards.field("last_amount", FieldType::kFloat64);
  const Field tx = cards.field("tx_7d", FieldType::kInt64);
  EXPECT_EQ(tx.group, activity.index);
  Row row = cards.make_row();

  ReadResult r = cards.get("card:1", row);
  ASSERT_EQ(r.status, Status::kOk);
  EXPECT_EQ(r.event_time_ms, now - 1000);
  EXPECT_EQ(row.f64(limit), 3000.0) << "the older profile update applies although activity is newer";
  EXPECT_EQ(row.f64(amount), 12.5);
  EXPECT_EQ(row.group_event_time_ms(profile), now - 3 * kDay);
  EXPECT_EQ(row.group_event_time_ms(activity), now - 1000);
  const int64_t read_at = now_unix_ms();
  EXPECT_EQ(row.group_age_ms(profile, read_at), read_at - (now - 3 * kDay));
  EXPECT_EQ(row.i64(tx), 1) << "the count folds the events that carry last_amount";

  ASSERT_EQ(cards.get("card:2", row).status, Status::kOk);
  EXPECT_EQ(row.f64(amount), 1.0) << "the older activity update applies although profile is newer";
  EXPECT_EQ(row.f64(limit), 500.0);
  EXPECT_EQ(row.group_event_time_ms(activity), now - 3 * kDay) << "the aggregate's group follows its events";

  ASSERT_EQ(cards.get("card:3", row).status, Status::kOk);
  EXPECT_FALSE(row.valid(limit)) << "the delete cleared profile";
  EXPECT_TRUE(row.valid(amount)) << "activity was newer than the delete";
  EXPECT_EQ(row.f64(amount), 7.0);
  EXPECT_EQ(row.group_event_time_ms(profile), now - 3000);

  // Per-group bounds: card:1's activity is fresh, its profile three days old.
  const GroupMaxAge fresh_activity[] = {{activity.index, 3'600'000}};
  EXPECT_EQ(cards.get("card:1", row, {.group_max_age = fresh_activity}).status, Status::kOk);
  const GroupMaxAge fresh_profile[] = {{profile.index, 3'600'000}};
  EXPECT_EQ(cards.get("card:1", row, {.group_max_age = fresh_profile}).status, Status::kStale);

  // Older than its own group: ignored and counted, whatever the other group.
  const uint64_t stale_before = cards.stats().stale_ignored;
  publish_and_wait(
      {upsert("card:1", now - 4 * kDay, R"("credit_limit":1)"), upsert("card:3", now - 4000, R"("credit_limit":2)")},
      2);
  ASSERT_EQ(cards.get("card:1", row).status, Status::kOk);
  EXPECT_EQ(row.f64(limit), 3000.0);
  ASSERT_EQ(cards.get("card:3", row).status, Status::kOk);
  EXPECT_FALSE(row.valid(limit)) << "older than the delete's time for profile";
  EXPECT_EQ(cards.stats().stale_ignored, stale_before + 2);
  EXPECT_EQ(sidecar_->stop(), 0);
}

}  // namespace
}  // namespace larder::test
