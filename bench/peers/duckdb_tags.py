"""DuckDB peer for `quiver-bench tags`: the generator's four seed tags as SQL
GROUP BYs over the workspace's own Delta tables (the parquet files of their
latest version, from `_delta_log`), with the engine's attribution rule.

    duckdb_tags.py <workspace dir> <now date YYYY-MM-DD> <out dir> [runs]

Attribution: an event belongs to the person holding the event's identifier of
the highest-priority kind (member 100, unionid 90, phone 80, openid 70, email
60, device 10, others 50; equal priorities: the earlier identifier in the
event's list, as the engine's strict `>` keeps the first); events none of
whose identifiers is in `identifiers` (live persons' values) are left out.

Tags (now_day = the UTC day of <now date>):
  miniprogram_user  channel of the person's earliest `register` = 'miniprogram'
  skincare_lover    count of `page_view` with category = 'skincare' > 3
  highly_active     count of `purchase` with event_date in [now_day-6, now_day] >= 2
  member_level = v  latest (event_time, then larger value) properties['member_level']
                    of the person's `profile_update` events

Only the events these tags need are read (filters pushed into the scan), which
is what one would write in SQL; Quiver's refresh does much more (every
profile, trait and behaviour count, written to disk).

Each run starts from the parquet files (temp tables replaced), `SET threads`
= nproc; reported: the median run (the middle one when sorted) and every run.
Timed: listing the Delta log, reading parquet, attribution and the GROUP BYs
(not Python start-up, not writing the results). Untimed, after the last run:
one parquet file of sorted ordinals per tag (and per member_level value) in
<out dir>, and the persons whose latest member_level update has two or more
different values at the same event_time (ties). Prints one JSON line.
"""
import datetime, json, os, resource, sys, time
import duckdb

from delta import PRIORITY, active_files

ws, now, out = sys.argv[1], sys.argv[2], sys.argv[3]
runs = int(sys.argv[4]) if len(sys.argv) > 4 else 3
threads = len(os.sched_getaffinity(0))
end = datetime.date.fromisoformat(now)
start = end - datetime.timedelta(days=6)
LEVELS = ["normal", "silver", "gold", "vip"]


