// Sizes of a config's segment (size_report.h): every number is a plan.
#include "config/size_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "larder/layout/error.h"
#include "larder/layout/segment_file.h"

namespace larder::sidecar {
namespace {

using layout::AggregateFn;
using layout::AggregateSpec;
using layout::Schema;
using layout::TableSpec;

// The segment's bytes for `schema`, or 0 when the schema is not valid (a
// hint that would break a rule is not offered).
uint64_t planned_bytes(const Schema& schema) {
  try {
    schema.validate();
  } catch (const Error&) {
    return 0;
  }
  return layout::plan_layout(schema).segment_bytes;
}

uint64_t saving(uint64_t now, uint64_t changed) { return changed != 0 && changed < now ? now - changed : 0; }

// Each aggregate's marginal cost: the plan without it.
std::vector<AggregateCost> aggregate_costs(const Schema& schema, size_t t, uint64_t total) {
  const TableSpec& spec = schema.tables[t];
  const layout::AggregatePlan plan = layout::plan_aggregates(spec);
  std::vector<AggregateCost> out;
  for (size_t a = 0; a < spec.aggregates.size(); ++a) {
    const AggregateSpec& as = spec.aggregates[a];
    AggregateCost c;
    c.name = as.name;
    c.fn = layout::aggregate_fn_name(as.fn);
    c.source = as.source;
    c.window_ms = as.window_ms;
    c.resolution_ms = spec.resolution_of(as);
    c.window_events = as.window_events;
    Schema without = schema;
    TableSpec& w = without.tables[t];
    w.aggregates.erase(w.aggregates.begin() + static_cast<std::ptrdiff_t>(a));
    if (w.aggregates.empty()) {
      // The settings that only tables with aggregates take go with the last one.
      w.allowed_lateness_ms = 0;
      w.dedup_capacity = 0;
      w.dedup_horizon_ms = 0;
      w.arena_chunks = 0;
    }
    if (w.aggregates.empty() && w.fields.empty()) {
      without.tables.erase(without.tables.begin() + static_cast<std::ptrdiff_t>(t));
    }
    c.bytes = without.tables.empty() ? total : saving(total, planned_bytes(without));
    for (size_t b = 0; b < spec.aggregates.size(); ++b) {
      // Time windows share bucket rings, count windows and sequences event stores.
      if (b != a && plan.outputs[b].group == plan.outputs[a].group &&
          (plan.outputs[b].events == 0) == (plan.outputs[a].events == 0)) {
        c.shares_with.push_back(spec.aggregates[b].name);
      }
    }
    out.push_back(std::move(c));
  }
  return out;
}

// Changes that let an aggregate use another one's bucket ring: a count of
// every event given a source that another aggregate folds (it then counts
// the events that carry it), or an aggregate given the resolution another
// one over the same source has. The best change per aggregate.
std::vector<SharingHint> sharing_hints(const Schema& schema, size_t t, uint64_t total) {
  const TableSpec& spec = schema.tables[t];
  const layout::AggregatePlan plan = layout::plan_aggregates(spec);
  std::vector<SharingHint> out;
  for (size_t a = 0; a < spec.aggregates.size(); ++a) {
    const AggregateSpec& as = spec.aggregates[a];
    SharingHint best;
    auto consider = [&](Schema changed, std::string change, std::string note) {
      const uint64_t saves = saving(total, planned_bytes(changed));
      if (saves > best.saves_bytes) {
        best = SharingHint{as.name, std::move(change), std::move(note), saves};
      }
    };
    if (as.fn == AggregateFn::kCount && as.source.empty()) {
      for (const std::string& source : plan.sources) {
        Schema changed = schema;
        changed.tables[t].aggregates[a].source = source;
        consider(std::move(changed), "source: " + source,
                 "it then counts only the events that carry \"" + source + "\"");
      }
    }
    for (const layout::AggregatePlan::Group& g : plan.groups) {
      if (g.source != as.source || g.resolution_ms == spec.resolution_of(as)) continue;
      Schema changed = schema;
      changed.tables[t].aggregates[a].resolution_ms = g.resolution_ms;
      consider(std::move(changed), "resolution: " + format_duration(g.resolution_ms),
               "its window then moves in steps of " + format_duration(g.resolution_ms));
    }
    if (best.saves_bytes > 0) out.push_back(std::move(best));
  }
  return out;
}

std::string mib(uint64_t bytes) { return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1024.0 * 1024.0)); }

