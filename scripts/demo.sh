#!/usr/bin/env bash
# The main job on the embedded default. By default it mines a small dataset with the model
# stages: sets up the model venv (scripts/models/setup.sh: torch 2.11.0 from PyPI, ~3 GB the
# first time), builds the control plane and the agent with `--features models`, makes the CI
# model packages (the `meancolour` scorer and `thumbnail` embedder oracles, and two tiny random
# ones) in $STATE/models, generates three sample videos of coloured shots with ffmpeg and serves
# them on a local HTTP server, starts the control plane (SQLite file under ./data, loopback only,
# no tokens) and one local agent serving download,extract,filter,dedup on those packages,
# creates the project `red` (keep red frames, drop repeated ones), submits the samples, waits
# until every project-video is at rest and prints `curl /status` and the project's kept and
# duplicate frames (`/v1/projects/red/frames?state=kept|duplicate`). There is no detect stage
# yet: a project-video with kept frames stops in DEDUPED, waiting on its detect task.
#
# DEMO_MODELS=0: the CPU-only agent (download, extract) on three other sample videos in the
# project `demo`; prints `/status` once every download and extraction has finished.
# DEMO_EXIT=1 stops after printing; otherwise it keeps serving until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prereqs.sh
ensure_debian_packages
MODELS="${DEMO_MODELS:-1}"
ADDR="${DATAMINER_LISTEN:-127.0.0.1:8080}"
STATE="${DATAMINER_STATE_DIR:-data}"
FILES="$STATE/files"           # the agent's data root: videos/, frames_raw/, projects/
SAMPLES="$STATE/samples"       # what the local HTTP server serves
MODELS_DIR="$STATE/models"     # the model packages the agent loads (models build)
SAMPLE_PORT="${DEMO_SAMPLE_PORT:-8089}"
BASE="http://$ADDR"
mkdir -p "$STATE" "$FILES" "$SAMPLES"

if [ "$MODELS" = 1 ]; then
  echo "== model venv (.venv-models) and the agent's models build"
  # Creates or updates the venv when needed (progress on stderr), then exports its environment.
  eval "$(bash scripts/models/setup.sh --print-env)"
  cargo build --release --locked -p dataminer-control-plane -p dataminer-agent --features dataminer-agent/models
  echo "== model packages in $MODELS_DIR (oracles meancolour and thumbnail, tiny random siglip2/dinov2)"
  bash scripts/models/make_test_packages.sh "$MODELS_DIR" >/dev/null
  ls "$MODELS_DIR"
else
  cargo build --release --locked -p dataminer-control-plane -p dataminer-agent
fi

echo "== generating sample videos in $SAMPLES"
ff() { ffmpeg -hide_banner -loglevel error -nostdin -y "$@"; }
enc=(-c:v libx264 -preset veryfast -pix_fmt yuv420p)
[ -f "$SAMPLES/three-shots-320x180.mp4" ] || ff -f lavfi -i color=c=navy:size=320x180:rate=24:duration=2 \
  -f lavfi -i color=c=orange:size=320x180:rate=24:duration=2 -f lavfi -i color=c=white:size=320x180:rate=24:duration=2 \
  -filter_complex "[0:v][1:v][2:v]concat=n=3:v=1:a=0[v]" -map "[v]" "${enc[@]}" "$SAMPLES/three-shots-320x180.mp4"
