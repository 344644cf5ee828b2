"""SciPy peer for the identity-resolution (connected components) benchmark:
read the edge list, build an n x n CSR matrix, and run
scipy.sparse.csgraph.connected_components(directed=False). load_seconds is
parquet read + matrix build (the build alone also as build_seconds); seconds
is the connected_components call only. Components and largest come from its
labels; the labels, mapped to the min node id per component, go to
$QUIVER_PEER_LABELS_OUT, untimed. WORKDIR is accepted and unused."""
import json, os, sys, time
import numpy as np
import pyarrow as pa, pyarrow.parquet as pq
import pyarrow.dataset  # noqa: F401 -- read_table imports it lazily (~0.3 s); keep that out of load_seconds
import scipy
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

src, n = sys.argv[1], int(sys.argv[2])

t = time.perf_counter()
tbl = pq.read_table(src, columns=["src", "dst"])
s = tbl["src"].to_numpy().astype(np.int32, copy=False)
d = tbl["dst"].to_numpy().astype(np.int32, copy=False)
read = time.perf_counter() - t

t = time.perf_counter()
# float64 data: csgraph converts to float64 anyway, so build it that way up front.
g = coo_matrix((np.ones(len(s)), (s, d)), shape=(n, n)).tocsr()
build = time.perf_counter() - t

t = time.perf_counter()
components, comp = connected_components(g, directed=False)
secs = time.perf_counter() - t

largest = int(np.bincount(comp).max()) if n else 0
out = os.environ.get("QUIVER_PEER_LABELS_OUT")
if out:
    nodes = np.arange(n, dtype=np.uint32)
    low = np.full(components, n, dtype=np.uint32)
    np.minimum.at(low, comp, nodes)  # min node id per scipy component
    pq.write_table(pa.table({"node": nodes, "label": low[comp]}), out)
print(json.dumps({"seconds": secs, "load_seconds": read + build, "build_seconds": build, "components": int(components),
                  "largest": largest, "version": scipy.__version__,
                  "mode": "csgraph.connected_components(directed=False) on CSR"}))
