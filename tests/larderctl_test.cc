// larderctl against segments written by the writer API: golden outputs for
// text and JSON, and verify against each kind of injected corruption.
//
// `larder_larderctl_tests --update-golden` rewrites the golden files instead
// of comparing (review the diff before committing it). Only this command-line
// flag does it, so no environment can turn the comparisons off.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "config/config.h"  // the sidecar's parser, for `schema` round trips
#include "larder/layout/clock.h"
#include "larder/layout/segment_file.h"
#include "larder/writer/writer.h"
#include "support/progress.h"
#include "support/run_command.h"
#include "support/test_segment.h"

#ifndef LARDERCTL_PATH
#error "LARDERCTL_PATH must name the larderctl binary"
#endif
#ifndef LARDERCTL_GOLDEN_DIR
#error "LARDERCTL_GOLDEN_DIR must name the golden files' directory"
#endif

namespace larder {
namespace {

using layout::FieldType;

constexpr int64_t kAt = 1'700'000'100'000;  // "now" for every command (--at-ms)

bool update_golden = false;  // --update-golden; set by main() before any test

using CtlRun = testing::CommandRun;

CtlRun larderctl(const std::string& args) { return testing::run_command(std::string(LARDERCTL_PATH) + " " + args); }

// Compares with the golden file; with --update-golden rewrites it instead.
void expect_golden(const std::string& name, const std::string& actual) {
  const std::string path = std::string(LARDERCTL_GOLDEN_DIR) + "/" + name;
  if (update_golden) {
    std::ofstream(path) << actual;
    std::printf("rewrote golden file %s\n", path.c_str());
    return;
  }
  std::ifstream in(path);
  ASSERT_TRUE(in.good()) << "missing golden file " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(actual, ss.str()) << "golden " << name;
}

// Lines sorted after the first `keep` lines (dump order follows the hash seed).
std::string sorted_lines(const std::string& text, size_t keep = 0) {
  std::vector<std::string> lines;
  std::stringstream ss(text);
  for (std::string l; std::getline(ss, l);) lines.push_back(l);
  std::sort(lines.begin() + static_cast<long>(std::min(keep, lines.size())), lines.end());
  std::string out;
  for (const std::string& l : lines) out += l + "\n";
  return out;
}

// Heartbeats `writer` every few milliseconds (and, when `write` is set,
// upserts users row "live" each time) from a thread of its own until
// destroyed: "writer alive" then holds however slowly a command starts. The
// test's main thread does not use the writer meanwhile.
class KeepWriting {
 public:
  KeepWriting(Writer& writer, bool write) : writer_(writer), write_(write), thread_([this] { loop(); }) {}
  ~KeepWriting() {
    stop_.store(true);
    thread_.join();
  }

