/* Larder client, C ABI 1.x: read features from a shared-memory segment.
 *
 * The same reads as larder/client.h for C and for FFI (Python ctypes, Rust,
 * Go, Java). Handles are opaque; row buffers are caller-owned and sized by
 * larder_table_row_bytes(). Every larder_get*, larder_gather* and larder_row_*
 * function (except the three larder_row_*_offset functions) is lock-free,
 * never allocates and never blocks on the writer; the open/close functions
 * may allocate and return an error code with a message. Every
 * function accepts NULL handles and out-of-range field indexes and answers
 * them with its documented "nothing" (an error code, 0, NaN or NULL) instead
 * of crashing. docs/client.md lists each function's returns and errors.
 *
 *   char err[256];
 *   larder_segment* seg;
 *   if (larder_open("features", NULL, &seg, err, sizeof err) != LARDER_E_OK) die(err);
 *   larder_table* users;
 *   larder_table_open(seg, "users", &users, err, sizeof err);
 *   uint32_t spend;
 *   if (larder_field_lookup(users, "spend_1h", &spend) != LARDER_E_OK) die("no field");
 *   void* row = aligned_alloc(8, larder_table_row_bytes(users));
 *   larder_read_result r = larder_get(users, "user:42", 7, row, 5000);
 *   if (r.status == LARDER_OK && larder_row_valid(users, row, spend))
 *     printf("%f\n", larder_row_float64(users, row, spend));
 *
 * Compatibility: within ABI major version 1 functions and struct layouts are
 * only ever added, never changed. Structs that may grow (options, stats)
 * start with a uint32_t size the caller sets to sizeof as it compiled it.
 * liblarder.so versions its symbols: LARDER_1.0 is the first ABI,
 * LARDER_1.1 adds larder_open_ex, the stats, the row accessors for times and
 * key, larder_field_lookup and the version functions; LARDER_1.2 adds
 * larder_get_ex, larder_get_many_ex and larder_gather_ex (a bound on either
 * age) and
 * refreshed_through_ms at the end of larder_table_stats_t.
 */
#ifndef LARDER_LARDER_H_
#define LARDER_LARDER_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks functions kept for ABI 1.0 callers that have a replacement: the
 * compiler warns where they are called. Define LARDER_ALLOW_DEPRECATED
 * before including this header to silence it. */
#if defined(__GNUC__) && !defined(LARDER_ALLOW_DEPRECATED)
#define LARDER_DEPRECATED(replacement) __attribute__((deprecated("use " replacement)))
#else
#define LARDER_DEPRECATED(replacement)
#endif

/* The ABI this header declares: major 1 (compatible additions only), minor
 * counts the additions. larder_version() returns the library's. */
#define LARDER_ABI_VERSION_MAJOR 1
#define LARDER_ABI_VERSION_MINOR 2
#define LARDER_ABI_VERSION ((LARDER_ABI_VERSION_MAJOR << 16) | LARDER_ABI_VERSION_MINOR)

/* The LARDER_ABI_VERSION the loaded library implements: (major << 16) | minor.
 * A program built against this header runs with any library of the same
 * major and a minor at least LARDER_ABI_VERSION_MINOR. */
uint32_t larder_version(void);
/* The same as "MAJOR.MINOR" ("1.2"). Static string. */
const char* larder_version_string(void);

/* Read statuses (larder::Status). LARDER_CORRUPT: the key's slot was read
 * consistently but holds a length outside the table's schema (a string longer
 * than its max_len, a key longer than key_max_len); the row buffer must not be
 * used, other keys are unaffected. */
enum {
  LARDER_OK = 0,
  LARDER_NOT_FOUND = 1,
  LARDER_STALE = 2,
  LARDER_BUSY = 3,
  LARDER_INVALID_KEY = 4,
  LARDER_CORRUPT = 5
};

/* Error codes (larder::ErrorCode) of the functions that open, describe or
 * copy out (everything that does not return a read status); 0 is success. */
