/* The whole C ABI (larder/larder.h) from C11, as a binding author sees it:
 * every function, its documented errors and its answers to bad arguments,
 * against segments the C++ writer made (the larder-test-writer tool, run as
 * a child process: "write" and "sync" for a fixed segment, "churn" for a
 * live writer that rewrites rows while this program reads them).
 *
 *   larder_c_abi_test PATH-TO-larder-test-writer
 *
 * tests/scripts/c_abi_coverage.sh fails when a function of larder.h is not
 * called here. Exit 0 when every check held; each failed check prints its
 * line. */
#define _POSIX_C_SOURCE 200809L
/* The deprecated functions are part of the ABI and tested like the rest. */
#define LARDER_ALLOW_DEPRECATED

#include <larder/larder.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                              \
    }                                                                          \
  } while (0)

/* Stops the test: what follows depends on it. */
#define REQUIRE(cond)                                                                   \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      fprintf(stderr, "%s:%d: required check failed: %s\n", __FILE__, __LINE__, #cond); \
      exit(1);                                                                          \
    }                                                                                   \
  } while (0)

/* Not "demo": a check opens it in /dev/shm, where it must not exist. */
#define DEMO "larder-c-abi-demo"

static const char* writer_tool;
static char dir[64];

/* Runs the writer tool to completion; 1 when it exited 0. */
static int run_writer(char* const argv[]) {
  const pid_t pid = fork();
  if (pid < 0) return 0;
  if (pid == 0) {
    execv(writer_tool, argv);
    _exit(127);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return 0;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* The demo schema's values (client_lib/python/tests/expected.py), seed 3. */
enum { kSeed = 3, kRows = 500 };

static void user_key(int k, char out[16]) { snprintf(out, 16, "u%06d", k); }

static void check_version(void) {
  CHECK(larder_version() == LARDER_ABI_VERSION);
  CHECK(larder_version() >> 16 == LARDER_ABI_VERSION_MAJOR);
  char expect[32];
  snprintf(expect, sizeof expect, "%d.%d", LARDER_ABI_VERSION_MAJOR, LARDER_ABI_VERSION_MINOR);
  CHECK(strcmp(larder_version_string(), expect) == 0);
}

static void check_names(void) {
  CHECK(strcmp(larder_status_name(LARDER_OK), "ok") == 0);
  CHECK(strcmp(larder_status_name(LARDER_CORRUPT), "corrupt") == 0);
  CHECK(strcmp(larder_status_name(-1), "unknown") == 0);
  CHECK(strcmp(larder_status_name(0x105), "unknown") == 0);
  CHECK(strcmp(larder_error_name(LARDER_E_SCHEMA_MISMATCH), "schema_mismatch") == 0);
  CHECK(strcmp(larder_error_name(LARDER_E_NO_SPACE), "no_space") == 0);
  CHECK(strcmp(larder_error_name(99), "unknown") == 0);
  const int64_t now = larder_now_unix_ms();
  CHECK(now > 1600000000000LL); /* after 2020: the wall clock, in ms */
}

/* larder_open and larder_open_ex: options, their size rule and every refusal. */
static void check_open(uint64_t fingerprint) {
  char err[256];
  larder_segment* seg = (larder_segment*)1;

  /* larder_open: missing segment, bad arguments, a bad name. */
  CHECK(larder_open("no-such-segment", dir, &seg, err, sizeof err) == LARDER_E_NOT_FOUND);
  CHECK(seg == NULL);
  CHECK(strstr(err, "no-such-segment") != NULL);
  CHECK(larder_open(NULL, dir, &seg, err, sizeof err) == LARDER_E_INVALID_ARGUMENT);
  CHECK(larder_open(DEMO, dir, NULL, err, sizeof err) == LARDER_E_INVALID_ARGUMENT);
  CHECK(larder_open("../demo", dir, &seg, err, sizeof err) == LARDER_E_INVALID_ARGUMENT);
  CHECK(larder_open("no-such-segment", dir, &seg, NULL, 0) == LARDER_E_NOT_FOUND); /* no message wanted */
  REQUIRE(larder_open(DEMO, dir, &seg, err, sizeof err) == LARDER_E_OK);
  larder_close(seg);

  larder_open_options o;
  memset(&o, 0, sizeof o);
  o.size = sizeof o;
  o.dir = dir;
  REQUIRE(larder_open_ex(DEMO, &o, &seg, err, sizeof err) == LARDER_E_OK);
  larder_close(seg);

  /* NULL options: every default, so /dev/shm, where "demo" is not ours. */
  seg = (larder_segment*)1;
  CHECK(larder_open_ex("larder-c-abi-test-absent", NULL, &seg, err, sizeof err) == LARDER_E_NOT_FOUND);
  CHECK(seg == NULL);

  /* The expected schema: the right one opens, any other is refused with
   * its own code and both fingerprints named. */
  o.expected_schema_fingerprint = fingerprint;
  o.max_retries = 1;
  CHECK(larder_open_ex(DEMO, &o, &seg, err, sizeof err) == LARDER_E_OK);
  larder_close(seg);
  o.expected_schema_fingerprint = fingerprint ^ 1u;
  CHECK(larder_open_ex(DEMO, &o, &seg, err, sizeof err) == LARDER_E_SCHEMA_MISMATCH);
  CHECK(seg == NULL);
  CHECK(strstr(err, "fingerprint") != NULL);
  o.expected_schema_fingerprint = 0;

  /* The ABI the caller needs. */
  o.abi_version = LARDER_ABI_VERSION;
  CHECK(larder_open_ex(DEMO, &o, &seg, err, sizeof err) == LARDER_E_OK);
  larder_close(seg);
  o.abi_version = (LARDER_ABI_VERSION_MAJOR << 16) | (LARDER_ABI_VERSION_MINOR + 1);
  CHECK(larder_open_ex(DEMO, &o, &seg, err, sizeof err) == LARDER_E_VERSION_MISMATCH);
  CHECK(strstr(err, "upgrade liblarder") != NULL);
  o.abi_version = (uint32_t)(LARDER_ABI_VERSION_MAJOR + 1) << 16;
  CHECK(larder_open_ex(DEMO, &o, &seg, err, sizeof err) == LARDER_E_VERSION_MISMATCH);
  o.abi_version = 0;

  /* reserved must stay zero. */
  o.reserved = 1;
  CHECK(larder_open_ex(DEMO, &o, &seg, err, sizeof err) == LARDER_E_INVALID_ARGUMENT);
  o.reserved = 0;

  /* Sizes: too small, ending inside a field, an older (shorter) struct
   * whose missing fields take their defaults. */
  o.size = 4;
  CHECK(larder_open_ex(DEMO, &o, &seg, err, sizeof err) == LARDER_E_INVALID_ARGUMENT);
  o.size = 12;
  CHECK(larder_open_ex(DEMO, &o, &seg, err, sizeof err) == LARDER_E_INVALID_ARGUMENT);
  CHECK(strstr(err, "inside a field") != NULL);
  o.size = (uint32_t)offsetof(larder_open_options, dir); /* dir not covered: /dev/shm */
  CHECK(larder_open_ex(DEMO, &o, &seg, err, sizeof err) == LARDER_E_NOT_FOUND);
  CHECK(strstr(err, "/dev/shm") != NULL);
  o.size = (uint32_t)offsetof(larder_open_options, expected_schema_fingerprint);
  o.expected_schema_fingerprint = fingerprint ^ 1u; /* beyond size: not read */
  CHECK(larder_open_ex(DEMO, &o, &seg, err, sizeof err) == LARDER_E_OK);
  larder_close(seg);
  o.expected_schema_fingerprint = 0;
  o.size = 1u << 20;
  CHECK(larder_open_ex(DEMO, &o, &seg, err, sizeof err) == LARDER_E_INVALID_ARGUMENT);

  /* A newer, longer struct: a zero tail is accepted, a set field this
   * library does not know is refused. */
  struct {
    larder_open_options known;
    uint64_t appended;
  } newer;
  memset(&newer, 0, sizeof newer);
  newer.known.size = sizeof newer;
  newer.known.dir = dir;
  CHECK(larder_open_ex(DEMO, &newer.known, &seg, err, sizeof err) == LARDER_E_OK);
  larder_close(seg);
  newer.appended = 7;
  CHECK(larder_open_ex(DEMO, &newer.known, &seg, err, sizeof err) == LARDER_E_INVALID_ARGUMENT);
  CHECK(strstr(err, "newer larder.h") != NULL);

  larder_close(NULL); /* a no-op */
}

static void check_segment(const larder_segment* seg, int64_t written_after_ms, int64_t written_before_ms) {
  const larder_segment_info info = larder_segment_stat(seg);
  CHECK(info.state == 1);
  CHECK(info.writer_pid == 0); /* the tool has exited */
  CHECK(info.schema_fingerprint != 0);
  CHECK(larder_writer_alive(seg, 60000) == 0);

  larder_segment_stats_t st;
  memset(&st, 0xab, sizeof st);
  st.size = sizeof st;
  REQUIRE(larder_segment_stats(seg, &st) == LARDER_E_OK);
  CHECK(st.size == sizeof st);
  CHECK(st.state == info.state);
  CHECK(st.layout_version == info.layout_version);
  CHECK(st.schema_fingerprint == info.schema_fingerprint);
  CHECK(st.segment_bytes > 0);
  CHECK(st.writer_pid == 0);
  CHECK(st.writer_sessions >= 2); /* write, then sync */
  CHECK(st.repaired_slots == 0);
  CHECK(st.updates_applied == info.updates_applied);
  CHECK(st.created_unix_ns / 1000000 >= written_after_ms - 1);
  CHECK(st.created_unix_ns / 1000000 <= written_before_ms + 1);
  CHECK(st.sync_state == LARDER_SYNC_READY);
  CHECK(st.table_count == 2);
  (void)st.generation;

  /* An older caller's shorter struct: only its bytes are written. */
  larder_segment_stats_t small;
  memset(&small, 0xab, sizeof small);
  small.size = 16;
  CHECK(larder_segment_stats(seg, &small) == LARDER_E_OK);
  CHECK(small.size == 16);
  CHECK(small.layout_version == info.layout_version);
  CHECK(small.schema_fingerprint == 0xababababababababULL);
  small.size = 4;
  CHECK(larder_segment_stats(seg, &small) == LARDER_E_INVALID_ARGUMENT);
  CHECK(larder_segment_stats(NULL, &st) == LARDER_E_INVALID_ARGUMENT);
  CHECK(larder_segment_stats(seg, NULL) == LARDER_E_INVALID_ARGUMENT);

  char name[16];
  size_t len = 0;
  CHECK(larder_segment_table_name(seg, 0, name, sizeof name, &len) == LARDER_E_OK);
  CHECK(strcmp(name, "users") == 0 && len == 5);
  CHECK(larder_segment_table_name(seg, 1, name, sizeof name, NULL) == LARDER_E_OK);
  CHECK(strcmp(name, "items") == 0);
  CHECK(larder_segment_table_name(seg, 2, name, sizeof name, &len) == LARDER_E_NOT_FOUND);
  len = 0;
  CHECK(larder_segment_table_name(seg, 0, name, 5, &len) == LARDER_E_NO_SPACE); /* no room for the NUL */
  CHECK(len == 5);
  CHECK(larder_segment_table_name(seg, 0, NULL, 0, &len) == LARDER_E_NO_SPACE); /* a length query */
  CHECK(larder_segment_table_name(seg, 0, NULL, 8, &len) == LARDER_E_INVALID_ARGUMENT);
  CHECK(larder_segment_table_name(NULL, 0, name, sizeof name, &len) == LARDER_E_INVALID_ARGUMENT);

  /* The sync tool's source block: READY, two partitions. */
  CHECK(larder_segment_state(seg) == LARDER_SYNC_READY);
  larder_sync_info_t sync;
  larder_segment_sync_info(seg, &sync);
  CHECK(sync.state == LARDER_SYNC_READY);
  CHECK(sync.partition_count == 2);
  CHECK(strcmp(sync.source_id, "amqp / stream features.stream") == 0);
  CHECK(sync.changed_unix_ns > 0);
  larder_position_t pos;
  CHECK(larder_segment_position(seg, 0, &pos) == LARDER_OK);
  CHECK(pos.flags == (LARDER_POSITION_HAS_NEXT | LARDER_POSITION_HAS_TARGET));
  CHECK(pos.next_offset == 1234 && pos.skip_updates == 2 && pos.target == 5000);
  CHECK(larder_segment_position(seg, 1, &pos) == LARDER_OK);
  CHECK(pos.flags == LARDER_POSITION_HAS_FIRST_RETAINED && pos.first_retained == 77);
  CHECK(larder_segment_position(seg, 2, &pos) == LARDER_NOT_FOUND);
  CHECK(pos.flags == 0);
  CHECK(larder_segment_position(seg, 0, NULL) == LARDER_NOT_FOUND);
  CHECK(larder_segment_position(NULL, 0, &pos) == LARDER_NOT_FOUND);

  /* NULL segments answer "nothing". */
  CHECK(larder_segment_state(NULL) == LARDER_SYNC_UNKNOWN);
  larder_segment_sync_info(NULL, &sync);
  CHECK(sync.state == 0 && sync.partition_count == 0 && sync.source_id[0] == '\0');
  larder_segment_sync_info(seg, NULL);
  CHECK(larder_segment_stat(NULL).state == 0);
  CHECK(larder_writer_alive(NULL, 1000) == 0);
}

typedef struct {
  uint32_t clicks, spend, premium, country, embedding;
} user_fields;

static void check_fields(const larder_table* users, user_fields* f) {
  CHECK(larder_table_field_count(users) == 5);
  CHECK(larder_field_lookup(users, "clicks_1h", &f->clicks) == LARDER_E_OK);
  CHECK(larder_field_lookup(users, "spend_usd", &f->spend) == LARDER_E_OK);
  CHECK(larder_field_lookup(users, "is_premium", &f->premium) == LARDER_E_OK);
  CHECK(larder_field_lookup(users, "country", &f->country) == LARDER_E_OK);
  CHECK(larder_field_lookup(users, "embedding", &f->embedding) == LARDER_E_OK);
  CHECK(f->clicks == 0 && f->spend == 1 && f->premium == 2 && f->country == 3 && f->embedding == 4);
  uint32_t none = 0;
  CHECK(larder_field_lookup(users, "nope", &none) == LARDER_E_NOT_FOUND);
  CHECK(none == LARDER_NO_FIELD);
  none = 0;
  CHECK(larder_field_lookup(NULL, "clicks_1h", &none) == LARDER_E_INVALID_ARGUMENT);
  CHECK(none == LARDER_NO_FIELD);
  CHECK(larder_field_lookup(users, NULL, &none) == LARDER_E_INVALID_ARGUMENT);
  CHECK(larder_field_lookup(users, "clicks_1h", NULL) == LARDER_E_INVALID_ARGUMENT);

  /* The deprecated int32_t form agrees, -1 for "none". */
  CHECK(larder_field_index(users, "embedding") == 4);
  CHECK(larder_field_index(users, "nope") == -1);
  CHECK(larder_field_index(NULL, "embedding") == -1);

  const larder_field_info emb = larder_table_field(users, f->embedding);
  CHECK(strcmp(emb.name, "embedding") == 0 && emb.type == LARDER_FLOAT32_VECTOR && emb.count == 16);
  const larder_field_info country = larder_table_field(users, f->country);
  CHECK(country.type == LARDER_STRING && country.count == 8);
  CHECK(larder_table_field(users, 5).name == NULL);
  CHECK(larder_table_field(users, LARDER_NO_FIELD).name == NULL);
  CHECK(larder_table_field(NULL, 0).name == NULL);
  CHECK(larder_table_field_count(NULL) == 0);
  CHECK(larder_table_row_bytes(NULL) == 0);
}

static void check_table_stats(const larder_table* users, int64_t written_after_ms, int64_t written_before_ms) {
  larder_table_stats_t s;
  memset(&s, 0, sizeof s);
  s.size = sizeof s;
  REQUIRE(larder_table_stats(users, &s) == LARDER_E_OK);
  CHECK(s.size == sizeof s);
  CHECK(s.capacity == 20000);
  CHECK(s.slot_count >= s.capacity);
  CHECK(s.live_keys == kRows);
  CHECK(s.tombstones == 0);
  CHECK(s.deletes == 0 && s.full_rejected == 0 && s.stale_ignored == 0);
  CHECK(s.aggregates == 0 && s.aggregate_events == 0 && s.late_dropped == 0 && s.duplicates == 0);
  CHECK(s.dedup_evictions == 0 && s.refreshes == 0);
  (void)s.upserts;                    /* counted since the writer attached */
  (void)s.aggregate_clock_ms;         /* no aggregates: not meaningful */
  CHECK(s.refreshed_through_ms == 0); /* no aggregates: nothing to refresh */
  /* Freshness: the newest event is "now" at write time (key 10's age step is 0). */
  CHECK(s.max_event_time_ms >= written_after_ms && s.max_event_time_ms <= written_before_ms);
  CHECK(s.last_apply_unix_ns / 1000000 >= written_after_ms - 1);
  CHECK(s.last_apply_unix_ns / 1000000 <= written_before_ms + 1);

  larder_table_stats_t small;
  memset(&small, 0x5a, sizeof small);
  small.size = 8;
  CHECK(larder_table_stats(users, &small) == LARDER_E_OK);
  CHECK(small.size == 8 && small.aggregates == 0 && small.capacity == 0x5a5a5a5a5a5a5a5aULL);
  small.size = 7;
  CHECK(larder_table_stats(users, &small) == LARDER_E_INVALID_ARGUMENT);
  CHECK(larder_table_stats(NULL, &s) == LARDER_E_INVALID_ARGUMENT);
  CHECK(larder_table_stats(users, NULL) == LARDER_E_INVALID_ARGUMENT);
}

static void check_rows(const larder_table* users, const user_fields* f, int64_t written_before_ms) {
  const size_t row_bytes = larder_table_row_bytes(users);
  REQUIRE(row_bytes > 0 && row_bytes % 8 == 0);
  uint64_t* row = calloc(row_bytes / 8, 8);
  uint64_t* copy = calloc(row_bytes / 8, 8);
  REQUIRE(row != NULL && copy != NULL);

  for (int k = 1; k <= 70; ++k) {
    char key[16];
    user_key(k, key);
    const larder_read_result r = larder_get(users, key, strlen(key), row, 0);
    REQUIRE(r.status == LARDER_OK);
    CHECK(larder_row_event_time_ms(users, row) == r.event_time_ms);
    CHECK(larder_row_apply_unix_ns(users, row) == r.apply_unix_ns);
    CHECK(r.event_time_ms <= written_before_ms - (k % 10) * 60000 + 1);
    CHECK(r.apply_unix_ns > 0);

    char got[32];
    size_t len = 0;
    CHECK(larder_row_key(users, row, got, sizeof got, &len) == LARDER_E_OK);
    CHECK(len == strlen(key) && memcmp(got, key, len) == 0);

    CHECK(larder_row_valid(users, row, f->clicks) == 1);
    CHECK(larder_row_int64(users, row, f->clicks) == (k * 7 + kSeed) % 1000);
    CHECK(larder_row_as_double(users, row, f->clicks) == (double)((k * 7 + kSeed) % 1000));
    CHECK(larder_row_valid(users, row, f->spend) == (k % 13 != 0));
    if (k % 13 != 0) CHECK(larder_row_float64(users, row, f->spend) == k * 0.25 + kSeed);
    CHECK(larder_row_bool(users, row, f->premium) == (k % 3 == 0));
    CHECK(larder_row_as_double(users, row, f->premium) == (k % 3 == 0 ? 1.0 : 0.0));
    static const char* const countries[] = {"SE", "US", "DE", "FR", "JP"};
    uint32_t slen = 99;
    const char* s = larder_row_string(users, row, f->country, &slen);
    if (k % 11 != 0) {
      CHECK(larder_row_valid(users, row, f->country) == 1);
      CHECK(s != NULL && slen == 2 && memcmp(s, countries[k % 5], 2) == 0);
    } else {
      CHECK(larder_row_valid(users, row, f->country) == 0);
    }
    uint32_t dims = 0;
    const float* v = larder_row_vector(users, row, f->embedding, &dims);
    CHECK(v != NULL && dims == 16);
    CHECK(larder_row_valid(users, row, f->embedding) == (k % 7 != 0));
    if (v != NULL && k % 7 != 0) {
      for (uint32_t i = 0; i < 16; ++i) CHECK(v[i] == (float)(k % 1000) / 8.0f + (float)i * 0.5f);
    }
    CHECK(isnan(larder_row_as_double(users, row, f->embedding)));
    CHECK(isnan(larder_row_as_double(users, row, f->country)));

    /* The deprecated offsets describe the same bytes. */
    const unsigned char* bytes = (const unsigned char*)row;
    CHECK(memcmp(bytes + larder_row_key_offset(users), key, strlen(key)) == 0);
    uint64_t validity;
    memcpy(&validity, bytes + larder_row_validity_offset(users), sizeof validity);
    CHECK((int)((validity >> f->spend) & 1u) == larder_row_valid(users, row, f->spend));
    int64_t clicks;
    memcpy(&clicks, bytes + larder_row_field_offset(users, f->clicks), sizeof clicks);
    CHECK(clicks == larder_row_int64(users, row, f->clicks));
  }
  CHECK(larder_row_field_offset(users, 5) == UINT32_MAX);
  CHECK(larder_row_field_offset(NULL, 0) == UINT32_MAX);
  CHECK(larder_row_key_offset(NULL) == UINT32_MAX);
  CHECK(larder_row_validity_offset(NULL) == UINT32_MAX);

  /* Key buffer sizes, and stored lengths the schema does not allow. */
  const larder_read_result r = larder_get(users, "u000042", 7, row, 0);
  REQUIRE(r.status == LARDER_OK);
  char small[4];
  size_t len = 0;
  CHECK(larder_row_key(users, row, small, sizeof small, &len) == LARDER_E_NO_SPACE);
  CHECK(len == 7);
  len = 0;
  CHECK(larder_row_key(users, row, NULL, 0, &len) == LARDER_E_NO_SPACE); /* a length query */
  CHECK(len == 7);
  CHECK(larder_row_key(users, row, NULL, 8, &len) == LARDER_E_INVALID_ARGUMENT);
  CHECK(larder_row_key(NULL, row, small, sizeof small, &len) == LARDER_E_INVALID_ARGUMENT);
  CHECK(larder_row_key(users, NULL, small, sizeof small, &len) == LARDER_E_INVALID_ARGUMENT);
  memcpy(copy, row, row_bytes);
  copy[2] = 33; /* the key length word: above key_max_len 32 */
  CHECK(larder_row_key(users, copy, small, sizeof small, &len) == LARDER_E_CORRUPT);
  copy[2] = UINT64_C(0xffffffff);
  CHECK(larder_row_key(users, copy, small, sizeof small, &len) == LARDER_E_CORRUPT);
  copy[2] = 0;
  CHECK(larder_row_key(users, copy, small, sizeof small, &len) == LARDER_E_CORRUPT);

  /* Wrong types, out-of-range indexes and NULLs read as "no value". */
  CHECK(larder_row_int64(users, row, f->spend) == 0);
  CHECK(isnan(larder_row_float64(users, row, f->clicks)));
  CHECK(isnan(larder_row_float32(users, row, f->clicks)));
  CHECK(larder_row_bool(users, row, f->clicks) == 0);
  uint32_t dims = 99, slen = 99;
  CHECK(larder_row_vector(users, row, f->country, &dims) == NULL && dims == 0);
  CHECK(larder_row_string(users, row, f->embedding, &slen) == NULL && slen == 0);
  CHECK(larder_row_valid(users, row, LARDER_NO_FIELD) == 0);
  CHECK(larder_row_int64(users, row, LARDER_NO_FIELD) == 0);
  CHECK(isnan(larder_row_as_double(users, row, LARDER_NO_FIELD)));
  CHECK(larder_row_vector(users, row, LARDER_NO_FIELD, NULL) == NULL);
  CHECK(larder_row_valid(NULL, row, 0) == 0);
  CHECK(larder_row_int64(users, NULL, f->clicks) == 0);
  CHECK(larder_row_event_time_ms(NULL, row) == 0);
  CHECK(larder_row_apply_unix_ns(users, NULL) == 0);

  /* Read statuses. */
  CHECK(larder_get(users, "u999999", 7, row, 0).status == LARDER_NOT_FOUND);
  CHECK(larder_get(users, "", 0, row, 0).status == LARDER_INVALID_KEY);
  char long_key[40];
  memset(long_key, 'x', sizeof long_key);
  CHECK(larder_get(users, long_key, sizeof long_key, row, 0).status == LARDER_INVALID_KEY);
  /* Key 9 is 9 minutes old: stale under a one-minute bound, still filled. */
  const larder_read_result stale = larder_get(users, "u000009", 7, row, 60000);
  CHECK(stale.status == LARDER_STALE);
  CHECK(larder_row_int64(users, row, f->clicks) == (9 * 7 + kSeed) % 1000);
  CHECK(larder_get(NULL, "u000009", 7, row, 0).status == LARDER_INVALID_KEY);
  CHECK(larder_get(users, "u000009", 7, NULL, 0).status == LARDER_INVALID_KEY);
  CHECK(larder_get(users, NULL, 7, row, 0).status == LARDER_INVALID_KEY);

  larder_read_result into;
  CHECK(larder_get_into(users, "u000010", 7, row, 0, &into) == LARDER_OK);
  CHECK(into.status == LARDER_OK && into.event_time_ms == larder_row_event_time_ms(users, row));
  CHECK(larder_get_into(users, "u000010", 7, row, 0, NULL) == LARDER_OK);
  CHECK(larder_get_into(users, "nope", 4, row, 0, NULL) == LARDER_NOT_FOUND);

  /* Two ages (1.2). Without aggregates a row is computed when it is applied:
   * key 9's event is 9 minutes older than its apply. A bound 4.5 minutes
   * above its computed age now separates the two for the next 4.5 minutes. */
  larder_read_options ro;
  memset(&ro, 0, sizeof ro);
  ro.size = sizeof ro;
  int64_t computed_at = -1;
  larder_read_result ex;
  CHECK(larder_get_ex(users, "u000009", 7, row, &ro, &ex, &computed_at) == LARDER_OK);
  CHECK(computed_at == ex.apply_unix_ns / 1000000);
  CHECK(computed_at - ex.event_time_ms >= 9 * 60000 - 1000);
  ro.max_age_ms = larder_now_unix_ms() - computed_at + 270000;
  ro.age_of = LARDER_AGE_OF_COMPUTED;
  CHECK(larder_get_ex(users, "u000009", 7, row, &ro, NULL, &computed_at) == LARDER_OK);
  ro.age_of = LARDER_AGE_OF_EVENT;
  CHECK(larder_get_ex(users, "u000009", 7, row, &ro, NULL, NULL) == LARDER_STALE);
  CHECK(larder_row_int64(users, row, f->clicks) == (9 * 7 + kSeed) % 1000);             /* still filled */
  CHECK(larder_get_ex(users, "u000009", 7, row, NULL, &ex, &computed_at) == LARDER_OK); /* NULL: no bound */
  CHECK(larder_get_ex(users, "nope", 4, row, &ro, &ex, &computed_at) == LARDER_NOT_FOUND && computed_at == 0);
  /* Options it cannot honour, and the arguments larder_get refuses. */
  ro.age_of = 7;
  CHECK(larder_get_ex(users, "u000009", 7, row, &ro, &ex, &computed_at) == LARDER_INVALID_KEY);
  CHECK(ex.status == LARDER_INVALID_KEY && ex.event_time_ms == 0 && computed_at == 0);
  ro.age_of = LARDER_AGE_OF_COMPUTED;
  ro.size = 4; /* below the first two fields */
  CHECK(larder_get_ex(users, "u000009", 7, row, &ro, NULL, NULL) == LARDER_INVALID_KEY);
  ro.size = 12; /* inside max_age_ms */
  CHECK(larder_get_ex(users, "u000009", 7, row, &ro, NULL, NULL) == LARDER_INVALID_KEY);
  ro.size = 8; /* an older, shorter struct: max_age_ms takes its default, no bound */
  CHECK(larder_get_ex(users, "u000009", 7, row, &ro, NULL, NULL) == LARDER_OK);
  struct {
    larder_read_options known;
    uint64_t newer_field;
  } newer;
  memset(&newer, 0, sizeof newer);
  newer.known.size = sizeof newer;
  CHECK(larder_get_ex(users, "u000009", 7, row, &newer.known, NULL, NULL) == LARDER_OK); /* a zero tail */
  newer.newer_field = 1;
  CHECK(larder_get_ex(users, "u000009", 7, row, &newer.known, NULL, NULL) == LARDER_INVALID_KEY);
  ro.size = sizeof ro;
  CHECK(larder_get_ex(NULL, "u000009", 7, row, &ro, NULL, NULL) == LARDER_INVALID_KEY);
  CHECK(larder_get_ex(users, "u000009", 7, NULL, &ro, NULL, NULL) == LARDER_INVALID_KEY);
  CHECK(larder_get_ex(users, NULL, 7, row, &ro, NULL, NULL) == LARDER_INVALID_KEY);

  /* get_many: the same rows as single gets. */
  enum { kMany = 5 };
  const char* keys[kMany] = {"u000001", "u000002", "nope", "u000500", "u000013"};
  size_t lens[kMany];
  for (int i = 0; i < kMany; ++i) lens[i] = strlen(keys[i]);
  uint64_t* rows = calloc(kMany * row_bytes / 8, 8);
  REQUIRE(rows != NULL);
  larder_read_result results[kMany];
  larder_get_many(users, (const void* const*)keys, lens, kMany, rows, results, 0);
  for (int i = 0; i < kMany; ++i) {
    const larder_read_result one = larder_get(users, keys[i], lens[i], row, 0);
    CHECK(results[i].status == one.status);
    if (one.status == LARDER_OK) {
      const uint64_t* many_row = rows + i * (row_bytes / 8);
      CHECK(larder_row_event_time_ms(users, many_row) == one.event_time_ms);
      CHECK(memcmp(many_row, row, row_bytes) == 0);
    }
  }
  larder_get_many(users, NULL, lens, kMany, rows, results, 0);
  for (int i = 0; i < kMany; ++i) CHECK(results[i].status == LARDER_INVALID_KEY);
  larder_get_many(users, (const void* const*)keys, lens, kMany, rows, NULL, 0); /* nowhere to report: no-op */
  int64_t computed_many[kMany];
  ro.age_of = LARDER_AGE_OF_COMPUTED;
  ro.max_age_ms = 0;
  larder_get_many_ex(users, (const void* const*)keys, lens, kMany, rows, results, &ro, computed_many);
  for (int i = 0; i < kMany; ++i) {
    int64_t one_at = -1;
    CHECK(larder_get_ex(users, keys[i], lens[i], row, &ro, NULL, &one_at) == results[i].status);
    CHECK(computed_many[i] == one_at);
    CHECK(results[i].status != LARDER_OK || computed_many[i] == results[i].apply_unix_ns / 1000000);
  }
  ro.age_of = 9;
  larder_get_many_ex(users, (const void* const*)keys, lens, kMany, rows, results, &ro, computed_many);
  for (int i = 0; i < kMany; ++i) CHECK(results[i].status == LARDER_INVALID_KEY && computed_many[i] == 0);
  ro.age_of = LARDER_AGE_OF_EVENT;
  larder_get_many_ex(users, (const void* const*)keys, lens, kMany, rows, results, NULL, NULL); /* no bound */
  CHECK(results[0].status == LARDER_OK && results[2].status == LARDER_NOT_FOUND);
  larder_get_many_ex(users, (const void* const*)keys, lens, kMany, rows, NULL, &ro, NULL); /* no-op */

  /* The gathers, keys NUL-terminated, against the accessors. */
  const char packed[] = "u000001\0u000002\0nope\0u000500\0u000013";
  const uint32_t scalars[] = {f->clicks, f->spend};
  double values[kMany * 2];
  float vectors[kMany * 16];
  int32_t status[kMany];
  int64_t times[kMany];
  CHECK(larder_gather_f64(users, packed, sizeof packed, NULL, 0, kMany, scalars, 2, values, status, times, 0, -1.0) ==
        LARDER_E_OK);
  CHECK(status[2] == LARDER_NOT_FOUND && values[4] == -1.0 && values[5] == -1.0 && times[2] == 0);
  CHECK(values[0] == (double)((1 * 7 + kSeed) % 1000));
  CHECK(values[2 * 4 + 1] == -1.0); /* u000013: spend never written */
  CHECK(larder_gather_vector(users, packed, sizeof packed, NULL, 0, kMany, f->embedding, vectors, status, NULL, 0,
                             -2.0f) == LARDER_E_OK);
  CHECK(vectors[0] == 1.0f / 8.0f && vectors[2 * 16] == -2.0f);
  CHECK(larder_gather_vector(users, packed, sizeof packed, NULL, 0, kMany, f->clicks, vectors, status, NULL, 0, 0.0f) ==
        LARDER_E_INVALID_ARGUMENT);
  double values2[kMany * 2];
  float vectors2[kMany * 16];
  CHECK(larder_gather(users, packed, sizeof packed, NULL, 0, kMany, scalars, 2, values2, -1.0, &f->embedding, 1,
                      vectors2, -2.0f, status, times, 0) == LARDER_E_OK);
  CHECK(memcmp(values, values2, sizeof values) == 0);
  CHECK(memcmp(vectors, vectors2, sizeof vectors) == 0);
  CHECK(times[0] == larder_get(users, "u000001", 7, row, 0).event_time_ms);
  /* larder_gather_ex: the same values, and the computed-at instants of larder_get_ex. */
  int64_t computed_gathered[kMany];
  larder_read_options go;
  memset(&go, 0, sizeof go);
  go.size = sizeof go;
  go.age_of = LARDER_AGE_OF_COMPUTED;
  CHECK(larder_gather_ex(users, packed, sizeof packed, NULL, 0, kMany, scalars, 2, values2, -1.0, &f->embedding, 1,
                         vectors2, -2.0f, status, times, &go, computed_gathered) == LARDER_E_OK);
  CHECK(memcmp(values, values2, sizeof values) == 0);
  for (int i = 0; i < kMany; ++i) {
    int64_t one_at = -1;
    CHECK(larder_get_ex(users, keys[i], lens[i], row, &go, NULL, &one_at) == status[i]);
    CHECK(computed_gathered[i] == one_at);
  }
  CHECK(computed_gathered[2] == 0 && status[2] == LARDER_NOT_FOUND);
  go.age_of = -1;
  CHECK(larder_gather_ex(users, packed, sizeof packed, NULL, 0, kMany, scalars, 2, values2, -1.0, NULL, 0, NULL, 0.0f,
                         status, times, &go, NULL) == LARDER_E_INVALID_ARGUMENT);
  CHECK(larder_gather_ex(users, packed, sizeof packed, NULL, 0, kMany, scalars, 2, values2, -1.0, NULL, 0, NULL, 0.0f,
                         status, times, NULL, NULL) == LARDER_E_OK); /* NULL options: no bound */
  CHECK(larder_gather(NULL, packed, sizeof packed, NULL, 0, kMany, scalars, 2, values2, -1.0, NULL, 0, NULL, 0.0f,
                      status, times, 0) == LARDER_E_INVALID_ARGUMENT);
  CHECK(larder_gather_f64(users, packed, sizeof packed - 1, NULL, 0, kMany, scalars, 2, values, status, times, 0,
                          -1.0) == LARDER_E_INVALID_ARGUMENT); /* last key not terminated */

  free(rows);
  free(copy);
  free(row);
}

/* The C++ writer rewrites rows of the "rows" table (tests/support/
 * derived_rows.h: every field derived from one counter c, event time c)
 * while this process reads them: every row read is one version, and the
 * reads see the counter move on. */
static void check_live_writer(void) {
  int out[2];
  REQUIRE(pipe(out) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    close(out[0]);
    close(out[1]);
    char* const argv[] = {(char*)writer_tool, "churn", "--segment", "live", "--dir", dir,
                          "--rows",           "50",    "--seconds", "300",  NULL};
    execv(writer_tool, argv);
    _exit(127);
  }
  close(out[1]);
  FILE* from_writer = fdopen(out[0], "r");
  REQUIRE(from_writer != NULL);
  char line[64] = "";
  REQUIRE(fgets(line, sizeof line, from_writer) != NULL);
  REQUIRE(strcmp(line, "ready\n") == 0);

  char err[256];
  larder_segment* seg = NULL;
  larder_table* rows = NULL;
  REQUIRE(larder_open("live", dir, &seg, err, sizeof err) == LARDER_E_OK);
  REQUIRE(larder_table_open(seg, "rows", &rows, err, sizeof err) == LARDER_E_OK);
  CHECK(larder_writer_alive(seg, 60000) == 1);
  CHECK(larder_segment_stat(seg).writer_pid == (uint64_t)pid);

  uint32_t clicks, spend, tag;
  REQUIRE(larder_field_lookup(rows, "clicks", &clicks) == LARDER_E_OK);
  REQUIRE(larder_field_lookup(rows, "spend", &spend) == LARDER_E_OK);
  REQUIRE(larder_field_lookup(rows, "tag", &tag) == LARDER_E_OK);
  uint64_t* row = calloc(larder_table_row_bytes(rows) / 8, 8);
  REQUIRE(row != NULL);

  larder_table_stats_t before;
  memset(&before, 0, sizeof before);
  before.size = sizeof before;
  REQUIRE(larder_table_stats(rows, &before) == LARDER_E_OK);
  CHECK(before.live_keys == 50);

  /* Read until rows written well after the stats above were seen (the
   * counter is the event time, and the stats hold the newest event time so
   * far: 50 more are 50 more upserts); a writer that stopped makes this
   * loop end on the hang guard. */
  const time_t guard = time(NULL) + 120;
  int64_t highest = 0;
  long consistent = 0, torn = 0;
  while (highest <= before.max_event_time_ms + 50 || consistent < 2000) {
    REQUIRE(time(NULL) < guard);
    for (int k = 0; k < 50; ++k) {
      char key[16];
      snprintf(key, sizeof key, "key:%d", k);
      const larder_read_result r = larder_get(rows, key, strlen(key), row, 0);
      if (r.status == LARDER_BUSY) continue;
      REQUIRE(r.status == LARDER_OK);
      const int64_t c = larder_row_int64(rows, row, clicks);
      char expect_tag[16];
      const int n = snprintf(expect_tag, sizeof expect_tag, "v%lld", (long long)(c % 100000000));
      uint32_t tag_len = 0;
      const char* t = larder_row_string(rows, row, tag, &tag_len);
      char got_key[16];
      size_t key_len = 0;
      const int ok = larder_row_event_time_ms(rows, row) == c && r.event_time_ms == c &&
                     larder_row_float64(rows, row, spend) == (double)c * 0.5 + (double)k && t != NULL &&
                     tag_len == (uint32_t)n && memcmp(t, expect_tag, tag_len) == 0 &&
                     larder_row_key(rows, row, got_key, sizeof got_key, &key_len) == LARDER_E_OK &&
                     key_len == strlen(key) && memcmp(got_key, key, key_len) == 0;
      if (ok) {
        ++consistent;
        if (c > highest) highest = c;
      } else {
        ++torn;
      }
    }
  }
  CHECK(torn == 0);

  larder_table_stats_t after;
  memset(&after, 0, sizeof after);
  after.size = sizeof after;
  REQUIRE(larder_table_stats(rows, &after) == LARDER_E_OK);
  CHECK(after.upserts > before.upserts);
  CHECK(after.max_event_time_ms >= highest);
  CHECK(after.live_keys == 50);
  larder_segment_stats_t st;
  st.size = sizeof st;
  CHECK(larder_segment_stats(seg, &st) == LARDER_E_OK);
  CHECK(st.writer_pid == (uint64_t)pid && st.heartbeat_age_ms >= 0);

  kill(pid, SIGTERM);
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  fclose(from_writer);
  printf("live writer: %ld consistent rows read, highest counter %lld\n", consistent, (long long)highest);

  free(row);
  larder_table_close(rows);
  larder_close(seg);
}

/* Reads one row of "rows" (tests/support/derived_rows.h) and says whether it
 * is one whole version of key k. */
static int derived_row_ok(larder_table* rows, uint64_t* row, int k, uint32_t clicks, uint32_t spend, uint32_t tag) {
  char key[16];
  snprintf(key, sizeof key, "key:%d", k);
  const larder_read_result r = larder_get(rows, key, strlen(key), row, 0);
  if (r.status != LARDER_OK) return 0;
  const int64_t c = larder_row_int64(rows, row, clicks);
  char expect_tag[16];
  const int n = snprintf(expect_tag, sizeof expect_tag, "v%lld", (long long)(c % 100000000));
  uint32_t tag_len = 0;
  const char* t = larder_row_string(rows, row, tag, &tag_len);
  return larder_row_event_time_ms(rows, row) == c && r.event_time_ms == c &&
         larder_row_float64(rows, row, spend) == (double)c * 0.5 + (double)k && t != NULL && tag_len == (uint32_t)n &&
         memcmp(t, expect_tag, tag_len) == 0;
}

/* Generation switches: the C++ writer grows the table twice and adds a field
 * while this process reads through a table handle opened on generation 0,
 * with no code for it: every read finds its key whole, and after the writer
 * is done the same handle reads a key only the last generation holds. */
static void check_generation_switch(void) {
  int out[2], in[2];
  REQUIRE(pipe(out) == 0 && pipe(in) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    dup2(in[0], STDIN_FILENO);
    close(out[0]);
    close(out[1]);
    close(in[0]);
    close(in[1]);
    char* const argv[] = {(char*)writer_tool, "grow", "--segment", "growing", "--dir", dir, "--rows", "200", NULL};
    execv(writer_tool, argv);
    _exit(127);
  }
  close(out[1]);
  close(in[0]);
  char text[128] = "";
  size_t have = 0;
  while (strstr(text, "ready\n") == NULL) {
    const ssize_t n = read(out[0], text + have, sizeof text - 1 - have);
    REQUIRE(n > 0);
    have += (size_t)n;
    text[have] = 0;
  }

  char err[256];
  larder_segment* seg = NULL;
  larder_table* rows = NULL;
  REQUIRE(larder_open("growing", dir, &seg, err, sizeof err) == LARDER_E_OK);
  REQUIRE(larder_table_open(seg, "rows", &rows, err, sizeof err) == LARDER_E_OK);
  uint32_t clicks, spend, tag;
  REQUIRE(larder_field_lookup(rows, "clicks", &clicks) == LARDER_E_OK);
  REQUIRE(larder_field_lookup(rows, "spend", &spend) == LARDER_E_OK);
  REQUIRE(larder_field_lookup(rows, "tag", &tag) == LARDER_E_OK);
  uint64_t* row = calloc(larder_table_row_bytes(rows) / 8, 8);
  REQUIRE(row != NULL);
  larder_segment_stats_t seg_st;
  memset(&seg_st, 0, sizeof seg_st);
  seg_st.size = sizeof seg_st;
  REQUIRE(larder_segment_stats(seg, &seg_st) == LARDER_E_OK);
  CHECK(seg_st.generation == 0);
  REQUIRE(write(in[1], "go\n", 3) == 3);

  /* Read until the writer says it is done (its output, not a duration). */
  long reads = 0, bad = 0;
  const time_t guard = time(NULL) + 120;
  while (strstr(text, "done") == NULL) {
    REQUIRE(time(NULL) < guard);
    for (int k = 0; k < 200; ++k, ++reads) bad += !derived_row_ok(rows, row, k, clicks, spend, tag);
    struct timeval zero = {0, 0};
    fd_set fds;
    FD_ZERO(&fds);
    FD_SET(out[0], &fds);
    if (select(out[0] + 1, &fds, NULL, NULL, &zero) > 0) {
      const ssize_t n = read(out[0], text + have, sizeof text - 1 - have);
      REQUIRE(n > 0);
      have += (size_t)n;
      text[have] = 0;
    }
  }
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK(strstr(text, "done 3\n") != NULL);
  CHECK(bad == 0);
  for (int k = 0; k <= 200; ++k) CHECK(derived_row_ok(rows, row, k, clicks, spend, tag));
  larder_table_stats_t st;
  memset(&st, 0, sizeof st);
  st.size = sizeof st;
  REQUIRE(larder_table_stats(rows, &st) == LARDER_E_OK);
  CHECK(st.live_keys == 201);
  CHECK(st.capacity >= 800);
  /* The segment handle describes the file it opened: now retired. */
  REQUIRE(larder_segment_stats(seg, &seg_st) == LARDER_E_OK);
  CHECK(seg_st.state == 2 && seg_st.writer_pid == 0);
  printf("generation switch: %ld reads, %ld not whole\n", reads, bad);
  close(out[0]);
  close(in[1]);
  free(row);
  larder_table_close(rows);
  larder_close(seg);
}

/* Field groups (1.2): a table without them, then the "cards" table of the writer tool's "groups" schema,
 * whose group times are set relative to `at`. */
static void check_groups(larder_table* users) {
  uint32_t g = 7;
  CHECK(larder_table_group_count(users) == 0);
  CHECK(larder_table_group_name(users, 0) == NULL);
  CHECK(larder_group_lookup(users, "profile", &g) == LARDER_E_NOT_FOUND && g == LARDER_NO_GROUP);
  CHECK(larder_field_group(users, 0) == LARDER_NO_GROUP);
  CHECK(larder_table_group_count(NULL) == 0);

  const int64_t at = larder_now_unix_ms();
  char at_text[32];
  snprintf(at_text, sizeof at_text, "%lld", (long long)at);
  char* const argv[] = {
      (char*)writer_tool, "write", "--segment", "larder-c-abi-cards", "--dir", dir, "--schema", "groups",
      "--at-ms",          at_text, NULL};
  REQUIRE(run_writer(argv));
  char err[256];
  larder_segment* seg = NULL;
  REQUIRE(larder_open("larder-c-abi-cards", dir, &seg, err, sizeof err) == LARDER_E_OK);
  larder_table* cards = NULL;
  REQUIRE(larder_table_open(seg, "cards", &cards, err, sizeof err) == LARDER_E_OK);
  CHECK(larder_table_group_count(cards) == 3);
  CHECK(strcmp(larder_table_group_name(cards, 0), "profile") == 0);
  CHECK(strcmp(larder_table_group_name(cards, 1), "activity") == 0);
  CHECK(strcmp(larder_table_group_name(cards, 2), "default") == 0);
  CHECK(larder_table_group_name(cards, 3) == NULL);
  uint32_t profile = 9, activity = 9;
  CHECK(larder_group_lookup(cards, "profile", &profile) == LARDER_E_OK && profile == 0);
  CHECK(larder_group_lookup(cards, "activity", &activity) == LARDER_E_OK && activity == 1);
  CHECK(larder_group_lookup(cards, NULL, &g) == LARDER_E_INVALID_ARGUMENT);
  uint32_t limit_field = 0, amount_field = 0;
  REQUIRE(larder_field_lookup(cards, "credit_limit", &limit_field) == LARDER_E_OK);
  REQUIRE(larder_field_lookup(cards, "last_amount", &amount_field) == LARDER_E_OK);
  CHECK(larder_field_group(cards, limit_field) == profile);
  CHECK(larder_field_group(cards, amount_field) == activity);
  CHECK(larder_field_group(cards, 99) == LARDER_NO_GROUP);

  uint64_t* row = aligned_alloc(8, (larder_table_row_bytes(cards) + 7) / 8 * 8);
  REQUIRE(row != NULL);
  const int64_t day = 24LL * 3600 * 1000;
  /* card:1: the older profile update applied although activity was newer. */
  larder_read_result r;
  CHECK(larder_get_groups(cards, "card:1", 6, row, NULL, NULL, 0, &r, NULL) == LARDER_OK &&
        r.event_time_ms == at - 1000);
  CHECK(larder_row_float64(cards, row, limit_field) == 3000.0);
  CHECK(larder_row_group_event_time_ms(cards, row, profile) == at - 3 * day);
  CHECK(larder_row_group_event_time_ms(cards, row, activity) == at - 1000);
  CHECK(larder_row_group_event_time_ms(cards, row, 2) == LARDER_NO_GROUP_TIME);
  CHECK(larder_row_group_event_time_ms(cards, row, 3) == LARDER_NO_GROUP_TIME);
  CHECK(larder_row_group_event_time_ms(NULL, row, 0) == LARDER_NO_GROUP_TIME);
  /* Per-group bounds: profile is three days old, activity a second. */
  const larder_group_max_age fresh_activity[] = {{activity, 0, 60000}};
  CHECK(larder_get_groups(cards, "card:1", 6, row, NULL, fresh_activity, 1, NULL, NULL) == LARDER_OK);
  const larder_group_max_age fresh_profile[] = {{profile, 0, 60000}};
  CHECK(larder_get_groups(cards, "card:1", 6, row, NULL, fresh_profile, 1, &r, NULL) == LARDER_STALE);
  CHECK(larder_row_float64(cards, row, limit_field) == 3000.0); /* filled */
  const larder_group_max_age bad[] = {{5, 0, 1}};
  CHECK(larder_get_groups(cards, "card:1", 6, row, NULL, bad, 1, &r, NULL) == LARDER_INVALID_KEY);
  CHECK(larder_get_groups(cards, "card:1", 6, row, NULL, NULL, 1, NULL, NULL) == LARDER_INVALID_KEY);
  /* card:3: the delete cleared profile and kept the newer activity. */
  CHECK(larder_get_groups(cards, "card:3", 6, row, NULL, NULL, 0, &r, NULL) == LARDER_OK);
  CHECK(!larder_row_valid(cards, row, limit_field) && larder_row_valid(cards, row, amount_field));
  CHECK(larder_row_group_event_time_ms(cards, row, profile) == at - 3000);
  CHECK(larder_get_groups(cards, "card:4", 6, row, NULL, NULL, 0, NULL, NULL) == LARDER_NOT_FOUND);
  /* Read options and group bounds together: the row's own bound by its
   * computed age (a table without aggregates computes at apply: just now),
   * and the computed-at instant returned. */
  larder_read_options computed;
  memset(&computed, 0, sizeof computed);
  computed.size = sizeof computed;
  computed.age_of = LARDER_AGE_OF_COMPUTED;
  computed.max_age_ms = 3600000;
  int64_t computed_at = 0;
  CHECK(larder_get_groups(cards, "card:1", 6, row, &computed, fresh_activity, 1, &r, &computed_at) == LARDER_OK);
  CHECK(computed_at == r.apply_unix_ns / 1000000);
  CHECK(larder_get_groups(cards, "card:1", 6, row, &computed, fresh_profile, 1, NULL, &computed_at) == LARDER_STALE);
  computed.age_of = 7;
  CHECK(larder_get_groups(cards, "card:1", 6, row, &computed, NULL, 0, NULL, &computed_at) == LARDER_INVALID_KEY);
  CHECK(computed_at == 0);

  /* A batch: values, statuses and each key's group times from one read. */
  const char keys[] = "card:1\0card:2\0card:4\0";
  double values[3];
  int32_t status[3];
  int64_t times[3 * 3];
  CHECK(larder_gather_groups(cards, keys, sizeof keys - 1, NULL, 0, 3, &limit_field, 1, values, -1.0, NULL, 0, NULL,
                             0.0f, status, NULL, NULL, fresh_profile, 1, NULL, times) == LARDER_E_OK);
  CHECK(status[0] == LARDER_STALE && status[1] == LARDER_OK && status[2] == LARDER_NOT_FOUND);
  CHECK(values[0] == 3000.0 && values[1] == 500.0 && values[2] == -1.0);
  CHECK(times[0 * 3 + 0] == at - 3 * day && times[0 * 3 + 1] == at - 1000);
  CHECK(times[1 * 3 + 0] == at - 1000 && times[1 * 3 + 1] == at - 3 * day);
  CHECK(times[2 * 3 + 0] == LARDER_NO_GROUP_TIME);
  CHECK(larder_gather_groups(cards, keys, sizeof keys - 1, NULL, 0, 3, &limit_field, 1, values, -1.0, NULL, 0, NULL,
                             0.0f, status, NULL, NULL, bad, 1, NULL, times) == LARDER_E_INVALID_ARGUMENT);
  CHECK(larder_gather_groups(cards, keys, sizeof keys - 1, NULL, 0, 3, &limit_field, 1, values, -1.0, NULL, 0, NULL,
                             0.0f, status, NULL, &computed, NULL, 0, NULL, times) == LARDER_E_INVALID_ARGUMENT);
  computed.age_of = LARDER_AGE_OF_COMPUTED;
  int64_t computed_many[3];
  CHECK(larder_gather_groups(cards, keys, sizeof keys - 1, NULL, 0, 3, &limit_field, 1, values, -1.0, NULL, 0, NULL,
                             0.0f, status, NULL, &computed, NULL, 0, computed_many, NULL) == LARDER_E_OK);
  CHECK(status[0] == LARDER_OK && status[1] == LARDER_OK && status[2] == LARDER_NOT_FOUND);
  CHECK(computed_many[0] > 0 && computed_many[1] > 0 && computed_many[2] == 0);
  free(row);
  larder_table_close(cards);
  larder_close(seg);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s PATH-TO-larder-test-writer\n", argv[0]);
    return 2;
  }
  writer_tool = argv[1];
  snprintf(dir, sizeof dir, "/dev/shm/larder-c-abi-XXXXXX");
  REQUIRE(mkdtemp(dir) != NULL);

  const int64_t written_after_ms = larder_now_unix_ms();
  {
    char* const write_argv[] = {(char*)writer_tool, "write", "--segment", DEMO, "--dir", dir, "--schema", "demo",
                                "--rows",           "500",   "--seed",    "3",  NULL};
    REQUIRE(run_writer(write_argv));
    char* const sync_argv[] = {(char*)writer_tool, "sync", "--segment", DEMO, "--dir", dir, "--seed", "2", NULL};
    REQUIRE(run_writer(sync_argv));
  }
  const int64_t written_before_ms = larder_now_unix_ms();

  check_version();
  check_names();

  char err[256];
  larder_segment* seg = NULL;
  REQUIRE(larder_open(DEMO, dir, &seg, err, sizeof err) == LARDER_E_OK);
  check_open(larder_segment_stat(seg).schema_fingerprint);
  check_segment(seg, written_after_ms, written_before_ms);

  larder_table* users = NULL;
  larder_table* none = (larder_table*)1;
  CHECK(larder_table_open(seg, "nope", &none, err, sizeof err) == LARDER_E_NOT_FOUND);
  CHECK(none == NULL && strstr(err, "users") != NULL); /* names the tables there are */
  CHECK(larder_table_open(NULL, "users", &none, err, sizeof err) == LARDER_E_INVALID_ARGUMENT);
  REQUIRE(larder_table_open(seg, "users", &users, err, sizeof err) == LARDER_E_OK);
  user_fields f;
  check_fields(users, &f);
  check_table_stats(users, written_after_ms, written_before_ms);
  check_rows(users, &f, written_before_ms);
  check_groups(users);
  larder_table_close(users);
  larder_table_close(NULL);
  larder_close(seg);

  check_live_writer();
  check_generation_switch();

  char* const rm_argv[] = {"rm", "-rf", dir, NULL};
  const pid_t rm = fork();
  if (rm == 0) {
    execvp("rm", rm_argv);
    _exit(127);
  }
  if (rm > 0) waitpid(rm, NULL, 0);

  if (failures != 0) {
    fprintf(stderr, "%d checks failed\n", failures);
    return 1;
  }
  printf("every check held\n");
  return 0;
}