if [ "$MODELS" = 1 ]; then
  # Shots of 2 s at 25 fps. A red shot is red with a dark-red (200,0,0) quarter box — mean
  # colour within 0.1 of pure red, so the oracle scores `red` above 0.5 — and the box's place
  # gives the `thumbnail` embedder a texture: boxes in different places are far apart (cosine
  # <= 0), the same shot is ~1. ffmpeg's `green` is #008000: `lime` is pure green.
  shot() { echo "color=c=$1:size=320x180:rate=25:duration=2${2:+,drawbox=$2:w=160:h=90:color=0xC80000:t=fill}"; }
  concat3() {
    ff -f lavfi -i "$1" -f lavfi -i "$2" -f lavfi -i "$3" \
      -filter_complex "[0:v][1:v][2:v]concat=n=3:v=1:a=0[v]" -map "[v]" "${enc[@]}" "$4"
  }
  # red (box top left), lime, red (box bottom right)
  [ -f "$SAMPLES/red-lime-red.mp4" ] || concat3 "$(shot red x=0:y=0)" "$(shot lime)" "$(shot red x=160:y=90)" \
    "$SAMPLES/red-lime-red.mp4"
  # blue, the first video's first red shot again, red (box in the centre)
  [ -f "$SAMPLES/blue-red-red.mp4" ] || concat3 "$(shot blue)" "$(shot red x=0:y=0)" "$(shot red x=80:y=45)" \
    "$SAMPLES/blue-red-red.mp4"
  VIDEOS=(red-lime-red.mp4 blue-red-red.mp4 three-shots-320x180.mp4)
else
  [ -f "$SAMPLES/testsrc-640x360-30fps.mp4" ] || ff -f lavfi -i testsrc2=size=640x360:rate=30:duration=10 \
    "${enc[@]}" "$SAMPLES/testsrc-640x360-30fps.mp4"
  [ -f "$SAMPLES/mandelbrot-480x270-25fps-audio.mp4" ] || ff -f lavfi -i mandelbrot=size=480x270:rate=25 \
    -f lavfi -i sine=frequency=330:duration=8 -t 8 "${enc[@]}" -c:a aac "$SAMPLES/mandelbrot-480x270-25fps-audio.mp4"
  VIDEOS=(testsrc-640x360-30fps.mp4 mandelbrot-480x270-25fps-audio.mp4 three-shots-320x180.mp4)
fi

PIDS=()
# Stops the agent first, then the control plane and the sample server.
cleanup() { for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; done; wait 2>/dev/null || true; }
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
if [ "$MODELS" = 1 ]; then
  # The agent finds the packages a project names in its models directory.
  export DATAMINER_STAGES=download,extract,filter,dedup DATAMINER_MODELS_DIR="$MODELS_DIR"
fi
./target/release/agent --control-plane "$BASE" --data-root "$FILES" --metrics-listen 127.0.0.1:9091 \
  --min-free-bytes 0 >"$STATE/agent.log" 2>&1 &
PIDS+=($!)
echo "== control plane at $BASE (log: $STATE/control-plane.log), agent metrics at http://127.0.0.1:9091/metrics (log: $STATE/agent.log)"

if [ "$MODELS" = 1 ]; then
  PROJECT=red
  echo "== create project '$PROJECT': one frame per second; keep frames the meancolour oracle scores > 0.5 for"
  echo "   'red'; drop a frame whose thumbnail embedding has cosine >= 0.9 with one already kept"
  CONFIG='{"extract":{"strategy":"interval_seconds","interval_seconds":1.0},
    "filter":{"model":"meancolour","positive_prompts":["red"],"threshold":0.5},
    "dedup":{"model":"thumbnail","threshold":0.9}}'
else
  PROJECT=demo
  echo "== create project '$PROJECT' (one frame per second)"
  CONFIG='{"extract":{"strategy":"interval_seconds","interval_seconds":1.0},
    "filter":{"positive_prompts":["a glass door"],"negative_prompts":["a wall"]}}'
fi
created="$(curl -s -X POST "$BASE/v1/projects" -H 'content-type: application/json' -d "{\"name\":\"$PROJECT\",\"config\":$CONFIG}")"
case "$created" in
  *'"project_exists"'*) echo "(project '$PROJECT' exists from an earlier run in $STATE; rm -rf $STATE starts over)" ;;
  *) echo "$created" ;;
esac
echo "== submit the sample videos"
S="http://127.0.0.1:$SAMPLE_PORT"
urls="$(for v in "${VIDEOS[@]}"; do printf '"%s/%s",' "$S" "$v"; done)"
curl -s -X POST "$BASE/v1/videos" -H 'content-type: application/json' \
  -d "{\"projects\":[\"$PROJECT\"],\"urls\":[${urls%,}]}"