enum {
  LARDER_E_OK = 0,
  LARDER_E_INVALID_ARGUMENT = 1,
  LARDER_E_NOT_FOUND = 2,
  LARDER_E_PERMISSION_DENIED = 3,
  LARDER_E_VERSION_MISMATCH = 4,
  LARDER_E_SCHEMA_MISMATCH = 5,
  LARDER_E_NOT_READY = 6,
  LARDER_E_CORRUPT = 7,
  LARDER_E_WRITER_LOCKED = 8,
  LARDER_E_NO_SPACE = 9,
  LARDER_E_SYSTEM = 10
};

/* Field types (larder::FieldType). */
enum {
  LARDER_INT64 = 1,
  LARDER_FLOAT64 = 2,
  LARDER_FLOAT32 = 3,
  LARDER_BOOL = 4,
  LARDER_FLOAT32_VECTOR = 5,
  LARDER_STRING = 6
};

typedef struct larder_segment larder_segment;
typedef struct larder_table larder_table;

typedef struct larder_read_result {
  int32_t status; /* LARDER_OK, ... */
  int32_t reserved;
  int64_t event_time_ms; /* valid for LARDER_OK and LARDER_STALE */
  int64_t apply_unix_ns;
} larder_read_result;

typedef struct larder_field_info {
  const char* name; /* valid while the table is open */
  int32_t type;     /* LARDER_INT64, ... */
  uint32_t count;   /* vector dimensions, string max length, else 1 */
} larder_field_info;

typedef struct larder_segment_info {
  uint32_t state;      /* 0 creating, 1 ready, 2 retired */
  uint32_t connection; /* 0 unknown, 1 connecting, 2 connected, 3 disconnected, 4 stopped */
  uint32_t layout_version;
  uint32_t reserved;
  uint64_t schema_fingerprint;
  uint64_t writer_pid;      /* 0: no writer attached */
  int64_t heartbeat_age_ms; /* -1: never */
  uint64_t updates_applied;
  uint64_t messages_rejected;
  int64_t last_apply_unix_ns;
} larder_segment_info;

/* Options of larder_open_ex. Zero-initialise, set size = sizeof(larder_open_options),
 * then the fields wanted; every zero field takes its default. Later minor
 * versions append fields (a zero tail keeps their defaults), so a program
 * built against an older header keeps working with a newer library. */
typedef struct larder_open_options {
  uint32_t size;                        /* sizeof(larder_open_options) as the caller compiled it */
  uint32_t max_retries;                 /* seqlock retries on one slot before LARDER_BUSY; 0: 256 */
  const char* dir;                      /* directory of the segment; NULL or "": /dev/shm */
  uint64_t expected_schema_fingerprint; /* 0: any; else refuse another schema (LARDER_E_SCHEMA_MISMATCH) */
  uint32_t abi_version;                 /* 0: no check; else the LARDER_ABI_VERSION the caller needs */
  uint32_t reserved;                    /* must be 0 */
} larder_open_options;

/* Opens a segment read-only: larder_open_ex with options {size, 0, dir}. */
int larder_open(const char* name, const char* dir, larder_segment** out, char* err, size_t errlen);
/* Opens the segment `name` read-only; options NULL means every default. On
 * failure returns a LARDER_E_* code, writes a message naming the problem
 * and the fix into err (when err != NULL and errlen > 0) and sets *out to
 * NULL (when out != NULL). */
int larder_open_ex(const char* name, const larder_open_options* options, larder_segment** out, char* err,
                   size_t errlen);
/* NULL is a no-op. Close the segment's tables first. */
void larder_close(larder_segment* segment);
/* The header's counters (zeroed for NULL). larder_segment_stats has more. */
larder_segment_info larder_segment_stat(const larder_segment* segment);
/* 1 when a writer is attached and its heartbeat is younger than the bound. */
int larder_writer_alive(const larder_segment* segment, int64_t max_heartbeat_age_ms);

