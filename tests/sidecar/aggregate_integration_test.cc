// Aggregates end to end (CTest label "integration"): raw events published to
// the real broker, folded by the real larder-sidecar into windowed aggregates,
// read back through the client library and compared with a reference that
// counts every event exactly once. Covers redelivery (the same events
// published twice), a SIGKILL of the sidecar mid-stream, and a transform.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "harness.h"
#include "larder/client.h"
#include "upstream_hold_proxy.h"

namespace larder::test {
namespace {

using namespace std::chrono_literals;

// Per key: what count, sum and max over a window that holds every event
// must read.
struct Expected {
  int64_t count = 0;
  double sum = 0;
  double max = -INFINITY;
  int64_t amount_bucket = -1;  // the last event's bucketized amount
  int64_t last_time = -1;
};

class AggregateIntegrationTest : public SidecarTestBase {
 protected:
  bool setup() { return load_broker("agg_", false, false); }

  // The windows (7 days) hold every event of a test: event times are a few
  // minutes before now, so nothing decays while the test runs.
  std::string config(const std::string& url = "") const {
    return fmt::format(R"(segment: {{name: {name}}}
tables:
  - name: users
    key_max_len: 32
    capacity: 10000
    fields:
      - {{name: amount_bucket, type: int64, from: amount, transform: [{{bucketize: {{boundaries: [10, 100]}}}}]}}
    aggregates:
      - {{name: events_7d, fn: count, window: 7d}}
      - {{name: spend_7d, source: amount, fn: sum, window: 7d}}
      - {{name: max_7d, source: amount, fn: max, window: 7d}}
    dedup: {{capacity: 100000}}
rabbitmq:
  url: {url}
  password_env: LARDER_IT_PASSWORD
  queue: {{name: {name}, type: quorum}}
  bindings: [{{exchange: {name}, routing_keys: ["users.#"]}}]
  prefetch: 100
  heartbeat_s: 5
  reconnect: {{base_s: 0.2, cap_s: 2}}
  drain_timeout_s: 5
logging: {{level: info}}
metrics: {{listen: "127.0.0.1:0"}}
)",
                       fmt::arg("name", name_), fmt::arg("url", url.empty() ? env_.amqp_url : url));
  }

  void start_sidecar(const std::string& url = "") {
    sidecar_.reset();
    sidecar_ = std::make_unique<SidecarProcess>(config(url), name_, env_);
    sidecar_->start();
    const bool ready = wait_until(
        [&] {
          const auto q = client_->inspect(name_);
          return q && q->second >= 1;
        },
        60s);
    ASSERT_TRUE(ready) << "the sidecar did not start consuming\n" << sidecar_->log_tail();
  }

  // `messages` messages of 1..max_batch events over `keys` keys; every event
  // has an id and an amount and is recorded in `expected` once.
  std::vector<std::string> make_events(std::map<std::string, Expected>& expected, int keys, int messages, int max_batch,
                                       uint32_t seed, bool with_ids = true) {
    std::mt19937 rng(seed);
    std::vector<std::string> bodies;
    const int64_t base = now_unix_ms() - 10 * 60 * 1000;
    for (int m = 0; m < messages; ++m) {
      const int batch = std::uniform_int_distribution<int>(1, max_batch)(rng);
      std::string body = "[";
      for (int i = 0; i < batch; ++i) {
        const std::string key = fmt::format("u{}", std::uniform_int_distribution<int>(0, keys - 1)(rng));
        // Out of order within the last ten minutes; amounts in cents.
        const int64_t t = base + std::uniform_int_distribution<int64_t>(0, 9 * 60 * 1000)(rng);
        const double amount = std::uniform_int_distribution<int>(1, 20000)(rng) / 100.0;
        Expected& e = expected[key];
        ++e.count;
        e.sum += amount;
        e.max = std::max(e.max, amount);
        if (t >= e.last_time) {  // last write wins for the plain field (ties: the later one)
          e.last_time = t;
          e.amount_bucket = amount < 10 ? 0 : amount < 100 ? 1 : 2;
        }
        body +=
            fmt::format(R"({}{{"table":"users","key":"{}","event_time":{},"fields":{{"amount":{}}}{}}})", i ? "," : "",
                        key, t, amount, with_ids ? fmt::format(R"(,"id":"{}-{}-{}")", seed, m, i) : "");
      }
      bodies.push_back(body + "]");
    }
    return bodies;
  }