 private:
  void loop() {
    for (int64_t t = 1'700'000'000'001; !stop_.load(); ++t) {
      writer_.heartbeat();
      if (write_) {
        const FieldValue v[] = {FieldValue::int64(0, t)};
        writer_.upsert(0, "live", t, v);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  Writer& writer_;
  const bool write_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class LarderctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    layout::TableSpec users;
    users.name = "users";
    users.key_max_len = 16;
    users.capacity = 100;
    users.fields = {{"clicks", FieldType::kInt64, 1},      {"spend", FieldType::kFloat64, 1},
                    {"ctr", FieldType::kFloat32, 1},       {"premium", FieldType::kBool, 1},
                    {"emb", FieldType::kFloat32Vector, 3}, {"country", FieldType::kString, 4}};
    layout::TableSpec items;
    items.name = "items";
    items.capacity = 10;
    items.max_load_factor = 0.5;
    items.fields = {{"price", FieldType::kFloat64, 1}};
    layout::Schema schema;
    schema.tables = {users, items};
    writer_ = Writer::open(seg_.name(), schema, seg_.writer_options());
    const float emb[3] = {0.5f, -1.0f, 2.25f};
    const FieldValue u1[] = {FieldValue::int64(0, 42),     FieldValue::float64(1, 12.5), FieldValue::float32(2, 0.25f),
                             FieldValue::boolean(3, true), FieldValue::vector(4, emb),   FieldValue::string(5, "SE")};
    ASSERT_EQ(writer_->upsert(0, "u1", 1'700'000'000'000, u1, 1'700'000'050'000'000'000), ApplyResult::kApplied);
    const FieldValue u2[] = {FieldValue::int64(0, 7), FieldValue::string(5, "a,\"b")};
    ASSERT_EQ(writer_->upsert(0, "u2", 1'700'000'090'000, u2, 1'700'000'095'000'000'000), ApplyResult::kApplied);
    ASSERT_EQ(writer_->upsert(0, "u3", 1'700'000'000'000, u2, 1'700'000'095'000'000'000), ApplyResult::kApplied);
    ASSERT_EQ(writer_->remove(0, "u3", 1'700'000'001'000, 1'700'000'096'000'000'000), ApplyResult::kApplied);
    const FieldValue price[] = {FieldValue::float64(0, 9.99)};
    ASSERT_EQ(writer_->upsert(1, "i1", 1'700'000'000'000, price, 1'700'000'000'000'000'000), ApplyResult::kApplied);
  }
  std::string common() const { return "--dir " + seg_.dir() + " --at-ms " + std::to_string(kAt) + " "; }
  std::string fix(std::string s) const {
    // Goldens say SEGMENT for the per-run segment name.
    for (size_t at; (at = s.find(seg_.name())) != std::string::npos;) s.replace(at, seg_.name().size(), "SEGMENT");
    return s;
  }

  testing::ScratchSegment seg_;
  std::unique_ptr<Writer> writer_;
};

TEST_F(LarderctlTest, GrowAsksTheLiveWriterAndWaitsForTheNewGeneration) {
  const std::string seg = seg_.name();
  CtlRun r = larderctl(common() + "grow " + seg + " --table users --capacity 100");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("has capacity 100"), std::string::npos) << r.out;
  r = larderctl(common() + "grow " + seg + " --table nope --capacity 1000");
  EXPECT_EQ(r.code, 2) << r.out;

  // The writer's own thread: maintain() takes the request and steps the
  // switch, as the sidecar's writer thread does, until larderctl returns.
  std::atomic<bool> done{false};
  std::thread writer_thread([&] {
    while (!done.load()) writer_->maintain();
  });
  r = larderctl(common() + "grow " + seg + " --table users --capacity 400 --wait 60");
  done = true;
  writer_thread.join();
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("grown: \"users\" capacity 400, generation 1"), std::string::npos) << r.out;
  EXPECT_EQ(writer_->stats(0).capacity, 400u);
  EXPECT_EQ(writer_->stats(0).live_keys, 2u);
  EXPECT_EQ(writer_->stats(1).capacity, 10u) << "other tables keep their capacity";
  EXPECT_NE(::access(Writer::grow_request_path(seg, seg_.dir()).c_str(), F_OK), 0) << "the request is taken";
  r = larderctl(common() + "get " + seg + " users u1");
  EXPECT_EQ(r.code, 0) << r.out;

  // A request the writer cannot use: taken, and the reason kept.
  const std::string request = Writer::grow_request_path(seg, seg_.dir());
  std::ofstream(request) << "users lots\n";
  // maintain() looks at most every 100 ms: until the request is gone.
  while (::access(request.c_str(), F_OK) == 0) writer_->maintain();
  EXPECT_NE(writer_->switch_progress().last_error.find("expected \"<table> <capacity>\""), std::string::npos)
      << writer_->switch_progress().last_error;
  EXPECT_FALSE(writer_->switch_active());
}

TEST_F(LarderctlTest, GetTextAndJson) {
  CtlRun r = larderctl(common() + "get " + seg_.name() + " users u1 u2 nobody");
  EXPECT_EQ(r.code, 1) << "a missing key makes get exit 1";
  expect_golden("get.txt", r.out);
  r = larderctl(common() + "--json get " + seg_.name() + " users u1 u3");
  EXPECT_EQ(r.code, 1);
  expect_golden("get.jsonl", r.out);
  r = larderctl(common() + "get " + seg_.name() + " users u1 --max-age-ms 1000");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("u1: stale"), std::string::npos) << r.out;
}

TEST_F(LarderctlTest, DumpJsonLinesAndCsv) {
  CtlRun r = larderctl(common() + "dump " + seg_.name() + " users");
  EXPECT_EQ(r.code, 0);
  expect_golden("dump.jsonl", sorted_lines(r.out));
  r = larderctl(common() + "dump " + seg_.name() + " users --format csv");
  EXPECT_EQ(r.code, 0);
  expect_golden("dump.csv", sorted_lines(r.out, 1));
  r = larderctl(common() + "dump " + seg_.name() + " users --limit 1");
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1);
}

