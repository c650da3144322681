// Stream positions through apply_batch and the sync state machine
// (apply/stream_sync.h), on a real Writer and segment; no broker.
#include "apply/stream_sync.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <string>

#include "apply/writer_thread.h"
#include "config/config.h"
#include "decode/decoder.h"
#include "decode/update_builder.h"
#include "larder/client.h"
#include "larder/writer/writer.h"

namespace larder::sidecar {
namespace {

layout::Schema one_table() {
  layout::Schema schema;
  layout::TableSpec t;
  t.name = "t";
  t.capacity = 16;
  t.fields = {{"i", FieldType::kInt64, 1}};
  schema.tables.push_back(t);
  return schema;
}

// A table with a string field, for records appended into one batch.
layout::Schema string_table() {
  layout::Schema schema;
  layout::TableSpec t;
  t.name = "t";
  t.capacity = 64;
  t.fields = {{"i", FieldType::kInt64, 1}, {"s", FieldType::kString, 16}};
  schema.tables.push_back(t);
  return schema;
}

// One record for UpdateBuilder::append: key, i, s; a negative i is refused.
struct Record {
  UpdateBuilder* b;
  std::string key;
  int64_t i;
  std::string s;
};
void walk_record(void* ctx) {
  const Record& r = *static_cast<const Record*>(ctx);
  r.b->begin_update(0, false);
  r.b->set_table(0);
  r.b->set_key(r.key);
  r.b->set_event_time_ms(5);
  r.b->set_fields_present();
  r.b->input_string(1, r.s);  // a string first: its bytes sit before the refusal
  if (r.i < 0) r.b->reject(RejectReason::kOutOfRange, "negative");
  r.b->input_integer(0, r.i);
  r.b->end_update();
}

class StreamSyncTest : public ::testing::Test {
 protected:
  void SetUp() override {
    name_ = "larder-unit-streamsync-" + std::to_string(::getpid());
    Writer::remove_segment(name_);
    writer_ = Writer::open(name_, one_table());
  }
  void TearDown() override {
    writer_.reset();
    Writer::remove_segment(name_);
  }

  std::optional<SourcePosition> position() const { return writer_->position(0); }
  layout::SyncState state() const { return Segment::open(name_).state(); }

  std::string name_;
  std::unique_ptr<Writer> writer_;
  Pipeline pipeline_;
};

// Before update i of n the position {O, i + 1} is staged, {O + 1, 0} before
// the last; skip_updates skips the first updates; a message with none left
// stores {O + 1, 0}.
TEST_F(StreamSyncTest, ApplyBatchStoresThePositionAfterEachUpdate) {
  Decoder decoder(one_table(), {});
  DecodedBatch batch;
  ASSERT_TRUE(decoder
                  .decode(R"([{"table":"t","key":"a","event_time":5,"fields":{"i":1}},
                              {"table":"t","key":"b","event_time":5,"fields":{"i":2}},
                              {"table":"t","key":"c","event_time":5,"fields":{"i":3}}])",
                          batch)
                  .ok);
  RejectReason reason = RejectReason::kInternal;
  uint64_t stale = 0;
  // Resuming inside the message: the first two updates were applied before.
  StreamPlace place{7, 2};
  EXPECT_EQ(apply_batch(*writer_, batch, &reason, &stale, nullptr, nullptr, nullptr, nullptr, &place),
            Outcome::kApplied);
  ASSERT_TRUE(position());
  EXPECT_EQ(position()->next_offset, 8u);
  EXPECT_EQ(position()->skip_updates, 0u);
  Segment seg = Segment::open(name_);
  Table t = seg.table("t");
  Row row = t.make_row();
  EXPECT_FALSE(t.get("a", row).found()) << "a skipped update was applied";
  EXPECT_FALSE(t.get("b", row).found()) << "a skipped update was applied";
  EXPECT_TRUE(t.get("c", row).ok());

  // All skipped (or none at all): the position moves past the message.
  place = StreamPlace{8, 3};
  EXPECT_EQ(apply_batch(*writer_, batch, &reason, &stale, nullptr, nullptr, nullptr, nullptr, &place),
            Outcome::kApplied);
  EXPECT_EQ(position()->next_offset, 9u);
  EXPECT_FALSE(t.get("a", row).found());

