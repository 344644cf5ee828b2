"""Peers for `quiver-bench analytics`: the issue's 3-step funnel and weekly
retention answered by DuckDB in SQL over the same workspace, each timed after
one warm-up.

    analytics_peers.py <workspace dir> <runs> <raw runs> <window µs> <from µs> <to µs> <periods>

Funnel     ad_click -> add_to_cart -> purchase, every step within <window>
           of the ad_click (ClickHouse's windowFunnel): persons reaching
           each step.
Retention  cohorts by the ISO week (UTC) of each person's first event, for
           first events in [from, to); per cohort, persons with any event in
           each of the <periods> weeks from the cohort's own.

Events count for persons as the engine attributes them: to the live person
owning the event's highest-priority identifier in the workspace's
`identifiers` table (delta.py's PRIORITY; ties by position), the same rule
duckdb_tags.py and segments_peers.py check against.

- duckdb-attributed: over an in-memory table of attributed events
  (ordinal, type, µs), built once (its build time is reported apart);
- duckdb-raw: the same SQL with the attribution as a materialized CTE over
  the `events` and `identifiers` Parquet files, per query.

Prints one JSON line.
"""
import json, os, statistics, sys, time

import duckdb

from delta import PRIORITY, active_files

ws, runs, raw_runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
window, t_from, t_to, periods = (int(v) for v in sys.argv[4:8])
threads = len(os.sched_getaffinity(0))
DAY = 86_400_000_000


def timed(fn, n):
    fn()  # warm-up
    out = []
    for _ in range(n):
        t = time.perf_counter()
        result = fn()
        out.append((time.perf_counter() - t) * 1000.0)
    out.sort()
    return result, {
        "p50_ms": statistics.median(out),
        "p99_ms": out[min(len(out) - 1, int(len(out) * 0.99))],
        "runs": len(out),
    }


con = duckdb.connect()
con.execute(f"SET threads = {threads}")
con.execute("SET enable_progress_bar = false")
events = active_files(con, os.path.join(ws, "events"))
idents = active_files(con, os.path.join(ws, "identifiers"))

# Attribution: each event to the person of its strongest identifier.
ATTRIBUTION = f"""
    WITH ids AS (SELECT kind, value, ordinal::UINTEGER AS ordinal, ({PRIORITY})::INTEGER AS prio
                 FROM read_parquet({idents!r})),
         ev AS (SELECT file_index::UINTEGER AS f, file_row_number AS r, event_type,
                       epoch_us(event_time) AS ts, identifiers
                FROM read_parquet({events!r}, hive_partitioning = true)),
         u AS (SELECT f, r, unnest(identifiers) AS id, generate_subscripts(identifiers, 1) AS pos FROM ev),
         owner AS (SELECT u.f, u.r, arg_max(i.ordinal, i.prio * 65536 - u.pos) AS ordinal
                   FROM u JOIN ids i ON i.kind = u.id.kind AND i.value = u.id.value GROUP BY u.f, u.r)
    SELECT o.ordinal, e.event_type AS type, e.ts
    FROM ev e JOIN owner o ON o.f = e.f AND o.r = e.r"""

FUNNEL = f"""
    s1 AS (SELECT ordinal AS p, ts AS t1 FROM att WHERE type = 'ad_click'),
    s2 AS (SELECT s1.p, s1.t1, min(e.ts) AS t2 FROM s1 JOIN att e
           ON e.ordinal = s1.p AND e.type = 'add_to_cart' AND e.ts >= s1.t1 AND e.ts <= s1.t1 + {window}
           GROUP BY s1.p, s1.t1),
    s3 AS (SELECT DISTINCT s2.p FROM s2 JOIN att e
           ON e.ordinal = s2.p AND e.type = 'purchase' AND e.ts >= s2.t2 AND e.ts <= s2.t1 + {window})
    SELECT (SELECT count(DISTINCT p) FROM s1), (SELECT count(DISTINCT p) FROM s2), (SELECT count(*) FROM s3)"""

# Weeks as days since the epoch: Monday = day - (day + 3) % 7 (1970-01-01 was a Thursday).
RETENTION = f"""
    f AS (SELECT ordinal, min(ts) AS t0 FROM att GROUP BY ordinal),
    c AS (SELECT ordinal, t0 // {DAY} - (t0 // {DAY} + 3) % 7 AS cw FROM f
          WHERE t0 >= {t_from} AND t0 < {t_to}),
    r AS (SELECT DISTINCT c.ordinal, c.cw, (a.ts // {DAY} - c.cw) // 7 AS k
          FROM c JOIN att a USING (ordinal)
          WHERE a.ts // {DAY} >= c.cw AND a.ts // {DAY} < c.cw + {7 * periods})
    SELECT cw, k, count(*) FROM r GROUP BY ALL"""


def matrix(rows):
    """{cohort start µs: [persons retained in period k]}; period 0 is the cohort's size."""
    out = {}
    for cw, k, n in rows:
        out.setdefault(str(cw * DAY), [0] * periods)[k] = n
    return out


results = {}
t = time.perf_counter()
con.execute(f"CREATE TEMP TABLE att AS {ATTRIBUTION} ORDER BY ordinal, ts")
attribution_s = time.perf_counter() - t
att_rows, att_persons = con.execute("SELECT count(*), count(DISTINCT ordinal) FROM att").fetchone()

for system, prefix, n in [
    ("duckdb-attributed", "WITH", runs),
    ("duckdb-raw", f"WITH att AS MATERIALIZED ({ATTRIBUTION}),", raw_runs),
]:
    value, tm = timed(lambda: list(con.execute(f"{prefix} {FUNNEL}").fetchone()), n)
    results.setdefault(system, {})["funnel"] = {"value": value, **tm}
    value, tm = timed(lambda: matrix(con.execute(f"{prefix} {RETENTION}").fetchall()), n)
    results[system]["retention"] = {"value": value, **tm}

print(json.dumps({
    "versions": {"duckdb": duckdb.__version__},
    "threads": threads,
    "attribution_seconds": attribution_s,
    "attributed_events": att_rows,
    "persons": att_persons,
    "results": results,
}))
