"""The values larder-test-writer writes (tests/writer_tool.cc, write_demo):
keep the two in step."""

import numpy as np

import larder

SEED = 3
COUNTRIES = ["SE", "US", "DE", "FR", "JP"]


def user_key(k):
    return "u%06d" % k


def item_key(k):
    return "i%05d" % k


def user(k, seed=SEED):
    """Field -> value of user k; absent fields were never written."""
    row = {"clicks_1h": (k * 7 + seed) % 1000, "is_premium": k % 3 == 0}
    if k % 13 != 0:
        row["spend_usd"] = k * 0.25 + seed
    if k % 11 != 0:
        row["country"] = COUNTRIES[k % 5]
    if k % 7 != 0:
        row["embedding"] = (np.float32(k % 1000) / np.float32(8.0)
                            + np.arange(16, dtype=np.float32) * np.float32(0.5))
    return row


def item(k, seed=SEED):
    row = {"price": k * 1.5 + seed, "category": "cat-%d" % (k % 13)}
    if k % 9 != 0:
        row["ctr"] = float(np.float32(k % 100) / np.float32(100.0))
    return row


def age_minutes(k):
    """Event time of key k is write time - (k % 10) minutes."""
    return k % 10


# Table "rows" of tests/support/derived_rows.h: every field from one counter c.
def derived_ok_scalars(k, c, event_time_ms, spend, ctr, premium):
    return (event_time_ms == c and spend == c * 0.5 + k and ctr == float(np.float32(c % 4096))
            and bool(premium) == bool(c & 1))


def derived_embedding(c):
    return ((c + np.arange(16)) % 65536).astype(np.float32)


def derived_tag(c):
    return "v%d" % (c % 100000000)


def check_derived_batch(batch, ks):
    """Checks a get_many batch of keys ks (fields clicks, spend, ctr,
    premium, embedding) of table "rows": returns (consistent rows, torn rows,
    busy reads, highest counter seen)."""
    checked = torn = busy = highest = 0
    for i, k in enumerate(ks):
        if batch.status[i] == larder.Status.BUSY:
            busy += 1
            continue
        c, spend, ctr, premium = batch.values[i]
        c = int(c)
        ok = (batch.status[i] == larder.Status.OK
              and derived_ok_scalars(k, c, int(batch.event_time_ms[i]), spend, ctr, premium)
              and np.array_equal(batch["embedding"][i], derived_embedding(c)))
        torn += not ok
        checked += ok
        highest = max(highest, c)
    return checked, torn, busy, highest