/* Everything the segment header says about the segment and its writer (C++
 * larder::SegmentInfo). Set size = sizeof(larder_segment_stats_t) before the call. */
typedef struct larder_segment_stats_t {
  uint32_t size;           /* in: sizeof as the caller compiled it; out: bytes filled */
  uint32_t state;          /* 0 creating, 1 ready, 2 retired (its tables move to the new generation) */
  uint32_t connection;     /* 0 unknown, 1 connecting, 2 connected, 3 disconnected, 4 stopped */
  uint32_t layout_version; /* the segment format's version */
  uint64_t schema_fingerprint;
  uint64_t segment_bytes;
  uint64_t generation;
  uint64_t writer_pid;      /* 0: no writer attached */
  int64_t heartbeat_age_ms; /* -1: never */
  uint64_t writer_sessions; /* writers that attached since creation */
  uint64_t repaired_slots;  /* slots restored from the undo copy after a writer died */
  uint64_t updates_applied;
  uint64_t messages_rejected;
  int64_t last_apply_unix_ns; /* 0: never */
  int64_t created_unix_ns;
  int32_t sync_state;   /* larder_sync_state_t, as larder_segment_state() */
  uint32_t table_count; /* tables 0..count-1 (larder_segment_table_name) */
} larder_segment_stats_t;

/* Fills the first out->size bytes of *out (fields that do not fit are left
 * alone) and sets out->size to the bytes filled. LARDER_E_OK, or
 * LARDER_E_INVALID_ARGUMENT for a NULL argument or out->size < 8. */
int larder_segment_stats(const larder_segment* segment, larder_segment_stats_t* out);
/* The name of table `index` (0 .. table_count - 1) into buf, NUL-terminated,
 * and its length (without the NUL) into *len when len != NULL. LARDER_E_OK;
 * LARDER_E_NOT_FOUND for an index out of range; LARDER_E_NO_SPACE when buf
 * is shorter than the name plus its NUL (*len still receives the length,
 * buf is left alone); LARDER_E_INVALID_ARGUMENT for a NULL segment, or a
 * NULL buf with buflen > 0. */
int larder_segment_table_name(const larder_segment* segment, uint32_t index, char* buf, size_t buflen, size_t* len);

/* How complete the segment is, as its writer knows it (larder::layout::SyncState). */
typedef enum {
  LARDER_SYNC_UNKNOWN = 0,     /* no source reports positions */
  LARDER_SYNC_CATCHING_UP = 1, /* restoring a snapshot or replaying the log */
  LARDER_SYNC_READY = 2,       /* caught up */
  LARDER_SYNC_INCOMPLETE = 3   /* the log no longer holds what follows the stored position */
} larder_sync_state_t;

/* larder_position_t::flags */
#define LARDER_POSITION_HAS_NEXT 1u
#define LARDER_POSITION_HAS_TARGET 2u
#define LARDER_POSITION_HAS_FIRST_RETAINED 4u

/* One partition of the segment's source (a RabbitMQ stream is partition 0). */
typedef struct larder_position_t {
  uint64_t next_offset;    /* the first message not wholly applied (flag HAS_NEXT) */
  uint32_t skip_updates;   /* updates of message next_offset already applied */
  uint32_t flags;          /* LARDER_POSITION_HAS_* */
  uint64_t target;         /* the offset replay must reach (flag HAS_TARGET) */
  uint64_t first_retained; /* the first offset the log still holds (flag HAS_FIRST_RETAINED) */
} larder_position_t;

/* The rest of the source block: what the positions refer to. */
typedef struct larder_sync_info_t {
  int32_t state;            /* larder_sync_state_t */
  uint32_t partition_count; /* partitions 0..count-1 may hold a position (larder_segment_position) */
  int64_t changed_unix_ns;  /* when state last changed; 0: never */
  char source_id[128];      /* NUL terminated; "" when none */
} larder_sync_info_t;

