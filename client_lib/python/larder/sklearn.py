"""Fitted scikit-learn transformers as the sidecar's ingest transforms.

    import larder.sklearn
    yaml_text = larder.sklearn.export(pipeline, columns=["amount", "country"], table="cards")
    plan = larder.sklearn.plan(pipeline, columns=["amount", "country"])
    X = plan.features(segment.table("cards"), keys)   # == pipeline.transform(df) row by row

export() turns a fitted StandardScaler, MinMaxScaler, RobustScaler,
MaxAbsScaler, SimpleImputer, OrdinalEncoder, OneHotEncoder,
KBinsDiscretizer, PCA, or a Pipeline / ColumnTransformer of them, into the
`fields` of a table in the sidecar's config (docs/sidecar.md, "Ingest
transforms"): each field is computed `from` the event member of the input
column, through the steps that repeat the transformer's arithmetic in the
same order. Anything else is refused with an ExportError naming the step.

Missing values: a producer sends JSON null (larder.publish sends null for
NaN/None in a column a transform reads as missing). A SimpleImputer becomes
`impute`; an encoder that saw NaN in fit maps null to that category; any
other null is an unknown category, or refused where the transformer would
raise. See docs/python.md, "Fitted scikit-learn transformers".

Command line:
    python3 -m larder.sklearn MODEL.pkl --columns amount,country [--table cards] > fields.yaml
"""

import json
import math
import re

_NAME_OK = re.compile(r"[^A-Za-z0-9_.-]")


class ExportError(ValueError):
    """A transformer (or one of its settings) has no sidecar equivalent."""


class Field:
    """One field of the exported config. ``width`` is the number of columns
    of transform(X) it holds (dims of a vector, else 1), ``type`` the config
    type, ``steps`` the transform list (dicts and strings as in YAML)."""

    __slots__ = ("name", "type", "dims", "source", "steps", "width")

    def __init__(self, name, ftype, source, steps, dims=0):
        self.name, self.type, self.source, self.steps, self.dims = name, ftype, source, steps, dims
        self.width = dims if ftype == "vector" else 1

    def __repr__(self):
        return "Field(%r, %s%s, from %r, %d steps)" % (self.name, self.type, "[%d]" % self.dims if self.dims else "",
                                                      self.source, len(self.steps))


class Plan:
    """The fields of an exported transformer, in the column order of its
    transform() output."""

    def __init__(self, fields):
        self.fields = fields

    @property
    def width(self):
        return sum(f.width for f in self.fields)

    @property
    def inputs(self):
        """The event members the fields read, in first-use order: the
        columns a producer sends (e.g. larder.publish(df[plan.inputs + [key]]))."""
        members = []
        for f in self.fields:
            members.extend(f.source if isinstance(f.source, list) else [f.source])
        return list(dict.fromkeys(members))

    def to_yaml(self, table=None, capacity=100000, key_max_len=64):
        """The `fields:` list (a fragment to paste under a table), or with
        ``table`` a whole `tables:` entry."""
        lines = ["- " + _field_yaml(f) for f in self.fields]
        if table is None:
            return "fields:\n" + "".join("  " + line + "\n" for line in lines)
        out = ["- name: %s" % _yaml_scalar(table), "  capacity: %d" % capacity, "  key_max_len: %d" % key_max_len,
               "  fields:"]
        out.extend("    " + line for line in lines)
        return "\n".join(out) + "\n"

    def features(self, table, keys, **get_many_args):
        """Reads ``keys`` from a larder Table and returns float64 (n, width):
        the served features in the order of the transformer's output. Cells
        without a value are NaN."""
        import numpy as np
        batch = table.get_many(keys, fields=[f.name for f in self.fields], **get_many_args)
        cols = []
        for f in self.fields:
            block = np.asarray(batch[f.name], dtype=np.float64)
            cols.append(block.reshape(len(keys), f.width))
        return np.hstack(cols) if cols else np.zeros((len(keys), 0))