std::string rate_text(double per_s) {
  if (per_s >= 1) return fmt::format("{:.4g} events/s", per_s);
  if (per_s * 3600 >= 1) return fmt::format("{:.4g} events/h", per_s * 3600);
  return fmt::format("{:.4g} events/d", per_s * 86400);
}

// One line of the report: a label (indented by its level), bytes, detail.
std::string line(const std::string& label, uint64_t bytes, const std::string& detail = "") {
  return fmt::format("{:<34}{:>14}{}{}\n", label, bytes, detail.empty() ? "" : "  ", detail);
}

}  // namespace

std::string format_bytes(uint64_t bytes) { return fmt::format("{} B ({})", bytes, mib(bytes)); }

SizeReport size_report(const Config& config) {
  const Schema schema = config.schema();
  const layout::LayoutPlan plan = layout::plan_layout(schema);
  SizeReport r;
  r.segment = config.segment.name;
  r.fingerprint = schema.fingerprint();
  r.total_bytes = plan.segment_bytes;
  r.header_bytes = plan.undo_offset;  // the header and every descriptor, with their padding
  r.undo_bytes = plan.undo_bytes;
  r.journal_bytes = plan.journal_capacity * sizeof(layout::JournalEntry);
  r.source_bytes = sizeof(layout::SourceBlock);
  uint64_t counted = r.header_bytes + r.undo_bytes + r.journal_bytes + r.source_bytes;
  for (size_t t = 0; t < schema.tables.size(); ++t) {
    const TableSpec& spec = schema.tables[t];
    const layout::TablePlan& tp = plan.tables[t];
    TableSize ts;
    ts.name = spec.name;
    ts.capacity = spec.capacity;
    ts.slot_count = tp.slot_count;
    ts.slot_bytes = tp.slot_bytes;
    ts.slots_bytes = tp.slots_bytes;
    ts.state_bytes_per_slot = tp.aggregates.stride_words * 8;
    ts.state_bytes = tp.state_bytes;
    ts.dedup_ids = tp.dedup_buckets * layout::kDedupWays;
    ts.dedup_bytes = tp.dedup_buckets * layout::kDedupBucketBytes;
    ts.dedup_horizon_ms = spec.dedup_horizon();
    ts.expected_events_per_s = t < config.tables.size() ? config.tables[t].expected_events_per_s : 0;
    ts.arena_chunks = tp.arena_chunks;
    ts.arena_chunk_bytes = uint64_t{tp.aggregates.chunk_words} * 8;
    ts.arena_bytes = tp.arena_bytes;
    ts.long_rings = tp.aggregates.sparse_groups;
    ts.arena_default = spec.arena_chunks == 0;
    ts.aggregates = aggregate_costs(schema, t, plan.segment_bytes);
    ts.sharing = sharing_hints(schema, t, plan.segment_bytes);
    counted += ts.bytes();
    if (ts.dedup_ids > 0 && ts.expected_events_per_s > 0) {
      const double needed = std::ceil(ts.expected_events_per_s * static_cast<double>(ts.dedup_horizon_ms) / 1000.0);
      if (needed > static_cast<double>(ts.dedup_ids)) {
        r.warnings.push_back(fmt::format(
            "table \"{}\": the dedup set holds {} ids, but {} over its horizon of {} are {:.0f} ids: older "
            "ids are evicted and their redeliveries count again. Raise dedup.capacity to {:.0f} ({} more) or "
            "shorten dedup.horizon (at least allowed_lateness)",
            spec.name, ts.dedup_ids, rate_text(ts.expected_events_per_s), format_duration(ts.dedup_horizon_ms), needed,
            needed, mib(static_cast<uint64_t>(needed - static_cast<double>(ts.dedup_ids)) * 16)));
      }
    }
    if (ts.arena_chunks > 0 && ts.arena_default) {
      const uint64_t all = spec.capacity * ts.long_rings;
      r.warnings.push_back(fmt::format(
          "table \"{}\": the aggregate arena has its default {} chunks ({}): at most {} keys at once can hold more "
          "than {} live buckets of each of the {} long bucket rings (a window longer than {} buckets, e.g. 24h by "
          "1m with an event in more than {} of its minutes); an event of a further key that needs one is refused "
          "(aggregate_arena_full). Set arena_chunks to the keys you expect to be that active times {} (at most "
          "{}, {}, never refuses)",
          spec.name, ts.arena_chunks, mib(ts.arena_bytes), ts.arena_chunks / ts.long_rings, layout::kInlineBuckets,
          ts.long_rings, layout::kInlineBuckets, layout::kInlineBuckets, ts.long_rings, all,
          mib(all * ts.arena_chunk_bytes)));
    }
    r.tables.push_back(std::move(ts));
  }
  r.alignment_bytes = r.total_bytes - counted;
  return r;
}