/* Lock-free, never allocates. LARDER_SYNC_UNKNOWN for NULL. */
larder_sync_state_t larder_segment_state(const larder_segment* segment);
/* Fills *out (zeroed for a NULL segment). */
void larder_segment_sync_info(const larder_segment* segment, larder_sync_info_t* out);
/* LARDER_OK and *out filled when the partition holds a position, a target or
 * a first retained offset; LARDER_NOT_FOUND (and *out zeroed) otherwise,
 * including a partition beyond the segment's range. */
int larder_segment_position(const larder_segment* segment, uint32_t partition, larder_position_t* out);

/* Opens the table `name`; LARDER_E_NOT_FOUND names the tables there are.
 * The table keeps the segment's mapping alive: close it before or after the
 * segment. */
int larder_table_open(const larder_segment* segment, const char* name, larder_table** out, char* err, size_t errlen);
/* NULL is a no-op. */
void larder_table_close(larder_table* table);
/* Bytes of one row buffer (a multiple of 8); 0 for NULL. */
size_t larder_table_row_bytes(const larder_table* table);
uint32_t larder_table_field_count(const larder_table* table);
/* {NULL, 0, 0} for an index out of range. */
larder_field_info larder_table_field(const larder_table* table, uint32_t index);

/* The field index no field has: larder_field_lookup stores it on failure,
 * and every accessor given it answers "no value". */
#define LARDER_NO_FIELD UINT32_MAX

/* The index of field `name` into *index: LARDER_E_OK; LARDER_E_NOT_FOUND
 * (and *index = LARDER_NO_FIELD) when the table has no such field;
 * LARDER_E_INVALID_ARGUMENT for a NULL argument (*index = LARDER_NO_FIELD
 * when index != NULL). Field indexes are uint32_t everywhere. */
int larder_field_lookup(const larder_table* table, const char* name, uint32_t* index);
/* Deprecated since 1.1 (kept for ABI 1.0 callers): the index as int32_t,
 * -1 when the table has no such field or an argument is NULL. Use
 * larder_field_lookup. */
int32_t larder_field_index(const larder_table* table, const char* name) LARDER_DEPRECATED("larder_field_lookup");

/* Counters and freshness of one table (C++ larder::TableStats). Set size =
 * sizeof(larder_table_stats_t) before the call. The writer updates them with
 * relaxed stores: each is a recent value, not one snapshot of all. */
typedef struct larder_table_stats_t {
  uint32_t size;       /* in: sizeof as the caller compiled it; out: bytes filled */
  uint32_t aggregates; /* aggregate fields (docs/aggregates.md) */
  uint64_t capacity;   /* live keys the table accepts */
  uint64_t slot_count; /* slots of the hash table */
  uint64_t live_keys;
  uint64_t tombstones; /* deleted keys still remembered */
  uint64_t upserts;
  uint64_t deletes;
  uint64_t stale_ignored;     /* updates older than the row (last write wins) */
  uint64_t full_rejected;     /* new keys refused: the table was full */
  int64_t last_apply_unix_ns; /* when the writer last changed the table; 0: never */
  int64_t max_event_time_ms;  /* newest event time applied; 0: none */
  uint64_t aggregate_events;  /* events folded into aggregates */
  uint64_t late_dropped;      /* aggregate inputs older than the allowed lateness */
  uint64_t duplicates;        /* events ignored because their id was seen */
  uint64_t dedup_evictions;   /* ids forgotten inside their horizon */
  uint64_t refreshes;         /* keys rewritten because a bucket left a window */
  int64_t aggregate_clock_ms; /* the aggregates' clock */
  /* 1.2: every key's aggregates are exact as of this aggregate clock instant;
   * it stops when the writer does (0: not known yet, or an older writer) */
  int64_t refreshed_through_ms;
} larder_table_stats_t;

/* Fills the first out->size bytes of *out (as larder_segment_stats) and sets
 * out->size to the bytes filled. LARDER_E_OK, or LARDER_E_INVALID_ARGUMENT
 * for a NULL argument or out->size < 8. Lock-free, never allocates. */
int larder_table_stats(const larder_table* table, larder_table_stats_t* out);

