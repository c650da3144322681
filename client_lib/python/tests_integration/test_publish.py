"""larder.publish against the real broker and a real larder-sidecar: what is
published ends up in the table, what the sidecar would refuse is refused
before anything is sent, and what no queue takes is reported."""

import datetime
import json
import os
import ssl
import subprocess

import numpy as np
import pandas as pd
import pytest

import larder
from conftest import LARDERCTL, wait_for

TABLE_YAML = """\
  - name: cards
    key_max_len: 16
    capacity: 120000
    fields:
      - {name: n, type: int64}
      - {name: x, type: float64}
      - {name: f, type: float32}
      - {name: flag, type: bool}
      - {name: s, type: string, max_len: 6}
      - {name: v, type: vector, dims: 4}
  - name: events
    key_max_len: 16
    capacity: 1000
    fields:
      - {name: amount_log, type: float64, from: amount, transform: [log1p]}
    aggregates:
      - {name: n_1h, fn: count, window: 1h}
      - {name: spend_1h, source: amount, fn: sum, window: 1h}
"""


def now_ms():
    return larder.now_unix_ms()


def frame(n, seed=1, t=None):
    rng = np.random.default_rng(seed)
    t = now_ms() - 60_000 if t is None else t
    return pd.DataFrame({
        "card": ["c%07d" % i for i in range(n)],
        "ts": np.full(n, t, dtype=np.int64) + np.arange(n) % 1000,
        "n": rng.integers(-2 ** 40, 2 ** 40, n),
        "x": rng.normal(size=n),
        "f": rng.normal(size=n).astype(np.float32),
        "flag": rng.random(n) < 0.5,
        "s": np.array(["", "a", "bc", "é", "défg", "xyz123"], dtype=object)[rng.integers(0, 6, n)],
        "v": list(rng.normal(size=(n, 4)).astype(np.float32)),
    })


def wait_upserts(table, count, what):
    wait_for(lambda: table.stats()["upserts"] + table.stats()["deletes"] >= count, 120, what)


def check_rows(table, df):
    """Every key of df reads back equal (float32 fields rounded as stored)."""
    keys = df["card"].tolist()
    b = table.get_many(keys, fields=["n", "x", "f", "flag", "v"])
    assert (b.status == larder.Status.OK).all(), "%d keys not OK" % (b.status != larder.Status.OK).sum()
    np.testing.assert_array_equal(b["n"], df["n"].to_numpy().astype(np.float64))
    np.testing.assert_array_equal(b["x"], df["x"].to_numpy())
    np.testing.assert_array_equal(b["f"], df["f"].to_numpy().astype(np.float64))
    np.testing.assert_array_equal(b["flag"], df["flag"].to_numpy().astype(np.float64))
    np.testing.assert_array_equal(b["v"], np.stack(df["v"].to_list()))
    np.testing.assert_array_equal(b.event_time_ms, df["ts"].to_numpy())
    strings = table.get_many(keys, fields=["s"])["s"]
    assert list(strings) == df["s"].tolist()


def test_a_dataframe_of_100k_rows_ends_up_in_the_table(sidecar_factory):
    sc = sidecar_factory(TABLE_YAML)
    seg = sc.start()
    cards = seg.table("cards")
    df = frame(100_000)
    report = larder.publish(df, table="cards", key="card", event_time="ts", config=sc.config, exchange=sc.exchange)
    assert report.ok, report
    assert report.published_rows == 100_000 and report.returned_messages == 0 and report.nacked_messages == 0
    assert report.messages == report.confirmed_messages >= 100  # batched, 1000 updates a message at most
    wait_upserts(cards, 100_000, "100000 upserts")
    assert cards.stats()["live_keys"] == 100_000
    assert seg.info()["messages_rejected"] == 0
    check_rows(cards, df)


