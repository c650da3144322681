// Sizes before start (config/size_report.h) and what a start refuses: the
// report's numbers against the segment the writer creates, the dedup rate
// warning, `larder-sidecar --check-config` without the broker password, and
// the refusal of a segment of another schema. No broker.
#include "config/size_report.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <string>

#include "config/config.h"
#include "larder/layout/segment_file.h"
#include "larder/writer/writer.h"
#include "snapshot/bootstrap.h"
#include "support/run_command.h"
#include "support/test_segment.h"

namespace larder::sidecar {
namespace {

// Six aggregates over card transactions: two counts of every event next to
// sums and a max over `amount`, as a fraud model's first config had them, and
// the distinct countries of a day (its exact set and sketches).
std::string cards_config(const testing::ScratchSegment& seg, const std::string& dedup = "") {
  return "segment: {name: " + seg.name() + ", dir: " + seg.dir() +
         "}\n"
         "tables:\n"
         "  - name: cards\n"
         "    capacity: 2000\n"
         "    fields: [{name: country, type: string, max_len: 2}]\n"
         "    aggregates:\n"
         "      - {name: n_1h, fn: count, window: 1h}\n"
         "      - {name: n_7d, fn: count, window: 7d}\n"
         "      - {name: amount_1h, source: amount, fn: sum, window: 1h}\n"
         "      - {name: amount_7d, source: amount, fn: sum, window: 7d}\n"
         "      - {name: amount_max_1h, source: amount, fn: max, window: 1h}\n"
         "      - {name: countries_24h, source: country, fn: distinct_count, window: 24h}\n" +
         dedup +
         "  - name: merchants\n"
         "    capacity: 100\n"
         "    fields: [{name: risk, type: float64}]\n"
         "rabbitmq:\n"
         "  url: amqp://larder@127.0.0.1:5672/\n"
         "  password_env: LARDER_SIZE_TEST_UNSET_PASSWORD\n"
         "  queue: {name: cards}\n";
}

uint64_t file_size(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

TEST(SizeReport, TotalIsTheCreatedSegmentsFileSize) {
  testing::ScratchSegment seg;
  const Config config = parse_config(cards_config(seg), "cards.yaml", ConfigLoad{.require_secrets = false});
  const SizeReport r = size_report(config);
  { auto writer = Writer::open(seg.name(), config.schema(), seg.writer_options()); }
  EXPECT_EQ(r.total_bytes, file_size(layout::segment_path(seg.dir(), seg.name())));
  uint64_t parts = r.header_bytes + r.undo_bytes + r.journal_bytes + r.source_bytes + r.alignment_bytes;
  for (const TableSize& t : r.tables) parts += t.bytes();
  EXPECT_EQ(parts, r.total_bytes) << "the parts add up to the total";
}

TEST(SizeReport, EachAggregateCostsWhatRemovingItSaves) {
  testing::ScratchSegment seg;
  const Config config = parse_config(cards_config(seg), "cards.yaml", ConfigLoad{.require_secrets = false});
  const SizeReport r = size_report(config);
  ASSERT_EQ(r.tables.size(), 2u);
  const TableSize& cards = r.tables[0];
  ASSERT_EQ(cards.aggregates.size(), 6u);
  for (size_t a = 0; a < cards.aggregates.size(); ++a) {
    layout::Schema without = config.schema();
    without.tables[0].aggregates.erase(without.tables[0].aggregates.begin() + static_cast<std::ptrdiff_t>(a));
    EXPECT_EQ(cards.aggregates[a].bytes, r.total_bytes - layout::plan_layout(without).segment_bytes)
        << cards.aggregates[a].name;
    EXPECT_GT(cards.aggregates[a].bytes, 0u) << cards.aggregates[a].name;
  }
  // The 7-day count keeps a ring of its own; given `source: amount` it joins
  // the sums' ring, and the hint says how much that saves.
  bool hinted = false;
  for (const SharingHint& h : cards.sharing) {
    if (h.aggregate != "n_7d") continue;
    hinted = true;
    EXPECT_EQ(h.change, "source: amount");
    layout::Schema shared = config.schema();
    shared.tables[0].aggregates[1].source = "amount";
    EXPECT_EQ(h.saves_bytes, r.total_bytes - layout::plan_layout(shared).segment_bytes);
    EXPECT_GT(h.saves_bytes, 0u);
  }
  EXPECT_TRUE(hinted) << format_size_report(r);
  EXPECT_TRUE(r.tables[1].sharing.empty());
  EXPECT_EQ(r.tables[1].state_bytes, 0u);
  const std::string text = format_size_report(r);
  EXPECT_NE(text.find("hint: aggregate n_7d with `source: amount` would share a bucket ring"), std::string::npos)
      << text;
  EXPECT_NE(text.find("amount_1h"), std::string::npos) << text;
  // The distinct_count alone in its group: its ring, its windows and its
  // 1,752-byte distinct area per slot.
  const layout::AggregatePlan plan = layout::plan_aggregates(config.schema().tables[0]);
  const uint64_t slots = layout::plan_layout(config.schema()).tables[0].slot_count;
  EXPECT_GE(cards.aggregates[5].bytes, slots * layout::kDistinctAreaWords * 8) << text;
  EXPECT_LT(cards.aggregates[5].bytes, slots *
                                           (layout::kDistinctAreaWords + layout::kAggregateGroupHeaderWords +
                                            layout::kAggregateWindowWords + 2 * 60 + 8) *
                                           8)
      << text;
  EXPECT_TRUE(std::any_of(plan.groups.begin(), plan.groups.end(), [](const auto& g) { return g.distinct; }));
}

TEST(SizeReport, WarnsWhenTheDedupSetIsSmallerThanTheRateImplies) {
  testing::ScratchSegment seg;
  // 65536 ids (the default) over 7 days: enough for 0.108 events/s.
  Config config = parse_config(cards_config(seg, "    dedup: {expected_rate: 1/s}\n"), "cards.yaml",
                               ConfigLoad{.require_secrets = false});
  EXPECT_DOUBLE_EQ(config.tables[0].expected_events_per_s, 1.0);
  SizeReport r = size_report(config);
  auto dedup_warnings = [](const SizeReport& report) {
    std::vector<std::string> out;
    for (const std::string& w : report.warnings) {
      if (w.find("dedup set") != std::string::npos) out.push_back(w);
    }
    return out;
  };
  const std::vector<std::string> dw = dedup_warnings(r);
  ASSERT_EQ(dw.size(), 1u) << format_size_report(r);
  EXPECT_NE(dw[0].find("table \"cards\": the dedup set holds 65536 ids, but 1 events/s over its horizon of "
                       "7d are 604800 ids"),
            std::string::npos)
      << dw[0];
  EXPECT_NE(dw[0].find("Raise dedup.capacity to 604800"), std::string::npos) << dw[0];

  config = parse_config(cards_config(seg, "    dedup: {expected_rate: 3000/h, capacity: 604800}\n"), "cards.yaml",
                        ConfigLoad{.require_secrets = false});
  EXPECT_TRUE(dedup_warnings(size_report(config)).empty()) << "3000/h over 7 days is 504000 ids: they fit";
  EXPECT_NE(format_size_report(size_report(config)).find("(expected_rate: 3000 events/h)"), std::string::npos);

  try {
    parse_config(cards_config(seg, "    dedup: {expected_rate: fast}\n"), "cards.yaml");
    FAIL() << "a rate that is not a rate";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("tables[0].dedup.expected_rate: expected events per second"),
              std::string::npos)
        << e.what();
  }
}

// Five long rings (two counts, the sums and the distinct_count, 60 buckets
// each): the default arena (1% of 2000 keys per ring: 100 chunks) is
// reported and warned about;
// a stated arena_chunks is reported, not warned about.
TEST(SizeReport, ReportsTheArenaAndWarnsWhileItIsAtItsDefault) {
  testing::ScratchSegment seg;
  Config config = parse_config(cards_config(seg), "cards.yaml", ConfigLoad{.require_secrets = false});
  SizeReport r = size_report(config);
  const TableSize& cards = r.tables[0];
  EXPECT_EQ(cards.long_rings, 5u);
  EXPECT_EQ(cards.arena_chunks, 100u);
  EXPECT_EQ(cards.arena_bytes, layout::plan_layout(config.schema()).tables[0].arena_bytes);
  EXPECT_GT(cards.arena_bytes, cards.arena_chunks * cards.arena_chunk_bytes - 1);
  ASSERT_EQ(r.warnings.size(), 1u) << format_size_report(r);
  EXPECT_NE(r.warnings[0].find("table \"cards\": the aggregate arena has its default 100 chunks"), std::string::npos)
      << r.warnings[0];
  EXPECT_NE(r.warnings[0].find("at most 20 keys at once"), std::string::npos) << r.warnings[0];
  EXPECT_NE(format_size_report(r).find("aggregate arena"), std::string::npos) << format_size_report(r);
  EXPECT_EQ(r.total_bytes, layout::plan_layout(config.schema()).segment_bytes);

  config =
      parse_config(cards_config(seg, "    arena_chunks: 8000\n"), "cards.yaml", ConfigLoad{.require_secrets = false});
  r = size_report(config);
  EXPECT_EQ(r.tables[0].arena_chunks, 8000u);
  EXPECT_TRUE(r.warnings.empty()) << r.warnings[0];
}

TEST(SizeReport, SecretsAreOptionalOnlyWhenAskedFor) {
  testing::ScratchSegment seg;
  ::unsetenv("LARDER_SIZE_TEST_UNSET_PASSWORD");
  try {
    parse_config(cards_config(seg), "cards.yaml");
    FAIL() << "a start needs the password";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("environment variable LARDER_SIZE_TEST_UNSET_PASSWORD is not set"),
              std::string::npos)
        << e.what();
  }
  const Config c = parse_config(cards_config(seg), "cards.yaml", ConfigLoad{.require_secrets = false});
  ASSERT_EQ(c.warnings.size(), 1u);
  EXPECT_NE(c.warnings[0].find("rabbitmq.password_env: environment variable LARDER_SIZE_TEST_UNSET_PASSWORD is not "
                               "set"),
            std::string::npos)
      << c.warnings[0];
}

// The daemon's own --check-config: no password in the environment, exit 0
// with a warning, and the total it prints is the file the writer creates.
TEST(CheckConfig, PrintsSizesWithoutTheSecretAndTheTotalIsTheFileSize) {
  testing::ScratchSegment seg;
  const std::string path = "/tmp/" + seg.name() + ".yaml";
  std::ofstream(path) << cards_config(seg, "    dedup: {expected_rate: 2/s}\n");
  const testing::CommandRun run = testing::run_command(
      "env -u LARDER_SIZE_TEST_UNSET_PASSWORD " + std::string(LARDER_SIDECAR_BINARY) + " --check-config -c " + path);
  std::remove(path.c_str());
  ASSERT_EQ(run.code, 0) << run.out;
  EXPECT_NE(run.out.find("warning: rabbitmq.password_env: environment variable LARDER_SIZE_TEST_UNSET_PASSWORD is "
                         "not set"),
            std::string::npos)
      << run.out;
  EXPECT_NE(run.out.find("warning: table \"cards\": the dedup set holds 65536 ids"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("\n  table cards "), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("\n  table merchants "), std::string::npos) << run.out;
  const size_t at = run.out.find("  total ");
  ASSERT_NE(at, std::string::npos) << run.out;
  const uint64_t printed = std::stoull(run.out.substr(run.out.find_first_not_of(' ', at + 7)));

  const Config config = parse_config(cards_config(seg), "cards.yaml", ConfigLoad{.require_secrets = false});
  auto writer = Writer::open(seg.name(), config.schema(), seg.writer_options());
  EXPECT_EQ(printed, file_size(writer->path()));
}

// A segment of another schema: the refusal names what works today and no
// setting the sidecar does not have; the parser refuses that setting with
// the same advice.
TEST(SchemaChange, RefusalNamesWhatWorks) {
  testing::ScratchSegment seg;
  Config config = parse_config(cards_config(seg), "cards.yaml", ConfigLoad{.require_secrets = false});
  { auto writer = Writer::open(seg.name(), config.schema(), seg.writer_options()); }
  layout::TableSpec extra;
  extra.name = "devices";
  extra.capacity = 10;
  extra.fields = {{"seen", layout::FieldType::kInt64, 1}};
  TableConfig t;
  t.spec = extra;
  config.tables.push_back(t);
  try {
    open_segment(config, StartOptions{});
    FAIL() << "a segment of another schema opened";
  } catch (const StartError& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.exit_code(), kExitCannotOpen);
    EXPECT_NE(m.find("cannot open segment \"" + seg.name() + "\" in " + seg.dir() + ": it holds another schema"),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("this config's tables give " + layout::hex64(config.schema().fingerprint())), std::string::npos)
        << m;
    EXPECT_NE(m.find("give segment.name a new name"), std::string::npos) << m;
    EXPECT_NE(m.find("delete " + layout::segment_path(seg.dir(), seg.name()) + " and "), std::string::npos) << m;
    EXPECT_NE(m.find("docs/operations.md, \"Schema change\""), std::string::npos) << m;
    EXPECT_EQ(m.find("recreate_on_schema_change"), std::string::npos) << "no setting the sidecar lacks: " << m;
  }
  try {
    parse_config("segment: {name: x, recreate_on_schema_change: true}\n", "c.yaml");
    FAIL() << "recreate_on_schema_change accepted";
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("segment.recreate_on_schema_change: not a larder-sidecar setting"), std::string::npos) << m;
    EXPECT_NE(m.find("give segment.name a new name"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace larder::sidecar