std::string format_size_report(const SizeReport& r) {
  std::string out = fmt::format("segment \"{}\", schema {}: {}\n", r.segment, layout::hex64(r.fingerprint),
                                format_bytes(r.total_bytes));
  out += fmt::format("{:<34}{:>14}\n", "  PART", "BYTES");
  for (const TableSize& t : r.tables) {
    out += line("  table " + t.name, t.bytes(), mib(t.bytes()));
    out += line("    slots", t.slots_bytes,
                fmt::format("{} keys in {} slots of {} B", t.capacity, t.slot_count, t.slot_bytes));
    if (t.state_bytes == 0) continue;
    out += line("    aggregate state", t.state_bytes,
                fmt::format("{}: {} slots x {} B", mib(t.state_bytes), t.slot_count, t.state_bytes_per_slot));
    for (const AggregateCost& a : t.aggregates) {
      std::string what =
          a.fn + (a.source.empty() ? std::string(" of events") : " of " + a.source) + " over " +
          (a.window_events != 0 ? std::to_string(a.window_events) + " events"
                                : format_duration(a.window_ms) + " by " + format_duration(a.resolution_ms));
      std::string shared;
      for (const std::string& s : a.shares_with) shared += (shared.empty() ? "" : ", ") + s;
      if (!shared.empty())
        what += (a.window_events != 0 ? "; shares its events with " : "; shares its buckets with ") + shared;
      out += line("      " + a.name, a.bytes, what);
    }
    if (t.arena_chunks > 0) {
      out += line("    aggregate arena", t.arena_bytes,
                  fmt::format("{} chunks of {} B: dense rings for {} keys at once ({} long rings each)", t.arena_chunks,
                              t.arena_chunk_bytes, t.arena_chunks / t.long_rings, t.long_rings));
    }
    const double covers = static_cast<double>(t.dedup_ids) * 1000.0 / static_cast<double>(t.dedup_horizon_ms);
    out +=
        line("    dedup set", t.dedup_bytes,
             fmt::format(
                 "{} ids for {}: enough for {}{}", t.dedup_ids, format_duration(t.dedup_horizon_ms), rate_text(covers),
                 t.expected_events_per_s > 0 ? fmt::format(" (expected_rate: {})", rate_text(t.expected_events_per_s))
                                             : std::string()));
    for (const SharingHint& h : t.sharing) {
      out += fmt::format("    hint: aggregate {} with `{}` would share a bucket ring and save {} ({})\n", h.aggregate,
                         h.change, format_bytes(h.saves_bytes), h.note);
    }
  }
  out += line("  header and descriptors", r.header_bytes);
  out += line("  undo copy", r.undo_bytes);
  if (r.journal_bytes > 0) out += line("  aggregate journal", r.journal_bytes);
  out += line("  stream positions", r.source_bytes);
  out += line("  alignment", r.alignment_bytes);
  out += line("  total", r.total_bytes, mib(r.total_bytes) + ", the segment file, allocated at start");
  for (const std::string& w : r.warnings) out += "warning: " + w + "\n";
  return out;
}

}  // namespace larder::sidecar