/* Copies the row of key into row (larder_table_row_bytes bytes, 8-byte
 * aligned). max_age_ms > 0 turns rows older than that into LARDER_STALE.
 * Returns LARDER_OK, LARDER_NOT_FOUND, LARDER_STALE (row filled), LARDER_BUSY,
 * LARDER_INVALID_KEY (empty or longer than the table's key_max_len; also a
 * NULL table or row, or a NULL key with key_len > 0: nothing is read) or
 * LARDER_CORRUPT (the slot holds a length outside the schema; do not use the
 * row). */
larder_read_result larder_get(const larder_table* table, const void* key, size_t key_len, void* row,
                              int64_t max_age_ms);
/* n lookups with prefetching; rows is n consecutive row buffers, results n
 * results (each as larder_get). A NULL table, keys, key_lens or rows with
 * n > 0 reads nothing and sets every result to LARDER_INVALID_KEY (nothing
 * at all when results is NULL). */
void larder_get_many(const larder_table* table, const void* const* keys, const size_t* key_lens, size_t n, void* rows,
                     larder_read_result* results, int64_t max_age_ms);

/* Accessors on a row buffer filled by larder_get (status LARDER_OK or
 * LARDER_STALE). They read the caller's copy, never shared memory. Each reads
 * a field of its own type: for a NULL table or row, an index out of range
 * (LARDER_NO_FIELD), or a field of another type, it reads nothing and returns
 * 0 (larder_row_valid, _int64, _bool), NaN (_float64, _float32, _as_double)
 * or NULL with *dims / *len set to 0 (_vector, _string). */
int larder_row_valid(const larder_table* table, const void* row, uint32_t field);
int64_t larder_row_int64(const larder_table* table, const void* row, uint32_t field);
double larder_row_float64(const larder_table* table, const void* row, uint32_t field);
float larder_row_float32(const larder_table* table, const void* row, uint32_t field);
int larder_row_bool(const larder_table* table, const void* row, uint32_t field);
/* Any scalar as double; NaN for vectors and strings. */
double larder_row_as_double(const larder_table* table, const void* row, uint32_t field);
/* Points into the row buffer; *dims or *len receive the size (0 with NULL). */
const float* larder_row_vector(const larder_table* table, const void* row, uint32_t field, uint32_t* dims);
const char* larder_row_string(const larder_table* table, const void* row, uint32_t field, uint32_t* len);

/* The row's event time (the newest event applied to it) and when the writer
 * applied it; 0 for a NULL table or row. The same values as the
 * larder_read_result of the read that filled the buffer. */
int64_t larder_row_event_time_ms(const larder_table* table, const void* row);
int64_t larder_row_apply_unix_ns(const larder_table* table, const void* row);
/* The row's key: its length into *key_len (when key_len != NULL) and its
 * bytes into buf (not NUL-terminated). LARDER_E_OK; LARDER_E_NO_SPACE when
 * buflen is less than the key's length (*key_len receives it, buf is left
 * alone: call again with a larger buffer; the key never exceeds the table's
 * key_max_len); LARDER_E_CORRUPT when the buffer's stored key length is 0 or
 * above the table's key_max_len (not a row a read returned);
 * LARDER_E_INVALID_ARGUMENT for a NULL table or row, or a NULL buf with
 * buflen > 0. */
int larder_row_key(const larder_table* table, const void* row, char* buf, size_t buflen, size_t* key_len);

/* The name of a read status: "ok", "not_found", "stale", "busy",
 * "invalid_key", "corrupt" (the LARDER_* constant without its prefix, in lower case);
 * "unknown" for any other number. Static strings. */
const char* larder_status_name(int32_t status);
/* The name of a LARDER_E_* code: "ok", "invalid_argument", "not_found", ...,
 * "system" (the constant without LARDER_E_, in lower case); "unknown" for
 * any other number. Static strings. */
const char* larder_error_name(int code);
int64_t larder_now_unix_ms(void);

