// Where count windows and sequences keep their state: one event store per
// source (format.h, "Event store"), after every time group's ring and
// distinct area, since an event touches only the store's newest entries.
#include <algorithm>

#include "larder/layout/schema.h"

namespace larder::layout {

void plan_event_output(const TableSpec& table, const AggregateSpec& a, AggregatePlan& p) {
  uint32_t s = 0;
  while (s < p.event_stores.size() && p.event_stores[s].source != a.source) ++s;
  if (s == p.event_stores.size()) p.event_stores.push_back(AggregatePlan::EventStore{a.source, 0, 0});
  AggregatePlan::EventStore& store = p.event_stores[s];
  store.capacity = std::max(store.capacity, a.window_events);
  AggregatePlan::Output out;
  out.field = static_cast<uint32_t>(table.fields.size() + p.outputs.size());
  out.group = s;
  out.fn = a.fn;
  out.events = a.window_events;
  out.min_periods = a.min_periods_or_default();
  out.ddof = a.ddof;
  p.outputs.push_back(out);
}

void place_event_stores(AggregatePlan& p, uint32_t* at, uint32_t* journal) {
  for (AggregatePlan::EventStore& store : p.event_stores) {
    store.offset = *at;
    *at += kEventStoreHeaderWords + store.capacity * kEventEntryWords;
    // An event inserted before every held one shifts them all: the header,
    // every entry, and the new one.
    *journal += kEventStoreHeaderWords + (store.capacity + 1) * kEventEntryWords;
  }
}

}  // namespace larder::layout
