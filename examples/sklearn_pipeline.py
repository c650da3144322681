#!/usr/bin/python3
"""A notebook in a script: fit a feature pipeline offline with pandas and
scikit-learn, export it to the sidecar's config, serve it, and check that
the features the sidecar serves are the ones the model was trained on.

    /usr/bin/python3 examples/sklearn_pipeline.py            # starts its own broker
    LARDER_TEST_AMQP_URL=amqp://guest@127.0.0.1:5699 ... examples/sklearn_pipeline.py

Needs a build (larder-sidecar, liblarder.so: `cmake --build build`),
python3-sklearn, python3-pandas, python3-pika and python3-yaml. Without
LARDER_TEST_AMQP_URL it starts a throwaway RabbitMQ with scripts/broker.sh,
as scripts/demo.sh does, and stops it at the end. Exits 0 when every served
feature equals the offline one, 1 otherwise. CTest runs it
(examples.sklearn_pipeline).
"""

# %% Setup: paths, the package from this checkout, a broker and a sidecar
import sys

import example_serving  # first: it puts the larder package of this checkout on sys.path

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import KBinsDiscretizer, OneHotEncoder, StandardScaler  # noqa: E402

import larder  # noqa: E402
import larder.sklearn  # noqa: E402

# %% 1. Training data: card transactions, some amounts missing
rng = np.random.default_rng(7)


def transactions(n, countries=("US", "DE", "FR", "BR")):
    df = pd.DataFrame({
        "amount": rng.lognormal(3.5, 1.1, n),
        "hour": rng.integers(0, 24, n).astype(float),
        "country": rng.choice(np.array(countries, dtype=object), n),
        "merchant_risk": rng.beta(2, 8, n),
    })
    df.loc[rng.random(n) < 0.05, "amount"] = np.nan
    return df


train = transactions(20_000)
fraud = (train["merchant_risk"] * 4 + np.log1p(train["amount"].fillna(30)) / 3 + rng.normal(0, 0.5, len(train))) > 2.6

# %% 2. The feature pipeline and a model on top of it
features = ColumnTransformer([
    ("amount", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["amount"]),
    ("hour", KBinsDiscretizer(n_bins=6, encode="onehot-dense", strategy="uniform"), ["hour"]),
    ("country", OneHotEncoder(handle_unknown="ignore"), ["country"]),
    ("risk", StandardScaler(), ["merchant_risk"]),
], sparse_threshold=0)
X_train = features.fit_transform(train)
model = LogisticRegression(max_iter=1000).fit(X_train, fraud)
print("features out:", X_train.shape[1], "columns; train accuracy %.3f" % model.score(X_train, fraud))

# %% 3. Export: the sidecar's config for these features
plan = larder.sklearn.plan(features)
table_yaml = plan.to_yaml(table="cards", capacity=10_000, key_max_len=16)
print(table_yaml)

# %% 4. A broker (the test suite's, or a throwaway one) and a sidecar on that config
serving = example_serving.Serving("sklearn", port=5695)


def main():
    cards = serving.start(table_yaml).table("cards")

    # %% 5. Serving traffic: new transactions, one country never seen in training
    live = transactions(2_000, countries=("US", "DE", "FR", "BR", "JP"))
    live["card"] = ["card%05d" % i for i in range(len(live))]
    report = larder.publish(live, table="cards", key="card", event_time=larder.now_unix_ms() - 1000,
                            config=serving.config, exchange=serving.name)
    assert report.ok, report
    example_serving.wait_for(lambda: cards.stats()["upserts"] >= len(live), 120, "the sidecar to apply the events")

    # %% 6. Served vs offline: the same features, so the same scores
    served = plan.features(cards, live["card"].tolist())
    offline = features.transform(live.drop(columns="card"))
    worst = np.max(np.abs(served - offline) / np.maximum(np.abs(offline), 1e-300))
    scores_served = model.predict_proba(served)[:, 1]
    scores_offline = model.predict_proba(offline)[:, 1]
    print("rows %d, feature columns %d, worst relative difference %.3g, worst score difference %.3g"
          % (served.shape[0], served.shape[1], worst, np.max(np.abs(scores_served - scores_offline))))
    print("missing amounts %d, unseen country rows %d" % (live["amount"].isna().sum(), (live["country"] == "JP").sum()))
    ok = served.shape == offline.shape and np.allclose(served, offline, rtol=1e-9, atol=0)
    print("served features equal the offline ones" if ok else "MISMATCH between served and offline features")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        rc = main()
    finally:
        serving.close()
    sys.exit(rc)