/* ---- Batch gathers for bindings (NumPy and friends) ----------------------
 *
 * Read n keys and write chosen fields straight into caller arrays, so that a
 * binding builds no per-key objects. The keys are key_bytes[0 .. key_len) in
 * one of three forms:
 *   key_offsets != NULL  key i is key_bytes[key_offsets[i] .. key_offsets[i+1])
 *                        (n + 1 offsets, the last <= key_len);
 *   key_width > 0        fixed-width keys, NUL padded (a NumPy 'S' array):
 *                        key i is key_bytes[i * key_width ..], trailing NULs
 *                        dropped (n * key_width <= key_len);
 *   otherwise            NUL-terminated keys one after another: exactly n NUL
 *                        bytes, the last at key_len - 1 (so no key holds a
 *                        NUL; when one does, pass offsets instead).
 * status[i] receives the read status (LARDER_OK, ...) and event_time_ms[i]
 * the row's event time (0 unless LARDER_OK or LARDER_STALE); either may be
 * NULL. Values are written for LARDER_OK and LARDER_STALE rows (a stale row
 * is still filled, as with larder_get); every other cell receives the
 * missing value: rows not found, busy or with an invalid key, fields never
 * written (validity bit clear), and scalar field indices that are out of
 * range or not scalars. All fields of a key come from one read of its row,
 * so they are one consistent version of it.
 * Return LARDER_E_OK, or LARDER_E_INVALID_ARGUMENT when a required pointer is
 * NULL, a vector field is not a vector, or the keys do not match their form
 * and key_len. NUL-terminated keys are checked while they are read, so after
 * that refusal the outputs hold partial results; every other refusal comes
 * before anything is read or written. Never reads key_bytes past key_len.
 * Lock-free. Never blocks on the writer. Never allocates, except on the
 * first gather of a table (its field offsets: LARDER_E_SYSTEM when out of
 * memory) and once per thread for rows wider than 32 KiB. Uses up to 32 KiB
 * of stack. */

/* Scalar fields (int64, float64, float32, bool as 0/1) as doubles into out,
 * row-major n x nfields: out[i * nfields + j] is field fields[j] of key i. */
int larder_gather_f64(const larder_table* table, const char* key_bytes, size_t key_len, const uint64_t* key_offsets,
                      size_t key_width, size_t n, const uint32_t* fields, size_t nfields, double* out, int32_t* status,
                      int64_t* event_time_ms, int64_t max_age_ms, double missing_value);

/* One float32 vector field into out, row-major n x dims (dims: the field's
 * count). */
int larder_gather_vector(const larder_table* table, const char* key_bytes, size_t key_len, const uint64_t* key_offsets,
                         size_t key_width, size_t n, uint32_t field, float* out, int32_t* status,
                         int64_t* event_time_ms, int64_t max_age_ms, float missing_value);

/* Both in one pass: scalar fields into scalar_out (n x nscalar, as
 * larder_gather_f64) and the vector fields into vector_out, row-major
 * n x D where D is the sum of their dims: key i's vectors one after another,
 * in the order of vector_fields, from vector_out[i * D]. */
int larder_gather(const larder_table* table, const char* key_bytes, size_t key_len, const uint64_t* key_offsets,
                  size_t key_width, size_t n, const uint32_t* scalar_fields, size_t nscalar, double* scalar_out,
                  double missing_scalar, const uint32_t* vector_fields, size_t nvector, float* vector_out,
                  float missing_vector, int32_t* status, int64_t* event_time_ms, int64_t max_age_ms);

/* Where things sit in a row buffer filled by larder_get, so that a binding
 * can decode a whole row with one unpack instead of one call per field. Byte
 * offsets from the start of the buffer; fixed for an open table. Bit f % 64
 * of the little-endian uint64 at larder_row_validity_offset() + 8 * (f / 64)
 * is field f's validity; a field's value starts at larder_row_field_offset()
 * (a string: uint32 length, then its bytes). UINT32_MAX for a NULL table, a
 * field out of range, or when out of memory (these functions allocate; call
 * them at start-up).
 *
 * Deprecated since 1.1: larder_row_key_offset and reading the event time,
 * apply time or key length at fixed offsets (0, 8, 16). Use
 * larder_row_event_time_ms, larder_row_apply_unix_ns and larder_row_key,
 * which check the stored key length. */