def test_dicts_of_numpy_lists_of_dicts_scalar_event_times_and_deletes(sidecar_factory):
    sc = sidecar_factory(TABLE_YAML)
    seg = sc.start()
    cards = seg.table("cards")
    t = now_ms() - 10_000
    cols = {"card": np.array(["a", "b", "c"]), "n": np.arange(3), "v": np.ones((3, 4), dtype=np.float32),
            "x": np.array([1.5, np.nan, 2.5])}
    r = larder.publish(cols, "cards", "card", t, config=sc.config, exchange=sc.exchange, nan="omit")
    assert r.ok and r.published_rows == 3, r
    rows = [{"card": "a", "s": "hé"}, {"card": "d", "flag": True}]
    aware = datetime.datetime.fromtimestamp((t + 1) / 1000, tz=datetime.timezone.utc)
    r = larder.publish(rows, "cards", "card", aware, config=sc.config, exchange=sc.exchange)
    assert r.ok and r.published_rows == 2, r
    r = larder.publish(pd.DataFrame({"card": ["b", "c"], "gone": [True, False], "ts": [t + 2, t + 2],
                                     "n": [0, 7]}),
                       "cards", "card", "ts", config=sc.config, exchange=sc.exchange, delete="gone")
    assert r.ok and r.published_rows == 2, r
    wait_upserts(cards, 7, "seven updates")
    a = cards.get("a")
    assert a["s"] == "hé" and a["n"] == 0 and a["x"] == 1.5 and list(a["v"]) == [1, 1, 1, 1]
    assert a.event_time_ms == t + 1
    assert cards.get("b").status == larder.Status.NOT_FOUND
    c = cards.get("c")
    assert c["n"] == 7 and c["x"] == 2.5
    assert cards.get("d")["flag"] is True and cards.get("d").valid("n") is False
    # nan="omit" left b's x unset rather than sending it; b is deleted now,
    # and nothing was refused.
    assert seg.info()["messages_rejected"] == 0


def expect_errors(sc, data, expected, **kw):
    with pytest.raises(larder.PublishValidationError) as e:
        larder.publish(data, "cards", "card", kw.pop("event_time", "ts"), config=sc.config, exchange=sc.exchange, **kw)
    got = {(err.row, err.column) for err in e.value.errors}
    assert got == {(row, col) for row, col, _ in expected}, e.value.errors
    for err in e.value.errors:
        reason = next(r for row, col, r in expected if (row, col) == (err.row, err.column))
        assert reason in err.reason, (err, reason)
    assert "nothing sent" in str(e.value)
    return e.value


