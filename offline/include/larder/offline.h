/* larder/offline.h: the C ABI of the offline engine (liblarder_offline.so), for FFI users such as the
 * Python package (larder.offline, ctypes). It answers "what would a reader have read for this key at
 * this instant" from a log of events, with the sidecar's own decoder, transforms, aggregates and writer
 * over a private scratch segment (offline/include/larder/offline/engine.h; docs/backfill.md).
 *
 * Times are milliseconds since the Unix epoch throughout. Replay rule: the engine applies events in
 * non-decreasing arrival_ms (the writer's clock at apply, apply_unix_ns = arrival_ms * 1e6; when no arrival
 * column is given, arrival_ms = event_time_ms), ties in input order; a spine row at `at_ms` reads the row
 * as a reader would after every event with arrival_ms <= at_ms was applied and the aggregates were
 * brought up to at_ms (windows end at at_ms as they end at "now" online). Never an event later than at_ms.
 *
 * Threading: one engine per thread at a time; distinct engines are independent. A frame is immutable
 * and may be read from any thread until larder_offline_frame_free(). */
#ifndef LARDER_OFFLINE_H
#define LARDER_OFFLINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct larder_offline larder_offline;
typedef struct larder_offline_frame larder_offline_frame;

/* Column types of event inputs. */
enum {
  LARDER_OFFLINE_INT64 = 1,
  LARDER_OFFLINE_FLOAT64 = 2,
  LARDER_OFFLINE_BOOL = 3,        /* uint8 0/1 */
  LARDER_OFFLINE_STRING = 4,      /* data: bytes, offsets: n+1 int64 offsets into data */
  LARDER_OFFLINE_FLOAT64_LIST = 5 /* data: n*dim doubles, row-major */
};

typedef struct larder_offline_column {
  const char* name; /* the input's name, as a message of format v1 would send it */
  int32_t type;     /* LARDER_OFFLINE_* */
  uint32_t dim;     /* FLOAT64_LIST only */
  const void* data;
  const int64_t* offsets; /* STRING only */
  /* Per event: 0 the event does not send the input (a member left out); 1 it sends the value in data;
   * 2 it sends the input as null (JSON `null`: data is not read), which the engine takes exactly as the
   * sidecar takes a null member: where every reader of the input is a transform that takes a missing value
   * (a chain starting with impute, ordinal or one_hot) they turn it into their value for it; for any other
   * reader the event is refused as wrong_type (counted, as the sidecar dead-letters it). Any other byte:
   * larder_offline_build() fails. NULL: 1 for every event. */
  const uint8_t* present;
} larder_offline_column;

/* Events of one table, one row per event (a DataFrame of events). */
typedef struct larder_offline_events {
  const char* table;
  size_t n;
  const char* keys;
  const int64_t* key_offsets; /* n+1 offsets */
  const int64_t* event_time_ms;
  const int64_t* arrival_ms; /* NULL: arrival = event time */
  const uint8_t* op;         /* NULL: all upserts; 0 upsert, 1 delete */
  const char* ids;
  const int64_t* id_offsets; /* NULL: no event ids (no dedup) */
  const larder_offline_column* columns;
  size_t column_count;
} larder_offline_events;

/* The spine of one table: (key, at_ms) rows; label columns stay on the Python side. */
typedef struct larder_offline_spine {
  const char* table;
  size_t n;
  const char* keys;
  const int64_t* key_offsets; /* n+1 offsets */
  const int64_t* at_ms;
} larder_offline_spine;

/* Returns 0 on success, else writes a one-line message (NUL-terminated, truncated) into err.
 * config_path: a sidecar config (the same YAML larder-sidecar reads); only its tables, fields,
 * transforms and aggregates matter (its sources, rabbitmq, kafka and databases, are not read, so
 * neither their settings nor their secrets need be valid here). partition/partitions: 0/1 for every key;
 * else only keys whose table key hash falls in partition i of n (the same split as larder-backfill). */
int larder_offline_open(const char* config_path, uint32_t partition, uint32_t partitions, larder_offline** out,
                        char* err, size_t err_len);
void larder_offline_close(larder_offline* engine);

