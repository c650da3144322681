// Count windows and sequences: the event stores of a table's aggregates
// (docs/aggregates.md#count-windows, word map in format.h).
//
// A count window reads the N newest events of its source by event time, as
// pandas' rolling(window=N) does over the key's events; last_n reads the n
// newest values as a vector. Both read one event store per source, which
// keeps the newest `capacity` events in order. Outputs are recomputed from
// the stored values (two-pass, compensated sums), not kept as running
// totals: no rounding residue builds up as events enter and leave.
//
// Every store into an event store goes through the Journal, like the rest
// of the aggregate state, so a writer killed mid-change is undone on restart.
#pragma once

#include <cstdint>
#include <span>

#include "aggregate.h"

namespace larder::writer {

// What fold_events did with one event.
enum class EventFold {
  kNone,    // no event store takes its sources
  kFolded,  // some store took it
  kTooOld,  // every store that takes it is full of events at least as new
};

// Inserts the event into each event store whose source it carries (every
// store of a count without a source). An event stamped after the clock
// counts as of the clock, as in the time windows.
EventFold fold_events(const AggregateTable& t, Word* block, int64_t clock_ms, int64_t event_time_ms,
                      std::span<const SourceValue> sources, Journal& j);

// The value and validity of output `o`, a count window (Output::events != 0,
// fn not kLastN).
OutputValue event_output(const AggregateTable& t, const Word* block, const AggregatePlan::Output& o);

// last_n: writes the n newest values, newest first, NaN past the key's
// events, into out[0..o.events). Returns the validity (at least min_periods
// events).
bool sequence_output(const AggregateTable& t, const Word* block, const AggregatePlan::Output& o, float* out);

}  // namespace larder::writer