def plan(model, columns=None, one_hot="vector", float32=False):
    """The fields of ``model`` (fitted). columns: the input column names, in
    the order the model was fitted on (default: its feature_names_in_).
    one_hot: "vector" (one vector field per encoded column) or "bool" (one
    bool field per category, named column_category). float32: store scalar
    results as float32 instead of float64."""
    if one_hot not in ("vector", "bool"):
        raise ValueError('one_hot is "vector" or "bool", not %r' % (one_hot,))
    if columns is None:
        names = getattr(model, "feature_names_in_", None)
        if names is None:
            raise ExportError("the model was not fitted on a DataFrame: pass columns=[...] (the input names)")
        columns = [str(c) for c in names]
    columns = [str(c) for c in columns]
    n_in = getattr(model, "n_features_in_", None)
    if n_in is not None and n_in != len(columns) and not _is_vector_model(model, columns):
        raise ExportError("the model takes %d input columns, columns names %d" % (n_in, len(columns)))
    ctx = _Context(one_hot, float32)
    fields = ctx.convert(model, columns, prefix="")
    seen = set()
    for f in fields:
        if f.name in seen:
            raise ExportError("two fields would be named %r: give the transformers distinct names" % f.name)
        seen.add(f.name)
    return Plan(fields)


def export(model, columns=None, table=None, one_hot="vector", float32=False, capacity=100000, key_max_len=64):
    """YAML text of ``model``'s fields (see plan() and Plan.to_yaml())."""
    return plan(model, columns, one_hot, float32).to_yaml(table, capacity, key_max_len)


# ---------------------------------------------------------------------------


def _is_vector_model(model, columns):
    return type(model).__name__ == "PCA" and len(columns) == 1  # one array member of n_features_in_


def _sanitize(name):
    s = _NAME_OK.sub("_", name)[:63]
    return s or "_"


def _num(x):
    """A float as YAML: the shortest text that reads back as the same double."""
    x = float(x)
    if not math.isfinite(x):
        raise ExportError("a fitted parameter is not finite (%r)" % x)
    if x == int(x) and abs(x) < 2**53:
        return repr(int(x)) if x != 0 or math.copysign(1, x) > 0 else "-0.0"
    return repr(x)


def _yaml_scalar(v):
    if v is None:
        return "null"
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a YAML double-quoted scalar
    return _num(v)


def _yaml(v):
    if isinstance(v, dict):
        return "{" + ", ".join("%s: %s" % (k, _yaml(x)) for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str) and v in ("error", "ignore"):
        return v
    return _yaml_scalar(v)


def _field_yaml(f):
    parts = ["name: %s" % f.name, "type: %s" % f.type]
    if f.type == "vector":
        parts.append("dims: %d" % f.dims)
    if isinstance(f.source, list):
        parts.append("from: [%s]" % ", ".join(map(_yaml_scalar, f.source)))
    elif f.source != f.name:
        parts.append("from: %s" % _yaml_scalar(f.source))
    if f.steps:
        parts.append("transform: [%s]" % ", ".join(s if isinstance(s, str) else _yaml(s) for s in f.steps))
    return "{" + ", ".join(parts) + "}"


def _is_missing(v):
    if v is None:
        return True
    try:
        return isinstance(v, float) and math.isnan(v) or (hasattr(v, "dtype") and bool(v != v))
    except (TypeError, ValueError):
        return False


def _categories(values, where):
    """(list for YAML, position of the missing category or -1)."""
    out = []
    missing = -1
    kinds = set()
    for i, v in enumerate(list(values)):
        if _is_missing(v):
            missing = i
            out.append(None)
            continue
        if isinstance(v, str):
            kinds.add("str")
            out.append(v)
        elif isinstance(v, bool) or type(v).__name__ == "bool_":
            raise ExportError("%s: bool categories are not supported (cast the column to int or str)" % where)
        else:
            try:
                out.append(float(v))
            except (TypeError, ValueError):
                raise ExportError("%s: category %r is neither a string nor a number" % (where, v)) from None
            kinds.add("num")
    if len(kinds) > 1:
        raise ExportError("%s: categories mix strings and numbers" % where)
    return out, missing


