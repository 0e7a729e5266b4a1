#!/usr/bin/env bash
# The main job on the embedded default: builds the control plane and the agent, generates
# three sample videos with ffmpeg and serves them on a local HTTP server, starts the control
# plane (SQLite file under ./data, loopback only, no tokens) and one local agent, creates the
# `demo` project, submits the samples, waits until every download and extraction has finished (or FAILED) and
# prints `curl /status`, which lists where each video's frames are. Keeps serving until
# Ctrl-C; DEMO_EXIT=1 stops after printing the status.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prereqs.sh
ensure_debian_packages
ADDR="${DATAMINER_LISTEN:-127.0.0.1:8080}"
STATE="${DATAMINER_STATE_DIR:-data}"
FILES="$STATE/files"           # the agent's data root: videos/, frames_raw/
SAMPLES="$STATE/samples"       # what the local HTTP server serves
SAMPLE_PORT="${DEMO_SAMPLE_PORT:-8089}"
BASE="http://$ADDR"
mkdir -p "$STATE" "$FILES" "$SAMPLES"

cargo build --release --locked -p dataminer-control-plane -p dataminer-agent

echo "== generating sample videos in $SAMPLES"
ff() { ffmpeg -hide_banner -loglevel error -nostdin -y "$@"; }
[ -f "$SAMPLES/testsrc-640x360-30fps.mp4" ] || ff -f lavfi -i testsrc2=size=640x360:rate=30:duration=10 \
  -c:v libx264 -preset veryfast -pix_fmt yuv420p "$SAMPLES/testsrc-640x360-30fps.mp4"
[ -f "$SAMPLES/mandelbrot-480x270-25fps-audio.mp4" ] || ff -f lavfi -i mandelbrot=size=480x270:rate=25 \
  -f lavfi -i sine=frequency=330:duration=8 -t 8 -c:v libx264 -preset veryfast -pix_fmt yuv420p -c:a aac \
  "$SAMPLES/mandelbrot-480x270-25fps-audio.mp4"
[ -f "$SAMPLES/three-shots-320x180.mp4" ] || ff -f lavfi -i color=c=navy:size=320x180:rate=24:duration=2 \
  -f lavfi -i color=c=orange:size=320x180:rate=24:duration=2 -f lavfi -i color=c=white:size=320x180:rate=24:duration=2 \
  -filter_complex "[0:v][1:v][2:v]concat=n=3:v=1:a=0[v]" -map "[v]" -c:v libx264 -preset veryfast -pix_fmt yuv420p \
  "$SAMPLES/three-shots-320x180.mp4"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

python3 -m http.server "$SAMPLE_PORT" --bind 127.0.0.1 --directory "$SAMPLES" >"$STATE/samples-server.log" 2>&1 &
PIDS+=($!)
# The sample server is on loopback: allow exactly that host:port for downloads.
export DATAMINER_ALLOW_HOSTS="127.0.0.1:$SAMPLE_PORT"
./target/release/control-plane --listen "$ADDR" --state-dir "$STATE" >"$STATE/control-plane.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
  if curl -sf "$BASE/readyz" >/dev/null; then break; fi
  sleep 0.1
done
curl -sf "$BASE/readyz" >/dev/null || { cat "$STATE/control-plane.log" >&2; exit 1; }
./target/release/agent --control-plane "$BASE" --data-root "$FILES" --metrics-listen 127.0.0.1:9091 \
  --min-free-bytes 0 >"$STATE/agent.log" 2>&1 &
PIDS+=($!)
echo "== control plane at $BASE (log: $STATE/control-plane.log), agent metrics at http://127.0.0.1:9091/metrics"

echo "== create project 'demo' (one frame per second)"
curl -s -X POST "$BASE/v1/projects" -H 'content-type: application/json' \
  -d '{"name":"demo","config":{"extract":{"strategy":"interval_seconds","interval_seconds":1.0},"filter":{"positive_prompts":["a glass door"],"negative_prompts":["a wall"]}}}'
echo
echo "== submit the sample videos"
S="http://127.0.0.1:$SAMPLE_PORT"
curl -s -X POST "$BASE/v1/videos" -H 'content-type: application/json' \
  -d "{\"projects\":[\"demo\"],\"urls\":[\"$S/testsrc-640x360-30fps.mp4\",\"$S/mandelbrot-480x270-25fps-audio.mp4\",\"$S/three-shots-320x180.mp4\"]}"
echo
echo "== waiting for download and extract"
for _ in $(seq 1 600); do
  s="$(curl -s "$BASE/status")"
  open="$(echo "$s" | python3 -c 'import json,sys; t=json.load(sys.stdin)["tasks"]; print(sum(t[s][k] for s in ("download","extract") for k in ("queued","leased")))')"
  [ "$open" = 0 ] && break
  sleep 0.2
done
echo "== curl -H 'Accept: text/plain' $BASE/status   (frames are under $FILES/)"
curl -s -H 'Accept: text/plain' "$BASE/status"
if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
echo "== serving at $BASE until Ctrl-C (API docs: $BASE/docs)"
wait "${PIDS[1]}"