def test_every_class_of_bad_row_is_reported_and_nothing_is_sent(sidecar_factory):
    sc = sidecar_factory(TABLE_YAML)
    seg = sc.start()
    t = now_ms() - 1000
    good = {"card": "ok", "ts": t, "n": 1}
    cases = [
        ({"card": "k1", "ts": t, "zzz": 1}, "zzz", "unknown column"),
        ({"card": "k1", "ts": t, "n": "7"}, "n", "where an integer is expected"),
        ({"card": "k1", "ts": t, "n": 1.5}, "n", "got float 1.5 where an integer is expected"),
        ({"card": "k1", "ts": t, "x": True}, "x", "where a number is expected"),
        ({"card": "k1", "ts": t, "flag": 1}, "flag", "where a bool is expected"),
        ({"card": "k1", "ts": t, "s": "toolong"}, "s", "max_len is 6"),
        ({"card": "k1", "ts": t, "s": "ééé€"}, "s", "a string of 9 bytes"),
        ({"card": "k1", "ts": t, "v": [1, 2, 3]}, "v", "a vector of 3 elements, the field has dims 4"),
        ({"card": "k1", "ts": t, "v": [1, 2, 3, float("nan")]}, "v", "not finite"),
        ({"card": "k1", "ts": t, "x": float("nan")}, "x", "no value (NaN/None)"),
        ({"card": "k1", "ts": t, "x": float("inf")}, "x", "not finite"),
        ({"card": "k1", "ts": t, "f": 1e39}, "f", "out of range for float32"),
        ({"card": "k1", "ts": t, "n": 2 ** 63}, "n", "out of range for int64"),
        ({"card": "k" * 17, "ts": t, "n": 1}, "card", "key_max_len is 16"),
        ({"card": "", "ts": t, "n": 1}, "card", "empty key"),
        ({"card": None, "ts": t, "n": 1}, "card", "missing key"),
        ({"card": "k1", "ts": None, "n": 1}, "ts", "missing event time"),
        ({"card": "k1", "ts": t // 1000, "n": 1}, "ts", "before the table's min_event_time"),
        ({"card": "k1", "ts": t + 3_600_000, "n": 1}, "ts", "ahead of this clock"),
    ]
    rows = [good] + [c[0] for c in cases] + [good]
    expect_errors(sc, rows, [(i + 1, col, reason) for i, (_, col, reason) in enumerate(cases)])

    # Aggregates and computed fields are the sidecar's to write.
    events = [{"card": "e1", "ts": t, "amount": 5.0, "spend_1h": 3.0, "amount_log": 1.0}]
    with pytest.raises(larder.PublishValidationError) as e:
        larder.publish(events, "events", "card", "ts", config=sc.config, exchange=sc.exchange)
    reasons = {err.column: err.reason for err in e.value.errors}
    assert set(reasons) == {"spend_1h", "amount_log"}, e.value.errors
    assert "an aggregate the sidecar computes (sum of 'amount' over 1h)" in reasons["spend_1h"]
    assert "computed by the sidecar from the input 'amount'" in reasons["amount_log"]

    # Nothing of the refused calls reached the broker: the next valid message
    # is the first the sidecar applies (one queue applies in order).
    r = larder.publish([good], "cards", "card", "ts", config=sc.config, exchange=sc.exchange)
    assert r.ok
    cards = seg.table("cards")
    wait_upserts(cards, 1, "the valid row")
    assert cards.stats()["live_keys"] == 1 and cards.get("ok")["n"] == 1
    assert seg.info()["messages_rejected"] == 0


def test_skip_sends_the_good_rows_and_lists_the_bad(sidecar_factory):
    sc = sidecar_factory(TABLE_YAML)
    seg = sc.start()
    df = frame(50)
    df.loc[7, "s"] = "much too long"
    df.loc[20, "card"] = "k" * 40
    r = larder.publish(df, "cards", "card", "ts", config=sc.config, exchange=sc.exchange, on_error="skip")
    assert r.published_rows == 48 and r.skipped_rows == 2 and r.ok, r
    assert [(e.row, e.column) for e in r.skipped] == [(7, "s"), (20, "card")]
    cards = seg.table("cards")
    wait_upserts(cards, 48, "48 rows")
    assert cards.get(df.loc[7, "card"]).status == larder.Status.NOT_FOUND
    check_rows(cards, df.drop(index=[7, 20]))


def test_the_schema_of_a_live_segment(sidecar_factory):
    sc = sidecar_factory(TABLE_YAML)
    seg = sc.start()
    schema = larder.TableSchema.from_segment(sc.name, "events", sc.dir)
    assert schema.key_max_len == 16
    t = now_ms() - 1000
    with pytest.raises(larder.PublishValidationError) as e:
        larder.publish([{"card": "a" * 17, "ts": t, "n_1h": 3}], "cards", "card", "ts", segment=sc.name,
                       dir=sc.dir, url=os.environ["LARDER_TEST_AMQP_URL"], exchange=sc.exchange)
    assert [(x.column, x.reason) for x in e.value.errors] == [
        ("card", "a key of 17 bytes, key_max_len is 16"),
        ("n_1h", "unknown column: table 'cards' (segment %r) has no field or input 'n_1h'" % sc.name)]
    with pytest.raises(larder.PublishValidationError) as e:
        larder.publish([{"card": "a", "ts": t, "n_1h": 3}], "events", "card", "ts", segment=sc.name,
                       dir=sc.dir, url=os.environ["LARDER_TEST_AMQP_URL"], exchange=sc.exchange)
    assert "an aggregate the sidecar computes" in e.value.errors[0].reason
    r = larder.publish({"card": ["s1"], "n": [5], "s": ["ok"]}, "cards", "card", t, segment=sc.name, dir=sc.dir,
                       url=os.environ["LARDER_TEST_AMQP_URL"], exchange=sc.exchange, password_env="LARDER_IT_PASSWORD")
    assert r.ok
    cards = seg.table("cards")
    wait_upserts(cards, 1, "one row")
    assert cards.get("s1")["n"] == 5


def test_raw_events_feed_the_aggregates(sidecar_factory):
    sc = sidecar_factory(TABLE_YAML)
    seg = sc.start()
    t = now_ms() - 5000
    ev = pd.DataFrame({"card": ["e1", "e1", "e2", "e1"], "ts": [t, t + 1, t + 2, t + 1],
                       "amount": [10.0, 5.0, 1.0, 5.0], "eid": ["x1", "x2", "x3", "x2"]})
    r = larder.publish(ev, "events", "card", "ts", config=sc.config, exchange=sc.exchange, id="eid")
    assert r.ok and r.published_rows == 4
    events = seg.table("events")
    wait_for(lambda: events.stats()["aggregate_events"] + events.stats()["duplicates"] >= 4, 60, "4 events")
    e1 = events.get("e1")
    assert e1["n_1h"] == 2 and e1["spend_1h"] == 15.0  # the redelivered id x2 counted once
    assert abs(e1["amount_log"] - np.log1p(5.0)) < 1e-12


def test_an_unroutable_publish_is_reported(sidecar_factory, broker):
    import pika
    from larder.publish import _parse_url
    sc = sidecar_factory(TABLE_YAML)
    sc.start()
    u = _parse_url(broker["url"])
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host=u["host"], port=u["port"], credentials=pika.PlainCredentials(u["user"], broker["password"])))
    lonely = sc.name + ".nobody"
    conn.channel().exchange_declare(lonely, exchange_type="topic", auto_delete=False)
    try:
        r = larder.publish(frame(2500), "cards", "card", "ts", config=sc.config, exchange=lonely)
    finally:
        conn.channel().exchange_delete(lonely)
        conn.close()
    assert not r.ok
    assert r.messages == 3 and r.returned_messages == 3 and r.returned_rows == 2500 and r.published_rows == 0, r
    assert "returned=3 (2500 rows)" in str(r)


