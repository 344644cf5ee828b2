"""Peers for `quiver-bench segments`: the issue's audience questions Q1, Q2
and Q2 by city answered by DuckDB, chDB (ClickHouse) and pyroaring over the
same workspace, each query timed `runs` times after one warm-up.

    segments_peers.py <workspace dir> <now YYYY-MM-DD> <runs> <bitmaps dir>

Q1  member_level = 'vip' AND skincare_lover AND NOT did(purchase) IN LAST 30 DAYS
    AND total_spend >= 1000 AND registered_channel IN ('miniprogram', 'pos')
Q2  member_level = 'vip' AND did(page_view WHERE category = 'skincare') >= 3 IN LAST 30 DAYS
    AND NOT did(purchase) IN LAST 14 DAYS
Q2c Q2's members counted per city

Setup (untimed): events are attributed to persons as the engine does it
(highest-priority identifier in the workspace's `identifiers` table; see
duckdb_tags.py); persons' static columns (member_level, city,
registered_channel, total_spend) come from the workspace's `profiles` table;
skincare_lover = more than 3 skincare page views. Then:

- duckdb-wide: one in-memory row per person, with the window counts of the
  questions precomputed for this `now` (purchases in 30 and 14 days, skincare
  views in 30 days): each question is a filter scan;
- duckdb-parquet: the same wide table as a Parquet file, read per query;
- duckdb-events: static columns from the wide table, windows computed from
  the attributed events (person, day, type, category) at query time;
- chdb-bitmap: one groupBitmap state per predicate (the windows precomputed,
  as in duckdb-wide) and per city, combined with bitmapAnd/bitmapAndnot;
- chdb-events: the attributed events in a MergeTree ordered by day, windows
  at query time, static columns from a wide MergeTree;
- pyroaring: the same set algebra on the bitmaps Quiver exported for each
  predicate (<bitmaps dir>/*.roaring): the cost of the algebra alone.

Every system's counts must equal the others' (the caller compares them with
Quiver's). Prints one JSON line.
"""
import datetime, json, os, statistics, sys, time

import duckdb

from delta import PRIORITY, active_files

ws, now, runs, bitmaps = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
threads = len(os.sched_getaffinity(0))
end = datetime.date.fromisoformat(now)
d30 = end - datetime.timedelta(days=29)
d14 = end - datetime.timedelta(days=13)


def timed(fn):
    fn()  # warm-up
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        out.append((time.perf_counter() - t) * 1000.0)
    out.sort()
    return result, {
        "p50_ms": statistics.median(out),
        "p99_ms": out[min(len(out) - 1, int(len(out) * 0.99))],
        "runs": len(out),
    }


# ---- setup: attribution and the wide table (DuckDB) ----
t_setup = time.perf_counter()
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
con.execute("SET enable_progress_bar = false")
events = active_files(con, os.path.join(ws, "events"))
idents = active_files(con, os.path.join(ws, "identifiers"))
profiles = active_files(con, os.path.join(ws, "profiles"))
con.execute(f"""CREATE TEMP TABLE ids AS SELECT kind, value, ordinal::UINTEGER AS ordinal,
    ({PRIORITY})::INTEGER AS prio FROM read_parquet(?)""", [idents])
con.execute("""CREATE TEMP TABLE ev AS
    SELECT file_index::UINTEGER AS f, file_row_number AS r, event_type, event_date AS day, category, identifiers
    FROM read_parquet(?, hive_partitioning = true)
    WHERE event_type = 'purchase' OR (event_type = 'page_view' AND category = 'skincare')""", [events])
con.execute("""CREATE TEMP TABLE att AS
    WITH u AS (SELECT f, r, unnest(identifiers) AS id, generate_subscripts(identifiers, 1) AS pos FROM ev),
         owner AS (SELECT u.f, u.r, arg_max(i.ordinal, i.prio * 65536 - u.pos) AS ordinal
                   FROM u JOIN ids i ON i.kind = u.id.kind AND i.value = u.id.value GROUP BY u.f, u.r)
    SELECT o.ordinal, e.event_type AS type, e.day::DATE AS day, e.category
    FROM ev e JOIN owner o ON o.f = e.f AND o.r = e.r ORDER BY day""")
con.execute("DROP TABLE ev")
con.execute("DROP TABLE ids")
con.execute(f"""CREATE TEMP TABLE wide AS
    WITH p AS (SELECT ordinal::UINTEGER AS ordinal, attributes['member_level'] AS member_level,
                      attributes['city'] AS city, registered_channel, total_spend::DOUBLE AS total_spend
               FROM read_parquet(?)),
         c AS (SELECT ordinal,
                      count(*) FILTER (WHERE type = 'page_view') AS skincare_views,
                      count(*) FILTER (WHERE type = 'page_view' AND day >= DATE '{d30}' AND day <= DATE '{end}') AS skincare_views_30,
                      count(*) FILTER (WHERE type = 'purchase' AND day >= DATE '{d30}' AND day <= DATE '{end}') AS purchases_30,
                      count(*) FILTER (WHERE type = 'purchase' AND day >= DATE '{d14}' AND day <= DATE '{end}') AS purchases_14
               FROM att GROUP BY ordinal)
    SELECT p.*, coalesce(c.skincare_views, 0) > 3 AS skincare_lover,
           coalesce(c.skincare_views_30, 0) AS skincare_views_30,
           coalesce(c.purchases_30, 0) AS purchases_30, coalesce(c.purchases_14, 0) AS purchases_14
    FROM p LEFT JOIN c USING (ordinal)""", [profiles])
