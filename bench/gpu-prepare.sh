#!/usr/bin/env bash
# Builds what bench/gpu.sh carries to a GPU host that has python3 with PyTorch 2.11 (cu130)
# but no Rust toolchain, ffmpeg or network: target/gpu-bundle/ with
#   dm-bench-models     the agent's model path, stripped (libtorch is linked dynamically from
#                       the host's PyTorch; libtorch_cuda is force-linked, see agent/build.rs)
#   lib/                libturbojpeg.so.0 (the decoder PIL uses; hosts may lack it)
#   wheels/             transformers and its pure-Python/abi3 dependencies (not torch), for
#                       export.py in a venv over the host's PyTorch
#   frames/             256 JPEG frames (640x360, as the extract stage writes them) + manifest
# Well under the 64 MiB a device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/models/setup.sh --print-env)"
b=target/gpu-bundle
rm -rf "$b" && mkdir -p "$b/lib" "$b/wheels" "$b/frames/frames"
cargo build -q --release --locked -p dataminer-bench --features models --bin dm-bench-models
strip -o "$b/dm-bench-models" target/release/dm-bench-models
cp -L "$(ldconfig -p | awk '/libturbojpeg.so.0 / {print $NF; exit}')" "$b/lib/libturbojpeg.so.0"
# Everything export.py imports besides torch and numpy (which come with the host's PyTorch).
"$VIRTUAL_ENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$b/wheels" --only-binary=:all: \
  $(grep -E '^(transformers|tokenizers|huggingface-hub|safetensors)==' requirements-models.txt) \
  $("$VIRTUAL_ENV/bin/pip" freeze | grep -iE '^(filelock|fsspec|packaging|pyyaml|regex|tqdm|hf-xet|typing.extensions|httpx2|httpcore2|h11|anyio|idna|certifi|sniffio|click|typer|shellingham|rich|markdown-it-py|mdurl|pygments|annotated-doc)==')
# The two with compiled parts that are not abi3, for the host's python (3.10–3.13).
for v in 3.10 3.11 3.12 3.13; do
  for pin in $("$VIRTUAL_ENV/bin/pip" freeze | grep -iE '^(pyyaml|regex)=='); do
    "$VIRTUAL_ENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$b/wheels" --only-binary=:all: \
      --python-version "$v" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 "$pin" 2>/dev/null ||
      echo "note: no $pin wheel for python $v" >&2
  done
done
ffmpeg -hide_banner -loglevel error -nostdin -y -f lavfi -i "testsrc2=size=640x360:rate=25" -frames:v 256 -q:v 2 \
  "$b/frames/frames/f_%06d.jpg"
python3 - "$b/frames" <<'PY'
import json, sys
m = {"frames": [{"index": i, "pts_s": (i - 1) / 25, "path": f"frames/f_{i:06d}.jpg"} for i in range(1, 257)]}
open(f"{sys.argv[1]}/manifest.json", "w").write(json.dumps(m))
PY
du -sh "$b" "$b"/*
