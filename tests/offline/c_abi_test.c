/* The offline engine's C ABI (larder/offline.h) from C11: a frame built from
 * typed columns, every frame accessor, refusals counted, the errors, and
 * partitions. argv[1]: a directory for the config. Exits non-zero with the
 * failed check's line. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "larder/offline.h"

static int failures = 0;
#define CHECK(cond)                                                      \
  do {                                                                   \
    if (!(cond)) {                                                       \
      fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                        \
    }                                                                    \
  } while (0)

static const char* kConfig =
    "tables:\n"
    "  - name: users\n"
    "    capacity: 4\n"
    "    fields:\n"
    "      - {name: spend, type: float64}\n"
    "      - {name: visits, type: int64}\n"
    "      - {name: premium, type: bool}\n"
    "      - {name: country, type: string, max_len: 4}\n"
    "      - {name: emb, type: vector, dims: 2}\n"
    "      - {name: ratio, type: float32}\n"
    "    aggregates:\n"
    "      - {name: amount_1m, source: amount, fn: sum, window: 1m, resolution: 1s}\n"
    "  - name: items\n"
    "    capacity: 4\n"
    "    fields:\n"
    "      - {name: price, type: float64}\n";

/* Null inputs (present == 2): an impute, an ordinal and a one-hot with a null category, and a plain field,
 * whose null the sidecar refuses. Its rabbitmq section has no password_env: the engine does not read sources. */
static const char* kNullConfig =
    "rabbitmq:\n"
    "  url: amqp://larder@127.0.0.1:5672/\n"
    "  queue: {name: offline-c-abi}\n"
    "tables:\n"
    "  - name: n\n"
    "    capacity: 8\n"
    "    fields:\n"
    "      - {name: amount, type: float64, from: amount_in, transform: [{impute: {value: 7.0}}]}\n"
    "      - {name: tier_idx, type: int64, from: tier, transform: [{ordinal: {categories: [gold, silver, ~]}}]}\n"
    "      - {name: tier_oh, type: vector, dims: 3, from: tier,\n"
    "         transform: [{one_hot: {categories: [gold, silver, ~]}}]}\n"
    "      - {name: spend, type: float64}\n";

#define T0 1700000000000LL

static uint32_t field_index(const larder_offline_frame* f, const char* name) {
  uint32_t i;
  for (i = 0; i < larder_offline_frame_field_count(f); ++i) {
    if (strcmp(larder_offline_frame_field_name(f, i), name) == 0) return i;
  }
  fprintf(stderr, "no field %s\n", name);
  exit(1);
}

