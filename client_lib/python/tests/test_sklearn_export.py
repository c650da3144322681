"""larder.sklearn without a broker: the exported steps for each supported
transformer, that the sidecar's own config parser accepts the output
(`larder-sidecar --check-config`), the command line, the refusals, and how
larder.publish sends missing values to the inputs of such fields. The
served values are checked against transform(X) in
tests_integration/test_sklearn_parity.py."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import larder.sklearn as lsk
from larder.publish import TableSchema, build_messages

sklearn = pytest.importorskip("sklearn")  # Debian: python3-sklearn
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import (FunctionTransformer, KBinsDiscretizer, MaxAbsScaler, MinMaxScaler,  # noqa: E402
                                   OneHotEncoder, OrdinalEncoder, RobustScaler, StandardScaler)

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("LARDER_BUILD_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(HERE))),
                                                        "build"))
SIDECAR = os.path.join(BUILD, "sidecar", "larder-sidecar")


def frame(n=400, seed=1):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"amount": rng.lognormal(3, 1, n), "age": rng.integers(18, 90, n).astype(float),
                       "country": rng.choice(np.array(["US", "DE", "1", np.nan], dtype=object), n),
                       "items": rng.integers(0, 4, n)})
    df.loc[::9, "amount"] = np.nan
    return df


def steps(plan, name):
    return next(f for f in plan.fields if f.name == name).steps


def test_each_transformer_exports_its_fitted_numbers_in_sklearns_order():
    df = frame()
    x = df[["age"]]
    s = StandardScaler().fit(x)
    assert steps(lsk.plan(s), "age") == [{"standardize": {"mean": s.mean_[0], "std": s.scale_[0]}}]
    s = StandardScaler(with_mean=False).fit(x)
    assert steps(lsk.plan(s), "age") == [{"standardize": {"mean": 0.0, "std": s.scale_[0]}}]
    r = RobustScaler().fit(x)
    assert steps(lsk.plan(r), "age") == [{"standardize": {"mean": r.center_[0], "std": r.scale_[0]}}]
    m = MaxAbsScaler().fit(x)
    assert steps(lsk.plan(m), "age") == [{"standardize": {"mean": 0.0, "std": m.scale_[0]}}]
    mm = MinMaxScaler(feature_range=(-1, 1), clip=True).fit(x)
    assert steps(lsk.plan(mm), "age") == [{"affine": {"scale": mm.scale_[0], "offset": mm.min_[0]}},
                                          {"clip": {"min": -1.0, "max": 1.0}}]
    imp = SimpleImputer(strategy="median").fit(df[["amount"]])
    assert steps(lsk.plan(imp), "amount") == [{"impute": {"value": imp.statistics_[0]}}]
    imp = SimpleImputer(missing_values=-1, strategy="constant", fill_value=5).fit(np.array([[1.0], [-1.0]]))
    assert steps(lsk.plan(imp, columns=["a"]), "a") == [{"impute": {"value": 5.0, "missing": -1.0}}]
    kb = KBinsDiscretizer(n_bins=4, encode="ordinal").fit(x)
    assert steps(lsk.plan(kb), "age") == [{"bucketize": {"boundaries": list(kb.bin_edges_[0][1:-1])}}]
    kb = KBinsDiscretizer(n_bins=3, encode="onehot").fit(x)
    p = lsk.plan(kb)
    assert (p.fields[0].type, p.fields[0].dims) == ("vector", 3)
    assert p.fields[0].steps[1] == {"one_hot": {"categories": [0.0, 1.0, 2.0], "handle_unknown": "ignore"}}


def test_encoders_keep_categories_unknowns_and_missing():
    df = frame()
    o = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-7)
    o.fit(df[["country", "items"]])
    p = lsk.plan(o)
    assert steps(p, "country") == [{"ordinal": {"categories": ["1", "DE", "US", None], "unknown_value": -1,
                                                "missing_value": -7}}]
    assert steps(p, "items") == [{"ordinal": {"categories": [0.0, 1.0, 2.0, 3.0], "unknown_value": -1}}]
    oh = OneHotEncoder(drop="first").fit(df[["country"]])
    p = lsk.plan(oh)
    assert (p.fields[0].type, p.fields[0].dims) == ("vector", 3)
    assert steps(p, "country") == [{"one_hot": {"categories": ["1", "DE", "US", None], "handle_unknown": "error",
                                                "drop": 0}}]
    p = lsk.plan(OneHotEncoder(handle_unknown="ignore").fit(df[["country"]]), one_hot="bool")
    assert [f.name for f in p.fields] == ["country_1", "country_DE", "country_US", "country_nan"]
    assert {f.type for f in p.fields} == {"bool"}
    assert p.width == 4
    # The YAML quotes string categories ("1" stays a string) and writes NaN's as null.
    text = lsk.export(OneHotEncoder().fit(df[["country"]]))
    assert '["1", "DE", "US", null]' in text


def test_the_sidecar_accepts_the_exported_config(tmp_path):
    if not os.path.exists(SIDECAR):
        pytest.fail("%s is missing: cmake --build %s --target larder-sidecar" % (SIDECAR, BUILD))
    df = frame()
    ct = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["amount"]),
        ("age", make_pipeline(MinMaxScaler(), KBinsDiscretizer(3, encode="onehot-dense")), ["age"]),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
         ["country"]),
        ("ord", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1),
         ["country"]),
        ("raw", "passthrough", ["items"]),
    ]).fit(df)
    rng = np.random.default_rng(2)
    emb = PCA(2, whiten=True).fit(rng.normal(size=(50, 5)))
    cols = PCA(2).fit(df[["age", "items"]])
    assert lsk.plan(cols).fields[0].source == ["age", "items"]
    yaml_text = (lsk.plan(ct).to_yaml(table="t") +
                 lsk.plan(emb, columns=["emb"]).to_yaml(table="e") + lsk.plan(cols).to_yaml(table="p"))
    assert "name: pca, type: vector, dims: 2, from: [\"age\", \"items\"]" in yaml_text
    assert "name: num__amount" in yaml_text and "name: emb_pca, type: vector, dims: 2" in yaml_text
    config = tmp_path / "c.yaml"
    config.write_text("segment: {name: sk-check, dir: %s}\ntables:\n%srabbitmq:\n  url: amqp://guest@127.0.0.1:1/\n"
                      "  password_env: LARDER_SK_CHECK_PASSWORD\n  queue: {name: q}\n" % (tmp_path, yaml_text))
    out = subprocess.run([SIDECAR, "--config", str(config), "--check-config"], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, LARDER_SK_CHECK_PASSWORD="x"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_refusals_name_the_step():
    df = frame()
    with pytest.raises(lsk.ExportError, match=r"step 'functiontransformer' \(FunctionTransformer\)"):
        lsk.export(make_pipeline(FunctionTransformer(np.log1p), StandardScaler()).fit(df[["age"]]))
    with pytest.raises(lsk.ExportError, match="unknown_value=NaN"):
        lsk.export(OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan).fit(df[["country"]]))
    with pytest.raises(lsk.ExportError, match="infrequent"):
        lsk.export(OneHotEncoder(min_frequency=200).fit(df[["country"]]))
    with pytest.raises(lsk.ExportError, match="nothing may follow a one-hot"):
        lsk.export(make_pipeline(OneHotEncoder(sparse_output=False), MaxAbsScaler()).fit(df[["country"]]))
    with pytest.raises(lsk.ExportError, match="add_indicator"):
        lsk.export(SimpleImputer(add_indicator=True).fit(df[["amount"]]))
    with pytest.raises(lsk.ExportError, match="pass columns"):
        lsk.export(StandardScaler().fit(df[["age"]].to_numpy()))


def test_command_line(tmp_path):
    model = tmp_path / "m.pkl"
    with open(model, "wb") as f:
        pickle.dump(StandardScaler().fit(frame()[["age"]].to_numpy()), f)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    out = subprocess.run([sys.executable, "-m", "larder.sklearn", str(model), "--columns", "age", "--table", "t"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("- name: \"t\"\n") and "{standardize: {mean: " in out.stdout
    with open(model, "wb") as f:
        pickle.dump(FunctionTransformer().fit(frame()[["age"]].to_numpy()), f)
    out = subprocess.run([sys.executable, "-m", "larder.sklearn", str(model), "--columns", "age"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "FunctionTransformer" in out.stderr


def test_publish_sends_null_only_to_inputs_that_take_it(tmp_path):
    df = frame(20)
    plan = lsk.plan(ColumnTransformer([("a", make_pipeline(SimpleImputer(), StandardScaler()), ["amount"]),
                                       ("c", OneHotEncoder(handle_unknown="ignore"), ["country"]),
                                       ("g", StandardScaler(), ["age"])]).fit(df))
    config = tmp_path / "c.yaml"
    config.write_text("tables:\n" + plan.to_yaml(table="t"))
    schema = TableSchema.from_config(str(config), "t")
    rows = pd.DataFrame({"k": ["a", "b"], "amount": [np.nan, 2.0], "country": [np.nan, "US"], "age": [30.0, 40.0]})
    bodies, _, errors, _ = build_messages(rows, "t", "k", 1_700_000_000_000, schema)
    assert not errors
    body = b"".join(bodies).decode()
    assert '"amount":null' in body and '"country":null' in body and '"country":"US"' in body
    # age's reader takes no null: a NaN there is still a row error.
    rows.loc[0, "age"] = np.nan
    _, _, errors, _ = build_messages(rows, "t", "k", 1_700_000_000_000, schema)
    assert [(e.row, e.column) for e in errors] == [(0, "age")]