TEST_F(LarderctlTest, SchemaRoundTripsToTheSameFingerprint) {
  CtlRun r = larderctl(common() + "schema " + seg_.name());
  EXPECT_EQ(r.code, 0);
  expect_golden("schema.yaml", fix(r.out));
  r = larderctl(common() + "--json schema " + seg_.name());
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("\"max_load_factor\":0.5"), std::string::npos) << r.out;
  auto m = layout::MappedFile::open_read_only(writer_->path(), seg_.name());
  EXPECT_EQ(layout::schema_of(m->data()).fingerprint(), writer_->schema().fingerprint());
}

TEST_F(LarderctlTest, InfoAndLs) {
  CtlRun r = larderctl(common() + "info " + seg_.name());
  EXPECT_NE(r.out.find("  sync unknown, source none\n"), std::string::npos) << r.out;
  writer_->set_source_id("amqp / stream features.stream");
  writer_->set_position({0, 4242, 1});
  writer_->set_target(0, 5000);
  writer_->set_first_retained(2, 17);
  writer_->set_sync_state(layout::SyncState::kCatchingUp);
  const KeepWriting heartbeat(*writer_, false);
  r = larderctl(common() + "--json info " + seg_.name());
  EXPECT_EQ(r.code, 0) << r.out;
  for (const char* want : {"\"layout_version\":5", "\"state\":\"ready\"",
                           "\"sync\":{\"state\":\"catching_up\",\"source_id\":\"amqp / stream features.stream\"",
                           "\"partitions\":[{\"partition\":0,\"next_offset\":4242,\"skip_updates\":1,\"target\":5000,"
                           "\"first_retained\":null},{\"partition\":2,\"next_offset\":null,\"skip_updates\":0,"
                           "\"target\":null,\"first_retained\":17}]",
                           "\"alive\":true", "\"live_keys\":2", "\"tombstones\":1", "\"capacity\":100",
                           "\"stale_ignored\":0", "\"probe_length\":"}) {
    EXPECT_NE(r.out.find(want), std::string::npos) << want << " in " << r.out;
  }
  r = larderctl(common() + "info " + seg_.name());
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("users: 2 / 100 keys"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("  sync catching_up (since "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(", source amqp / stream features.stream\n"
                       "    partition 0: next offset 4242 (+1 updates applied), target 5000\n"
                       "    partition 2: no position, first retained 17\n"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("writer pid " + std::to_string(::getpid()) + ", alive"), std::string::npos) << r.out;
  r = larderctl(common() + "ls");
  EXPECT_NE(r.out.find(seg_.name()), std::string::npos) << r.out;
  r = larderctl(common() + "--json ls");
  EXPECT_NE(r.out.find("{\"name\":\"" + seg_.name() + "\""), std::string::npos) << r.out;
}

// watch on a segment being written: a frame after the first shows updates
// per second above zero. Frames are read as they come, and watch ends when
// the test closes the pipe (SIGPIPE) or after its --count.
TEST_F(LarderctlTest, WatchPrintsLiveNumbers) {
  const KeepWriting writing(*writer_, true);
  const std::string cmd =
      std::string(LARDERCTL_PATH) + " " + common() + "watch " + seg_.name() + " --interval 0.05 --count 2400 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  int users_rows = 0;
  bool moving = false;
  char line[1024];
  while (!moving && std::fgets(line, sizeof line, p) != nullptr) {
    out += line;
    const std::string l = line;
    if (l.rfind("  users ", 0) != 0) continue;
    // "  users  <updates/s>  <live>  ..."; the first frame has no interval yet.
    moving = ++users_rows > 1 && std::strtod(l.c_str() + 8, nullptr) > 0;
  }
  ::pclose(p);
  EXPECT_TRUE(moving) << "no frame showed updates while the segment was written:\n" << out;
  EXPECT_NE(out.find("writer alive"), std::string::npos) << out;
}

TEST_F(LarderctlTest, ErrorsNameTheProblem) {
  CtlRun r = larderctl(common() + "info no-such-segment");
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.out.find("Is the sidecar running"), std::string::npos) << r.out;
  r = larderctl(common() + "get " + seg_.name() + " nosuchtable k");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("no table \"nosuchtable\" (tables: users, items)"), std::string::npos) << r.out;
  r = larderctl(common() + "frobnicate");
  EXPECT_EQ(r.code, 2);
}