  // A refused update (stale) still carries the position.
  ASSERT_TRUE(decoder.decode(R"({"table":"t","key":"c","event_time":1,"fields":{"i":9}})", batch).ok);
  place = StreamPlace{9, 0};
  EXPECT_EQ(apply_batch(*writer_, batch, &reason, &stale, nullptr, nullptr, nullptr, nullptr, &place),
            Outcome::kApplied);
  EXPECT_EQ(stale, 1u);
  EXPECT_EQ(position()->next_offset, 10u);
}

// Records appended one by one: a refused one leaves no trace, the others
// keep their values (strings resolved by finish()).
TEST(UpdateBuilderAppend, ARefusedRecordRemovesOnlyItself) {
  UpdateBuilder builder(string_table(), {});
  ASSERT_EQ(builder.inputs(0).at(0).name, "i");
  ASSERT_EQ(builder.inputs(0).at(1).name, "s");
  DecodedBatch batch;
  const Record records[] = {
      {&builder, "a", 1, "first"}, {&builder, "b", -1, "refused-row"}, {&builder, "c", 3, "third"}};
  std::vector<bool> ok;
  for (const Record& r : records) {
    const DecodeResult d = builder.append(batch, 1000, RejectReason::kWrongType, &walk_record, const_cast<Record*>(&r));
    ok.push_back(d.ok);
    EXPECT_TRUE(d.ok || d.detail == "negative") << r.key << ": " << d.detail;
  }
  EXPECT_EQ(ok, (std::vector<bool>{true, false, true}));
  UpdateBuilder::finish(batch);
  ASSERT_EQ(batch.size(), 2u);
  EXPECT_EQ(batch.key(batch.update(0)), "a");
  EXPECT_EQ(batch.key(batch.update(1)), "c");
  auto string_of = [&](size_t u) {
    for (const FieldValue& v : batch.values(batch.update(u))) {
      if (v.type == FieldType::kString) return std::string(static_cast<const char*>(v.data), v.length);
    }
    return std::string("?");
  };
  EXPECT_EQ(string_of(0), "first");
  EXPECT_EQ(string_of(1), "third");
}

// A poller's rows in one item: update i stores its own next_offset with
// its effect. Killed at every crash point of the batch in turn (a child
// process SIGKILLs itself at the k-th), the reopened segment always holds
// a prefix of the rows and the position of exactly the last of them.
TEST(PollerPositions, AKillBetweenRowsOfOneItemStoresTheLastAppliedRow) {
  const std::string name = "larder-unit-pollpos-" + std::to_string(::getpid());
  const std::vector<uint64_t> next = {10, 10, 20, 30, 40};  // rows 0 and 1 share a cursor
  const uint64_t item_offset = 44;                          // a refused row at 44 after the last
  const char* keys[] = {"a", "b", "c", "d", "e"};
  Decoder decoder(one_table(), {});
  std::string body = "[";
  for (size_t i = 0; i < next.size(); ++i) {
    body += fmt::format(R"({}{{"table":"t","key":"{}","event_time":5,"fields":{{"i":{}}}}})", i == 0 ? "" : ",",
                        keys[i], i);
  }
  body += "]";
  static long crash_at = 0;
  static long points = 0;
  bool finished = false;
  for (crash_at = 1; !finished && crash_at < 1000; ++crash_at) {
    Writer::remove_segment(name);
    Writer::open(name, one_table()).reset();
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto writer = Writer::open(name, one_table());
      DecodedBatch batch;
      if (!decoder.decode(body, batch).ok) ::_exit(3);
      points = 0;
      set_crash_hook([](CrashPoint) {
        if (++points == crash_at) ::raise(SIGKILL);
      });
      RejectReason reason = RejectReason::kInternal;
      const StreamPlace place{item_offset, 0, 0, next};
      const Outcome o = apply_batch(*writer, batch, &reason, nullptr, nullptr, nullptr, nullptr, nullptr, &place);
      ::_exit(o == Outcome::kApplied ? 0 : 4);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    if (WIFEXITED(status)) {
      ASSERT_EQ(WEXITSTATUS(status), 0);
      finished = true;
    } else {
      ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    }
    auto writer = Writer::open(name, one_table());  // repairs what the kill left
    Segment seg = Segment::open(name);
    Table t = seg.table("t");
    Row row = t.make_row();
    size_t applied = 0;
    while (applied < next.size() && t.get(keys[applied], row).ok()) ++applied;
    for (size_t i = applied; i < next.size(); ++i) {
      EXPECT_FALSE(t.get(keys[i], row).found()) << "crash point " << crash_at << ": not a prefix";
    }
    const std::optional<SourcePosition> pos = writer->position(0);
    if (applied == 0) {
      EXPECT_FALSE(pos.has_value()) << "crash point " << crash_at;
    } else {
      ASSERT_TRUE(pos.has_value()) << "crash point " << crash_at;
      EXPECT_EQ(pos->next_offset, applied == next.size() ? item_offset + 1 : next[applied - 1])
          << "crash point " << crash_at << ", " << applied << " rows applied";
      EXPECT_EQ(pos->skip_updates, 0u);
    }
    if (finished) {
      EXPECT_EQ(applied, next.size());
    }
  }
  EXPECT_TRUE(finished);
  EXPECT_GT(crash_at, 5) << "fewer crash points than rows";
  Writer::remove_segment(name);
}