wide_parquet = os.path.join(bitmaps, "wide.parquet")
con.execute(f"COPY wide TO '{wide_parquet}' (FORMAT parquet)")
persons, att_rows = con.execute("SELECT (SELECT count(*) FROM wide), (SELECT count(*) FROM att)").fetchone()
setup_duckdb = time.perf_counter() - t_setup

Q1_WIDE = """member_level = 'vip' AND skincare_lover AND purchases_30 = 0 AND total_spend >= 1000
             AND registered_channel IN ('miniprogram', 'pos')"""
Q2_WIDE = "member_level = 'vip' AND skincare_views_30 >= 3 AND purchases_14 = 0"

results = {}


def record(system, name, fn):
    value, t = timed(fn)
    results.setdefault(system, {})[name] = {"value": value, **t}


def by_city(rows):
    return {c if c is not None else "(none)": n for c, n in rows}


for system, src in [("duckdb-wide", "wide"), ("duckdb-parquet", f"read_parquet('{wide_parquet}')")]:
    record(system, "q1", lambda: con.execute(f"SELECT count(*) FROM {src} WHERE {Q1_WIDE}").fetchone()[0])
    record(system, "q2", lambda: con.execute(f"SELECT count(*) FROM {src} WHERE {Q2_WIDE}").fetchone()[0])
    record(system, "q2_city", lambda: by_city(con.execute(
        f"SELECT city, count(*) FROM {src} WHERE {Q2_WIDE} GROUP BY city").fetchall()))

EV_P30 = f"SELECT ordinal FROM att WHERE type = 'purchase' AND day BETWEEN DATE '{d30}' AND DATE '{end}'"
EV_P14 = f"SELECT ordinal FROM att WHERE type = 'purchase' AND day BETWEEN DATE '{d14}' AND DATE '{end}'"
EV_V3 = (f"SELECT ordinal FROM att WHERE type = 'page_view' AND day BETWEEN DATE '{d30}' AND DATE '{end}' "
         "GROUP BY ordinal HAVING count(*) >= 3")
EV_LOVER = "SELECT ordinal FROM att WHERE type = 'page_view' GROUP BY ordinal HAVING count(*) > 3"
Q1_EV = f"""FROM wide WHERE member_level = 'vip' AND total_spend >= 1000
            AND registered_channel IN ('miniprogram', 'pos')
            AND ordinal IN ({EV_LOVER}) AND ordinal NOT IN ({EV_P30})"""
Q2_EV = f"FROM wide WHERE member_level = 'vip' AND ordinal IN ({EV_V3}) AND ordinal NOT IN ({EV_P14})"
record("duckdb-events", "q1", lambda: con.execute(f"SELECT count(*) {Q1_EV}").fetchone()[0])
record("duckdb-events", "q2", lambda: con.execute(f"SELECT count(*) {Q2_EV}").fetchone()[0])
record("duckdb-events", "q2_city",
       lambda: by_city(con.execute(f"SELECT city, count(*) {Q2_EV} GROUP BY city").fetchall()))
duckdb_version = duckdb.__version__