uint32_t larder_row_validity_offset(const larder_table* table);
uint32_t larder_row_key_offset(const larder_table* table) LARDER_DEPRECATED("larder_row_key");
uint32_t larder_row_field_offset(const larder_table* table, uint32_t field);

/* larder_get with the result through a pointer and the status returned, for
 * FFIs where returning a struct by value is slow or unsupported. result may
 * be NULL. */
int32_t larder_get_into(const larder_table* table, const void* key, size_t key_len, void* row, int64_t max_age_ms,
                        larder_read_result* result);

/* ---- Two ages (ABI 1.2) ---------------------------------------------------
 *
 * A row has two ages (docs/client.md, "Two ages"): since its newest event
 * (event_time_ms) and since the writer last brought its values up to date
 * (computed_at_ms). For a table with aggregates that is the later of the
 * apply time and the instant as of which the writer had refreshed every
 * key's windows, so a key with no recent event whose windowed features are
 * current is young by it; it stops moving when the writer stops. For a
 * table without aggregates it is the apply time. larder_get bounds the event
 * age; these functions bound either. */
enum { LARDER_AGE_OF_EVENT = 0, LARDER_AGE_OF_COMPUTED = 1 };

/* Options of larder_get_ex, larder_get_many_ex and larder_gather_ex. Zero-initialise, set
 * size = sizeof(larder_read_options), then the fields wanted (as
 * larder_open_options: later minor versions append fields, zero keeps
 * their default). */
typedef struct larder_read_options {
  uint32_t size;      /* sizeof(larder_read_options) as the caller compiled it */
  int32_t age_of;     /* LARDER_AGE_OF_EVENT (0: larder_get's) or LARDER_AGE_OF_COMPUTED */
  int64_t max_age_ms; /* > 0: a row older than this, by age_of, reads LARDER_STALE (row filled) */
} larder_read_options;

/* larder_get_into with options (NULL: no bound) that also stores the row's
 * computed-at instant (ms, the clock of event times) into *computed_at_ms
 * when computed_at_ms != NULL (0 unless LARDER_OK or LARDER_STALE). result
 * may be NULL. Returns the status, as larder_get; LARDER_INVALID_KEY, and
 * nothing read, also for options the library cannot honour: size below 8,
 * above 4096 or ending inside a field, an age_of other than the two, or
 * non-zero bytes beyond the struct this library knows. Lock-free, never
 * allocates, never blocks on the writer. */
int32_t larder_get_ex(const larder_table* table, const void* key, size_t key_len, void* row,
                      const larder_read_options* options, larder_read_result* result, int64_t* computed_at_ms);
/* larder_get_many with options; computed_at_ms, when not NULL, receives n
 * values (as larder_get_ex). Options it cannot honour set every result to
 * LARDER_INVALID_KEY (and every computed_at_ms to 0). */
void larder_get_many_ex(const larder_table* table, const void* const* keys, const size_t* key_lens, size_t n,
                        void* rows, larder_read_result* results, const larder_read_options* options,
                        int64_t* computed_at_ms);

/* larder_gather with read options (1.2; NULL: no bound, as max_age_ms 0) in
 * place of max_age_ms, and computed_at_ms (may be NULL) receiving each key's
 * computed-at instant as larder_get_ex gives it (0 unless LARDER_OK or
 * LARDER_STALE). Options larder_get_ex would refuse return
 * LARDER_E_INVALID_ARGUMENT before anything is read or written. */