def larderctl(*args, env=None):
    if not os.path.exists(LARDERCTL):
        pytest.fail("%s is missing: cmake --build build --target larderctl" % LARDERCTL)
    return subprocess.run([LARDERCTL, *map(str, args)], capture_output=True, text=True, timeout=120,
                          env=env or os.environ)


def test_larderctl_publishes_a_csv_and_a_jsonl_file(sidecar_factory, tmp_path):
    sc = sidecar_factory(TABLE_YAML)
    seg = sc.start()
    cards = seg.table("cards")
    df = frame(3000, seed=5)
    csv_df = df.iloc[:2000].copy()
    csv_df["v"] = [json.dumps([float(x) for x in v]) for v in csv_df["v"]]
    csv_df["flag"] = csv_df["flag"].map({True: "true", False: "false"})
    # Floats as Python writes them (shortest round trip), so they read back equal.
    csv_df["x"] = [repr(float(x)) for x in csv_df["x"]]
    csv_df["f"] = [repr(float(x)) for x in csv_df["f"]]
    csv_df.loc[csv_df["s"] == "", "s"] = "q"  # an empty CSV cell means "no value"
    csv_path = tmp_path / "cards.csv"
    csv_df.to_csv(csv_path, index=False)
    jsonl_path = tmp_path / "cards.jsonl"
    with open(jsonl_path, "w") as f:
        for r in df.iloc[2000:].itertuples():
            f.write(json.dumps({"card": r.card, "ts": int(r.ts), "n": int(r.n), "x": float(r.x), "f": float(r.f),
                                "flag": bool(r.flag), "s": r.s, "v": [float(v) for v in r.v]},
                               ensure_ascii=False) + "\n")
    r = larderctl("publish", csv_path, "--config", sc.config, "--table", "cards", "--key", "card",
                  "--event-time", "ts", "--exchange", sc.exchange, "--max-updates", "300")
    assert r.returncode == 0, r.stderr
    assert "2000 rows in 7 messages" in r.stdout and "7 confirmed (2000 rows), 0 returned" in r.stdout, r.stdout
    r = larderctl("--json", "publish", jsonl_path, "--config", sc.config, "--table", "cards", "--key", "card",
                  "--event-time", "ts", "--exchange", sc.exchange, "--max-message-bytes", "20000")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["rows"] == 1000 and out["confirmed_rows"] == 1000 and out["returned"] == 0 and out["messages"] > 5
    assert out["bytes"] <= out["messages"] * 20000
    wait_upserts(cards, 3000, "3000 rows")
    assert seg.info()["messages_rejected"] == 0
    expected = df.copy()
    expected.loc[expected.index[:2000][csv_df["s"].to_numpy() == "q"], "s"] = "q"
    check_rows(cards, expected)