# ---- chDB ----
chdb_version = None
try:
    import chdb
    from chdb import session

    t = time.perf_counter()
    wide_att = os.path.join(bitmaps, "att.parquet")
    con.execute(f"COPY att TO '{wide_att}' (FORMAT parquet)")
    s = session.Session()
    s.query("CREATE DATABASE IF NOT EXISTS q")
    s.query(f"""CREATE TABLE q.wide ENGINE = MergeTree ORDER BY ordinal AS
        SELECT toUInt32(ordinal) AS ordinal, member_level, city, registered_channel, total_spend,
               skincare_lover, skincare_views_30, purchases_30, purchases_14
        FROM file('{wide_parquet}', Parquet)""")
    s.query(f"""CREATE TABLE q.att ENGINE = MergeTree ORDER BY day AS
        SELECT toUInt32(ordinal) AS ordinal, type, day, category FROM file('{wide_att}', Parquet)""")
    s.query(f"""CREATE TABLE q.bm ENGINE = Memory AS SELECT
        groupBitmapStateIf(ordinal, member_level = 'vip') AS vip,
        groupBitmapStateIf(ordinal, skincare_lover) AS lover,
        groupBitmapStateIf(ordinal, purchases_30 > 0) AS p30,
        groupBitmapStateIf(ordinal, purchases_14 > 0) AS p14,
        groupBitmapStateIf(ordinal, skincare_views_30 >= 3) AS v3,
        groupBitmapStateIf(ordinal, total_spend >= 1000) AS spend,
        groupBitmapStateIf(ordinal, registered_channel IN ('miniprogram', 'pos')) AS reg
        FROM q.wide""")
    s.query("""CREATE TABLE q.city_bm ENGINE = Memory AS
        SELECT ifNull(city, '(none)') AS city, groupBitmapState(ordinal) AS b FROM q.wide GROUP BY city""")
    setup_chdb = time.perf_counter() - t
    chdb_version = chdb.__version__

    def ch(sql):
        return s.query(sql, "CSV").bytes().decode().strip()

    def ch_rows(sql):
        out = {}
        for line in ch(sql).splitlines():
            c, n = line.rsplit(",", 1)
            out[c.strip('"')] = int(n)
        return out

    record("chdb-bitmap", "q1", lambda: int(ch(
        "SELECT bitmapCardinality(bitmapAndnot(bitmapAnd(bitmapAnd(bitmapAnd(vip, lover), spend), reg), p30)) FROM q.bm")))
    record("chdb-bitmap", "q2", lambda: int(ch(
        "SELECT bitmapCardinality(bitmapAndnot(bitmapAnd(vip, v3), p14)) FROM q.bm")))
    record("chdb-bitmap", "q2_city", lambda: ch_rows(
        """SELECT city, bitmapAndCardinality(b, (SELECT bitmapAndnot(bitmapAnd(vip, v3), p14) FROM q.bm))
           FROM q.city_bm"""))
    CH_P30 = f"SELECT ordinal FROM q.att WHERE type = 'purchase' AND day BETWEEN '{d30}' AND '{end}'"
    CH_P14 = f"SELECT ordinal FROM q.att WHERE type = 'purchase' AND day BETWEEN '{d14}' AND '{end}'"
    CH_V3 = (f"SELECT ordinal FROM q.att WHERE type = 'page_view' AND day BETWEEN '{d30}' AND '{end}' "
             "GROUP BY ordinal HAVING count() >= 3")
    CH_LOVER = "SELECT ordinal FROM q.att WHERE type = 'page_view' GROUP BY ordinal HAVING count() > 3"
    CH_Q1 = f"""FROM q.wide WHERE member_level = 'vip' AND total_spend >= 1000
                AND registered_channel IN ('miniprogram', 'pos')
                AND ordinal IN ({CH_LOVER}) AND ordinal NOT IN ({CH_P30})"""
    CH_Q2 = f"FROM q.wide WHERE member_level = 'vip' AND ordinal IN ({CH_V3}) AND ordinal NOT IN ({CH_P14})"
    record("chdb-events", "q1", lambda: int(ch(f"SELECT count() {CH_Q1}")))
    record("chdb-events", "q2", lambda: int(ch(f"SELECT count() {CH_Q2}")))
    record("chdb-events", "q2_city",
           lambda: ch_rows(f"SELECT ifNull(city, '(none)'), count() {CH_Q2} GROUP BY city"))
except ImportError as e:
    setup_chdb = None
    results["chdb-bitmap"] = {"error": f"chdb is not installed: {e}"}
con.close()

# ---- pyroaring on Quiver's exported bitmaps ----
from pyroaring import BitMap


def load(name):
    with open(os.path.join(bitmaps, name + ".roaring"), "rb") as f:
        return BitMap.deserialize(f.read())


b = {n: load(n) for n in ["vip", "lover", "p30", "p14", "v3", "spend", "reg_mini", "reg_pos"]}
cities = {}
for f in sorted(os.listdir(bitmaps)):
    if f.startswith("city=") and f.endswith(".roaring"):
        cities[f[len("city="):-len(".roaring")]] = load(f[:-len(".roaring")])


def py_q1():
    return len(((b["vip"] & b["lover"] & b["spend"]) & (b["reg_mini"] | b["reg_pos"])) - b["p30"])


def py_q2_set():
    return (b["vip"] & b["v3"]) - b["p14"]


def py_q2_city():
    q = py_q2_set()
    out = {c: q.intersection_cardinality(m) for c, m in cities.items()}
    rest = len(q) - sum(out.values())
    if rest:
        out["(none)"] = rest
    return {c: n for c, n in out.items() if n}


record("pyroaring", "q1", py_q1)
record("pyroaring", "q2", lambda: len(py_q2_set()))
record("pyroaring", "q2_city", py_q2_city)

import pyroaring
print(json.dumps({
    "threads": threads, "persons": persons, "attributed_events": att_rows,
    "versions": {"duckdb": duckdb_version, "chdb": chdb_version, "pyroaring": pyroaring.__version__},
    "setup_seconds": {"duckdb": setup_duckdb, "chdb": setup_chdb},
    "results": results,
}))
