#!/usr/bin/env bash
# The main job on the embedded default: builds and starts the control plane on its SQLite
# file (./data/dataminer.db, loopback only, no tokens), creates the `demo` project, submits
# sample video URLs and prints `curl /status`. Keeps serving until Ctrl-C (DEMO_EXIT=1: stop
# after printing the status). The agent that downloads and extracts lands with the agent issue;
# until then the videos wait, visibly, in PENDING on their download tasks.
set -euo pipefail
cd "$(dirname "$0")/.."
ADDR="${DATAMINER_LISTEN:-127.0.0.1:8080}"
STATE="${DATAMINER_STATE_DIR:-data}"
BASE="http://$ADDR"
mkdir -p "$STATE"
cargo build --release --locked -p dataminer-control-plane
./target/release/control-plane --listen "$ADDR" --state-dir "$STATE" >"$STATE/control-plane.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 100); do
  if curl -sf "$BASE/readyz" >/dev/null; then break; fi
  if ! kill -0 $PID 2>/dev/null; then cat "$STATE/control-plane.log" >&2; exit 1; fi
  sleep 0.1
done
echo "== control plane up at $BASE (log: $STATE/control-plane.log)"
echo "== create project 'demo'"
curl -s -X POST "$BASE/v1/projects" -H 'content-type: application/json' \
  -d '{"name":"demo","config":{"filter":{"positive_prompts":["a glass door"],"negative_prompts":["a wall"]}}}'
echo
echo "== submit sample videos"
curl -s -X POST "$BASE/v1/videos" -H 'content-type: application/json' \
  -d '{"projects":["demo"],"urls":["https://download.blender.org/peach/bigbuckbunny_movies/BigBuckBunny_320x180.mp4","https://download.blender.org/durian/trailer/sintel_trailer-480p.mp4","https://www.youtube.com/watch?v=aqz-KE-bpKQ"]}'
echo
echo "== curl -H 'Accept: text/plain' $BASE/status"
curl -s -H 'Accept: text/plain' "$BASE/status"
if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
echo "== serving at $BASE until Ctrl-C (API docs: $BASE/docs)"
wait $PID
