"""DuckDB peer for the identity-resolution (connected components) benchmark:
warehouse-style iterative label propagation in plain SQL, as dbt id-stitching
models do it. Load the edge list into a persistent table, start every node
labelled with itself, then each iteration CREATE TABLE ... AS label =
min(own label, neighbours' labels) over both edge directions, until no
node's new label differs from its old one. Reports seconds (prep + loop),
load seconds, iterations, components and largest as JSON; the labels (min
node id per component) go to $QUIVER_PEER_LABELS_OUT, untimed."""
import json, os, sys, tempfile, time
import duckdb

src, n = sys.argv[1], int(sys.argv[2])
tmp = None if len(sys.argv) > 3 else tempfile.TemporaryDirectory(prefix="duck-identity-")  # removed at exit
dbdir = sys.argv[3] if tmp is None else tmp.name
path = os.path.join(dbdir, "identity.duckdb")
for p in (path, path + ".wal"):
    if os.path.exists(p):
        os.remove(p)
con = duckdb.connect(path)
q = lambda sql: con.execute(sql).fetchone()

t = time.perf_counter()
con.execute(f"CREATE TABLE edges AS SELECT src::UINTEGER AS src, dst::UINTEGER AS dst FROM read_parquet('{src}')")
con.execute("CHECKPOINT")
load = time.perf_counter() - t

t = time.perf_counter()
# Both edge directions plus a self-loop per node (self-loop edges in the input
# dropped), so "self and neighbours" is one join; every node, isolated ones
# too, starts labelled with itself.
con.execute(f"""CREATE TABLE adj AS SELECT src AS node, dst AS nbr FROM edges WHERE src <> dst
                UNION ALL SELECT dst, src FROM edges WHERE src <> dst
                UNION ALL SELECT range::UINTEGER, range::UINTEGER FROM range({n})""")
con.execute(f"CREATE TABLE labels AS SELECT range::UINTEGER AS node, range::UINTEGER AS label FROM range({n})")
iterations = 0
while True:
    iterations += 1
    # New label = min over self and neighbours; `changed` compares it with the
    # node's old label (the self-loop row), so convergence is a plain count.
    con.execute("""CREATE OR REPLACE TABLE labels_next AS
        SELECT a.node, min(l.label) AS label, min(l.label) < max(l.label) FILTER (WHERE a.nbr = a.node) AS changed
        FROM adj a JOIN labels l ON l.node = a.nbr GROUP BY a.node""")
    changed = q("SELECT count(*) FROM labels_next WHERE changed")[0]
    con.execute("DROP TABLE labels")
    con.execute("ALTER TABLE labels_next RENAME TO labels")
    if changed == 0:
        break
secs = time.perf_counter() - t

components, largest = q("SELECT count(*), max(c) FROM (SELECT count(*) AS c FROM labels GROUP BY label)")
out = os.environ.get("QUIVER_PEER_LABELS_OUT")
if out:
    con.execute(f"COPY (SELECT node, label FROM labels ORDER BY node) TO '{out}' (FORMAT parquet)")
con.close()
print(json.dumps({"seconds": secs, "load_seconds": load, "iterations": iterations, "components": components,
                  "largest": largest, "version": duckdb.__version__,
                  "mode": "SQL label propagation loop (CREATE TABLE AS per iteration), persistent db"}))
