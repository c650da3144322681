#!/usr/bin/python3
"""Train on the features a reader would have read, then serve the model on
the same features read live: one config (shop.yaml here) defines them for
both.

    /usr/bin/python3 examples/offline/train_and_serve.py     # starts its own broker
    LARDER_TEST_AMQP_URL=amqp://guest@127.0.0.1:5699 ... examples/offline/train_and_serve.py

1. A day of generated shop events (views and purchases per user) and labels:
   at random instants, did the user buy within the next 10 minutes?
2. larder.offline.build_frame: the features of each labelled (user, instant)
   from the sidecar's own engine, windows ending at the instant.
3. A scikit-learn logistic regression on those columns.
4. Serving: a larder-sidecar with the same config consumes live events from
   RabbitMQ; the model scores users read with get_many.
5. The check: the served rows, looked up offline at their computed_at_ms
   (the instant their values were computed for), give the same features
   and the same scores.

Needs a build (larder-sidecar, liblarder.so, liblarder_offline.so:
`cmake --build build`), python3-sklearn, python3-pandas, python3-pika and
python3-yaml. Without LARDER_TEST_AMQP_URL it starts a throwaway RabbitMQ
with scripts/broker.sh and stops it at the end. Exits 0 when the served
features equal their offline twins. CTest runs it (examples.offline).
"""

# %% Setup: paths, the package from this checkout
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # examples/, for example_serving
import example_serving  # noqa: E402  (before larder: it puts the larder package of this checkout on sys.path)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import larder  # noqa: E402
import larder.offline  # noqa: E402

MIN = 60_000
TABLES = open(os.path.join(HERE, "shop.yaml")).read()
FEATURES = ["views_1h", "spend_1h", "basket_mean_1h", "views_10m", "amount_mean_5", "premium"]
rng = np.random.default_rng(7)


def shop_events(users, start_ms, span_ms, n):
    """Views (amount NaN: a view sends no amount) and purchases, by users of
    varying appetite: a buyer views more, and buys more after viewing."""
    appetite = rng.gamma(1.0, 1.0, users)
    user = rng.choice(users, n, p=appetite / appetite.sum())
    buy = rng.random(n) < 0.15 * np.minimum(appetite[user], 3)
    return pd.DataFrame({
        "key": ["u%04d" % u for u in user],
        "event_time": start_ms + np.sort(rng.integers(0, span_ms, n)),
        "view": np.where(buy, np.nan, 1.0),
        "amount": np.where(buy, rng.lognormal(3.0, 0.8, n), np.nan),
        "premium": appetite[user] > 1.5,
    })


def labels(events, start_ms, span_ms, n):
    """(key, timestamp, bought): did the user buy in the 10 minutes after the instant?"""
    spine = pd.DataFrame({"key": rng.choice(events["key"].unique(), n),
                          "timestamp": start_ms + rng.integers(0, span_ms, n)})
    buys = events[events["amount"].notna()]
    by_user = {k: g["event_time"].to_numpy() for k, g in buys.groupby("key")}
    spine["bought"] = [bool(((t < (b := by_user.get(k, np.empty(0)))) & (b <= t + 10 * MIN)).any())
                       for k, t in zip(spine["key"], spine["timestamp"])]
    return spine


def matrix(frame):
    """The model's input: the feature columns as float64, missing as 0
    (an empty window; a user never seen)."""
    return frame[FEATURES].astype("float64").fillna(0.0).to_numpy()


# %% Scratch space: the configs, the segment (removed at the end); then, for
# serving, a broker (the test suite's, or a throwaway one) and a sidecar
serving = example_serving.Serving("offline", port=5693)


# %% 1-3. Training: a day of history, labels, build_frame, a model
def train():
    train_config = os.path.join(serving.work, "train.yaml")
    with open(train_config, "w") as f:
        f.write("tables:\n%s" % TABLES)  # build_frame reads only the tables of a sidecar config
    day_start = larder.now_unix_ms() - 2 * 24 * 60 * MIN
    history = shop_events(500, day_start, 24 * 60 * MIN, 60_000)
    spine = labels(history, day_start + 60 * MIN, 23 * 60 * MIN, 5_000)
    t = time.perf_counter()
    frame = larder.offline.build_frame(train_config, history, spine)
    print("training frame: %d rows x %d features from %d events in %.2f s (%d rows not found)"
          % (len(frame), len(FEATURES), len(history), time.perf_counter() - t, (~frame["_found"]).sum()))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(matrix(frame), frame["bought"])
    print("train accuracy %.3f (base rate %.3f)" % (model.score(matrix(frame), frame["bought"]),
                                                    frame["bought"].mean()))
    return model


# %% 4. Serving: a sidecar on the same tables
def main():
    model = train()
    users = serving.start(TABLES).table("users")

    # Live traffic: the last 50 minutes of events, published now. Event
    # times keep away from the instants where the seconds this takes could
    # move an event across a window's start (10 and 60 minutes ago).
    t_pub = larder.now_unix_ms()
    live = shop_events(200, t_pub - 50 * MIN, 50 * MIN - 1000, 3_000)
    live = live[(live["event_time"] < t_pub - 12 * MIN) | (live["event_time"] > t_pub - 8 * MIN)]
    live["id"] = ["live%d" % i for i in range(len(live))]
    report = larder.publish(live, table="users", key="key", event_time="event_time", id="id",
                            config=serving.config, exchange=serving.name, nan="omit")
    assert report.ok, report
    def applied():
        s = users.stats()
        return s["upserts"] + s["stale_ignored"] >= len(live)

    example_serving.wait_for(applied, 120, "the sidecar to apply the events")

    # %% Serving: read the features, score the users
    keys = sorted(live["key"].unique())
    batch = users.get_many(keys, fields=FEATURES)
    served = np.nan_to_num(batch.values, nan=0.0)
    scores = model.predict_proba(served)[:, 1]
    top = np.argsort(-scores)[:3]
    print("served %d users; most likely to buy: %s" % (len(keys), ", ".join("%s %.2f" % (keys[i], scores[i])
                                                                                for i in top)))

    # %% 5. Each served row's offline twin: the same log, arriving when it
    # was published, read at the instant the row was computed for.
    twin = larder.offline.build_frame(serving.config, live.assign(arrival_time=t_pub),
                                      pd.DataFrame({"key": keys, "timestamp": batch.computed_at_ms}))
    offline = matrix(twin)
    same = served.shape == offline.shape and np.array_equal(served, offline)
    same_scores = np.array_equal(scores, model.predict_proba(offline)[:, 1])
    print("served features equal their offline twins" if same and same_scores else
          "MISMATCH between served and offline features (%d cells)" % int((served != offline).sum()))
    return 0 if same and same_scores else 1


if __name__ == "__main__":
    try:
        rc = main()
    finally:
        serving.close()
    sys.exit(rc)