echo

if [ "$MODELS" = 1 ]; then
  # At rest: every project-video is past the stages this agent serves — COMPLETE (no frame left
  # after dedup), FILTERED_EMPTY (the filter kept none), DEDUPED (kept frames; waiting on detect,
  # which comes later), FAILED or CANCELLED.
  echo "== waiting for download, extract, filter and dedup (the agent log says which device it uses)"
  at_rest() {
    curl -s "$BASE/v1/projects/$PROJECT/status" | python3 -c '
import json, sys
s = json.load(sys.stdin); n = int(sys.argv[1])
busy = sum(s["by_state"].get(k, 0) for k in ("PENDING", "FILTERING", "FILTERED", "DEDUPING"))
sys.exit(0 if s["videos"] >= n and busy == 0 else 1)' "${#VIDEOS[@]}"
  }
  deadline=$((SECONDS + ${DEMO_TIMEOUT_S:-300}))
  until at_rest; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "demo: the project-videos are not at rest after ${DEMO_TIMEOUT_S:-300} s; the agent's log ends:" >&2
      tail -n 30 "$STATE/agent.log" >&2
      curl -s -H 'Accept: text/plain' "$BASE/status" >&2
      exit 1
    fi
    sleep 0.5
  done
else
  echo "== waiting for download and extract"
  for _ in $(seq 1 600); do
    s="$(curl -s "$BASE/status")"
    open="$(echo "$s" | python3 -c 'import json,sys; t=json.load(sys.stdin)["tasks"]; print(sum(t[s][k] for s in ("download","extract") for k in ("queued","leased")))')"
    [ "$open" = 0 ] && break
    sleep 0.2
  done
fi
echo "== curl -H 'Accept: text/plain' $BASE/status   (frames are under $FILES/)"
curl -s -H 'Accept: text/plain' "$BASE/status"

if [ "$MODELS" = 1 ]; then
  # The project's counts and its frames (`GET /v1/projects/red/frames?state=kept|duplicate`),
  # one line each; exits 1 when a project-video FAILED.
  python3 - "$BASE" "$PROJECT" "$STATE" <<'EOF'
import json, sys, urllib.request
base, project, state_dir = sys.argv[1:]
def get(path):
    with urllib.request.urlopen(base + path) as r:
        return json.load(r)
s = get(f"/v1/projects/{project}/status")
print(f"== curl {base}/v1/projects/{project}/status")
print("project-videos:", ", ".join(f"{k} {v}" for k, v in s["by_state"].items() if v))
print("frames:", ", ".join(f"{k} {v}" for k, v in s["frames"].items()))
if s["by_state"].get("DEDUPED"):
    print("(DEDUPED: filtered and deduplicated, waiting on its detect task; detection comes in a later issue)")
for state in ("kept", "duplicate"):
    path = f"/v1/projects/{project}/frames?state={state}&limit=1000"
    print(f"== curl '{base}{path}'")
    items = get(path)["items"]
    print(f"{len(items)} {state} frames")
    for f in items:
        print(f"  video {f['video_id']} frame {f['frame_index']} (t={f['pts_s']:.1f} s) "
              f"score(red) {f['pos_max']:.3f}  {f['path']}")
        if f.get("duplicate_of"):
            d = f["duplicate_of"]
            print(f"      duplicate of video {d['video_id']} frame {d['frame_index']}, cosine {f['similarity']:.4f}")
failed = s["by_state"].get("FAILED", 0)
if failed:
    print(f"demo: {failed} project-video(s) FAILED (GET {base}/v1/videos/<id> says why; "
          f"agent log: {state_dir}/agent.log)", file=sys.stderr)
    sys.exit(1)
EOF
fi
if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
echo "== serving at $BASE until Ctrl-C (API docs: $BASE/docs)"
wait "${PIDS[1]}"