def compute(con, steps):
    t = time.perf_counter()

    def step(name):
        nonlocal t
        at = time.perf_counter()
        steps.append([name, at - t])
        t = at

    events = active_files(con, os.path.join(ws, "events"))
    idents = active_files(con, os.path.join(ws, "identifiers"))
    step("delta_log")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE ids AS
        SELECT kind, value, ordinal::UINTEGER AS ordinal, ({PRIORITY})::INTEGER AS prio
        FROM read_parquet(?)""", [idents])
    step("read_identifiers")
    # The events the four tags need; (file, row) identifies an event exactly.
    con.execute(f"""CREATE OR REPLACE TEMP TABLE ev AS
        SELECT file_index::UINTEGER AS f, file_row_number AS r, event_type, event_time, channel,
               properties['member_level'] AS level, identifiers
        FROM read_parquet(?, hive_partitioning = true)
        WHERE event_type = 'register'
           OR (event_type = 'page_view' AND category = 'skincare')
           OR (event_type = 'purchase' AND event_date BETWEEN DATE '{start}' AND DATE '{end}')
           OR (event_type = 'profile_update' AND properties['member_level'] IS NOT NULL)""", [events])
    step("read_events")
    # Attribution: highest priority, then the earliest position in the list.
    con.execute("""CREATE OR REPLACE TEMP TABLE att AS
        WITH u AS (SELECT f, r, unnest(identifiers) AS id, generate_subscripts(identifiers, 1) AS pos FROM ev),
             owner AS (SELECT u.f, u.r, arg_max(i.ordinal, i.prio * 65536 - u.pos) AS ordinal
                       FROM u JOIN ids i ON i.kind = u.id.kind AND i.value = u.id.value
                       GROUP BY u.f, u.r)
        SELECT o.ordinal, e.event_type, e.event_time, e.channel, e.level
        FROM ev e JOIN owner o ON o.f = e.f AND o.r = e.r""")
    step("attribute")
    con.execute("""CREATE OR REPLACE TEMP TABLE t_miniprogram_user AS
        SELECT ordinal FROM (SELECT ordinal, arg_min(channel, event_time) AS ch FROM att
                             WHERE event_type = 'register' GROUP BY ordinal)
        WHERE ch = 'miniprogram'""")
    con.execute("""CREATE OR REPLACE TEMP TABLE t_skincare_lover AS
        SELECT ordinal FROM att WHERE event_type = 'page_view' GROUP BY ordinal HAVING count(*) > 3""")
    con.execute("""CREATE OR REPLACE TEMP TABLE t_highly_active AS
        SELECT ordinal FROM att WHERE event_type = 'purchase' GROUP BY ordinal HAVING count(*) >= 2""")
    con.execute("""CREATE OR REPLACE TEMP TABLE t_member_level AS
        SELECT ordinal, max({'t': event_time, 'v': level}).v AS level FROM att
        WHERE event_type = 'profile_update' GROUP BY ordinal""")
    step("group_by")
    return len(events), len(idents)


con = duckdb.connect()
con.execute(f"SET threads = {threads}")
con.execute("SET enable_progress_bar = false")
seconds, steps = [], []
for _ in range(runs):
    steps.append([])
    t = time.perf_counter()
    files = compute(con, steps[-1])
    seconds.append(time.perf_counter() - t)
median_run = sorted(range(runs), key=lambda i: seconds[i])[runs // 2]

os.makedirs(out, exist_ok=True)
sets = {}
for name in ["miniprogram_user", "skincare_lover", "highly_active"]:
    path = os.path.join(out, f"{name}.parquet")
    con.execute(f"COPY (SELECT ordinal FROM t_{name} ORDER BY ordinal) TO '{path}' (FORMAT parquet)")
    sets[name] = {"file": path, "count": con.execute(f"SELECT count(*) FROM t_{name}").fetchone()[0]}
for v in LEVELS:
    path = os.path.join(out, f"member_level={v}.parquet")
    con.execute(f"COPY (SELECT ordinal FROM t_member_level WHERE level = '{v}' ORDER BY ordinal) "
                f"TO '{path}' (FORMAT parquet)")
    count = con.execute("SELECT count(*) FROM t_member_level WHERE level = ?", [v]).fetchone()[0]
    sets[f"member_level={v}"] = {"file": path, "count": count}
# Diagnosis, for a difference in member_level: persons with two or more
# different values at the time of their latest member_level update.
ties = os.path.join(out, "member_level_ties.parquet")
con.execute(f"""COPY (SELECT a.ordinal FROM att a
        JOIN (SELECT ordinal, max(event_time) AS t FROM att WHERE event_type = 'profile_update' GROUP BY ordinal) m
          ON a.ordinal = m.ordinal AND a.event_time = m.t
        WHERE a.event_type = 'profile_update' GROUP BY a.ordinal HAVING count(DISTINCT a.level) > 1
        ORDER BY a.ordinal) TO '{ties}' (FORMAT parquet)""")
tie_count = con.execute(f"SELECT count(*) FROM read_parquet('{ties}')").fetchone()[0]
events_read, attributed = con.execute(
    "SELECT (SELECT count(*) FROM ev), (SELECT count(*) FROM att)").fetchone()
con.close()
print(json.dumps({
    "version": duckdb.__version__, "threads": threads, "seconds": seconds[median_run], "runs": seconds,
    "steps": steps[median_run],
    "event_files": files[0], "identifier_files": files[1], "events_read": events_read, "attributed": attributed,
    "sets": sets, "member_level_ties": {"file": ties, "count": tie_count}, "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "mode": "in-memory; filtered scan of the Delta tables' parquet + GROUP BY",
}))