TEST_F(LarderctlTest, VerifyIsCleanThenDetectsEachCorruption) {
  CtlRun r = larderctl(common() + "verify " + seg_.name());
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("ok (4 occupied slots checked)"), std::string::npos) << r.out;
  const std::string path = writer_->path();
  writer_.reset();  // corrupt a segment nobody writes

  auto damage = [&](auto&& f) {
    auto m = layout::MappedFile::open_read_write(path, seg_.name());
    char* base = static_cast<char*>(m->mutable_data());
    const auto& d = layout::table_descriptor(base, 0);
    const layout::TableGeometry g = layout::table_geometry(base, d);
    // The slot of key u1.
    for (uint64_t i = 0; i < g.slot_count; ++i) {
      auto* s = const_cast<layout::Word*>(g.slot(i));
      if (layout::meta_state(s[1].load()) == layout::SlotState::kLive &&
          std::string_view(reinterpret_cast<const char*>(s + g.key_word_offset()), 2) == "u1") {
        f(const_cast<layout::TableDescriptor&>(d), s, g);
        return;
      }
    }
    FAIL() << "u1 not found";
  };
  struct Case {
    const char* what;
    const char* expect;
  };
  // Each damage is undone by recreating the fixture: run them on copies.
  const std::string pristine = path + ".pristine";
  ASSERT_EQ(std::system(("cp " + path + " " + pristine).c_str()), 0);
  auto restore = [&] { ASSERT_EQ(std::system(("cp " + pristine + " " + path).c_str()), 0); };

  damage([](auto&, layout::Word* s, auto&) { s[0].store(s[0].load() + 1); });
  r = larderctl(common() + "verify " + seg_.name());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("sequence stays odd"), std::string::npos) << r.out;
  restore();

  damage([](auto&, layout::Word* s, const layout::TableGeometry& g) { s[g.key_word_offset()].store(0x7878); });
  r = larderctl(common() + "verify " + seg_.name());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("stored hash does not match key"), std::string::npos) << r.out;
  restore();

  damage([](auto& d, layout::Word*, auto&) { d.counters.live_keys.store(5); });
  r = larderctl(common() + "verify " + seg_.name());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("counters say 5 live keys, the slots hold 2"), std::string::npos) << r.out;
  restore();

  damage([](auto&, layout::Word* s, auto&) { s[4].store(900); });  // key length
  r = larderctl(common() + "verify " + seg_.name());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("key length 900"), std::string::npos) << r.out;
  restore();

  // The same key live twice: copy u1's slot into the next empty slot.
  damage([](auto&, layout::Word* s, const layout::TableGeometry& g) {
    for (uint64_t i = 0; i < g.slot_count; ++i) {
      auto* t = const_cast<layout::Word*>(g.slot(i));
      if (t == s || t[1].load() != 0) continue;
      for (uint32_t w = 0; w < g.slot_words; ++w) t[w].store(s[w].load());
      return;
    }
  });
  r = larderctl(common() + "verify " + seg_.name());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("is live twice"), std::string::npos) << r.out;
  restore();

  {
    auto m = layout::MappedFile::open_read_write(path, seg_.name());
    static_cast<layout::SegmentHeader*>(m->mutable_data())->layout_version = 9;
  }
  r = larderctl(common() + "verify " + seg_.name());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("has layout v9"), std::string::npos) << r.out;
  restore();

  r = larderctl(common() + "--json verify " + seg_.name());
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("\"ok\":true"), std::string::npos) << r.out;
  std::remove(pristine.c_str());
}

