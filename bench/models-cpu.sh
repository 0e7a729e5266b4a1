#!/usr/bin/env bash
# CPU benchmark of the model stages' image path: the agent (dm-bench-models: decode on the
# agent's decode threads overlapped with the package's shared runner) against the reference
# loop (scripts/models/reference.py --bench: PIL decode + transformers' image processor +
# the same TorchScript package), same package, frames, batch size and libtorch threads.
# Prints one JSON line per side and package, then the ratios (BENCHMARKS.md).
#   bash bench/models-cpu.sh [frames=128] [batch=16] [threads=2] [repeat=2]
# DECODE_THREADS (default 2, the agent's default) sets the agent's decode threads; the
# reference decodes on one thread (PIL), as its loop does.
set -euo pipefail
cd "$(dirname "$0")/.."
frames="${1:-128}" batch="${2:-16}" threads="${3:-2}" repeat="${4:-2}"
decode_threads="${DECODE_THREADS:-2}" # the agent's default (DATAMINER_DECODE_THREADS)
eval "$(bash scripts/models/setup.sh --print-env)"
work="target/bench-models"
mkdir -p "$work/packages" "$work/data/frames"
py="$VIRTUAL_ENV/bin/python"
for kind in siglip2 dinov2; do
  [ -f "$work/packages/$kind-mid/manifest.json" ] ||
    "$py" scripts/models/export.py --out "$work/packages" --random-init --kind "$kind" --size mid --name "$kind-mid" >&2
done
# 640x360 frames of a moving test pattern, as the extract stage writes them (JPEG q≈95).
if [ ! -f "$work/data/frames/manifest-$frames.json" ]; then
  rm -f "$work/data/frames"/f_*.jpg
  ffmpeg -hide_banner -loglevel error -nostdin -y -f lavfi -i "testsrc2=size=640x360:rate=25" -frames:v "$frames" \
    -q:v 2 "$work/data/frames/f_%06d.jpg"
  "$py" - "$work/data/frames" "$frames" <<'PY'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
m = {"frames": [{"index": i, "pts_s": (i - 1) / 25, "path": f"frames/f_{i:06d}.jpg"} for i in range(1, n + 1)]}
open(f"{d}/manifest-{n}.json", "w").write(json.dumps(m))
PY
fi
cargo build -q --release --locked -p dataminer-bench --features models --bin dm-bench-models
manifest="$work/data/frames/manifest-$frames.json"
for pkg in siglip2-mid dinov2-mid; do
  ./target/release/dm-bench-models --package "$work/packages/$pkg" --frames "$manifest" --data-root "$work/data" \
    --batch-size "$batch" --threads "$threads" --decode-threads "$decode_threads" --repeat "$repeat" | tr -d '\n ' >"$work/rust-$pkg.json"
  "$py" scripts/models/reference.py --bench --package "$work/packages/$pkg" --frames "$manifest" \
    --data-root "$work/data" --batch-size "$batch" --threads "$threads" --bench-repeat "$repeat" \
    --positive "a photo" | tr -d '\n ' >"$work/ref-$pkg.json"
  echo "rust      $(cat "$work/rust-$pkg.json")"
  echo "reference $(cat "$work/ref-$pkg.json")"
  "$py" - "$work/rust-$pkg.json" "$work/ref-$pkg.json" <<'PY'
import json, sys
r, p = (json.load(open(f)) for f in sys.argv[1:3])
model = r["model_s"] / p["model_s"]
print(f'{r["package"]}: end to end {r["frames_per_s"]:.1f} vs {p["frames_per_s"]:.1f} frames/s = '
      f'{r["frames_per_s"] / p["frames_per_s"]:.2f}x; model-only {r["model_s"]:.2f} s vs {p["model_s"]:.2f} s '
      f'({(model - 1) * 100:+.1f} %{", comparison void: unequal model work" if abs(model - 1) > 0.10 else ""})')
PY
done
