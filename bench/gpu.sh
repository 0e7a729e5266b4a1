#!/usr/bin/env bash
# GPU benchmark of the model stages (issue #7): full-size random-weight packages with the
# real FLOPs — SigLIP2 so400m-patch14-384 (filter) and DINOv3 ViT-B/16 (dedup) — exported by
# the host's python3 (PyTorch 2.11), then the agent's model path (dm-bench-models: JPEG decode
# + pre-processing on CPU threads overlapped with batched bf16 forward passes on the GPU)
# over 256 frames, several passes. Reports frames/s end to end and model-only, GPU busy %
# (nvidia-smi samples) and MFU (analytic FLOPs per frame / H100-H200 dense bf16 peak).
# Needs target/gpu-bundle from bench/gpu-prepare.sh (made on a machine with Rust); no Rust,
# ffmpeg or network here. Meant to finish in under 8 minutes.
#   bash bench/gpu.sh            results under $OUT (or target/gpu-results)
#   DM_DEVICE=cpu DM_SIZE=mid bash bench/gpu.sh    the same flow on a CPU machine (CI form)
set -euo pipefail
cd "$(dirname "$0")/.."
bundle="${DM_GPU_BUNDLE:-target/gpu-bundle}"
out="${OUT:-target/gpu-results}"
device="${DM_DEVICE:-cuda:0}"
size="${DM_SIZE:-full}"
passes="${DM_PASSES:-4}"
batch="${DM_BATCH:-64}"
decode_threads="${DM_DECODE_THREADS:-12}"
peak_tflops="${DM_PEAK_TFLOPS:-989}" # H100/H200 SXM dense bf16
python="${PYTHON:-python3}"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
t0=$(date +%s)
log() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$out/gpu.log" >&2; }

[ -x "$bundle/dm-bench-models" ] || { echo "missing $bundle: run bash bench/gpu-prepare.sh first" >&2; exit 2; }
py="$python"
if ! "$py" -c 'import transformers, tokenizers, safetensors' 2>/dev/null; then
  log "installing transformers from the bundle into a venv over the host's torch"
  "$python" -m venv --system-site-packages "$work/venv"
  # --no-deps: numpy comes with the host's PyTorch install, everything else is in the bundle.
  names="$(ls "$bundle/wheels" | sed -E 's/-[0-9].*//' | sort -u | tr '\n' ' ')"
  # shellcheck disable=SC2086
  "$work/venv/bin/pip" install -q --disable-pip-version-check --no-index --no-deps --find-links "$bundle/wheels" \
    $names >>"$out/gpu.log" 2>&1
  py="$work/venv/bin/python"
fi
"$py" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count(), "transformers", transformers.__version__)' | tee -a "$out/gpu.log"
torch_lib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib:$PWD/$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
threads="$(nproc)"

# GPU agents run packages exported to compute in bfloat16 (float32 in and out).
dtype=float32
[[ "$device" == cuda* ]] && dtype=bfloat16
log "exporting siglip2-$size and dinov3-$size (random weights, $dtype)"
for kind in siglip2 dinov3; do
  "$py" scripts/models/export.py --out "$work/packages" --random-init --kind "$kind" --size "$size" --name "$kind" \
    --dtype "$dtype" --threads "$threads" >>"$out/gpu.log" 2>&1
done
log "exported"

# Analytic FLOPs per frame of a ViT image tower: per layer 2·T·(4·D² + 2·D·M) + 4·T²·D, plus
# the patch embedding 2·T·3·p²·D (T tokens, D width, M MLP width, p patch).
flops() {
  "$py" - "$1" "$size" <<'PY'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("export", "scripts/models/export.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
kind, size = sys.argv[1], sys.argv[2]
if kind == "siglip2":
    s = m.SIGLIP_SIZES[size]; p = s["patch"]; t = (s["image"] // p) ** 2
else:
    s = m.DINO_SIZES[size]; p = 16 if size != "tiny" else s["patch"]; t = (s["image"] // p) ** 2 + 1 + 4
d, mlp, layers = s["hidden"], s["mlp"], s["layers"]
print(int(layers * (2 * t * (4 * d * d + 2 * d * mlp) + 4 * t * t * d) + 2 * t * 3 * p * p * d))
PY
}

for pkg in siglip2 dinov3; do
  f="$(flops "$pkg")"
  smi=""
  if command -v nvidia-smi >/dev/null && [[ "$device" == cuda* ]]; then
    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 >"$work/smi-$pkg.txt" &
    smi=$!
  fi
  log "running $pkg (batch $batch, $passes passes, $decode_threads decode threads, $dtype)"
  "$bundle/dm-bench-models" --package "$work/packages/$pkg" --frames "$bundle/frames/manifest.json" \
    --data-root "$bundle/frames" --batch-size "$batch" --threads "$threads" --decode-threads "$decode_threads" \
    --repeat "$passes" --device "$device" >"$out/$pkg.json"
  [ -n "$smi" ] && kill "$smi" 2>/dev/null || true
  "$py" - "$out/$pkg.json" "$f" "$peak_tflops" "$work/smi-$pkg.txt" <<'PY' | tee -a "$out/summary.txt"
import json, os, sys
r = json.load(open(sys.argv[1])); flops = int(sys.argv[2]); peak = float(sys.argv[3]) * 1e12
busy = None
if os.path.exists(sys.argv[4]):
    v = [float(x) for x in open(sys.argv[4]).read().split() if x.strip().replace(".", "").isdigit()]
    busy = sum(v) / len(v) if v else None
mfu = r["model_frames_per_s"] * flops / peak
print(f'{r["package"]}: {r["frames_per_s"]:.0f} frames/s end to end, {r["model_frames_per_s"]:.0f} model-only; '
      f'{flops / 1e9:.0f} GFLOP/frame; MFU {mfu * 100:.1f} % (model-only, peak {peak / 1e12:.0f} TFLOPS); '
      f'GPU busy {"n/a" if busy is None else f"{busy:.0f} %"}; decode {r["decode_s"]:.1f} s over {r["frames"]} frames')
PY
done
log "done"
