"""chDB (ClickHouse) peer for `quiver-bench ingest`: INSERT the same event
files into a MergeTree table in an on-disk session, report rows and seconds."""
import json, os, shutil, sys, time
import chdb
from chdb import session

src, fmt, dbdir = sys.argv[1], sys.argv[2], sys.argv[3]
path = os.path.join(dbdir, f"chdb-{fmt}")
shutil.rmtree(path, ignore_errors=True)
s = session.Session(path)
s.query("CREATE DATABASE IF NOT EXISTS b")
cf = "Parquet" if fmt == "parquet" else "JSONEachRow"
s.query(f"CREATE TABLE b.events ENGINE = MergeTree ORDER BY tuple() AS SELECT * FROM file('{src}', {cf}) LIMIT 0")
t = time.perf_counter()
s.query(f"INSERT INTO b.events SELECT * FROM file('{src}', {cf})")
secs = time.perf_counter() - t
rows = int(str(s.query("SELECT count() FROM b.events", "CSV")).strip())
print(json.dumps({"rows": rows, "seconds": secs, "version": chdb.__version__, "mode": "INSERT SELECT into MergeTree"}))