/* The order of the replay in larder_offline_build(). BY_KEY (the default): key after key, each key's events
 * and reads in the order arrival order would give them; keys do not interact, so the frame is the same and
 * each key's state stays in cache while its events are applied. Where something shared between keys could
 * change an answer (event ids on a table with aggregates: the dedup set; two keys of one 64-bit hash; a
 * writer refusal), the build goes in arrival order instead. ARRIVAL: every event of every key in arrival
 * order, as a sidecar applies them (the reference BY_KEY is tested against). Returns 0, or 1 for a NULL
 * engine or another value. */
enum { LARDER_OFFLINE_ORDER_BY_KEY = 0, LARDER_OFFLINE_ORDER_ARRIVAL = 1 };
int larder_offline_set_order(larder_offline* engine, int32_t order);

/* Builds one frame: replays `events` (any number of tables, each array sorted or not: the engine orders
 * them by arrival_ms, stable) and answers `spine` (one table) in spine order. Events refused by the
 * decoder rules (bad key, unknown input, wrong type...) are counted, not applied, as the sidecar
 * dead-letters them: larder_offline_frame_rejected(). */
int larder_offline_build(larder_offline* engine, const larder_offline_events* events, size_t event_sets,
                         const larder_offline_spine* spine, larder_offline_frame** out, char* err, size_t err_len);

size_t larder_offline_frame_rows(const larder_offline_frame* f);
uint64_t larder_offline_frame_rejected(const larder_offline_frame* f);
/* Per spine row: 0 not found (never written or deleted), 1 found. */
const uint8_t* larder_offline_frame_found(const larder_offline_frame* f);
const int64_t* larder_offline_frame_event_time_ms(const larder_offline_frame* f);  /* 0 when not found */
const int64_t* larder_offline_frame_computed_at_ms(const larder_offline_frame* f); /* as ReadResult::computed_at_ms */
/* Fields of the spine's table, in schema order (the segment's field names and types). */
uint32_t larder_offline_frame_field_count(const larder_offline_frame* f);
const char* larder_offline_frame_field_name(const larder_offline_frame* f, uint32_t field);
int32_t larder_offline_frame_field_type(const larder_offline_frame* f, uint32_t field); /* layout FieldType value */
uint32_t larder_offline_frame_field_dim(const larder_offline_frame* f,
                                        uint32_t field); /* vector dims, string max bytes, else 1 */
/* rows x dim values of the field's own type (int64, double, float, uint8 bool, float vectors row-major);
 * strings: larder_offline_frame_string_offsets (rows+1 int64) into these bytes. */
const void* larder_offline_frame_values(const larder_offline_frame* f, uint32_t field);
const int64_t* larder_offline_frame_string_offsets(const larder_offline_frame* f, uint32_t field);
const uint8_t* larder_offline_frame_valid(const larder_offline_frame* f, uint32_t field); /* 0: not valid */
void larder_offline_frame_free(larder_offline_frame* f);

/* Additions to the contract. */
/* Per frame row: the index of its spine row. The frame holds the spine rows of the engine's partition, in
 * spine order; with partition 0 of 1 it holds every row and this is 0, 1, 2, ... */
const int64_t* larder_offline_frame_spine_index(const larder_offline_frame* f);
/* Events of the spine's table that the engine replayed (in the partition, arriving no later than the
 * last spine instant: later ones change no answer and are not replayed), and of those: applied (the row
 * changed), stale (older than the row: ignored by last write wins), duplicates (an id seen before),
 * late (too late for the aggregates and older than the row). Rejected events are not among them. */
uint64_t larder_offline_frame_events(const larder_offline_frame* f);
uint64_t larder_offline_frame_applied(const larder_offline_frame* f);
uint64_t larder_offline_frame_stale(const larder_offline_frame* f);
uint64_t larder_offline_frame_duplicates(const larder_offline_frame* f);
uint64_t larder_offline_frame_late(const larder_offline_frame* f);
/* The reason and detail of the first rejected event ("" when none), e.g.
 * "event 12: unknown_field: update: field \"x\": ...". Valid until the frame is freed. */
const char* larder_offline_frame_first_rejection(const larder_offline_frame* f);

#ifdef __cplusplus
}
#endif

#endif /* LARDER_OFFLINE_H */