// CATCHING_UP until the target is applied and the lag is low enough; the
// lag is 0 at the tail, else now minus the newest event time.
TEST_F(StreamSyncTest, ReadyOnlyOnceTheTargetIsReachedAndTheLagIsLow) {
  StreamSync sync(*writer_, pipeline_, /*max_lag_ms=*/1000, false);
  EXPECT_EQ(state(), layout::SyncState::kCatchingUp);
  const int64_t now = 10'000'000;
  sync.poll(now);
  EXPECT_EQ(state(), layout::SyncState::kCatchingUp) << "no target yet";

  pipeline_.stream_tail.store(9);
  pipeline_.stream_probes.fetch_add(1);
  sync.poll(now);
  EXPECT_EQ(state(), layout::SyncState::kCatchingUp);
  EXPECT_EQ(Segment::open(name_).sync().partitions.at(0).target, 9u);

  writer_->set_position({0, 10, 0});
  sync.applied(9, now - 5000);  // the target, but old events: lag 5 s
  sync.poll(now);
  EXPECT_EQ(sync.lag_ms(), 5000);
  EXPECT_EQ(state(), layout::SyncState::kCatchingUp);

  pipeline_.stream_at_tail.store(true);  // the broker has no more: lag 0
  sync.poll(now);
  EXPECT_EQ(sync.lag_ms(), 0);
  EXPECT_EQ(state(), layout::SyncState::kReady);
  EXPECT_FALSE(Segment::open(name_).sync().partitions.at(0).target.has_value());

  // READY is kept while the lag grows again.
  pipeline_.stream_at_tail.store(false);
  sync.applied(10, now - 60'000);
  sync.poll(now);
  EXPECT_EQ(state(), layout::SyncState::kReady);
}

// A gap makes the segment INCOMPLETE with the first retained offset, and a
// new StreamSync on an incomplete segment keeps it.
TEST_F(StreamSyncTest, AGapIsIncompleteForGood) {
  {
    StreamSync sync(*writer_, pipeline_, 1000, false);
    sync.gap(10, 1532);
    EXPECT_EQ(state(), layout::SyncState::kIncomplete);
    EXPECT_EQ(Segment::open(name_).sync().partitions.at(0).first_retained, 1532u);
    pipeline_.stream_tail.store(kNoOffset);
    pipeline_.stream_probes.fetch_add(1);
    pipeline_.stream_at_tail.store(true);
    sync.poll(1);
    EXPECT_EQ(state(), layout::SyncState::kIncomplete) << "a gap is never READY";
  }
  StreamSync again(*writer_, pipeline_, 1000, true);
  EXPECT_EQ(state(), layout::SyncState::kIncomplete);
  EXPECT_EQ(Segment::open(name_).sync().partitions.at(0).first_retained, 1532u);
}

// The source id: vhost and queue; too long ones are cut with a hash.
TEST(StreamSourceId, NamesVhostAndQueueAndFitsTheBlock) {
  Config c;
  c.rabbitmq.url.vhost = "/prod";
  c.rabbitmq.queue.name = "features";
  EXPECT_EQ(stream_source_id(c), "rabbitmq stream vhost=/prod queue=features");
  Config a = c, b = c;
  a.rabbitmq.queue.name = std::string(200, 'q') + "a";
  b.rabbitmq.queue.name = std::string(200, 'q') + "b";
  EXPECT_LE(stream_source_id(a).size(), layout::kSourceIdWords * 8 - 1);
  EXPECT_NE(stream_source_id(a), stream_source_id(b));
}

TEST(ReadinessConfig, MaxLagIsADuration) {
  const std::string base = R"(segment: {name: s}
tables: [{name: t, capacity: 10, fields: [{name: i, type: int64}]}]
rabbitmq: {url: "amqp://guest@127.0.0.1/", password_env: LARDER_UNIT_STREAMSYNC_PASSWORD, queue: {name: q, type: stream}}
)";
  ::setenv("LARDER_UNIT_STREAMSYNC_PASSWORD", "x", 1);
  EXPECT_EQ(parse_config(base).readiness.max_lag_ms, 5000);
  EXPECT_EQ(parse_config(base + "readiness: {max_lag: 90s}\n").readiness.max_lag_ms, 90000);
  try {
    parse_config(base + "readiness: {max_lag: soon}\n");
    ADD_FAILURE() << "accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("readiness.max_lag"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace larder::sidecar

namespace larder::sidecar {
namespace {

// Several sources: a message's position goes to its own SourceBlock
// partition, and the segment's states are the least ready / worst of the
// lanes'.
TEST_F(StreamSyncTest, LanesKeepTheirOwnPartitionsAndCombineTheirStates) {
  Decoder decoder(one_table(), {});
  DecodedBatch batch;
  ASSERT_TRUE(decoder.decode(R"({"table":"t","key":"a","event_time":5,"fields":{"i":1}})", batch).ok);
  RejectReason reason = RejectReason::kInternal;
  const StreamPlace place{41, 0, 5};
  EXPECT_EQ(apply_batch(*writer_, batch, &reason, nullptr, nullptr, nullptr, nullptr, nullptr, &place),
            Outcome::kApplied);
  ASSERT_TRUE(writer_->position(5));
  EXPECT_EQ(writer_->position(5)->next_offset, 42u);
  EXPECT_FALSE(position()) << "partition 0 belongs to another source";

  pipeline_.lanes.push_back(std::make_unique<SourceLane>(0, 0, 1));
  pipeline_.lanes.push_back(std::make_unique<SourceLane>(1, 1, 8));
  auto set = [&](size_t lane, layout::SyncState s, layout::ConnectionState c) {
    pipeline_.lanes[lane]->sync_state.store(static_cast<uint32_t>(s));
    pipeline_.lanes[lane]->connection_state.store(static_cast<uint32_t>(c));
  };
  set(0, layout::SyncState::kReady, layout::ConnectionState::kConnected);
  set(1, layout::SyncState::kUnknown, layout::ConnectionState::kConnected);
  EXPECT_EQ(combined_sync_state(pipeline_), layout::SyncState::kReady);
  EXPECT_EQ(combined_connection_state(pipeline_), layout::ConnectionState::kConnected);
  set(1, layout::SyncState::kCatchingUp, layout::ConnectionState::kConnecting);
  EXPECT_EQ(combined_sync_state(pipeline_), layout::SyncState::kCatchingUp);
  EXPECT_EQ(combined_connection_state(pipeline_), layout::ConnectionState::kConnecting);
  set(0, layout::SyncState::kIncomplete, layout::ConnectionState::kDisconnected);
  EXPECT_EQ(combined_sync_state(pipeline_), layout::SyncState::kIncomplete);
  EXPECT_EQ(combined_connection_state(pipeline_), layout::ConnectionState::kDisconnected);
  set(0, layout::SyncState::kUnknown, layout::ConnectionState::kStopped);
  set(1, layout::SyncState::kUnknown, layout::ConnectionState::kStopped);
  EXPECT_EQ(combined_sync_state(pipeline_), layout::SyncState::kUnknown);
  EXPECT_EQ(combined_connection_state(pipeline_), layout::ConnectionState::kStopped);
}

}  // namespace
}  // namespace larder::sidecar
