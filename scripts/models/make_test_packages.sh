#!/usr/bin/env bash
# Make the CI model packages (siglip2-tiny, dinov2-tiny, meancolour, thumbnail) in <out_dir>,
# with the model venv (scripts/models/setup.sh makes it; set PYTHON to use another python).
# A few seconds on CPU; the packages together are well under 1 MiB.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: bash scripts/models/make_test_packages.sh <out_dir>" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-$here/../../.venv-models/bin/python}"
exec "$python" "$here/export.py" --out "$1" --ci-packages
