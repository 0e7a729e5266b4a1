#!/usr/bin/env bash
# Starts (once; later calls reuse it) a private PostgreSQL server for the test suite and the
# benchmark on 127.0.0.1:$PORT with its data in $DIR, and prints its admin URL. Uses Debian's
# postgresql package; initdb/pg_ctl refuse to run as root, so as root they run as `postgres`.
#   DATAMINER_PG_PORT (default 55432), DATAMINER_PG_DIR (default /tmp/dataminer-pg),
#   DATAMINER_PG_FAST=1 turns fsync off and allows 500 connections (tests only; the benchmark
#   keeps Debian's stock settings).
set -euo pipefail
PORT="${DATAMINER_PG_PORT:-55432}"
DIR="${DATAMINER_PG_DIR:-/tmp/dataminer-pg}"
BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
if [ -z "$BIN" ]; then
  echo "PostgreSQL server binaries not found under /usr/lib/postgresql: apt-get install postgresql" >&2
  exit 1
fi
RUN=()
if [ "$(id -u)" = 0 ]; then RUN=(runuser -u postgres --); fi
if ! "$BIN/pg_isready" -h 127.0.0.1 -p "$PORT" -q; then
  if [ ! -f "$DIR/PG_VERSION" ]; then
    mkdir -p "$DIR"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$DIR"; fi
    "${RUN[@]}" "$BIN/initdb" -D "$DIR" -U postgres -A trust --no-sync >/dev/null
  fi
  OPTS="-p $PORT -k /tmp -c listen_addresses=127.0.0.1"
  if [ "${DATAMINER_PG_FAST:-0}" = 1 ]; then
    OPTS="$OPTS -c max_connections=500 -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
  "${RUN[@]}" "$BIN/pg_ctl" -D "$DIR" -o "$OPTS" -l "$DIR/server.log" -w -t 60 start >/dev/null
fi
echo "postgres://postgres@127.0.0.1:$PORT/postgres"