  // "" when every key reads what `expected` says.
  std::string compare(const std::map<std::string, Expected>& expected) {
    Segment seg = Segment::open(name_);
    Table users = seg.table("users");
    const Field n = users.field("events_7d", FieldType::kInt64);
    const Field sum = users.field("spend_7d", FieldType::kFloat64);
    const Field max = users.field("max_7d", FieldType::kFloat64);
    const Field bucket = users.field("amount_bucket", FieldType::kInt64);
    Row row = users.make_row();
    std::string diff;
    for (const auto& [key, e] : expected) {
      const ReadResult r = users.get(key, row);
      if (!r.ok()) {
        diff += key + ": " + status_name(r.status) + "\n";
      } else if (row.i64(n) != e.count || std::abs(row.f64(sum) - e.sum) > 1e-6 * std::max(1.0, e.sum) ||
                 row.f64(max) != e.max || row.i64(bucket) != e.amount_bucket) {
        diff += fmt::format("{}: count {} sum {} max {} bucket {}, expected {} {} {} {}\n", key, row.i64(n),
                            row.f64(sum), row.f64(max), row.i64(bucket), e.count, e.sum, e.max, e.amount_bucket);
      }
      if (diff.size() > 2000) break;
    }
    return diff;
  }

  void expect_converges(const std::map<std::string, Expected>& expected, std::chrono::milliseconds timeout = 60s) {
    std::string diff;
    const bool ok = wait_until(
        [&] {
          const auto q = client_->inspect(name_);
          if (!q || q->first != 0) return false;  // still queued
          diff = compare(expected);
          return diff.empty();
        },
        timeout);
    EXPECT_TRUE(ok) << diff;
  }
};

TEST_F(AggregateIntegrationTest, EventsDeliveredTwiceCountOnce) {
  if (!setup()) return;
  start_sidecar();
  // Logged before the segment opens, so certainly there once consuming: the
  // 7-day rings are long and the config leaves arena_chunks at its default.
  EXPECT_EQ(sidecar_->log_count("config: table \"users\": the aggregate arena has its default"), 1u)
      << sidecar_->log_tail();
  std::map<std::string, Expected> expected;
  const std::vector<std::string> events = make_events(expected, 50, 400, 5, 11);
  client_->publish(name_, "users.1", events);
  expect_converges(expected);
  // The same messages again, as a redelivery would bring them: every event
  // is recognised by its id and nothing changes.
  client_->publish(name_, "users.1", events);
  size_t total = 0;
  for (const auto& [k, e] : expected) total += static_cast<size_t>(e.count);
  EXPECT_TRUE(wait_until([&] { return Segment::open(name_).table("users").stats().duplicates == total; }, 60s))
      << "duplicates counted: " << Segment::open(name_).table("users").stats().duplicates << " of " << total;
  expect_converges(expected);

  // The documented limit: events without an id are counted each time.
  std::map<std::string, Expected> anonymous;
  const std::vector<std::string> no_ids = make_events(anonymous, 5, 20, 3, 12, false);
  client_->publish(name_, "users.1", no_ids);
  client_->publish(name_, "users.1", no_ids);
  for (auto& [k, e] : anonymous) {
    if (expected.count(k)) {  // same key space as above: add onto it
      Expected& x = expected[k];
      x.count += 2 * e.count;
      x.sum += 2 * e.sum;
      x.max = std::max(x.max, e.max);
      if (e.last_time >= x.last_time) {
        x.last_time = e.last_time;
        x.amount_bucket = e.amount_bucket;
      }
    }
  }
  expect_converges(expected);
  EXPECT_EQ(sidecar_->stop(), 0);
}

// Three kills, each certainly mid-stream and each certainly leaving folded
// but unacknowledged events behind. Each part of the stream starts with an
// empty queue and nothing unacked (the previous sidecar stopped cleanly);
// the sidecar runs through a proxy whose upstream is held before the part is
// published, so every event it folds from then on belongs to a message the
// broker never saw acked and redelivers after the kill. A clean restart then
// folds the rest: each redelivered event must be recognised by its id
// (counted as a duplicate, folded once).
TEST_F(AggregateIntegrationTest, SidecarKilledMidStreamKeepsAggregatesExact) {
  if (!setup()) return;
  std::map<std::string, Expected> expected;
  uint64_t folded_while_held = 0;  // events folded after a hold, before a kill
  for (uint32_t part = 0; part < 3; ++part) {
    auto proxy = make_hold_proxy(env_.amqp_url);
    start_sidecar(proxy->url_through(env_.amqp_url));
    proxy->hold_upstream();
    const uint64_t at_hold = Segment::open(name_).table("users").stats().aggregate_events;
    std::map<std::string, Expected> part_expected;
    const std::vector<std::string> bodies = make_events(part_expected, 200, 1000, 10, 21 + part);
    // The part's events follow the earlier parts' (one make_events call:
    // a second would take its own clock and could move every time by 1 ms).
    for (const auto& [key, pe] : part_expected) {
      Expected& e = expected[key];
      e.count += pe.count;
      e.sum += pe.sum;
      e.max = std::max(e.max, pe.max);
      if (pe.last_time >= e.last_time) {  // ties: the later part
        e.last_time = pe.last_time;
        e.amount_bucket = pe.amount_bucket;
      }
    }
    uint64_t part_events = 0;
    for (const auto& [k, e] : part_expected) part_events += static_cast<uint64_t>(e.count);
    client_->publish(name_, "users.1", bodies);
    ASSERT_TRUE(wait_until([&] { return Segment::open(name_).table("users").stats().aggregate_events > at_hold; }, 60s))
        << "nothing folded after the hold\n"
        << sidecar_->log_tail();
    sidecar_->kill9();
    proxy->cut();  // the broker sees the connection close and requeues
    wait_for_no_consumer();
    const uint64_t at_kill = Segment::open(name_).table("users").stats().aggregate_events;
    std::cerr << "part " << part << ": " << at_kill - at_hold << " events folded while held, of " << part_events
              << " published\n";
    // Only a prefetch window of the part reached the sidecar.
    EXPECT_LT(at_kill - at_hold, part_events) << "the kill came after the part";
    folded_while_held += at_kill - at_hold;

    // A clean restart folds the rest (the redelivered messages too) and
    // stops with everything acked.
    start_sidecar();
    expect_converges(expected);
    ASSERT_EQ(sidecar_->stop(), 0);
    wait_for_no_consumer();
  }
  start_sidecar();
  client_->publish(name_, "users.1", make_events(expected, 200, 200, 10, 31));
  expect_converges(expected);
  const TableStats after = Segment::open(name_).table("users").stats();
  std::cerr << "redelivered events recognised by their id after the restarts: " << after.duplicates << " (at least "
            << folded_while_held << ")\n";
  EXPECT_GT(folded_while_held, 0u);
  EXPECT_GE(after.duplicates, folded_while_held) << "every folded event the broker redelivered is a duplicate";
  EXPECT_EQ(sidecar_->stop(), 0);
}

// distinct_count end to end: string and integer members the row does not
// store, a declared string field, and an int64 field through a transform.
class DistinctIntegrationTest : public SidecarTestBase {
 protected:
  bool setup() { return load_broker("distinct_", false, false); }