class _Column:
    """One input column on its way through a pipeline."""

    def __init__(self, name, member):
        self.name = name  # the field's name so far
        self.member = member
        self.steps = []
        self.reads = "number"  # what the steps so far leave: number, string (imputed string), or done
        self.output = None  # a finished Field (after a one-hot), or None


class _Context:
    def __init__(self, one_hot, float32):
        self.one_hot = one_hot
        self.scalar_type = "float32" if float32 else "float64"

    # A model on a list of columns -> fields.
    def convert(self, model, columns, prefix):
        kind = type(model).__name__
        if kind == "ColumnTransformer":
            return self.column_transformer(model, columns, prefix)
        if kind == "PCA":
            return [self.pca(model, columns, prefix)]
        cols = [_Column(prefix + c, c) for c in columns]
        steps = model.steps if kind == "Pipeline" else [(kind, model)]
        for i, (step_name, est) in enumerate(steps):
            if est is None or est == "passthrough":
                continue
            if type(est).__name__ == "PCA":
                if i != len(steps) - 1 or any(c.steps for c in cols):
                    raise ExportError("step %r (PCA): only a PCA on its own input is exported (the sidecar "
                                      "projects the vector a producer sends, not the output of earlier steps)"
                                      % step_name)
                return [self.pca(est, columns, prefix)]
            self.step(step_name, est, cols)
        fields = []
        for c in cols:
            if c.output is not None:
                fields.extend(c.output)
            elif c.reads == "string":
                raise ExportError("column %r: a SimpleImputer of strings must be followed by an encoder (the "
                                  "sidecar stores numbers)" % c.member)
            else:
                fields.append(Field(_sanitize(c.name), self.scalar_type, c.member, c.steps))
        return fields

    def column_transformer(self, ct, columns, prefix):
        fields = []
        verbose = getattr(ct, "verbose_feature_names_out", True)
        for name, trans, cols in ct.transformers_:
            if isinstance(trans, str) and trans == "drop":
                continue
            selected = _select(cols, columns)
            if not selected:
                continue
            p = prefix + (name + "__" if verbose else "")
            if isinstance(trans, str) and trans == "passthrough":
                fields.extend(Field(_sanitize(p + c), self.scalar_type, c, []) for c in selected)
                continue
            fields.extend(self.convert(trans, selected, p))
        return fields

    def pca(self, est, columns, prefix):
        if getattr(est, "n_features_in_", 0) < 1:
            raise ExportError("PCA is not fitted")
        if len(columns) > 1 and len(columns) != est.n_features_in_:
            raise ExportError("PCA takes %d columns, %d given" % (est.n_features_in_, len(columns)))
        spec = {"components": [[float(x) for x in row] for row in est.components_]}
        if est.mean_ is not None:
            spec["mean"] = [float(x) for x in est.mean_]
        if est.whiten:
            spec["divide"] = [math.sqrt(float(v)) for v in est.explained_variance_]
        if len(columns) == 1:  # an embedding: one array member
            return Field(_sanitize(prefix + columns[0] + "_pca"), "vector", columns[0], [{"project": spec}],
                         dims=len(est.components_))
        # Scalar columns: the sidecar gathers the members into the array.
        return Field(_sanitize(prefix + "pca"), "vector", list(columns), [{"project": spec}],
                     dims=len(est.components_))

    # One per-column step applied to every column of `cols`.
    def step(self, step_name, est, cols):
        kind = type(est).__name__
        where = "step %r (%s)" % (step_name, kind)
        for c in cols:
            if c.output is not None:
                raise ExportError("%s follows a one-hot encoding of %r: nothing may follow a one-hot (the sidecar "
                                  "stores its vector or bools as they are)" % (where, c.member))
        if kind == "SimpleImputer":
            return self.imputer(est, cols, where)
        if kind in ("StandardScaler", "RobustScaler", "MaxAbsScaler", "MinMaxScaler"):
            return self.scaler(kind, est, cols, where)
        if kind == "OrdinalEncoder":
            return self.ordinal(est, cols, where)
        if kind == "OneHotEncoder":
            return self.onehot(est, cols, where)
        if kind == "KBinsDiscretizer":
            return self.kbins(est, cols, where)
        raise ExportError("%s has no sidecar equivalent (supported: StandardScaler, MinMaxScaler, RobustScaler, "
                          "MaxAbsScaler, SimpleImputer, OrdinalEncoder, OneHotEncoder, KBinsDiscretizer, PCA, and "
                          "Pipeline/ColumnTransformer of them)" % where)

    def numeric(self, c, where):
        if c.reads != "number":
            raise ExportError("%s: column %r holds strings here; encode it first" % (where, c.member))

    def imputer(self, est, cols, where):
        if getattr(est, "add_indicator", False):
            raise ExportError("%s: add_indicator=True has no sidecar equivalent" % where)
        stats = list(est.statistics_)
        if len(stats) != len(cols):
            raise ExportError("%s: some columns were all missing in fit and are dropped (keep_empty_features)"
                              % where)
        mv = est.missing_values
        for c, v in zip(cols, stats):
            if c.steps:
                raise ExportError("%s on %r: an imputer must come first in its column's pipeline" % (where, c.member))
            if _is_missing(v):
                raise ExportError("%s: column %r has no fitted value" % (where, c.member))
            spec = {"value": v if isinstance(v, str) else float(v)}
            if not _is_missing(mv):
                spec["missing"] = mv if isinstance(mv, str) else float(mv)
            c.steps.append({"impute": spec})
            c.reads = "string" if isinstance(v, str) else "number"

    def scaler(self, kind, est, cols, where):
        for j, c in enumerate(cols):
            self.numeric(c, where)
            if kind == "StandardScaler":
                mean = 0.0 if est.mean_ is None or not est.with_mean else float(est.mean_[j])
                std = 1.0 if est.scale_ is None or not est.with_std else float(est.scale_[j])
                c.steps.append({"standardize": {"mean": mean, "std": std}})
            elif kind == "RobustScaler":
                center = float(est.center_[j]) if est.with_centering else 0.0
                scale = float(est.scale_[j]) if est.with_scaling else 1.0
                c.steps.append({"standardize": {"mean": center, "std": scale}})
            elif kind == "MaxAbsScaler":
                c.steps.append({"standardize": {"mean": 0.0, "std": float(est.scale_[j])}})
            else:  # MinMaxScaler: X * scale_ + min_, then clip
                c.steps.append({"affine": {"scale": float(est.scale_[j]), "offset": float(est.min_[j])}})
                if est.clip:
                    lo, hi = est.feature_range
                    c.steps.append({"clip": {"min": float(lo), "max": float(hi)}})

    def ordinal(self, est, cols, where):
        if est.handle_unknown == "use_encoded_value":
            uv = est.unknown_value
            if uv is None or _is_missing(uv):
                raise ExportError("%s: unknown_value=NaN cannot be stored; use an integer (e.g. -1)" % where)
        for j, c in enumerate(cols):
            cats, missing = _categories(est.categories_[j], "%s column %r" % (where, c.member))
            self.category_input(c, cats, where)
            spec = {"categories": cats}
            if est.handle_unknown == "use_encoded_value":
                spec["unknown_value"] = int(est.unknown_value)
            # sklearn gives encoded_missing_value to NaN only; None is a
            # category like any other (null maps to its position).
            if missing >= 0 and not (est.categories_[j][missing] is None):
                emv = getattr(est, "encoded_missing_value", math.nan)
                if _is_missing(emv):
                    raise ExportError("%s: column %r has NaN among its categories and encoded_missing_value=NaN, "
                                      "which cannot be stored; set encoded_missing_value to an integer" % (where,
                                                                                                           c.member))
                spec["missing_value"] = int(emv)
            c.steps.append({"ordinal": spec})
            c.reads = "number"

    def category_input(self, c, cats, where):
        strings = any(isinstance(x, str) for x in cats)
        if strings and c.steps and not (len(c.steps) == 1 and "impute" in c.steps[0]):
            raise ExportError("%s: column %r: string categories after a numeric step" % (where, c.member))
        if not strings and c.reads == "string":
            raise ExportError("%s: column %r is imputed with a string but has numeric categories" % (where, c.member))

    def onehot(self, est, cols, where):
        infrequent = getattr(est, "infrequent_categories_", None)
        if infrequent is not None and any(x is not None for x in infrequent):
            raise ExportError("%s: infrequent categories (min_frequency/max_categories) are not supported" % where)
        handle = est.handle_unknown
        if handle == "infrequent_if_exist":
            handle = "ignore"
        drop_idx = getattr(est, "drop_idx_", None)
        for j, c in enumerate(cols):
            cats, _ = _categories(est.categories_[j], "%s column %r" % (where, c.member))
            self.category_input(c, cats, where)
            drop = None if drop_idx is None or drop_idx[j] is None else int(drop_idx[j])
            self.finish_onehot(c, cats, handle, drop, where)

    def finish_onehot(self, c, cats, handle, drop, where):
        spec = {"categories": cats, "handle_unknown": handle}
        if drop is not None:
            spec["drop"] = drop
        if self.one_hot == "vector":
            dims = len(cats) - (drop is not None)
            c.output = [Field(_sanitize(c.name), "vector", c.member, c.steps + [{"one_hot": spec}], dims=dims)]
        else:
            c.output = []
            for k, cat in enumerate(cats):
                if k == drop:
                    continue
                label = "nan" if cat is None else (cat if isinstance(cat, str) else _num(cat))
                c.output.append(Field(_sanitize("%s_%s" % (c.name, label)), "bool", c.member,
                                      c.steps + [{"one_hot": dict(spec, index=k)}]))
        c.reads = "done"

    def kbins(self, est, cols, where):
        if est.encode not in ("ordinal", "onehot", "onehot-dense"):
            raise ExportError("%s: encode=%r is not supported" % (where, est.encode))
        for j, c in enumerate(cols):
            self.numeric(c, where)
            inner = [float(x) for x in est.bin_edges_[j][1:-1]]
            n = int(est.n_bins_[j])
            if inner:
                c.steps.append({"bucketize": {"boundaries": inner}})
            else:  # one bin: every value is bin 0
                c.steps.append({"affine": {"scale": 0.0, "offset": 0.0}})
            if est.encode != "ordinal":
                self.finish_onehot(c, [float(k) for k in range(n)], "ignore", None, where)