int main(int argc, char** argv) {
  char path[4096], err[256];
  FILE* fp;
  larder_offline* engine = NULL;
  larder_offline_frame* frame = NULL;
  if (argc < 2) return 2;
  snprintf(path, sizeof path, "%s/offline_c_abi.yaml", argv[1]);
  fp = fopen(path, "w");
  if (fp == NULL) return 2;
  fputs(kConfig, fp);
  fclose(fp);

  CHECK(larder_offline_open("/nonexistent/larder.yaml", 0, 1, &engine, err, sizeof err) != 0);
  CHECK(engine == NULL && strlen(err) > 0);
  CHECK(larder_offline_open(path, 2, 2, &engine, err, sizeof err) != 0);
  CHECK(larder_offline_open(path, 0, 1, &engine, err, sizeof err) == 0);
  if (engine == NULL) {
    fprintf(stderr, "open: %s\n", err);
    return 1;
  }

  {
    /* 5 users events (keys a a b c a; c's has an unknown input "bogus": refused), arriving in another order
       than given; 1 items event (another table: not read). */
    const char keys[] = "aabca";
    const int64_t key_offsets[] = {0, 1, 2, 3, 4, 5};
    const int64_t event_time[] = {T0, T0 + 1000, T0 + 2000, T0 + 2500, T0 + 70000};
    const int64_t arrival[] = {T0, T0 + 1000, T0 + 3000, T0 + 2500, T0 + 70000};
    const uint8_t op[] = {0, 0, 0, 0, 0};
    const char ids[] = "e1e2e3e4e5";
    const int64_t id_offsets[] = {0, 2, 4, 6, 8, 10};
    const double amount[] = {1, 2, 5, 7, 4};
    const double spend[] = {10.5, NAN, 3, 0, 0};
    const uint8_t spend_present[] = {1, 0, 1, 0, 0};
    const int64_t visits[] = {1, 2, 3, 4, 5};
    const uint8_t premium[] = {1, 0, 1, 0, 1};
    const char country[] = "USDEFRNLGB";
    const int64_t country_offsets[] = {0, 2, 4, 6, 8, 10};
    const double emb[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    const double ratio[] = {0.25, 0.5, 0.75, 1, 1.25};
    const double bogus[] = {0, 0, 0, 1, 0};
    const uint8_t bogus_present[] = {0, 0, 0, 1, 0};
    larder_offline_column cols[8];
    larder_offline_events sets[2];
    const char item_keys[] = "i";
    const int64_t item_offsets[] = {0, 1};
    const int64_t item_time[] = {T0};
    const double price[] = {9};
    larder_offline_column item_cols[1];
    const char spine_keys[] = "abbaz";
    const int64_t spine_offsets[] = {0, 1, 2, 3, 4, 5};
    const int64_t at[] = {T0 + 1000, T0 + 2999, T0 + 3000, T0 + 70000, T0 + 70000};
    larder_offline_spine spine;
    const uint8_t* found;
    const uint8_t* valid;
    const int64_t* offsets;
    uint32_t f;

    memset(cols, 0, sizeof cols);
    cols[0].name = "amount";
    cols[0].type = LARDER_OFFLINE_FLOAT64;
    cols[0].data = amount;
    cols[1].name = "spend";
    cols[1].type = LARDER_OFFLINE_FLOAT64;
    cols[1].data = spend;
    cols[1].present = spend_present;
    cols[2].name = "visits";
    cols[2].type = LARDER_OFFLINE_INT64;
    cols[2].data = visits;
    cols[3].name = "premium";
    cols[3].type = LARDER_OFFLINE_BOOL;
    cols[3].data = premium;
    cols[4].name = "country";
    cols[4].type = LARDER_OFFLINE_STRING;
    cols[4].data = country;
    cols[4].offsets = country_offsets;
    cols[5].name = "emb";
    cols[5].type = LARDER_OFFLINE_FLOAT64_LIST;
    cols[5].dim = 2;
    cols[5].data = emb;
    cols[6].name = "ratio";
    cols[6].type = LARDER_OFFLINE_FLOAT64;
    cols[6].data = ratio;
    cols[7].name = "bogus";
    cols[7].type = LARDER_OFFLINE_FLOAT64;
    cols[7].data = bogus;
    cols[7].present = bogus_present;
    memset(sets, 0, sizeof sets);
    sets[0].table = "users";
    sets[0].n = 5;
    sets[0].keys = keys;
    sets[0].key_offsets = key_offsets;
    sets[0].event_time_ms = event_time;
    sets[0].arrival_ms = arrival;
    sets[0].op = op;
    sets[0].ids = ids;
    sets[0].id_offsets = id_offsets;
    sets[0].columns = cols;
    sets[0].column_count = 8;
    memset(item_cols, 0, sizeof item_cols);
    item_cols[0].name = "price";
    item_cols[0].type = LARDER_OFFLINE_FLOAT64;
    item_cols[0].data = price;
    sets[1].table = "items";
    sets[1].n = 1;
    sets[1].keys = item_keys;
    sets[1].key_offsets = item_offsets;
    sets[1].event_time_ms = item_time;
    sets[1].columns = item_cols;
    sets[1].column_count = 1;
    spine.table = "users";
    spine.n = 5;
    spine.keys = spine_keys;
    spine.key_offsets = spine_offsets;
    spine.at_ms = at;

    CHECK(larder_offline_build(engine, sets, 2, &spine, &frame, err, sizeof err) == 0);
    if (frame == NULL) {
      fprintf(stderr, "build: %s\n", err);
      return 1;
    }
    CHECK(larder_offline_frame_rows(frame) == 5);
    CHECK(larder_offline_frame_rejected(frame) == 1);
    CHECK(strstr(larder_offline_frame_first_rejection(frame), "unknown_field") != NULL);
    CHECK(larder_offline_frame_events(frame) == 4);
    CHECK(larder_offline_frame_applied(frame) == 4);
    CHECK(larder_offline_frame_stale(frame) == 0);
    CHECK(larder_offline_frame_duplicates(frame) == 0);
    CHECK(larder_offline_frame_late(frame) == 0);
    CHECK(larder_offline_frame_field_count(frame) == 7);
    found = larder_offline_frame_found(frame);
    /* a at +1s: 2 events; b at +2999: its event arrives at +3000, not yet; b at +3000; a at +70s; z: none. */
    CHECK(found[0] == 1 && found[1] == 0 && found[2] == 1 && found[3] == 1 && found[4] == 0);
    CHECK(larder_offline_frame_spine_index(frame)[4] == 4);
    CHECK(larder_offline_frame_event_time_ms(frame)[0] == T0 + 1000);
    CHECK(larder_offline_frame_event_time_ms(frame)[1] == 0);
    CHECK(larder_offline_frame_computed_at_ms(frame)[0] == T0 + 1000);
    CHECK(larder_offline_frame_computed_at_ms(frame)[3] == T0 + 70000);

    f = field_index(frame, "spend");
    CHECK(larder_offline_frame_field_type(frame, f) == 2 && larder_offline_frame_field_dim(frame, f) == 1);
    valid = larder_offline_frame_valid(frame, f);
    CHECK(valid[0] == 1 && ((const double*)larder_offline_frame_values(frame, f))[0] == 10.5);
    CHECK(valid[2] == 1 && ((const double*)larder_offline_frame_values(frame, f))[2] == 3);
    CHECK(valid[4] == 0);
    f = field_index(frame, "visits");
    CHECK(larder_offline_frame_field_type(frame, f) == 1);
    CHECK(((const int64_t*)larder_offline_frame_values(frame, f))[0] == 2);
    CHECK(((const int64_t*)larder_offline_frame_values(frame, f))[3] == 5);
    f = field_index(frame, "premium");
    CHECK(larder_offline_frame_field_type(frame, f) == 4);
    CHECK(((const uint8_t*)larder_offline_frame_values(frame, f))[0] == 0);
    CHECK(((const uint8_t*)larder_offline_frame_values(frame, f))[2] == 1);
    f = field_index(frame, "country");
    CHECK(larder_offline_frame_field_type(frame, f) == 6 && larder_offline_frame_field_dim(frame, f) == 4);
    offsets = larder_offline_frame_string_offsets(frame, f);
    CHECK(offsets != NULL);
    if (offsets != NULL) {
      const char* bytes = (const char*)larder_offline_frame_values(frame, f);
      CHECK(offsets[0] == 0 && offsets[1] == 2 && memcmp(bytes, "DE", 2) == 0);
      CHECK(offsets[2] == 2); /* row 1 not found: empty */
      CHECK(offsets[3] - offsets[2] == 2 && memcmp(bytes + offsets[2], "FR", 2) == 0);
      CHECK(offsets[5] == offsets[4]);
    }
    f = field_index(frame, "emb");
    CHECK(larder_offline_frame_field_type(frame, f) == 5 && larder_offline_frame_field_dim(frame, f) == 2);
    CHECK(((const float*)larder_offline_frame_values(frame, f))[0] == 3.0f);
    CHECK(((const float*)larder_offline_frame_values(frame, f))[1] == 4.0f);
    CHECK(((const float*)larder_offline_frame_values(frame, f))[6] == 9.0f);
    f = field_index(frame, "ratio");
    CHECK(larder_offline_frame_field_type(frame, f) == 3);
    CHECK(((const float*)larder_offline_frame_values(frame, f))[3] == 1.25f);
    CHECK(larder_offline_frame_string_offsets(frame, f) == NULL);
    f = field_index(frame, "amount_1m");
    CHECK(((const double*)larder_offline_frame_values(frame, f))[0] == 3);
    CHECK(((const double*)larder_offline_frame_values(frame, f))[2] == 5);
    CHECK(((const double*)larder_offline_frame_values(frame, f))[3] == 4); /* +1 s and +2 s have left the minute */
    CHECK(larder_offline_frame_values(frame, 99) == NULL && larder_offline_frame_field_name(frame, 99) == NULL);
    larder_offline_frame_free(frame);
    frame = NULL;

    /* Errors: a spine table or an events table the config does not have. */
    spine.table = "nope";
    CHECK(larder_offline_build(engine, sets, 2, &spine, &frame, err, sizeof err) != 0 && frame == NULL);
    CHECK(strstr(err, "nope") != NULL && strstr(err, "users") != NULL);
    spine.table = "users";
    sets[1].table = "nope";
    CHECK(larder_offline_build(engine, sets, 2, &spine, &frame, err, sizeof err) != 0 && frame == NULL);
    sets[1].table = "items";
    larder_offline_close(engine);
    engine = NULL;

    /* Partitions: two halves hold disjoint spine rows whose union is the spine, with the same answers. */
    {
      int seen[5] = {0, 0, 0, 0, 0};
      uint32_t p;
      size_t r;
      for (p = 0; p < 2; ++p) {
        CHECK(larder_offline_open(path, p, 2, &engine, err, sizeof err) == 0);
        CHECK(larder_offline_build(engine, sets, 2, &spine, &frame, err, sizeof err) == 0);
        if (frame == NULL) return 1;
        for (r = 0; r < larder_offline_frame_rows(frame); ++r) {
          const int64_t s = larder_offline_frame_spine_index(frame)[r];
          CHECK(s >= 0 && s < 5);
          if (s < 0 || s >= 5) continue;
          ++seen[s];
          CHECK(larder_offline_frame_found(frame)[r] == (s == 0 || s == 2 || s == 3));
          if (s == 3) {
            f = field_index(frame, "amount_1m");
            CHECK(((const double*)larder_offline_frame_values(frame, f))[r] == 4);
          }
        }
        larder_offline_frame_free(frame);
        frame = NULL;
        larder_offline_close(engine);
        engine = NULL;
      }
      for (r = 0; r < 5; ++r) CHECK(seen[r] == 1);
    }
  }

  /* present == 2: sent as null, as a JSON null member. */
  snprintf(path, sizeof path, "%s/offline_c_abi_null.yaml", argv[1]);
  fp = fopen(path, "w");
  if (fp == NULL) return 2;
  fputs(kNullConfig, fp);
  fclose(fp);
  CHECK(larder_offline_open(path, 0, 1, &engine, err, sizeof err) == 0);
  if (engine == NULL) {
    fprintf(stderr, "open (a rabbitmq section without password_env): %s\n", err);
    return 1;
  }
  {
    /* a: values, then every input null but spend (not sent); b: spend null (a plain field: refused);
       c: amount_in not sent. */
    const char keys[] = "aabc";
    const int64_t key_offsets[] = {0, 1, 2, 3, 4};
    const int64_t event_time[] = {T0, T0 + 1000, T0, T0};
    const double amount_in[] = {3, NAN, 0, 0};
    const uint8_t amount_present[] = {1, 2, 0, 0};
    const char tier[] = "goldsilver";
    const int64_t tier_offsets[] = {0, 4, 4, 4, 10};
    const uint8_t tier_present[] = {1, 2, 0, 1};
    const double spend[] = {1.5, 0, 0, 2};
    uint8_t spend_present[] = {1, 0, 2, 1};
    larder_offline_column cols[3];
    larder_offline_events set;
    const char spine_keys[] = "aabc";
    const int64_t spine_offsets[] = {0, 1, 2, 3, 4};
    const int64_t at[] = {T0, T0 + 1000, T0 + 1000, T0 + 1000};
    larder_offline_spine spine;
    const uint8_t* valid;
    const double* d;
    const int64_t* i64;
    const float* v;
    uint32_t f;

    memset(cols, 0, sizeof cols);
    cols[0].name = "amount_in";
    cols[0].type = LARDER_OFFLINE_FLOAT64;
    cols[0].data = amount_in;
    cols[0].present = amount_present;
    cols[1].name = "tier";
    cols[1].type = LARDER_OFFLINE_STRING;
    cols[1].data = tier;
    cols[1].offsets = tier_offsets;
    cols[1].present = tier_present;
    cols[2].name = "spend";
    cols[2].type = LARDER_OFFLINE_FLOAT64;
    cols[2].data = spend;
    cols[2].present = spend_present;
    memset(&set, 0, sizeof set);
    set.table = "n";
    set.n = 4;
    set.keys = keys;
    set.key_offsets = key_offsets;
    set.event_time_ms = event_time;
    set.columns = cols;
    set.column_count = 3;
    spine.table = "n";
    spine.n = 4;
    spine.keys = spine_keys;
    spine.key_offsets = spine_offsets;
    spine.at_ms = at;

    CHECK(larder_offline_build(engine, &set, 1, &spine, &frame, err, sizeof err) == 0);
    if (frame == NULL) {
      fprintf(stderr, "build: %s\n", err);
      return 1;
    }
    CHECK(larder_offline_frame_rejected(frame) == 1); /* b's null spend */
    CHECK(strstr(larder_offline_frame_first_rejection(frame), "wrong_type") != NULL);
    CHECK(strstr(larder_offline_frame_first_rejection(frame), "got null") != NULL);
    CHECK(strstr(larder_offline_frame_first_rejection(frame), "spend") != NULL);
    CHECK(larder_offline_frame_applied(frame) == 3);
    CHECK(larder_offline_frame_found(frame)[0] == 1 && larder_offline_frame_found(frame)[1] == 1);
    CHECK(larder_offline_frame_found(frame)[2] == 0 && larder_offline_frame_found(frame)[3] == 1);

    f = field_index(frame, "amount"); /* impute: null -> 7 */
    valid = larder_offline_frame_valid(frame, f);
    d = (const double*)larder_offline_frame_values(frame, f);
    CHECK(valid[0] == 1 && d[0] == 3);
    CHECK(valid[1] == 1 && d[1] == 7);
    CHECK(valid[3] == 0);               /* c did not send it */
    f = field_index(frame, "tier_idx"); /* ordinal: null is the null category's position */
    valid = larder_offline_frame_valid(frame, f);
    i64 = (const int64_t*)larder_offline_frame_values(frame, f);
    CHECK(valid[0] == 1 && i64[0] == 0);
    CHECK(valid[1] == 1 && i64[1] == 2);
    CHECK(valid[3] == 1 && i64[3] == 1);
    f = field_index(frame, "tier_oh"); /* one_hot: 1 at the null category */
    valid = larder_offline_frame_valid(frame, f);
    v = (const float*)larder_offline_frame_values(frame, f);
    CHECK(valid[0] == 1 && v[0] == 1.0f && v[1] == 0.0f && v[2] == 0.0f);
    CHECK(valid[1] == 1 && v[3] == 0.0f && v[4] == 0.0f && v[5] == 1.0f);
    f = field_index(frame, "spend"); /* not sent at +1 s: kept */
    valid = larder_offline_frame_valid(frame, f);
    d = (const double*)larder_offline_frame_values(frame, f);
    CHECK(valid[0] == 1 && d[0] == 1.5 && valid[1] == 1 && d[1] == 1.5);
    larder_offline_frame_free(frame);
    frame = NULL;

    /* Any other byte in present is an error naming the column and the event. */
    spend_present[3] = 3;
    CHECK(larder_offline_build(engine, &set, 1, &spine, &frame, err, sizeof err) != 0 && frame == NULL);
    CHECK(strstr(err, "\"spend\"") != NULL && strstr(err, "present[3] is 3") != NULL);
  }
  larder_offline_close(engine);
  engine = NULL;
  remove(path);
  snprintf(path, sizeof path, "%s/offline_c_abi.yaml", argv[1]);
  remove(path);
  if (failures == 0) printf("offline C ABI: every check passed\n");
  return failures == 0 ? 0 : 1;
}