  std::string config() const {
    return fmt::format(R"(segment: {{name: {name}}}
tables:
  - name: cards
    key_max_len: 32
    capacity: 200
    fields:
      - {{name: device, type: string, max_len: 16}}
      - {{name: amount_band, type: int64, from: amount, transform: [{{bucketize: {{boundaries: [10, 100]}}}}]}}
    aggregates:
      - {{name: countries_7d, source: country, fn: distinct_count, window: 7d}}
      - {{name: merchants_7d, source: merchant, fn: distinct_count, window: 7d}}
      - {{name: devices_7d, source: device, fn: distinct_count, window: 7d}}
      - {{name: bands_7d, source: amount_band, fn: distinct_count, window: 7d}}
      - {{name: events_7d, source: country, fn: count, window: 7d}}
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
};

// Per key, an exact count of what was sent. Up to 32 distinct values the
// fields must be exact; beyond, within 3 standard errors of the sketch
// (3 x 1.04 / sqrt(128), docs/aggregates.md).
TEST_F(DistinctIntegrationTest, CountsMatchAnExactCountWithinTheDocumentedError) {
  if (!setup()) return;
  auto sidecar = std::make_unique<SidecarProcess>(config(), name_, env_);
  sidecar->start();
  ASSERT_TRUE(wait_until(
      [&] {
        const auto q = client_->inspect(name_);
        return q && q->second >= 1;
      },
      60s))
      << "the sidecar did not start consuming\n"
      << sidecar->log_tail();

  struct Sent {
    std::set<std::string> countries, devices;
    std::set<int64_t> merchants, bands;
    int64_t events = 0;
  };
  std::map<std::string, Sent> sent;
  std::mt19937 rng(41);
  const int64_t base = now_unix_ms() - 10 * 60 * 1000;
  std::vector<std::string> bodies;
  int serial = 0;
  // card:0..29 see 1..60 countries (exact up to 32, the sketch beyond);
  // card:big sees 5000 merchants.
  for (int m = 0; m < 600; ++m) {
    std::string body = "[";
    for (int i = 0; i < 10; ++i, ++serial) {
      const bool big = m >= 300;
      const int card = std::uniform_int_distribution<int>(0, 29)(rng);
      const std::string key = big ? "card:big" : fmt::format("card:{}", card);
      const std::string country = fmt::format("C{}", std::uniform_int_distribution<int>(0, 2 * card + 1)(rng));
      const int64_t merchant = big ? serial % 5000 : std::uniform_int_distribution<int64_t>(0, 3)(rng);
      const std::string device = fmt::format("d{}", std::uniform_int_distribution<int>(0, 2)(rng));
      const double amount = std::uniform_int_distribution<int>(1, 20000)(rng) / 100.0;
      const int64_t t = base + std::uniform_int_distribution<int64_t>(0, 9 * 60 * 1000)(rng);
      Sent& s = sent[key];
      s.countries.insert(country);
      s.merchants.insert(merchant * 1'000'000'007LL);
      s.devices.insert(device);
      s.bands.insert(amount < 10 ? 0 : amount < 100 ? 1 : 2);
      ++s.events;
      body += fmt::format(
          R"({}{{"table":"cards","key":"{}","event_time":{},"id":"e{}","fields":{{"country":"{}","merchant":{},"device":"{}","amount":{}}}}})",
          i ? "," : "", key, t, serial, country, merchant * 1'000'000'007LL, device, amount);
    }
    bodies.push_back(body + "]");
  }
  client_->publish(name_, "cards.1", bodies);
  client_->publish(name_, "cards.1", bodies);  // redelivered: every event is a duplicate

  const double bound = 3 * 1.04 / std::sqrt(128.0);
  auto within = [&](int64_t got, size_t want) {
    if (want <= 32) return got == static_cast<int64_t>(want);
    return std::fabs(static_cast<double>(got) - static_cast<double>(want)) <= bound * static_cast<double>(want);
  };
  std::string diff;
  int sketched = 0;
  const bool ok = wait_until(
      [&] {
        const auto q = client_->inspect(name_);
        if (!q || q->first != 0) return false;
        Segment seg = Segment::open(name_);
        Table cards = seg.table("cards");
        if (cards.stats().duplicates != static_cast<uint64_t>(serial)) return false;
        const Field countries = cards.field("countries_7d", FieldType::kInt64);
        const Field merchants = cards.field("merchants_7d", FieldType::kInt64);
        const Field devices = cards.field("devices_7d", FieldType::kInt64);
        const Field bands = cards.field("bands_7d", FieldType::kInt64);
        const Field events = cards.field("events_7d", FieldType::kInt64);
        Row row = cards.make_row();
        diff.clear();
        sketched = 0;
        for (const auto& [key, s] : sent) {
          if (!cards.get(key, row).ok()) {
            diff += key + ": not found\n";
            continue;
          }
          sketched += s.countries.size() > 32 || s.merchants.size() > 32;
          if (!within(row.i64(countries), s.countries.size()) || !within(row.i64(merchants), s.merchants.size()) ||
              !within(row.i64(devices), s.devices.size()) || !within(row.i64(bands), s.bands.size()) ||
              row.i64(events) != s.events) {
            diff +=
                fmt::format("{}: countries {} merchants {} devices {} bands {} events {}, sent {} {} {} {} {}\n", key,
                            row.i64(countries), row.i64(merchants), row.i64(devices), row.i64(bands), row.i64(events),
                            s.countries.size(), s.merchants.size(), s.devices.size(), s.bands.size(), s.events);
          }
        }
        return diff.empty();
      },
      60s);
  EXPECT_TRUE(ok) << diff << sidecar->log_tail();
  EXPECT_GT(sketched, 0) << "some key must go past the exact set";
  EXPECT_EQ(sidecar->stop(), 0);
}

// The two ages end to end: a key whose only event is ten minutes old reads
// STALE by its event age under a one-minute bound, and OK by its computed
// age while the sidecar keeps refreshing its windows; once the sidecar has
// stopped, the computed-at instant stands still and a computed bound fails as
// soon as the wall clock has passed it. Nothing here waits a duration: each
// step waits for what it needs to observe.
TEST_F(AggregateIntegrationTest, QuietKeyIsCurrentByComputationUntilTheSidecarStops) {
  if (!setup()) return;
  start_sidecar();
  std::map<std::string, Expected> expected;
  const int64_t event_ms = now_unix_ms() - 10 * 60 * 1000;
  Expected& e = expected["quiet"];
  e.count = 1;
  e.sum = e.max = 12.5;
  e.amount_bucket = 1;
  e.last_time = event_ms;
  client_->publish(name_, "users.1",
                   fmt::format(R"({{"table":"users","key":"quiet","event_time":{},"fields":{{"amount":12.5}},)"
                               R"("id":"quiet-1"}})",
                               event_ms));
  expect_converges(expected);

  Segment seg = Segment::open(name_);
  Table users = seg.table("users");
  Row row = users.make_row();
  const Field count = users.field("events_7d", FieldType::kInt64);
  constexpr int64_t kMinute = 60'000;
  const ReadResult by_event = users.get("quiet", row, {.max_age_ms = kMinute});
  EXPECT_EQ(by_event.status, Status::kStale) << "the key's only event is ten minutes old";
  EXPECT_EQ(by_event.event_time_ms, event_ms);
  // The sidecar refreshes every 50 ms: a read within the bound comes.
  ReadResult by_computed;
  ASSERT_TRUE(wait_until(
      [&] {
        by_computed = users.get("quiet", row, {.max_age_ms = 200, .age_of = AgeOf::kComputed});
        return by_computed.ok();
      },
      60s))
      << "computed age " << by_computed.computed_age_ms() << " ms, refreshed through "
      << users.stats().refreshed_through_ms << "\n"
      << sidecar_->log_tail();
  EXPECT_EQ(row.i64(count), 1);
  EXPECT_EQ(by_computed.event_time_ms, event_ms);
  EXPECT_GE(by_computed.computed_at_ms, event_ms + 10 * kMinute);
  // And it keeps moving while the sidecar runs.
  EXPECT_TRUE(wait_until(
      [&] { return users.get("quiet", row, {.age_of = AgeOf::kComputed}).computed_at_ms > by_computed.computed_at_ms; },
      60s));

  ASSERT_EQ(sidecar_->stop(), 0);
  ASSERT_FALSE(seg.writer_alive());
  const ReadResult last = users.get("quiet", row, {.age_of = AgeOf::kComputed});
  ASSERT_EQ(last.status, Status::kOk);
  constexpr int64_t kBound = 100;
  ASSERT_TRUE(wait_until([&] { return now_unix_ms() - last.computed_at_ms > kBound; }, 60s));
  const ReadResult after = users.get("quiet", row, {.max_age_ms = kBound, .age_of = AgeOf::kComputed});
  EXPECT_EQ(after.status, Status::kStale) << "a stopped sidecar must not pass a computed bound";
  EXPECT_EQ(after.computed_at_ms, last.computed_at_ms) << "the instant stopped with the sidecar";
  EXPECT_EQ(users.stats().refreshed_through_ms, last.computed_at_ms);
  EXPECT_EQ(row.i64(count), 1) << "a stale row is still filled";
}

}  // namespace
}  // namespace larder::test
