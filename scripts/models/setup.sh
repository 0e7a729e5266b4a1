#!/usr/bin/env bash
# Create or update ./.venv-models (the model tools' venv, pinned by requirements-models.txt) and
# print the environment a `models` build of the agent needs, as `export` lines on stdout:
#   eval "$(bash scripts/models/setup.sh --print-env)"
# LIBTORCH_USE_PYTORCH=1 makes torch-sys take libtorch from this venv's torch (it runs `python`
# from PATH when VIRTUAL_ENV is set, so both are exported), and LD_LIBRARY_PATH lets the built
# agent find libtorch at run time. Quick when everything is already installed.
# Progress goes to stderr; with --print-env stdout carries only the export lines.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"
venv="$root/.venv-models"
req="$root/requirements-models.txt"
print_env_only=0
case "${1:-}" in
  --print-env) print_env_only=1 ;;
  "") ;;
  *) echo "usage: bash scripts/models/setup.sh [--print-env]" >&2; exit 2 ;;
esac

python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/pip" ]; then
  echo "creating $venv" >&2
  "$python" -m venv "$venv"
fi
# Every pin must be installed (one matching line is not enough).
frozen="$("$venv/bin/pip" freeze --disable-pip-version-check 2>/dev/null || true)"
missing=0
for pin in $(grep -v '^\s*#' "$req" | sed 's/\s*#.*//'); do
  # pip freeze spells names with the project's own case/separators; compare case-insensitively
  # with - and _ unified.
  norm() { tr 'A-Z_' 'a-z-'; }
  if ! norm <<<"$frozen" | grep -qxF "$(norm <<<"$pin")"; then
    missing=1
    break
  fi
done
if [ "$missing" = 1 ]; then
  echo "installing requirements-models.txt into $venv (torch is ~3 GB with its CUDA libraries)" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
fi

site="$("$venv/bin/python" -c 'import importlib.util as u; print(u.find_spec("torch").submodule_search_locations[0])')"
torch_lib="$site/lib"
if [ ! -e "$torch_lib/libtorch_cpu.so" ]; then
  echo "error: $torch_lib/libtorch_cpu.so is missing" >&2
  exit 1
fi
if [ "$print_env_only" = 0 ]; then
  echo "# $venv is ready; to build the agent with --features models:" >&2
fi
echo "export VIRTUAL_ENV='$venv'"
echo "export PATH='$venv/bin':\"\$PATH\""
echo "export LIBTORCH_USE_PYTORCH=1"
echo "export LD_LIBRARY_PATH='$torch_lib'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