// `larderctl size` is what operators provision tmpfs by: it must equal the
// bytes the writer actually allocates for the same schema.
TEST(LarderctlSize, EqualsTheBytesTheWriterAllocates) {
  testing::ScratchSegment seg;
  const std::string config = "/tmp/" + seg.name() + ".yaml";
  std::ofstream(config) << "segment: {name: " << seg.name() << ", dir: " << seg.dir() << "}\n"
                        << "tables:\n"
                        << "  - name: users\n    key_max_len: 24\n    capacity: 3000\n    max_load_factor: 0.7\n"
                        << "    fields:\n"
                        << "      - {name: clicks, type: int64}\n"
                        << "      - {name: country, type: string, max_len: 8}\n"
                        << "      - {name: emb, type: vector, dims: 32}\n"
                        << "  - name: items\n    capacity: 100\n    fields: [{name: price, type: float64}]\n"
                        << "rabbitmq:\n  url: amqp://guest@127.0.0.1:5672/\n"
                        << "  password_env: LARDERCTL_TEST_UNSET_PASSWORD_VARIABLE\n  queue: {name: q}\n";
  // No broker password is needed to size a config.
  const CtlRun r = larderctl("size --config " + config + " --json");
  ASSERT_EQ(r.code, 0) << r.out;
  auto number_after = [&](const std::string& key) {
    const size_t at = r.out.find("\"" + key + "\":");
    return at == std::string::npos ? uint64_t{0} : std::stoull(r.out.substr(at + key.size() + 3));
  };
  const uint64_t total = number_after("total_bytes");
  const uint64_t recommended = number_after("recommended_tmpfs_bytes");

  layout::TableSpec users;
  users.name = "users";
  users.key_max_len = 24;
  users.capacity = 3000;
  users.max_load_factor = 0.7;
  users.fields = {
      {"clicks", FieldType::kInt64, 1}, {"country", FieldType::kString, 8}, {"emb", FieldType::kFloat32Vector, 32}};
  layout::TableSpec items;
  items.name = "items";
  items.capacity = 100;
  items.fields = {{"price", FieldType::kFloat64, 1}};
  layout::Schema schema;
  schema.tables = {users, items};
  auto writer = Writer::open(seg.name(), schema, seg.writer_options());
  struct stat st;
  ASSERT_EQ(::stat(layout::segment_path(seg.dir(), seg.name()).c_str(), &st), 0);
  EXPECT_EQ(total, static_cast<uint64_t>(st.st_size));
  EXPECT_EQ(total, static_cast<uint64_t>(st.st_blocks) * 512) << "every page allocated at creation";
  EXPECT_GE(recommended, total + (uint64_t{1} << 20)) << "room for the writer's free-space margin";
  EXPECT_EQ(recommended % (uint64_t{1} << 20), 0u);
  EXPECT_NE(r.out.find("\"schema_fingerprint\":\"" +
                       [&] {
                         char b[20];
                         std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(schema.fingerprint()));
                         return std::string(b);
                       }() +
                       "\""),
            std::string::npos)
      << r.out;
  std::remove(config.c_str());
}

