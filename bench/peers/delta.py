"""Shared by the DuckDB and chDB peers: the data files of a Delta table's
latest version (read from `_delta_log`, no Delta library), and the engine's
identifier kind priorities for attribution."""
import glob, json, os, urllib.parse

PRIORITY = "CASE kind WHEN 'member' THEN 100 WHEN 'unionid' THEN 90 WHEN 'phone' THEN 80 " \
           "WHEN 'openid' THEN 70 WHEN 'email' THEN 60 WHEN 'device' THEN 10 ELSE 50 END"


def active_files(con, table):
    """Data files of the Delta table's latest version: the last checkpoint's
    adds, then every later JSON commit's adds and removes, in order."""
    log = os.path.join(table, "_delta_log")
    files, after = set(), -1
    last = os.path.join(log, "_last_checkpoint")
    if os.path.exists(last):
        with open(last) as f:
            after = json.load(f)["version"]
        parts = sorted(glob.glob(os.path.join(log, f"{after:020d}.checkpoint*.parquet")))
        rows = con.execute("SELECT add.path, add.deletionVector IS NOT NULL FROM read_parquet(?) WHERE add IS NOT NULL",
                           [parts]).fetchall()
        for path, dv in rows:
            if dv:
                raise SystemExit(f"{table}: deletion vectors are not supported")
            files.add(path)
    commits = sorted(f for f in os.listdir(log)
                     if f.endswith(".json") and f[:20].isdigit() and int(f[:20]) > after)
    for name in commits:
        with open(os.path.join(log, name)) as f:
            for line in f:
                action = json.loads(line)
                if "add" in action:
                    if action["add"].get("deletionVector"):
                        raise SystemExit(f"{table}: deletion vectors are not supported")
                    files.add(action["add"]["path"])
                elif "remove" in action:
                    files.discard(action["remove"]["path"])
    if not files:
        raise SystemExit(f"{table}: no data files")
    return sorted(os.path.join(table, urllib.parse.unquote(p)) for p in files)
