"""DuckDB peer for `quiver-bench ingest`: load the same event files into a
persistent table (committed to disk), report rows and seconds as JSON."""
import json, os, sys, time
import duckdb

src, fmt, dbdir = sys.argv[1], sys.argv[2], sys.argv[3]
path = os.path.join(dbdir, f"duck-{fmt}.duckdb")
if os.path.exists(path):
    os.remove(path)
con = duckdb.connect(path)
reader = "read_parquet" if fmt == "parquet" else "read_ndjson_auto"
t = time.perf_counter()
con.execute(f"CREATE TABLE events AS SELECT * FROM {reader}('{src}')")
con.execute("CHECKPOINT")
secs = time.perf_counter() - t
rows = con.execute("SELECT count(*) FROM events").fetchone()[0]
print(json.dumps({"rows": rows, "seconds": secs, "version": duckdb.__version__, "mode": "CREATE TABLE AS + CHECKPOINT"}))
