"""Fitted scikit-learn transformers exported with larder.sklearn, served by a
real larder-sidecar fed through the real broker: for random data (missing
values, categories unseen in fit, values on bin edges), the features read
from the segment equal transformer.transform(X) to 1e-9 relative (float64
fields) or to float32 rounding (float32 fields and vectors)."""

import numpy as np
import pandas as pd
import pytest

import larder
import larder.sklearn as lsk
from conftest import wait_for

sklearn = pytest.importorskip("sklearn")  # Debian: python3-sklearn
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import (KBinsDiscretizer, MaxAbsScaler, MinMaxScaler, OneHotEncoder,  # noqa: E402
                                   OrdinalEncoder, RobustScaler, StandardScaler)


def events(n, seed, unseen=()):
    """A frame of events: numbers with NaN, categories with NaN (and, for
    serving, categories fit never saw)."""
    rng = np.random.default_rng(seed)
    countries = np.array(["US", "DE", "FR", "BR", np.nan] + list(unseen), dtype=object)
    df = pd.DataFrame({
        "amount": rng.lognormal(3, 1, n),
        "age": rng.integers(18, 90, n).astype(np.float64),
        "balance": rng.normal(1000, 400, n),
        "score": rng.normal(0, 3, n),
        "country": countries[rng.integers(0, len(countries), n)],
        "channel": rng.choice(["web", "app", "pos"], n).astype(object),
        "items": rng.integers(1, 6, n),
    })
    df.loc[rng.random(n) < 0.1, "amount"] = np.nan
    df.loc[rng.random(n) < 0.1, "balance"] = np.nan
    return df


def model():
    return ColumnTransformer([
        ("amount", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["amount"]),
        ("balance", make_pipeline(SimpleImputer(strategy="mean"), RobustScaler()), ["balance"]),
        ("age_mm", MinMaxScaler(), ["age"]),
        ("age_bins", KBinsDiscretizer(n_bins=5, encode="ordinal", strategy="quantile"), ["age"]),
        ("score_bins", KBinsDiscretizer(n_bins=4, encode="onehot-dense", strategy="uniform"), ["score"]),
        ("score_abs", MaxAbsScaler(), ["score"]),
        ("country", OneHotEncoder(handle_unknown="ignore"), ["country"]),
        ("country_ix", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                                      encoded_missing_value=-2), ["country"]),
        ("channel", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(drop="first")),
         ["channel"]),
        ("items", OneHotEncoder(handle_unknown="ignore"), ["items"]),
    ], sparse_threshold=0)


def serve(sidecar_factory, plan, df, key="k", **publish_args):
    """Starts a sidecar on the plan's table, publishes df and returns the
    table once every row is applied."""
    sc = sidecar_factory(plan.to_yaml(table="t", capacity=len(df) * 2, key_max_len=16))
    seg = sc.start()
    table = seg.table("t")
    df = df[plan.inputs].assign(k=["k%06d" % i for i in range(len(df))], ts=larder.now_unix_ms() - 60_000)
    report = larder.publish(df, table="t", key=key, event_time="ts", config=sc.config, exchange=sc.exchange,
                            **publish_args)
    assert report.ok, report
    wait_for(lambda: table.stats()["upserts"] >= len(df), 120, "%d upserts" % len(df))
    assert seg.info()["messages_rejected"] == 0
    return table, df["k"].tolist()


def test_a_column_transformer_of_every_exported_kind_matches_transform(sidecar_factory):
    train = events(5000, seed=1)
    ct = model().fit(train)
    serving = events(3000, seed=2, unseen=("JP", "ZA"))
    # Edge bins: values exactly on the fitted edges fall in the bin to their right.
    age_edges = ct.named_transformers_["age_bins"].bin_edges_[0]
    score_edges = ct.named_transformers_["score_bins"].bin_edges_[0]
    serving.loc[:len(age_edges) - 1, "age"] = age_edges
    serving.loc[100:100 + len(score_edges) - 1, "score"] = score_edges
    serving.loc[200, "items"] = 9  # an unseen number category
    plan = lsk.plan(ct)
    assert plan.width == ct.transform(serving[:1]).shape[1]
    table, keys = serve(sidecar_factory, plan, serving)

    expected = ct.transform(serving)
    served = plan.features(table, keys)
    assert served.shape == expected.shape
    assert not np.isnan(served).any()
    np.testing.assert_allclose(served, expected, rtol=1e-9, atol=0)
    # The cases that matter did occur.
    assert serving["amount"].isna().any() and serving["country"].isna().any()
    assert serving["country"].isin(["JP", "ZA"]).any()


