#!/usr/bin/env bash
# Installs the peers the benchmarks compare against (PyPI).
set -euo pipefail
python3 -m pip install -q duckdb chdb pyarrow scipy numpy pyroaring
