#!/usr/bin/env python3
"""An inference process in Python reading its features from Larder.

    python3 examples/inference.py [--segment larder-demo] [--dir /dev/shm]
                                  [--users 5] [--items 8] [--max-age-ms MS]
                                  [--max-computed-age-ms MS]

What a Python model server does per request: read the features of a batch of
users and of the candidate items straight from the shared-memory segment into
NumPy arrays (one get_many per table: no network, no per-key objects), fill
in what is missing, and score every (user, item) pair with a small logistic
regression written in NumPy. It prints the predictions and how old the
features were. Features producers send are bounded by their event age
(--max-age-ms); the windowed aggregates the sidecar computes (spend_1h, ...)
by their computed age (--max-computed-age-ms), which stays small for a user
with no recent event while the sidecar runs (docs/python.md, "Two ages"). Run it against the demo (scripts/demo.sh starts the sidecar
and the producers that fill "larder-demo").

Needs liblarder.so: `cmake --build build --target larder_client_shared`, then
run from the repository root (or `pip install ./client_lib/python`, see
docs/python.md).
"""

import argparse
import os
import sys
import time

import numpy as np

try:
    import larder
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client_lib", "python"))
    import larder

USER_FIELDS = ["clicks_1h", "spend_usd", "is_premium", "embedding"]
ITEM_FIELDS = ["price", "ctr"]
# Windowed aggregates of examples/demo.yaml, shown beside the scores.
ROLLING_FIELDS = ["clicks_10s", "spend_1h", "basket_mean_1h"]

# The "model": p(click) = sigmoid(X @ W + B) over these features of a pair.
FEATURES = ["item ctr", "log1p(item price)", "user clicks_1h / 10", "user is_premium", "log1p(user spend)",
            "|user embedding|"]
W = np.array([8.0, -0.35, 0.15, 0.5, 0.1, -0.05])
B = -2.0
# Used where a feature has no value (key unknown, or field never written).
DEFAULTS = np.array([0.02, np.log1p(20.0), 0.0, 0.0, 0.0, 1.0])


def age_text(ms):
    if ms < 0:
        return "-"
    return "%d ms" % ms if ms < 1000 else "%.1f s" % (ms / 1000.0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--segment", default="larder-demo")
    p.add_argument("--dir", default="/dev/shm")
    p.add_argument("--users", type=int, default=5, help="users per request (u000000 ...)")
    p.add_argument("--items", type=int, default=8, help="candidate items per request (i00000 ...)")
    p.add_argument("--max-age-ms", type=int, default=0,
                   help="rows whose last event is older count as stale (0: no limit)")
    p.add_argument("--max-computed-age-ms", type=int, default=5000,
                   help="windowed aggregates computed longer ago count as stale (0: no limit); the sidecar "
                        "refreshes them every 50 ms, so only a stopped or stuck sidecar passes 5 s")
    args = p.parse_args()

    # Start-up: map the segment read-only and resolve the tables once.
    try:
        seg = larder.open(args.segment, args.dir)
    except larder.LarderError as e:
        print("inference.py: %s" % e, file=sys.stderr)
        return 1
    users, items = seg.table("users"), seg.table("items")
    info = seg.info()
    print("segment %s: writer pid %d %s, %d updates applied (library %s)"
          % (args.segment, info["writer_pid"], "alive" if seg.writer_alive() else "NOT alive",
             info["updates_applied"], larder.library_path()))

    # One request: the keys a ranking service would get.
    user_keys = ["u%06d" % i for i in range(args.users)]
    item_keys = np.array(["i%05d" % i for i in range(args.items)], dtype="S")  # 'S' arrays: the cheapest form

    t0 = time.perf_counter()
    u = users.get_many(user_keys, fields=USER_FIELDS, max_age_ms=args.max_age_ms)
    it = items.get_many(item_keys, fields=ITEM_FIELDS, max_age_ms=args.max_age_ms)
    # The aggregates by their computed age: a user who clicked an hour ago
    # has an old event but a current spend_1h.
    rolling_fields = [f for f in ROLLING_FIELDS if f in users.field_names]
    rolling = (users.get_many(user_keys, fields=rolling_fields, max_age_ms=args.max_computed_age_ms,
                              age_of="computed") if rolling_fields else None)
    read_us = (time.perf_counter() - t0) * 1e6

    # Features: one row per (user, item) pair; NaN marks "no value".
    emb = u["embedding"]
    emb_norm = np.sqrt(np.nansum(emb.astype(np.float64) ** 2, axis=1))
    emb_norm[np.isnan(emb).all(axis=1)] = np.nan
    per_user = np.column_stack([u["clicks_1h"] / 10.0, u["is_premium"], np.log1p(u["spend_usd"]), emb_norm])
    per_item = np.column_stack([it["ctr"], np.log1p(it["price"])])
    # Stale rows (older than --max-age-ms) still carry values; this model
    # prefers its defaults to old data.
    per_user[~u.ok] = np.nan
    per_item[~it.ok] = np.nan
    X = np.concatenate([np.repeat(per_item[None, :, :], len(user_keys), axis=0),
                        np.repeat(per_user[:, None, :], len(item_keys), axis=1)], axis=2)
    missing = np.isnan(X)
    X = np.where(missing, DEFAULTS, X)
    scores = 1.0 / (1.0 + np.exp(-(X @ W + B)))  # (users, items)
    score_us = (time.perf_counter() - t0) * 1e6 - read_us

    now = larder.now_unix_ms()
    user_ages, item_ages = u.age_ms(now), it.age_ms(now)
    print("read %d users + %d items in %.1f us, scored %d pairs in %.1f us; %d of %d feature values imputed\n"
          % (len(user_keys), len(item_keys), read_us, scores.size, score_us, missing.sum(), missing.size))
    print("items: " + ", ".join("%s %s (age %s)" % (k.decode(), larder.Status(s).name, age_text(a))
                                for k, s, a in zip(item_keys, it.status, item_ages)))
    for i, key in enumerate(user_keys):
        status = larder.Status(u.status[i]).name
        if not u.found[i]:
            print("%s: %s: scored with default features" % (key, status))
        else:
            row = users.get(key)  # a single get: a dict-like row, strings included
            print("%s [%s, age %s]: clicks_1h=%s spend_usd=%s premium=%s country=%s"
                  % (key, status, age_text(user_ages[i]), row.get("clicks_1h"),
                     "%.2f" % row["spend_usd"] if row.valid("spend_usd") else None, row.get("is_premium"),
                     row.get("country")))
            if rolling is not None:
                print("    rolling [%s, computed %s ago]: %s"
                      % (larder.Status(rolling.status[i]).name, age_text(rolling.computed_age_ms(now)[i]),
                         " ".join("%s=%g" % (f, rolling[f][i]) for f in rolling_fields)))
        # Only items that exist can be recommended: a deleted or unknown item
        # (NOT_FOUND) is scored with defaults but never ranked.
        ranked = np.where(it.found, scores[i], -np.inf)
        top = [j for j in np.argsort(-ranked)[:3] if it.found[j]]
        print("    top items: " + ", ".join("%s p(click)=%.3f" % (item_keys[j].decode(), scores[i, j]) for j in top))
    seg.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