// A segment with aggregates: `schema` prints a config whose fingerprint is
// the segment's (so an operator can recreate the sidecar's config from a
// live segment), and `size` of that config is the bytes the writer allocated,
// aggregate state and dedup set included.
TEST(LarderctlAggregates, SchemaRoundTripsAndSizeCountsTheState) {
  testing::ScratchSegment seg;
  layout::TableSpec t;
  t.name = "users";
  t.capacity = 500;
  t.fields = {{"country", FieldType::kString, 4}};
  t.aggregates = {
      {"spend_1h", "amount", layout::AggregateFn::kSum, 3'600'000, 0, layout::WindowEnd::kNow},
      {"spend_std_1d", "amount", layout::AggregateFn::kStddev, 86'400'000, 600'000, layout::WindowEnd::kLatestEvent},
      {"events_5m", "", layout::AggregateFn::kCount, 300'000, 0, layout::WindowEnd::kNow}};
  t.allowed_lateness_ms = 1'800'000;
  t.dedup_capacity = 4096;
  t.dedup_horizon_ms = 7'200'000;
  layout::Schema schema;
  schema.tables = {t};
  auto writer = Writer::open(seg.name(), schema, seg.writer_options());

  const CtlRun yaml = larderctl("--dir " + seg.dir() + " schema " + seg.name());
  ASSERT_EQ(yaml.code, 0) << yaml.out;
  // Durations as a config spells them.
  EXPECT_NE(yaml.out.find("{name: spend_std_1d, source: amount, fn: stddev, window: 1d, resolution: 10m, "
                          "end: latest_event}"),
            std::string::npos)
      << yaml.out;
  EXPECT_NE(yaml.out.find("{name: spend_1h, source: amount, fn: sum, window: 1h}"), std::string::npos) << yaml.out;
  EXPECT_NE(yaml.out.find("    allowed_lateness: 30m\n    dedup: {horizon: 2h, capacity: 4096}\n"), std::string::npos)
      << yaml.out;
  const std::string rabbitmq =
      "rabbitmq:\n  url: amqp://guest@127.0.0.1:5672/\n"
      "  password_env: LARDERCTL_TEST_UNSET_PASSWORD_VARIABLE\n  queue: {name: q}\n";
  // The sidecar's own parser reads it back to the segment's fingerprint.
  const sidecar::Config parsed =
      sidecar::parse_config(yaml.out + rabbitmq, "schema output", sidecar::ConfigLoad{.require_secrets = false});
  EXPECT_EQ(parsed.schema().fingerprint(), schema.fingerprint()) << yaml.out;
  const std::string config = "/tmp/" + seg.name() + ".yaml";
  std::ofstream(config) << yaml.out << rabbitmq;
  const CtlRun r = larderctl("size --config " + config + " --json");
  ASSERT_EQ(r.code, 0) << r.out;
  char fp[20];
  std::snprintf(fp, sizeof fp, "%016llx", static_cast<unsigned long long>(schema.fingerprint()));
  EXPECT_NE(r.out.find("\"schema_fingerprint\":\"" + std::string(fp) + "\""), std::string::npos) << r.out;
  struct stat st;
  ASSERT_EQ(::stat(layout::segment_path(seg.dir(), seg.name()).c_str(), &st), 0);
  EXPECT_NE(r.out.find("\"total_bytes\":" + std::to_string(st.st_size)), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"dedup_bytes\":65536"), std::string::npos) << "4096 ids of 16 bytes: " << r.out;
  std::remove(config.c_str());

  // info shows the aggregate clock and the instant the windows are computed
  // through, which a full refresh moves to the clock.
  const int64_t event_ms = 1'700'000'000'000;
  const SourceValue amount{0, 12.5};  // source 0: "amount"
  ASSERT_EQ(writer->apply(0, "u1", event_ms, {}, std::span<const SourceValue>(&amount, 1), 0, event_ms * 1'000'000),
            ApplyResult::kApplied);
  writer->refresh((event_ms + 90'000) * 1'000'000);
  const std::string at = "--dir " + seg.dir() + " --at-ms " + std::to_string(event_ms + 90'000) + " ";
  const CtlRun info = larderctl(at + "--json info " + seg.name());
  ASSERT_EQ(info.code, 0) << info.out;
  EXPECT_NE(info.out.find("\"clock_ms\":1700000090000,\"refreshed_through_ms\":1700000090000}"), std::string::npos)
      << info.out;
  const CtlRun text = larderctl(at + "info " + seg.name());
  EXPECT_NE(text.out.find("    aggregate clock 1700000090000 ms, windows computed through 1700000090000 ms\n"),
            std::string::npos)
      << text.out;
}

// A segment with field groups: `schema` round trips the groups, `size`
// counts their words, and get, dump and info show each group.
TEST(LarderctlGroups, SchemaRoundTripsAndReadsShowGroups) {
  testing::ScratchSegment seg;
  layout::TableSpec t;
  t.name = "cards";
  t.capacity = 100;
  t.fields = {{"credit_limit", FieldType::kFloat64, 1, "profile"},
              {"last_amount", FieldType::kFloat64, 1, "activity"},
              {"country", FieldType::kString, 4, ""}};
  layout::AggregateSpec n;
  n.name = "tx_1h";
  n.source = "last_amount";
  n.fn = layout::AggregateFn::kCount;
  n.window_ms = 3'600'000;
  n.group = "activity";
  t.aggregates = {n};
  layout::Schema schema;
  schema.tables = {t};
  auto writer = Writer::open(seg.name(), schema, seg.writer_options());
  const int64_t now = layout::now_unix_ns() / 1'000'000;
  const FieldValue limit[] = {FieldValue::float64(0, 3000.0)};
  ASSERT_EQ(writer->apply(0, "card:1", now - 86'400'000, limit, {}, 0), ApplyResult::kApplied);
  const FieldValue amount[] = {FieldValue::float64(1, 12.5)};
  const SourceValue in[] = {{0, 12.5}};
  ASSERT_EQ(writer->apply(0, "card:1", now - 1000, amount, in, 0), ApplyResult::kApplied);

  const CtlRun yaml = larderctl("--dir " + seg.dir() + " schema " + seg.name());
  ASSERT_EQ(yaml.code, 0) << yaml.out;
  EXPECT_NE(yaml.out.find("{name: credit_limit, type: float64, group: profile}"), std::string::npos) << yaml.out;
  EXPECT_NE(yaml.out.find("{name: country, type: string, max_len: 4}"), std::string::npos) << yaml.out;
  EXPECT_NE(yaml.out.find("window: 1h, group: activity}"), std::string::npos) << yaml.out;
  const std::string rabbitmq =
      "rabbitmq:\n  url: amqp://guest@127.0.0.1:5672/\n"
      "  password_env: LARDERCTL_TEST_UNSET_PASSWORD_VARIABLE\n  queue: {name: q}\n";
  const sidecar::Config parsed =
      sidecar::parse_config(yaml.out + rabbitmq, "schema output", sidecar::ConfigLoad{.require_secrets = false});
  EXPECT_EQ(parsed.schema().fingerprint(), schema.fingerprint()) << yaml.out;
  const CtlRun json = larderctl("--dir " + seg.dir() + " --json schema " + seg.name());
  EXPECT_NE(json.out.find("\"name\":\"credit_limit\",\"type\":\"float64\",\"group\":\"profile\""), std::string::npos)
      << json.out;
  const std::string config = "/tmp/" + seg.name() + ".yaml";
  std::ofstream(config) << yaml.out << rabbitmq;
  const CtlRun size = larderctl("size --config " + config + " --json");
  std::remove(config.c_str());
  struct stat st;
  ASSERT_EQ(::stat(layout::segment_path(seg.dir(), seg.name()).c_str(), &st), 0);
  EXPECT_NE(size.out.find("\"total_bytes\":" + std::to_string(st.st_size)), std::string::npos) << size.out;

  const std::string at = "--dir " + seg.dir() + " --at-ms " + std::to_string(now) + " ";
  const CtlRun get = larderctl(at + "get " + seg.name() + " cards card:1");
  ASSERT_EQ(get.code, 0) << get.out;
  EXPECT_NE(get.out.find("group profile: event time " + std::to_string(now - 86'400'000) + " (age 86400000 ms)"),
            std::string::npos)
      << get.out;
  EXPECT_NE(get.out.find("group default: never written"), std::string::npos) << get.out;
  const CtlRun get_json = larderctl(at + "--json get " + seg.name() + " cards card:1");
  EXPECT_NE(get_json.out.find("\"groups\":{\"profile\":{\"event_time_ms\":" + std::to_string(now - 86'400'000) +
                              ",\"age_ms\":86400000},\"activity\":{\"event_time_ms\":" + std::to_string(now - 1000) +
                              ",\"age_ms\":1000},\"default\":{\"event_time_ms\":null,\"age_ms\":null}}"),
            std::string::npos)
      << get_json.out;
  const CtlRun dump = larderctl(at + "dump " + seg.name() + " cards --format csv");
  EXPECT_NE(dump.out.find("key,event_time_ms,apply_unix_ns,profile.event_time_ms,activity.event_time_ms,"
                          "default.event_time_ms,credit_limit"),
            std::string::npos)
      << dump.out;
  EXPECT_NE(dump.out.find(std::to_string(now - 86'400'000) + "," + std::to_string(now - 1000) + ",,"),
            std::string::npos)
      << dump.out;
  const CtlRun info = larderctl(at + "info " + seg.name());
  EXPECT_NE(info.out.find("field groups: profile (1 field), activity (2 fields), default (1 field)"), std::string::npos)
      << info.out;
  const CtlRun info_json = larderctl(at + "--json info " + seg.name());
  EXPECT_NE(info_json.out.find("\"groups\":[{\"name\":\"profile\",\"fields\":[\"credit_limit\"]}"), std::string::npos)
      << info_json.out;
}

// `size` breaks the bytes down by aggregate and dedup set, from the same
// report as larder-sidecar --check-config, and warns about a dedup set too
// small for the stated rate.
TEST(LarderctlSize, BreaksDownByAggregateAndDedup) {
  const std::string config = "/tmp/larderctl-size-agg-" + std::to_string(::getpid()) + ".yaml";
  std::ofstream(config) << "segment: {name: cards}\n"
                        << "tables:\n  - name: cards\n    capacity: 1000\n    fields: [{name: c, type: int64}]\n"
                        << "    aggregates:\n      - {name: n_7d, fn: count, window: 7d}\n"
                        << "      - {name: amount_7d, source: amount, fn: sum, window: 7d}\n"
                        << "    dedup: {expected_rate: 10/s}\n"
                        << "rabbitmq: {url: 'amqp://h', password_env: LARDERCTL_TEST_UNSET_PASSWORD_VARIABLE, "
                        << "queue: {name: q}}\n";
  CtlRun r = larderctl("size --config " + config);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("    aggregate state "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("      n_7d "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("    dedup set "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("hint: aggregate n_7d with `source: amount` would share a bucket ring"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("warning: table \"cards\": the dedup set holds 65536 ids, but 10 events/s"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("warning: rabbitmq.password_env: environment variable"), std::string::npos) << r.out;
  r = larderctl("size --config " + config + " --json");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("{\"name\":\"n_7d\",\"fn\":\"count\",\"source\":\"\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"sharing_hints\":[{\"aggregate\":\"n_7d\",\"change\":\"source: amount\""), std::string::npos)
      << r.out;
  std::remove(config.c_str());
}

// A segment this user may not read is listed as unreadable, and ls exits 3.
TEST(LarderctlLs, UnreadableSegmentIsListedAndExits3) {
  if (::geteuid() != 0) {
    LARDER_SKIP_OR_FAIL("needs root to run larderctl as an unprivileged user");
  }
  if (testing::run_command("command -v setpriv").code != 0) {
    LARDER_SKIP_OR_FAIL("setpriv (util-linux) is missing");
  }
  // Its own directory, world-listable, so that other segments in /dev/shm
  // do not enter the listing.
  char dir[] = "/dev/shm/larderctl-ls-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  ASSERT_EQ(::chmod(dir, 0755), 0);
  {
    testing::ScratchSegment seg(dir);
    layout::TableSpec t;
    t.name = "t";
    t.capacity = 4;
    t.fields = {{"x", FieldType::kInt64, 1}};
    layout::Schema schema;
    schema.tables = {t};
    auto writer = Writer::open(seg.name(), schema, seg.writer_options());  // mode 0640, root:root
    const std::string as_nobody =
        "setpriv --reuid=65534 --regid=65534 --clear-groups " + std::string(LARDERCTL_PATH) + " --dir " + dir + " ";
    CtlRun r = testing::run_command(as_nobody + "ls");
    EXPECT_EQ(r.code, 3) << r.out;
    EXPECT_NE(r.out.find(seg.name()), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("unreadable"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("permission denied (mode 0640"), std::string::npos) << r.out;
    r = testing::run_command(as_nobody + "--json ls");
    EXPECT_EQ(r.code, 3) << r.out;
    EXPECT_NE(r.out.find("\"state\":\"unreadable\",\"error\":\"permission_denied\""), std::string::npos) << r.out;
    r = larderctl("--dir " + std::string(dir) + " ls");  // root reads it
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(r.out.find("unreadable"), std::string::npos) << r.out;
  }
  ::rmdir(dir);
}

TEST(LarderctlSize, RefusesABadConfigWithTheKeyPath) {
  const std::string config = "/tmp/larderctl-size-bad-" + std::to_string(::getpid()) + ".yaml";
  std::ofstream(config) << "segment: {name: x}\ntables: [{name: t, capacity: 10, fields: [{name: a, type: floot}]}]\n"
                        << "rabbitmq: {url: 'amqp://h', password_env: X, queue: {name: q}}\n";
  const CtlRun r = larderctl("size --config " + config);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("tables[0].fields[0].type: unknown type \"floot\""), std::string::npos) << r.out;
  std::remove(config.c_str());
}

}  // namespace
}  // namespace larder

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--update-golden") {
      larder::update_golden = true;
    } else {
      std::fprintf(stderr, "unknown argument %s (only --update-golden and gtest's flags)\n", argv[i]);
      return 2;
    }
  }
  return RUN_ALL_TESTS();
}