def test_larderctl_lists_every_bad_row_and_sends_nothing(sidecar_factory, tmp_path):
    sc = sidecar_factory(TABLE_YAML)
    seg = sc.start()
    t = now_ms() - 1000
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(
        "card,ts,n,x,s,v,flag,spend_1h\n"
        "ok1,%d,1,1.5,ab,\"[1,2,3,4]\",true,\n"         # line 2: good
        "k2,%d,1.5,,,,,\n"                               # 3: not an integer
        "k3,%d,,nan,,,,\n"                               # 4: NaN
        "k4,%d,,,toolong,,,\n"                           # 5: max_len
        "k5,%d,,,,\"[1,2]\",,\n"                         # 6: dims
        "k6,%d,,,,,yes,\n"                               # 7: not a bool
        "%s,%d,1,,,,,\n"                                 # 8: key too long
        ",%d,1,,,,,\n"                                   # 9: no key
        "k9,,1,,,,,\n"                                   # 10: no event time
        "k10,%d,1,,,,,\n"                                # 11: seconds, not ms
        "k11,%d,,,,,,5\n"                                # 12: an aggregate
        "k12,%d,1,2,3\n"                                 # 13: too few cells
        % (t, t, t, t, t, t, "k" * 17, t, t, t // 1000, t, t))
    r = larderctl("publish", csv_path, "--config", sc.config, "--table", "cards", "--key", "card",
                  "--event-time", "ts", "--exchange", sc.exchange)
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.startswith(str(csv_path))]
    got = {int(l.split(":")[1]): l for l in lines}
    assert sorted(got) == list(range(3, 14)), r.stderr
    for line, want in [(3, 'column "n": wrong_type'), (4, 'column "x": non_finite'),
                       (5, 'column "s": string_too_long'), (6, 'column "v": vector_length'),
                       (7, 'column "flag": wrong_type'), (8, 'column "card": key_too_long'),
                       (9, 'column "card": missing_member'), (10, 'column "ts": missing_member'),
                       (11, 'column "ts": event_time_too_old'), (12, 'column "spend_1h": unknown_field'),
                       (13, "bad_row: 5 cells, the header has 8")]:
        assert want in got[line], (line, got[line])
    assert 'table "cards" has no field "spend_1h"' in got[12]
    ev_path = tmp_path / "events.csv"
    ev_path.write_text("card,ts,amount,spend_1h\ne1,%d,5,7\n" % t)
    ev = larderctl("publish", ev_path, "--config", sc.config, "--table", "events", "--key", "card",
                   "--event-time", "ts", "--exchange", sc.exchange)
    assert ev.returncode == 1, (ev.stdout, ev.stderr)
    assert ('events.csv:2: column "spend_1h": unknown_field: field "spend_1h" of table "events" is an aggregate '
            'the sidecar computes') in ev.stderr, ev.stderr
    assert "1 bad row(s) of 1, nothing sent" in ev.stderr
    assert "11 bad row(s) of 12, nothing sent" in r.stderr

    # --skip-bad sends the good row; it is the first the sidecar applies.
    r = larderctl("publish", csv_path, "--config", sc.config, "--table", "cards", "--key", "card",
                  "--event-time", "ts", "--exchange", sc.exchange, "--skip-bad")
    assert r.returncode == 0 and "1 confirmed (1 rows)" in r.stdout and "11 bad rows skipped" in r.stdout, r
    cards = seg.table("cards")
    wait_upserts(cards, 1, "the good row")
    assert cards.stats()["live_keys"] == 1 and cards.get("ok1")["n"] == 1
    assert list(cards.get("ok1")["v"]) == [1, 2, 3, 4]


def test_larderctl_reports_an_unroutable_publish(sidecar_factory, tmp_path):
    sc = sidecar_factory(TABLE_YAML)
    sc.start()
    t = now_ms() - 1000
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"card": "c%d" % i, "ts": t, "n": i}) + "\n" for i in range(10)))
    # amq.topic exists on every broker and nothing binds it here.
    r = larderctl("publish", path, "--config", sc.config, "--table", "cards", "--key", "card", "--event-time", "ts",
                  "--exchange", "amq.topic", "--routing-key", sc.name + ".nobody", "--max-updates", "4")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "10 rows in 3 messages" in r.stdout and "0 confirmed (0 rows), 3 returned unroutable (10 rows)" \
        in r.stdout, r.stdout
    assert "no queue is bound to exchange \"amq.topic\"" in r.stderr


