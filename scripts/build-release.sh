#!/usr/bin/env bash
# Release build of the binaries that ship in the container images, into $OUT (default
# ./dist). The Dockerfile runs exactly this; CI runs it too, so the image build cannot rot
# unnoticed on machines without a Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-dist}"
# Build dependencies (libjpeg-turbo for the agent's frame decoding) when missing.
source scripts/lib/prereqs.sh
ensure_build_packages
cargo build --release --locked -p dataminer-control-plane -p dataminer-agent
mkdir -p "$OUT"
cp target/release/control-plane target/release/agent "$OUT/"
"$OUT/control-plane" --version
"$OUT/agent" --version
