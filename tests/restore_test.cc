// Images: Writer::copy_image and Writer::restore. A round trip gives back
// every row, aggregate and position, and the restored writer carries on
// exactly as the original would; restore refuses a damaged or foreign image
// with an error naming the problem, and then the segment already at the name
// (with a reader attached) is byte-identical and no temporary file is left.
#include <dirent.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "larder/client.h"
#include "larder/layout/segment_file.h"
#include "larder/writer/writer.h"
#include "support/recount.h"
#include "support/test_segment.h"

namespace larder {
namespace {

using testing::ScratchSegment;

layout::Schema image_schema(uint64_t capacity = 200) {
  layout::TableSpec users = testing::every_type_table("users", capacity, 4);
  layout::TableSpec agg;
  agg.name = "agg";
  agg.key_max_len = 16;
  agg.capacity = capacity;
  agg.fields = {{"tag", layout::FieldType::kInt64, 1}};
  agg.aggregates = {
      {"events", "", layout::AggregateFn::kCount, 3'600'000, 0, layout::WindowEnd::kNow},
      {"spent", "amount", layout::AggregateFn::kSum, 3'600'000, 0, layout::WindowEnd::kNow},
      {"spread", "amount", layout::AggregateFn::kVariance, 600'000, 0, layout::WindowEnd::kLatestEvent},
  };
  layout::Schema s;
  s.tables = {users, agg};
  return s;
}

constexpr int64_t kBaseMs = 1'700'000'000'000;

// A seeded mix of upserts, deletes and aggregated events with ids, with
// positions staged the way the sidecar stages them.
void write_mix(Writer& w, uint64_t seed, int updates, uint64_t first_offset) {
  std::mt19937_64 rng(seed);
  for (int i = 0; i < updates; ++i) {
    const int64_t te = kBaseMs + (static_cast<int64_t>(first_offset) + i) * 10;
    const std::string key = "k" + std::to_string(rng() % 150);
    w.stage_position({0, first_offset + static_cast<uint64_t>(i) + 1, 0});
    if (rng() % 2 == 0) {
      if (rng() % 10 == 0) {
        w.remove(0, key, te, te * 1'000'000);
        continue;
      }
      const float emb[4] = {static_cast<float>(i), 1, 2, 3};
      const std::string country = std::string(1 + rng() % 8, static_cast<char>('a' + rng() % 26));
      const FieldValue v[] = {FieldValue::int64(0, i), FieldValue::float64(1, i * 0.5),
                              FieldValue::boolean(3, i % 3 == 0), FieldValue::vector(4, emb),
                              FieldValue::string(5, country)};
      w.upsert(0, key, te, v, te * 1'000'000);
    } else {
      const FieldValue v[] = {FieldValue::int64(0, i)};
      const SourceValue s[] = {{0, static_cast<double>(rng() % 100)}};
      w.apply(1, key, te, v, s, event_id_hash(std::to_string(rng() % 400)), te * 1'000'000);
    }
  }
}

// Every key of every table as the client reads it: status, times and the
// row's bytes (fields and validity), one line per key.
std::string dump(const std::string& name, const std::string& dir) {
  Segment s = Segment::open(name, ClientOptions{dir});
  std::string out;
  for (const std::string& tn : s.table_names()) {
    Table t = s.table(tn);
    Row row = t.make_row();
    for (int k = 0; k < 150; ++k) {
      const std::string key = "k" + std::to_string(k);
      const ReadResult r = t.get(key, row);
      out += tn + " " + key + " " + status_name(r.status) + " " + std::to_string(r.event_time_ms);
      if (r.found()) {
        for (const Field& f : t.fields()) {
          out += " " + std::string(f.name) + "=";
          if (!row.valid(f)) {
            out += "-";
            continue;
          }
          switch (f.type) {
            case FieldType::kInt64: out += std::to_string(row.i64(f)); break;
            case FieldType::kFloat64: out += std::to_string(row.f64(f)); break;
            case FieldType::kFloat32: out += std::to_string(row.f32(f)); break;
            case FieldType::kBool: out += row.boolean(f) ? "true" : "false"; break;
            case FieldType::kString: out += std::string(row.string(f)); break;
            case FieldType::kFloat32Vector:
              for (float x : row.vector(f)) out += std::to_string(x) + ",";
              break;
          }
        }
      }
      out += "\n";
    }
  }
  const SyncInfo info = s.sync();
  out += "sync " + std::to_string(static_cast<int>(info.state)) + " " + info.source_id;
  for (const SyncInfo::Partition& p : info.partitions) {
    out += " p" + std::to_string(p.partition) + ":" + std::to_string(p.next_offset.value_or(0)) + "+" +
           std::to_string(p.skip_updates) + "/" + std::to_string(p.target.value_or(0));
  }
  return out;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Files in dir whose name starts with ".<name>." (temporaries of a restore).
int leftovers(const std::string& dir, const std::string& name) {
  int n = 0;
  DIR* d = ::opendir(dir.c_str());
  while (dirent* e = ::readdir(d)) {
    if (std::string(e->d_name).rfind("." + name + ".", 0) == 0) ++n;
  }
  ::closedir(d);
  return n;
}

TEST(Images, RoundTripEqualsTheOriginalAndCarriesOn) {
  ScratchSegment a, b;
  const layout::Schema schema = image_schema();
  std::vector<unsigned char> image;
  auto wa = Writer::open(a.name(), schema, a.writer_options());
  wa->set_source_id("amqp / stream features");
  wa->set_sync_state(layout::SyncState::kReady);
  write_mix(*wa, 7, 2000, 0);
  wa->set_target(0, 1999);
  wa->copy_image(&image);
  ASSERT_EQ(image.size(), std::filesystem::file_size(wa->path()));
  const unsigned char* before = image.data();
  wa->copy_image(&image);
  EXPECT_EQ(image.data(), before) << "copy_image reallocated a buffer of the right size";

  auto wb = Writer::restore(b.name(), schema, image, b.writer_options());
  EXPECT_TRUE(wb->created());
  EXPECT_EQ(wb->repaired_slots(), 0u);
  EXPECT_EQ(wb->attach_report().slots_visited, 0u) << "restore counted the image; the attach trusts that";
  EXPECT_TRUE(testing::counters_match_recount(wb->path(), b.name()));
  const std::string want = dump(a.name(), a.dir());
  EXPECT_EQ(dump(b.name(), b.dir()), want);
  EXPECT_EQ(wb->source_id(), "amqp / stream features");
  ASSERT_TRUE(wb->position(0).has_value());
  EXPECT_EQ(wb->position(0)->next_offset, 2000u);
  for (uint32_t t = 0; t < 2; ++t) {
    EXPECT_EQ(wb->stats(t).live_keys, wa->stats(t).live_keys);
    EXPECT_EQ(wb->stats(t).aggregate_events, wa->stats(t).aggregate_events);
  }
  // Past the header (identity and liveness), the files are the same bytes:
  // descriptors, counters, slots, aggregate state, dedup set, positions.
  const std::string fa = file_bytes(wa->path()), fb = file_bytes(wb->path());
  ASSERT_EQ(fa.size(), fb.size());
  EXPECT_TRUE(fa.compare(layout::kSegmentHeaderBytes, std::string::npos, fb, layout::kSegmentHeaderBytes) == 0);

  // Both carry on identically: the aggregate state and dedup set resumed.
  write_mix(*wa, 8, 1000, 2000);
  write_mix(*wb, 8, 1000, 2000);
  EXPECT_EQ(dump(b.name(), b.dir()), dump(a.name(), a.dir()));
  EXPECT_NE(dump(a.name(), a.dir()), want);
}

TEST(Images, RestoreReplacesASegmentAndRetiresItsReaders) {
  ScratchSegment seg, other;
  const layout::Schema schema = image_schema();
  std::vector<unsigned char> image;
  {
    auto w = Writer::open(other.name(), schema, other.writer_options());
    write_mix(*w, 3, 500, 0);
    w->copy_image(&image);
  }
  {
    auto w = Writer::open(seg.name(), schema, seg.writer_options());
    write_mix(*w, 4, 100, 0);
  }
  Segment old = Segment::open(seg.name(), ClientOptions{seg.dir()});
  const uint64_t old_generation = old.info().generation;
  auto w = Writer::restore(seg.name(), schema, image, seg.writer_options());
  EXPECT_TRUE(old.retired());
  Segment fresh = Segment::open(seg.name(), ClientOptions{seg.dir()});
  EXPECT_FALSE(fresh.retired());
  EXPECT_GT(fresh.info().generation, old_generation);
  EXPECT_EQ(dump(seg.name(), seg.dir()), dump(other.name(), other.dir()));
  EXPECT_EQ(leftovers(seg.dir(), seg.name()), 0);
  // A second writer is refused while this one holds the segment.
  EXPECT_THROW(
      {
        try {
          Writer::restore(seg.name(), schema, image, seg.writer_options());
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), ErrorCode::kWriterLocked);
          throw;
        }
      },
      Error);
}

// A damaged image, and what restore must say about it.
struct Damage {
  const char* what;
  ErrorCode code;
  const char* message;  // a part of the error's text
  std::function<void(std::vector<unsigned char>&)> apply;
};

layout::SegmentHeader& header_of(std::vector<unsigned char>& image) {
  return *reinterpret_cast<layout::SegmentHeader*>(image.data());
}

// The first slot of table t in state `state`.
layout::Word* slot_in(std::vector<unsigned char>& image, uint32_t t, layout::SlotState state) {
  const layout::TableGeometry g = layout::table_geometry(image.data(), layout::table_descriptor(image.data(), t));
  for (uint64_t i = 0; i < g.slot_count; ++i) {
    layout::Word* s = const_cast<layout::Word*>(g.slot(i));
    if (s[layout::kSlotMetaWord].load() != 0 && layout::meta_state(s[layout::kSlotMetaWord].load()) == state) return s;
  }
  std::abort();
}

TEST(Images, RestoreRefusesDamagedImagesAndLeavesTheSegmentUntouched) {
  ScratchSegment seg, src;
  const layout::Schema schema = image_schema();
  std::vector<unsigned char> good;
  {
    auto w = Writer::open(src.name(), schema, src.writer_options());
    w->set_source_id("amqp / stream features");
    write_mix(*w, 11, 1500, 0);
    w->copy_image(&good);
  }
  {
    auto w = Writer::open(seg.name(), schema, seg.writer_options());
    write_mix(*w, 12, 300, 0);
  }
  Segment reader = Segment::open(seg.name(), ClientOptions{seg.dir()});
  const std::string path = layout::segment_path(seg.dir(), seg.name());
  const std::string before = file_bytes(path);
  const std::string reader_view = dump(seg.name(), seg.dir());

  const layout::TableGeometry users = layout::table_geometry(good.data(), layout::table_descriptor(good.data(), 0));
  const uint32_t country_word =
      users.row_word_offset() +
      layout::field_descriptor(good.data(), layout::table_descriptor(good.data(), 0), 5).offset / 8;
  const std::vector<Damage> damages = {
      {"truncated", ErrorCode::kCorrupt, "truncated", [](auto& im) { im.resize(im.size() / 2); }},
      {"shorter than a header", ErrorCode::kCorrupt, "truncated", [](auto& im) { im.resize(100); }},
      {"empty", ErrorCode::kCorrupt, "truncated", [](auto& im) { im.clear(); }},
      {"bad magic", ErrorCode::kCorrupt, "bad magic", [](auto& im) { im[0] ^= 0x55; }},
      {"older layout", ErrorCode::kVersionMismatch, "layout v2", [](auto& im) { header_of(im).layout_version = 2; }},
      {"abi", ErrorCode::kVersionMismatch, "ABI signature", [](auto& im) { header_of(im).abi_signature ^= 1; }},
      {"another schema", ErrorCode::kSchemaMismatch, "schema fingerprint",
       [](auto& im) { header_of(im).schema_fingerprint ^= 1; }},
      {"undo offset off the plan", ErrorCode::kCorrupt, "undo offset",
       [](auto& im) { header_of(im).undo_offset += 64; }},
      {"slot count off the plan", ErrorCode::kCorrupt, "layout differs from the plan",
       [](auto& im) {
         const_cast<layout::TableDescriptor&>(layout::table_descriptor(im.data(), 1)).max_load_permille += 1;
       }},
      {"field descriptor off the plan", ErrorCode::kCorrupt, "field 2 descriptor",
       [](auto& im) {
         auto& fd = const_cast<layout::FieldDescriptor&>(
             layout::field_descriptor(im.data(), layout::table_descriptor(im.data(), 0), 2));
         fd.name[0] = 'X';
       }},
      {"armed undo", ErrorCode::kCorrupt, "undo record is armed", [](auto& im) { header_of(im).undo_armed.store(1); }},
      {"armed journal", ErrorCode::kCorrupt, "journal is armed",
       [](auto& im) { header_of(im).journal_armed.store(1); }},
      {"armed count record", ErrorCode::kCorrupt, "table 1 count record is armed",
       [](auto& im) {
         const_cast<layout::TableDescriptor&>(layout::table_descriptor(im.data(), 1)).count_armed.store(1);
       }},
      {"pending position", ErrorCode::kCorrupt, "position is pending",
       [](auto& im) {
         const_cast<layout::SourceBlock&>(layout::source_block(im.data())).pending_state.store(layout::kPendingArmed);
       }},
      {"bad sync state", ErrorCode::kCorrupt, "sync state",
       [](auto& im) { const_cast<layout::SourceBlock&>(layout::source_block(im.data())).sync_state.store(9); }},
      {"odd seq", ErrorCode::kCorrupt, "odd seq",
       [](auto& im) { slot_in(im, 0, layout::SlotState::kLive)[layout::kSlotSeqWord].fetch_add(1); }},
      {"bad meta state", ErrorCode::kCorrupt, "bad meta state",
       [](auto& im) { slot_in(im, 1, layout::SlotState::kLive)[layout::kSlotMetaWord].fetch_or(3); }},
      {"key_len too long", ErrorCode::kCorrupt, "key_len 33",
       [](auto& im) { slot_in(im, 0, layout::SlotState::kLive)[layout::kSlotKeyLenWord].store(33); }},
      {"string too long", ErrorCode::kCorrupt, "string field 5 length 200",
       [country_word](auto& im) {
         layout::Word& w = slot_in(im, 0, layout::SlotState::kLive)[country_word];
         w.store((w.load() & ~uint64_t{0xffffffff}) | 200);
       }},
  };
  for (const Damage& d : damages) {
    SCOPED_TRACE(d.what);
    std::vector<unsigned char> image = good;
    d.apply(image);
    try {
      Writer::restore(seg.name(), schema, image, seg.writer_options());
      ADD_FAILURE() << "restored a damaged image";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), d.code) << e.what();
      EXPECT_NE(std::string(e.what()).find(d.message), std::string::npos) << e.what();
    }
    ASSERT_EQ(file_bytes(path), before) << "the existing segment changed";
    EXPECT_FALSE(reader.retired());
    EXPECT_EQ(leftovers(seg.dir(), seg.name()), 0);
  }
  // Another schema for the same image: refused, as kSchemaMismatch.
  try {
    Writer::restore(seg.name(), image_schema(300), good, seg.writer_options());
    ADD_FAILURE() << "restored an image of another schema";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kSchemaMismatch) << e.what();
  }
  EXPECT_EQ(file_bytes(path), before);
  EXPECT_EQ(dump(seg.name(), seg.dir()), reader_view);
  // An unaligned copy of the good image is fine.
  std::vector<unsigned char> shifted(good.size() + 1);
  std::memcpy(shifted.data() + 1, good.data(), good.size());
  auto w =
      Writer::restore(seg.name(), schema, std::span<const unsigned char>(shifted).subspan(1), seg.writer_options());
  EXPECT_TRUE(reader.retired());
  EXPECT_EQ(dump(seg.name(), seg.dir()), dump(src.name(), src.dir()));
}

}  // namespace
}  // namespace larder