def _select(cols, columns):
    """The column names a ColumnTransformer entry selects."""
    import numpy as np
    if isinstance(cols, str):
        return [cols]
    if isinstance(cols, slice):
        return list(columns[cols])
    arr = np.asarray(cols)
    if arr.dtype.kind == "b":
        return [c for c, keep in zip(columns, arr) if keep]
    if arr.dtype.kind in "iu":
        return [columns[int(i)] for i in arr]
    return [str(c) for c in arr]


def main(argv=None):
    import argparse
    import pickle
    import sys
    ap = argparse.ArgumentParser(prog="python3 -m larder.sklearn",
                                 description="Print the sidecar config fields of a fitted scikit-learn transformer "
                                 "(a pickle file).")
    ap.add_argument("model", help="a pickle of a fitted transformer or Pipeline/ColumnTransformer (only load "
                    "pickles you trust)")
    ap.add_argument("--columns", help="input column names, comma-separated (default: the model's "
                    "feature_names_in_)")
    ap.add_argument("--table", help="print a whole tables: entry with this name instead of a fields: fragment")
    ap.add_argument("--capacity", type=int, default=100000)
    ap.add_argument("--key-max-len", type=int, default=64)
    ap.add_argument("--one-hot", choices=("vector", "bool"), default="vector")
    ap.add_argument("--float32", action="store_true", help="store scalar results as float32")
    args = ap.parse_args(argv)
    with open(args.model, "rb") as f:
        model = pickle.load(f)
    columns = args.columns.split(",") if args.columns else None
    try:
        text = export(model, columns, args.table, args.one_hot, args.float32, args.capacity, args.key_max_len)
    except ExportError as e:
        print("larder.sklearn: %s" % e, file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
