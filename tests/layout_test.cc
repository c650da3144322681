// Pins the segment format: an accidental change to any size or offset fails
// here. A deliberate change bumps kLayoutVersion and updates these numbers
// and docs/segment-format.md together.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstring>
#include <iterator>
#include <string>

#include "larder/layout/format.h"
#include "larder/layout/schema.h"
#include "larder/layout/segment_file.h"
#include "larder/layout/table_view.h"

namespace larder::layout {
namespace {

TEST(Layout, VersionMagicAndAbiSignatureArePinned) {
  EXPECT_EQ(kLayoutVersion, 5u);
  char bytes[8];
  std::memcpy(bytes, &kMagic, 8);
  EXPECT_EQ(std::string(bytes, 8), "LARDSEG1");
  EXPECT_EQ(kEndianTag, 0x01020304u);
  // Changing any shared struct or the aggregate word map (pinned below)
  // changes this value: bump kLayoutVersion with it.
  EXPECT_EQ(abi_signature(), 16824762952836371202ull);
}

TEST(Layout, SegmentHeaderOffsets) {
  EXPECT_EQ(sizeof(SegmentHeader), 256u);
  EXPECT_EQ(offsetof(SegmentHeader, magic), 0u);
  EXPECT_EQ(offsetof(SegmentHeader, layout_version), 8u);
  EXPECT_EQ(offsetof(SegmentHeader, endian_tag), 12u);
  EXPECT_EQ(offsetof(SegmentHeader, abi_signature), 16u);
  EXPECT_EQ(offsetof(SegmentHeader, schema_fingerprint), 24u);
  EXPECT_EQ(offsetof(SegmentHeader, segment_bytes), 32u);
  EXPECT_EQ(offsetof(SegmentHeader, table_count), 40u);
  EXPECT_EQ(offsetof(SegmentHeader, header_bytes), 44u);
  EXPECT_EQ(offsetof(SegmentHeader, undo_offset), 48u);
  EXPECT_EQ(offsetof(SegmentHeader, undo_bytes), 56u);
  EXPECT_EQ(offsetof(SegmentHeader, created_unix_ns), 64u);
  EXPECT_EQ(offsetof(SegmentHeader, generation), 72u);
  EXPECT_EQ(offsetof(SegmentHeader, creator), 80u);
  EXPECT_EQ(offsetof(SegmentHeader, state), 112u);
  EXPECT_EQ(offsetof(SegmentHeader, connection_state), 116u);
  EXPECT_EQ(offsetof(SegmentHeader, writer_pid), 120u);
  EXPECT_EQ(offsetof(SegmentHeader, writer_start_unix_ns), 128u);
  EXPECT_EQ(offsetof(SegmentHeader, heartbeat_mono_ns), 136u);
  EXPECT_EQ(offsetof(SegmentHeader, writer_sessions), 144u);
  EXPECT_EQ(offsetof(SegmentHeader, repaired_slots), 152u);
  EXPECT_EQ(offsetof(SegmentHeader, last_apply_unix_ns), 160u);
  EXPECT_EQ(offsetof(SegmentHeader, undo_armed), 168u);
  EXPECT_EQ(offsetof(SegmentHeader, undo_table), 176u);
  EXPECT_EQ(offsetof(SegmentHeader, undo_slot), 184u);
  EXPECT_EQ(offsetof(SegmentHeader, messages_rejected), 192u);
  EXPECT_EQ(offsetof(SegmentHeader, updates_applied), 200u);
  EXPECT_EQ(offsetof(SegmentHeader, journal_armed), 208u);
  EXPECT_EQ(offsetof(SegmentHeader, journal_count), 216u);
  EXPECT_EQ(offsetof(SegmentHeader, journal_offset), 224u);
  EXPECT_EQ(offsetof(SegmentHeader, journal_capacity), 232u);
  EXPECT_EQ(offsetof(SegmentHeader, source_offset), 240u);
  EXPECT_EQ(offsetof(SegmentHeader, counters_session), 248u);
}

TEST(Layout, SourceBlockOffsets) {
  EXPECT_EQ(kMaxSourcePartitions, 64u);
  EXPECT_EQ(kSourceIdWords, 16u);
  EXPECT_EQ(sizeof(SourceBlock), 2304u);
  EXPECT_EQ(offsetof(SourceBlock, source_id), 0u);
  EXPECT_EQ(offsetof(SourceBlock, sync_state), 128u);
  EXPECT_EQ(offsetof(SourceBlock, partition_count), 136u);
  EXPECT_EQ(offsetof(SourceBlock, pending_state), 144u);
  EXPECT_EQ(offsetof(SourceBlock, pending_partition), 152u);
  EXPECT_EQ(offsetof(SourceBlock, pending_next_plus_one), 160u);
  EXPECT_EQ(offsetof(SourceBlock, pending_skip_updates), 168u);
  EXPECT_EQ(offsetof(SourceBlock, sync_changed_unix_ns), 176u);
  EXPECT_EQ(offsetof(SourceBlock, reserved), 184u);
  EXPECT_EQ(offsetof(SourceBlock, partitions), 256u);
  EXPECT_EQ(sizeof(PartitionWords), 32u);
  EXPECT_EQ(offsetof(PartitionWords, next_plus_one), 0u);
  EXPECT_EQ(offsetof(PartitionWords, skip_updates), 8u);
  EXPECT_EQ(offsetof(PartitionWords, target_plus_one), 16u);
  EXPECT_EQ(offsetof(PartitionWords, first_retained_plus_one), 24u);
  EXPECT_EQ(static_cast<uint32_t>(SyncState::kUnknown), 0u);
  EXPECT_EQ(static_cast<uint32_t>(SyncState::kCatchingUp), 1u);
  EXPECT_EQ(static_cast<uint32_t>(SyncState::kReady), 2u);
  EXPECT_EQ(static_cast<uint32_t>(SyncState::kIncomplete), 3u);
  EXPECT_EQ(kPendingIdle, 0u);
  EXPECT_EQ(kPendingArmed, 1u);
  EXPECT_EQ(kPendingDone, 2u);
}

TEST(Layout, DescriptorOffsets) {
  EXPECT_EQ(sizeof(TableDescriptor), 384u);
  EXPECT_EQ(offsetof(TableDescriptor, aggregate_count), 208u);
  EXPECT_EQ(offsetof(TableDescriptor, state_stride_words), 212u);
  EXPECT_EQ(offsetof(TableDescriptor, aggregates_offset), 216u);
  EXPECT_EQ(offsetof(TableDescriptor, state_offset), 224u);
  EXPECT_EQ(offsetof(TableDescriptor, dedup_offset), 232u);
  EXPECT_EQ(offsetof(TableDescriptor, dedup_buckets), 240u);
  EXPECT_EQ(offsetof(TableDescriptor, allowed_lateness_ms), 248u);
  EXPECT_EQ(offsetof(TableDescriptor, dedup_horizon_ms), 256u);
  EXPECT_EQ(offsetof(TableDescriptor, dedup_capacity), 264u);
  EXPECT_EQ(offsetof(TableDescriptor, aggregate_counters), 272u);
  // The count record took three of the reserved words: same size, same
  // offsets, so segments of either build open in the other.
  EXPECT_EQ(offsetof(TableDescriptor, count_armed), 336u);
  EXPECT_EQ(offsetof(TableDescriptor, count_live), 344u);
  EXPECT_EQ(offsetof(TableDescriptor, count_tombstones), 352u);
  // Version 4: field groups took the rest of them.
  EXPECT_EQ(offsetof(TableDescriptor, group_count), 360u);
  EXPECT_EQ(offsetof(TableDescriptor, groups_offset), 368u);
  // Version 5: the aggregate arena took the last reserved words.
  EXPECT_EQ(offsetof(TableDescriptor, arena_chunk_words), 140u);
  EXPECT_EQ(offsetof(TableDescriptor, arena_chunks), 364u);
  EXPECT_EQ(offsetof(TableDescriptor, arena_offset), 376u);
  EXPECT_EQ(offsetof(FieldDescriptor, group), 88u);
  EXPECT_EQ(sizeof(GroupDescriptor), 64u);
  EXPECT_EQ(kMaxFieldGroups, 8u);
  EXPECT_EQ(kNoGroupTime, INT64_MIN);
  EXPECT_EQ(offsetof(AggregateCounters, outside_window), 48u) << "was reserved[0]: no layout change";
  EXPECT_EQ(offsetof(AggregateCounters, refreshed_through_ms), 56u) << "was reserved[1]: no layout change";
  EXPECT_EQ(sizeof(AggregateDescriptor), 128u);
  EXPECT_EQ(offsetof(AggregateDescriptor, fn), 64u);
  EXPECT_EQ(offsetof(AggregateDescriptor, end), 68u);
  EXPECT_EQ(offsetof(AggregateDescriptor, window_ms), 72u);
  EXPECT_EQ(offsetof(AggregateDescriptor, resolution_ms), 80u);
  EXPECT_EQ(offsetof(AggregateDescriptor, field), 88u);
  // Version 5: count windows and sequences took reserved words.
  EXPECT_EQ(offsetof(AggregateDescriptor, window_events), 92u);
  EXPECT_EQ(offsetof(AggregateDescriptor, min_periods), 96u);
  EXPECT_EQ(offsetof(AggregateDescriptor, ddof), 100u);
  EXPECT_EQ(sizeof(JournalEntry), 16u);
  EXPECT_EQ(offsetof(TableDescriptor, name), 0u);
  EXPECT_EQ(offsetof(TableDescriptor, field_count), 64u);
  EXPECT_EQ(offsetof(TableDescriptor, key_max_len), 68u);
  EXPECT_EQ(offsetof(TableDescriptor, capacity), 72u);
  EXPECT_EQ(offsetof(TableDescriptor, slot_count), 80u);
  EXPECT_EQ(offsetof(TableDescriptor, slot_bytes), 88u);
  EXPECT_EQ(offsetof(TableDescriptor, row_bytes), 92u);
  EXPECT_EQ(offsetof(TableDescriptor, validity_words), 96u);
  EXPECT_EQ(offsetof(TableDescriptor, key_words), 100u);
  EXPECT_EQ(offsetof(TableDescriptor, fields_offset), 104u);
  EXPECT_EQ(offsetof(TableDescriptor, slots_offset), 112u);
  EXPECT_EQ(offsetof(TableDescriptor, hash_seed), 120u);
  EXPECT_EQ(offsetof(TableDescriptor, max_load_permille), 128u);
  EXPECT_EQ(offsetof(TableDescriptor, max_load_ppm), 136u);
  EXPECT_EQ(offsetof(TableDescriptor, counters), 144u);
  EXPECT_EQ(sizeof(TableCounters), 64u);
  EXPECT_EQ(offsetof(TableCounters, live_keys), 0u);
  EXPECT_EQ(offsetof(TableCounters, tombstones), 8u);
  EXPECT_EQ(offsetof(TableCounters, upserts), 16u);
  EXPECT_EQ(offsetof(TableCounters, deletes), 24u);
  EXPECT_EQ(offsetof(TableCounters, stale_ignored), 32u);
  EXPECT_EQ(offsetof(TableCounters, full_rejected), 40u);
  EXPECT_EQ(offsetof(TableCounters, last_apply_unix_ns), 48u);
  EXPECT_EQ(offsetof(TableCounters, max_event_time_ms), 56u);

  EXPECT_EQ(sizeof(FieldDescriptor), 96u);
  EXPECT_EQ(offsetof(FieldDescriptor, type), 64u);
  EXPECT_EQ(offsetof(FieldDescriptor, count), 68u);
  EXPECT_EQ(offsetof(FieldDescriptor, offset), 72u);
  EXPECT_EQ(offsetof(FieldDescriptor, bytes), 76u);
  EXPECT_EQ(offsetof(FieldDescriptor, index), 80u);
}

TEST(Layout, SlotWordsArePinned) {
  EXPECT_EQ(kSlotSeqWord, 0u);
  EXPECT_EQ(kSlotMetaWord, 1u);
  EXPECT_EQ(kSlotEventTimeWord, 2u);
  EXPECT_EQ(kSlotApplyTimeWord, 3u);
  EXPECT_EQ(kSlotKeyLenWord, 4u);
  EXPECT_EQ(kSlotHeaderWords, 5u);
  EXPECT_EQ(kSlotAlign, 64u);
}

TEST(Layout, MetaEncodesHashAndState) {
  const uint64_t h = 0xfedcba9876543217ull;
  EXPECT_EQ(make_meta(h, SlotState::kEmpty) & 3u, 0u);
  EXPECT_EQ(meta_state(make_meta(h, SlotState::kLive)), SlotState::kLive);
  EXPECT_EQ(meta_state(make_meta(h, SlotState::kTombstone)), SlotState::kTombstone);
  EXPECT_TRUE(meta_matches(make_meta(h, SlotState::kLive), h));
  EXPECT_FALSE(meta_matches(make_meta(h, SlotState::kTombstone), h));
  EXPECT_FALSE(meta_matches(make_meta(h ^ 0x100, SlotState::kLive), h));
}

// The layout of a known schema, byte for byte.
TEST(Layout, PlanOfAKnownSchemaIsPinned) {
  Schema s;
  TableSpec users;
  users.name = "users";
  users.key_max_len = 20;  // 3 key words
  users.capacity = 1000;   // 0.75 load -> 1334 slots
  users.fields = {{"clicks", FieldType::kInt64, 1},   {"ctr", FieldType::kFloat32, 1},
                  {"premium", FieldType::kBool, 1},   {"emb", FieldType::kFloat32Vector, 3},
                  {"country", FieldType::kString, 5}, {"spend", FieldType::kFloat64, 1}};
  s.tables.push_back(users);
  const LayoutPlan p = plan_layout(s);
  ASSERT_EQ(p.tables.size(), 1u);
  const TablePlan& t = p.tables[0];
  // clicks @0 (8), ctr @8 (4), premium @12 (1), emb @16 (12), country @28 (9), spend @40 (8)
  const uint32_t offsets[] = {0, 8, 12, 16, 28, 40};
  const uint32_t sizes[] = {8, 4, 1, 12, 9, 8};
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(t.fields[i].offset, offsets[i]) << i;
    EXPECT_EQ(t.fields[i].bytes, sizes[i]) << i;
  }
  EXPECT_EQ(t.row_bytes, 48u);
  EXPECT_EQ(t.validity_words, 1u);
  EXPECT_EQ(t.key_words, 3u);
  EXPECT_EQ(t.slot_bytes, 128u);  // (5 + 1 + 3) * 8 + 48 = 120 -> 128
  EXPECT_EQ(t.slot_count, 1334u);
  EXPECT_EQ(t.fields_offset, 640u);  // header 256 + one descriptor 384
  EXPECT_EQ(p.undo_offset, 1216u);   // 640 + 6 * 96 = 1216, 64-aligned
  EXPECT_EQ(p.undo_bytes, 128u);
  EXPECT_EQ(p.journal_offset, 1344u);  // no aggregates: an empty journal
  EXPECT_EQ(p.journal_capacity, 0u);
  EXPECT_EQ(p.source_offset, 1344u);  // the source block, 64-aligned after the journal; ends at 3648
  EXPECT_EQ(t.slots_offset, 4096u);
  EXPECT_EQ(p.segment_bytes, 176128u);  // 4096 + 1334 * 128 = 174848, rounded up to 4 KiB
  EXPECT_EQ(p.segment_bytes % 4096, 0u);
}

TEST(Layout, PlanOfAggregatesIsPinned) {
  TableSpec t;
  t.name = "users";
  t.fields = {{"amount", FieldType::kFloat64, 1}};
  // Two windows of one source and resolution share a ring; a count without
  // a source and a second resolution make two more groups.
  t.aggregates = {{"spend_1h", "amount", AggregateFn::kSum, 3'600'000, 60'000, WindowEnd::kNow},
                  {"spend_10m", "amount", AggregateFn::kMean, 600'000, 60'000, WindowEnd::kNow},
                  {"var_1h", "amount", AggregateFn::kVariance, 3'600'000, 60'000, WindowEnd::kNow},
                  {"clicks_5m", "", AggregateFn::kCount, 300'000, 0, WindowEnd::kNow},
                  {"max_1d", "amount", AggregateFn::kMax, 86'400'000, 0, WindowEnd::kLatestEvent}};
  const AggregatePlan p = plan_aggregates(t);
  EXPECT_EQ(p.sources, std::vector<std::string>{"amount"});
  ASSERT_EQ(p.groups.size(), 3u);
  const AggregatePlan::Group& g0 = p.groups[0];
  EXPECT_EQ(g0.resolution_ms, 60'000);
  EXPECT_EQ(g0.ring_buckets, 60);
  ASSERT_EQ(g0.windows.size(), 2u);
  EXPECT_TRUE(g0.sum && g0.sumsq && !g0.min && !g0.max);
  EXPECT_EQ(g0.bucket_words, 4u);  // tag, count, sum, sumsq
  EXPECT_EQ(g0.offset, 2u);
  EXPECT_EQ(g0.windows[0].offset, 6u);
  EXPECT_EQ(g0.windows[1].offset, 12u);
  const AggregatePlan::Group& g1 = p.groups[1];  // count, 300 s / 60 = 5 s buckets
  EXPECT_EQ(g1.resolution_ms, 5'000);
  EXPECT_EQ(g1.bucket_words, 2u);
  EXPECT_EQ(g1.offset, 18u);
  const AggregatePlan::Group& g2 = p.groups[2];  // 1 d / 60 = 24 min buckets
  EXPECT_EQ(g2.resolution_ms, 1'440'000);
  EXPECT_EQ(g2.bucket_words, 3u);
  EXPECT_EQ(g2.offset, 28u);
  EXPECT_EQ(p.hot_words, 38u);  // headers and windows together, then the inline buckets
  // Every ring (60 buckets) is longer than kInlineBuckets: 8 inline buckets
  // each, the other 52 in an arena chunk while a key needs them.
  EXPECT_EQ(g0.inline_buckets, 8u);
  EXPECT_TRUE(g0.sparse() && g1.sparse() && g2.sparse());
  EXPECT_EQ(g0.ring_offset, 38u);
  EXPECT_EQ(g1.ring_offset, 38u + 8 * 4);
  EXPECT_EQ(g2.ring_offset, 38u + 8 * 4 + 8 * 2);
  EXPECT_EQ(p.stride_words, 2u + (4 + 12 + 32) + (4 + 6 + 16) + (4 + 6 + 24));
  EXPECT_EQ(g0.chunk_words(), 52u * 4);
  EXPECT_EQ(g1.chunk_words(), 52u * 2);
  EXPECT_EQ(p.chunk_words, 52u * 4);  // one chunk size per table: the largest group's
  EXPECT_EQ(p.sparse_groups, 3u);
  // A ring of at most kInlineBuckets stays inline and dense, no chunk.
  TableSpec small = t;
  small.aggregates = {{"spend_8s", "amount", AggregateFn::kSum, 8'000, 1'000, WindowEnd::kNow}};
  const AggregatePlan ps = plan_aggregates(small);
  EXPECT_FALSE(ps.groups[0].sparse());
  EXPECT_EQ(ps.chunk_words, 0u);
  EXPECT_EQ(small.arena_chunk_count(), 0u);
  // Default arena: 1% of capacity per sparse group, at least 16 chunks.
  t.capacity = 100'000;
  EXPECT_EQ(t.arena_chunk_count(), 3'000u);
  t.capacity = 100;
  EXPECT_EQ(t.arena_chunk_count(), 16u);
  t.arena_chunks = 5;
  EXPECT_EQ(t.arena_chunk_count(), 5u);
  ASSERT_EQ(p.outputs.size(), 5u);
  EXPECT_EQ(p.outputs[2].field, 3u);
  EXPECT_EQ(p.outputs[2].window, 0u);
  EXPECT_EQ(p.outputs[1].window, 1u);
  EXPECT_EQ(default_resolution_ms(5'000), 50);
  EXPECT_EQ(default_resolution_ms(3'600'000), 60'000);
  EXPECT_EQ(default_resolution_ms(30LL * 86'400'000), 43'200'000);
}

// The aggregate state and dedup words, which a restarting writer of another
// build resumes from: every index and count of format.h, and what each
// function keeps per bucket.
TEST(Layout, AggregateWordMapIsPinned) {
  EXPECT_EQ(kStateDueWord, 0u);
  EXPECT_EQ(kAggregateSlotHeaderWords, 2u);

  EXPECT_EQ(kGroupHeadWord, 0u);
  EXPECT_EQ(kGroupLastTimeWord, 1u);
  EXPECT_EQ(kGroupLastValueWord, 2u);
  EXPECT_EQ(kGroupChunkWord, 3u);
  EXPECT_EQ(kAggregateGroupHeaderWords, 4u);
  EXPECT_EQ(kInlineBuckets, 8u);

  EXPECT_EQ(kArenaFreeHeadWord, 0u);
  EXPECT_EQ(kArenaUsedWord, 1u);
  EXPECT_EQ(kArenaFreshWord, 2u);
  EXPECT_EQ(kArenaPeakUsedWord, 3u);
  EXPECT_EQ(kArenaRefusedWord, 4u);
  EXPECT_EQ(kArenaHeaderWords, 8u);
  EXPECT_EQ(kArenaChunkNextWord, 0u);

  EXPECT_EQ(kWindowStartWord, 0u);
  EXPECT_EQ(kWindowCountWord, 1u);
  EXPECT_EQ(kWindowSumWord, 2u);
  EXPECT_EQ(kWindowM2Word, 3u);
  EXPECT_EQ(kWindowMinWord, 4u);
  EXPECT_EQ(kWindowMaxWord, 5u);
  EXPECT_EQ(kAggregateWindowWords, 6u);

  EXPECT_EQ(kBucketTagWord, 0u);
  EXPECT_EQ(kBucketCountWord, 1u);
  EXPECT_EQ(kBucketFixedWords, 2u);
  // A bucket keeping everything: tag, count, sum, M2, min, max.
  const uint32_t all = kBucketSum | kBucketM2 | kBucketMin | kBucketMax;
  EXPECT_EQ(aggregate_bucket_words(all), 6u);
  EXPECT_EQ(aggregate_bucket_word(all, kBucketSum), 2u);
  EXPECT_EQ(aggregate_bucket_word(all, kBucketM2), 3u);
  EXPECT_EQ(aggregate_bucket_word(all, kBucketMin), 4u);
  EXPECT_EQ(aggregate_bucket_word(all, kBucketMax), 5u);
  // A statistic moves up when those before it are not kept.
  EXPECT_EQ(aggregate_bucket_word(kBucketMin | kBucketMax, kBucketMin), 2u);
  EXPECT_EQ(aggregate_bucket_word(kBucketMin | kBucketMax, kBucketMax), 3u);
  EXPECT_EQ(aggregate_bucket_word(kBucketSum | kBucketMax, kBucketMax), 3u);

  // Per function: its number in AggregateDescriptor::fn, the statistics its
  // buckets keep and the words of a bucket that keeps only those.
  struct FnWords {
    AggregateFn fn;
    uint32_t number;
    uint32_t stats;
    uint32_t bucket_words;
  };
  const FnWords expected[] = {
      {AggregateFn::kCount, 1, 0, 2},
      {AggregateFn::kSum, 2, kBucketSum, 3},
      {AggregateFn::kMean, 3, kBucketSum, 3},
      {AggregateFn::kMin, 4, kBucketMin, 3},
      {AggregateFn::kMax, 5, kBucketMax, 3},
      {AggregateFn::kLast, 6, 0, 2},  // the group header's last value
      {AggregateFn::kVariance, 7, kBucketSum | kBucketM2, 4},
      {AggregateFn::kStddev, 8, kBucketSum | kBucketM2, 4},
      {AggregateFn::kDistinctCount, 9, 0, 2},  // the group's distinct area
      {AggregateFn::kLastN, 10, 0, 2},         // an event store, no buckets
      {AggregateFn::kFirst, 11, 0, 2},         // an event store, no buckets
  };
  ASSERT_EQ(std::size(kAllAggregateFns), std::size(expected));
  for (size_t i = 0; i < std::size(expected); ++i) {
    const FnWords& e = expected[i];
    SCOPED_TRACE(aggregate_fn_name(e.fn));
    EXPECT_EQ(kAllAggregateFns[i], e.fn);
    EXPECT_EQ(static_cast<uint32_t>(e.fn), e.number);
    EXPECT_EQ(aggregate_bucket_stats(e.fn), e.stats);
    EXPECT_EQ(aggregate_bucket_words(aggregate_bucket_stats(e.fn)), e.bucket_words);
  }
  EXPECT_EQ(static_cast<uint32_t>(WindowEnd::kNow), 0u);
  EXPECT_EQ(static_cast<uint32_t>(WindowEnd::kLatestEvent), 1u);

  // The distinct area: header, K exact entries, then the slices' sketches.
  EXPECT_EQ(kDistinctDroppedWord, 0u);
  EXPECT_EQ(kDistinctHeaderWords, 2u);
  EXPECT_EQ(kDistinctExactEntries, 32u);
  EXPECT_EQ(kDistinctEntryHashWord, 0u);
  EXPECT_EQ(kDistinctEntrySeenWord, 1u);
  EXPECT_EQ(kDistinctEntryWords, 2u);
  EXPECT_EQ(kDistinctRegisterBits, 7u);
  EXPECT_EQ(kDistinctRegisters, 128u);
  EXPECT_EQ(kDistinctSliceTagWord, 0u);
  EXPECT_EQ(kDistinctSliceWords, 17u);
  EXPECT_EQ(kDistinctSlicesPerRing, 8u);
  EXPECT_EQ(kDistinctSlices, 9u);
  EXPECT_EQ(kDistinctAreaWords, 219u);
  EXPECT_EQ(distinct_slice_buckets(60), 8);
  EXPECT_EQ(distinct_slice_buckets(64), 8);
  EXPECT_EQ(distinct_slice_buckets(4096), 512);
  EXPECT_EQ(distinct_slice_buckets(5), 1);

  // The event store of count windows and sequences.
  EXPECT_EQ(kEventStoreCountWord, 0u);
  EXPECT_EQ(kEventStoreHeadWord, 1u);
  EXPECT_EQ(kEventStoreHeaderWords, 2u);
  EXPECT_EQ(kEventEntryTimeWord, 0u);
  EXPECT_EQ(kEventEntryValueWord, 1u);
  EXPECT_EQ(kEventEntryWords, 2u);
  EXPECT_EQ(kMaxWindowEvents, 1024u);

  EXPECT_EQ(kDedupWays, 8u);
  EXPECT_EQ(kDedupEntryWords, 2u);
  EXPECT_EQ(kDedupIdWord, 0u);
  EXPECT_EQ(kDedupTimeWord, 1u);
  EXPECT_EQ(kDedupBucketBytes, 128u);
}

TEST(Layout, FingerprintCoversEverySchemaDetail) {
  Schema a;
  TableSpec t;
  t.name = "t";
  t.fields = {{"x", FieldType::kFloat64, 1}};
  a.tables.push_back(t);
  Schema b = a;
  EXPECT_EQ(a.fingerprint(), b.fingerprint());
  b.tables[0].fields[0].type = FieldType::kFloat32;
  EXPECT_NE(a.fingerprint(), b.fingerprint());
  b = a;
  b.tables[0].capacity += 1;
  EXPECT_NE(a.fingerprint(), b.fingerprint());
  b = a;
  b.tables[0].fields[0].name = "y";
  EXPECT_NE(a.fingerprint(), b.fingerprint());
  // Count windows: N, min_periods and ddof each change it.
  AggregateSpec w;
  w.name = "w";
  w.source = "x";
  w.fn = AggregateFn::kVariance;
  w.window_events = 10;
  a.tables[0].aggregates = {w};
  for (auto change : {+[](AggregateSpec& s) { s.window_events = 11; }, +[](AggregateSpec& s) { s.min_periods = 3; },
                      +[](AggregateSpec& s) { s.ddof = 1; }}) {
    b = a;
    change(b.tables[0].aggregates[0]);
    EXPECT_NE(a.fingerprint(), b.fingerprint());
  }
}

TEST(Schema, ValidationNamesTheProblem) {
  auto message_of = [](const Schema& s) {
    try {
      s.validate();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  Schema s;
  EXPECT_NE(message_of(s).find("at least one table"), std::string::npos);
  TableSpec t;
  t.name = "users";
  t.fields = {{"x", FieldType::kFloat64, 1}, {"x", FieldType::kInt64, 1}};
  s.tables = {t};
  EXPECT_NE(message_of(s).find("field \"x\": declared twice"), std::string::npos);
  t.fields = {{"v", FieldType::kFloat32Vector, 0}};
  s.tables = {t};
  EXPECT_NE(message_of(s).find("vector dims 0"), std::string::npos);
  t.fields = {{"bad name", FieldType::kInt64, 1}};
  s.tables = {t};
  EXPECT_NE(message_of(s).find("invalid name"), std::string::npos);
  t.fields = {{"x", FieldType::kInt64, 1}};
  t.max_load_factor = 0.99;
  s.tables = {t};
  EXPECT_NE(message_of(s).find("max_load_factor"), std::string::npos);
  t.max_load_factor = 0.75;
  t.key_max_len = 5000;
  s.tables = {t};
  EXPECT_NE(message_of(s).find("key_max_len 5000"), std::string::npos);
}

TEST(Schema, FieldTypeNamesRoundTrip) {
  for (FieldType t : {FieldType::kInt64, FieldType::kFloat64, FieldType::kFloat32, FieldType::kBool,
                      FieldType::kFloat32Vector, FieldType::kString}) {
    FieldType parsed;
    ASSERT_TRUE(parse_field_type(field_type_name(t), &parsed));
    EXPECT_EQ(parsed, t);
  }
  FieldType ignored;
  EXPECT_FALSE(parse_field_type("double", &ignored));
}

TEST(SegmentName, Validation) {
  EXPECT_NO_THROW(validate_segment_name("features-prod.v2_1"));
  for (const char* bad : {"", ".hidden", "-x", "a/b", "with space", "x.lock"}) {
    EXPECT_THROW(validate_segment_name(bad), Error) << bad;
  }
  EXPECT_THROW(validate_segment_name(std::string(201, 'a')), Error);
}

TEST(Hashing, DependsOnKeyAndSeed) {
  EXPECT_EQ(hash_key("user:1", 7), hash_key("user:1", 7));
  EXPECT_NE(hash_key("user:1", 7), hash_key("user:2", 7));
  EXPECT_NE(hash_key("user:1", 7), hash_key("user:1", 8));
}

TEST(Probing, HomeSlotIsWithinTheTable) {
  TableGeometry g;
  g.slot_count = 1334;
  for (uint64_t h : {0ull, 1ull, ~0ull, 0x8000000000000000ull, 0x123456789abcdefull}) {
    EXPECT_LT(g.home(h), g.slot_count);
  }
  EXPECT_EQ(g.home(0), 0u);
  EXPECT_EQ(g.home(~0ull), 1333u);
}

TEST(PackedKey, PadsWithZeros) {
  PackedKey k;
  k.assign("abcdefghij");
  EXPECT_EQ(k.length, 10u);
  EXPECT_EQ(k.word_count, 2u);
  EXPECT_EQ(k.words[1] >> 16, 0u);  // bytes 10..15 of the key are zero
}

}  // namespace
}  // namespace larder::layout