int larder_gather_ex(const larder_table* table, const char* key_bytes, size_t key_len, const uint64_t* key_offsets,
                     size_t key_width, size_t n, const uint32_t* scalar_fields, size_t nscalar, double* scalar_out,
                     double missing_scalar, const uint32_t* vector_fields, size_t nvector, float* vector_out,
                     float missing_vector, int32_t* status, int64_t* event_time_ms, const larder_read_options* options,
                     int64_t* computed_at_ms);
/* ---- Field groups (1.2) ---------------------------------------------------
 *
 * Fields of a table can belong to named groups, each with its own event time,
 * last write wins and age (docs/client.md#field-groups). A table without
 * groups has group count 0. */

#define LARDER_MAX_GROUPS 8
/* The group index no group has (larder_group_lookup on failure,
 * larder_field_group for a table without groups). */
#define LARDER_NO_GROUP UINT32_MAX
/* The event time of a group that no update or delete has reached (INT64_MIN):
 * older than any time, so its age is "infinitely old". */
#define LARDER_NO_GROUP_TIME INT64_MIN

/* A bound on one group's age: a read whose row has group `group` older than
 * max_age_ms (> 0) returns LARDER_STALE (row filled). */
typedef struct larder_group_max_age {
  uint32_t group;
  uint32_t reserved; /* 0 */
  int64_t max_age_ms;
} larder_group_max_age;

/* Groups of the table: 0..count-1, in the segment's order. */
uint32_t larder_table_group_count(const larder_table* table);
/* The name of a group, NUL-terminated, valid while the table is open; NULL
 * for a NULL table or a group out of range. */
const char* larder_table_group_name(const larder_table* table, uint32_t group);
/* The index of group `name` into *index: LARDER_E_OK; LARDER_E_NOT_FOUND (and
 * *index = LARDER_NO_GROUP); LARDER_E_INVALID_ARGUMENT for a NULL argument. */
int larder_group_lookup(const larder_table* table, const char* name, uint32_t* index);
/* The group of a field; LARDER_NO_GROUP for a NULL table, a field out of
 * range or a table without groups. */
uint32_t larder_field_group(const larder_table* table, uint32_t field);
/* A group's event time in a row buffer filled by a read; LARDER_NO_GROUP_TIME
 * for a group never written, a NULL table or row, or a group out of range. */
int64_t larder_row_group_event_time_ms(const larder_table* table, const void* row, uint32_t group);
/* larder_get_ex (options and computed_at_ms as there, both may be NULL) with a
 * bound on each of ngroup_max_age groups, by their event times (the row's
 * own bound, options->max_age_ms, applies as in larder_get_ex).
 * LARDER_INVALID_KEY, reading nothing, also when a bound names a group the
 * table does not have, or more bounds than groups are given, or
 * group_max_age is NULL with ngroup_max_age > 0. */
int32_t larder_get_groups(const larder_table* table, const void* key, size_t key_len, void* row,
                          const larder_read_options* options, const larder_group_max_age* group_max_age,
                          size_t ngroup_max_age, larder_read_result* result, int64_t* computed_at_ms);
/* larder_gather_ex (options and computed_at_ms as there) with group bounds
 * (as larder_get_groups) and, when group_event_time_ms != NULL, every row's
 * group event times into it, row-major n x larder_table_group_count
 * (LARDER_NO_GROUP_TIME for keys with no row). LARDER_E_INVALID_ARGUMENT also
 * for options or bounds larder_get_groups refuses, before anything is read. */
int larder_gather_groups(const larder_table* table, const char* key_bytes, size_t key_len, const uint64_t* key_offsets,
                         size_t key_width, size_t n, const uint32_t* scalar_fields, size_t nscalar, double* scalar_out,
                         double missing_scalar, const uint32_t* vector_fields, size_t nvector, float* vector_out,
                         float missing_vector, int32_t* status, int64_t* event_time_ms,
                         const larder_read_options* options, const larder_group_max_age* group_max_age,
                         size_t ngroup_max_age, int64_t* computed_at_ms, int64_t* group_event_time_ms);

#ifdef __cplusplus
}
#endif

#endif /* LARDER_LARDER_H_ */
