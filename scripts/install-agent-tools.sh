#!/usr/bin/env bash
# The agent image's runtime tools: Debian's ffmpeg and, from PyPI into $VENV (default
# /opt/dataminer-venv), the pinned yt-dlp of requirements-agent.txt. The Dockerfile runs this;
# CI installs the same pins through scripts/lib/prereqs.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-/opt/dataminer-venv}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends ca-certificates ffmpeg libturbojpeg0 python3 python3-venv >/dev/null
rm -rf /var/lib/apt/lists/*
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --no-cache-dir --disable-pip-version-check -r requirements-agent.txt
ln -sf "$VENV/bin/yt-dlp" /usr/local/bin/yt-dlp
yt-dlp --version
ffmpeg -hide_banner -version | head -1