def test_larderctl_with_the_schema_of_a_live_segment(sidecar_factory, tmp_path):
    sc = sidecar_factory(TABLE_YAML)
    seg = sc.start()
    t = now_ms() - 1000
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"card": "a1", "ts": t, "n": 3, "s": "hé"}) + "\n" +
                    json.dumps({"card": "a2", "ts": t, "n": 4, "v": [1, 2, 3, 4]}) + "\n")
    args = ["--dir", sc.dir, "publish", path, "--segment", sc.name, "--table", "cards", "--key", "card",
            "--event-time", "ts", "--exchange", sc.exchange, "--url", os.environ["LARDER_TEST_AMQP_URL"],
            "--password-env", "LARDER_IT_PASSWORD"]
    r = larderctl(*args, "--dry-run")
    assert r.returncode == 0 and "2 rows valid, 0 bad, in 1 messages (not sent: --dry-run)" in r.stdout, r
    r = larderctl(*args)
    assert r.returncode == 0 and "1 confirmed (2 rows)" in r.stdout, (r.stdout, r.stderr)
    cards = seg.table("cards")
    wait_upserts(cards, 2, "two rows")
    assert cards.get("a1")["s"] == "hé" and list(cards.get("a2")["v"]) == [1, 2, 3, 4]
    # The segment's key_max_len and types, without a config.
    path.write_text(json.dumps({"card": "k" * 17, "ts": t, "n": 1}) + "\n" +
                    json.dumps({"card": "k", "ts": t, "n": "x"}) + "\n")
    r = larderctl(*args)
    assert r.returncode == 1, r
    assert ':1: column "card": key_too_long' in r.stderr and ':2: column "n": wrong_type' in r.stderr, r.stderr
    assert "2 bad row(s) of 2, nothing sent" in r.stderr, r.stderr


def test_tls_publish_from_python_and_larderctl(sidecar_factory, tmp_path):
    url, ca = os.environ.get("LARDER_TEST_AMQPS_URL"), os.environ.get("LARDER_TEST_CA_FILE")
    if not url or not ca:
        pytest.fail("LARDER_TEST_AMQPS_URL / LARDER_TEST_CA_FILE are not set (scripts/broker.sh writes them)")
    sc = sidecar_factory(TABLE_YAML)
    seg = sc.start()
    t = now_ms() - 1000
    r = larder.publish({"card": ["t1"], "n": [1]}, "cards", "card", t, config=sc.config, exchange=sc.exchange,
                       url=url, tls={"ca_file": ca})
    assert r.ok and r.published_rows == 1, r
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"card": "t2", "ts": t, "n": 2}) + "\n")
    out = larderctl("publish", path, "--config", sc.config, "--table", "cards", "--key", "card", "--event-time", "ts",
                    "--exchange", sc.exchange, "--url", url, "--ca-file", ca)
    assert out.returncode == 0 and "1 confirmed (1 rows)" in out.stdout, (out.stdout, out.stderr)
    cards = seg.table("cards")
    wait_upserts(cards, 2, "two rows over TLS")
    assert cards.get("t1")["n"] == 1 and cards.get("t2")["n"] == 2
    # A CA that did not sign the broker's certificate is refused.
    other = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(other), "-subj", "/CN=another CA", "-days", "1"], check=True, capture_output=True)
    with pytest.raises(ssl.SSLCertVerificationError):
        larder.publish({"card": ["t3"], "n": [3]}, "cards", "card", t, config=sc.config, exchange=sc.exchange,
                       url=url, tls={"ca_file": str(other)})
    out = larderctl("publish", path, "--config", sc.config, "--table", "cards", "--key", "card", "--event-time", "ts",
                    "--exchange", sc.exchange, "--url", url, "--ca-file", other)
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert cards.get("t3").status == larder.Status.NOT_FOUND