def test_bool_fields_per_category_and_float32_scalars(sidecar_factory):
    train = events(3000, seed=3)
    ct = ColumnTransformer([
        ("amount", make_pipeline(SimpleImputer(), MinMaxScaler(clip=True)), ["amount"]),
        ("country", OneHotEncoder(handle_unknown="ignore"), ["country"]),
        ("bins", KBinsDiscretizer(n_bins=3, encode="onehot-dense"), ["score"]),
    ], sparse_threshold=0).fit(train)
    serving = events(2000, seed=4, unseen=("JP",))
    plan = lsk.plan(ct, one_hot="bool", float32=True)
    assert {f.type for f in plan.fields} == {"float32", "bool"}
    table, keys = serve(sidecar_factory, plan, serving)
    expected = ct.transform(serving)
    served = plan.features(table, keys)
    # float32 fields hold the double result rounded once to float32.
    np.testing.assert_array_equal(served, expected.astype(np.float32).astype(np.float64))


def test_pca_of_an_embedding(sidecar_factory):
    rng = np.random.default_rng(5)
    basis = rng.normal(size=(4, 16))
    train = rng.normal(size=(4000, 4)) @ basis + rng.normal(0, 0.1, (4000, 16)) + 3
    for whiten in (False, True):
        pca = PCA(n_components=3, whiten=whiten).fit(train)
        plan = lsk.plan(pca, columns=["emb"])
        assert [(f.name, f.type, f.dims) for f in plan.fields] == [("emb_pca", "vector", 3)]
        serving = (rng.normal(size=(1500, 4)) @ basis + 3).astype(np.float32)
        table, keys = serve(sidecar_factory, plan, pd.DataFrame({"emb": list(serving)}))
        # The producer sends float32 elements; sklearn on the same values, its
        # result rounded to the float32 the vector field stores.
        expected = pca.transform(serving.astype(np.float64)).astype(np.float32).astype(np.float64)
        served = plan.features(table, keys)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(served, expected, rtol=0, atol=scale * 2.0 ** -22)


def test_pca_of_scalar_columns_inside_a_column_transformer(sidecar_factory):
    # The sidecar gathers the members into the array the projection reads.
    train = events(4000, seed=7)
    cols = ["age", "balance_filled", "score"]
    train["balance_filled"] = train["balance"].fillna(0)
    ct = ColumnTransformer([("pca", PCA(n_components=2), cols),
                            ("score", StandardScaler(), ["score"])], sparse_threshold=0).fit(train)
    plan = lsk.plan(ct)
    assert [(f.name, f.type, f.dims, f.source) for f in plan.fields][0] == ("pca__pca", "vector", 2, cols)
    serving = events(1500, seed=8)
    serving["balance_filled"] = serving["balance"].fillna(0)
    table, keys = serve(sidecar_factory, plan, serving)
    # The scalar members arrive as doubles; the vector stores float32.
    expected = ct.transform(serving)
    served = plan.features(table, keys)
    pca_part = expected[:, :2].astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(served[:, :2], pca_part, rtol=0, atol=np.abs(pca_part).max() * 2.0 ** -22)
    np.testing.assert_allclose(served[:, 2:], expected[:, 2:], rtol=1e-9, atol=0)


def test_what_cannot_be_exported_is_refused_naming_the_step():
    X = events(200, seed=6)
    from sklearn.preprocessing import PolynomialFeatures
    pipe = make_pipeline(StandardScaler(), PolynomialFeatures()).fit(X[["age"]])
    with pytest.raises(lsk.ExportError, match="polynomialfeatures.*PolynomialFeatures"):
        lsk.export(pipe)
    enc = OrdinalEncoder().fit(X[["country"]])  # NaN category, encoded_missing_value=NaN
    with pytest.raises(lsk.ExportError, match="encoded_missing_value"):
        lsk.export(enc)
    with pytest.raises(lsk.ExportError, match=r"step 'pca' \(PCA\): only a PCA on its own input"):
        lsk.export(make_pipeline(StandardScaler(), PCA(1)).fit(X[["age", "score"]]))
