#!/usr/bin/env bash
# The lease-protocol benchmark (see BENCHMARKS.md): dataminer on SQLite and on PostgreSQL
# (stock Debian settings, its own cluster on 127.0.0.1:55433), then Graphile Worker 0.16
# burning down the same number of no-op jobs on the same PostgreSQL. One JSON line each.
#   AGENTS (default 8) simulated agent processes, VIDEOS (default 6000; 5 tasks each),
#   RUNS (default 3) repetitions of everything.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prereqs.sh
ensure_debian_packages
AGENTS="${AGENTS:-8}"
VIDEOS="${VIDEOS:-6000}"
RUNS="${RUNS:-3}"
cargo build --release --locked -p dataminer-control-plane -p dataminer-bench >&2
(cd bench/graphile && npm ci --no-audit --no-fund --silent) >&2
PG="$(DATAMINER_PG_DIR=/tmp/dataminer-bench-pg DATAMINER_PG_PORT=55433 bash scripts/test-postgres.sh)"
export DATAMINER_BENCH_PG_URL="$PG"
for run in $(seq 1 "$RUNS"); do
  for backend in sqlite postgres; do
    ./target/release/dm-bench run --backend "$backend" --agents "$AGENTS" --videos "$VIDEOS" 2>/dev/null
  done
  db="graphile_bench_$(date +%s)_$run"
  psql "$PG" -qc "CREATE DATABASE $db"
  (cd bench/graphile && DATABASE_URL="${PG%/*}/$db" JOBS=$((VIDEOS * 5)) CONCURRENCY=24 node bench.mjs)
done
