# Shared by the scripts: install the Debian packages dataminer needs when they are missing
# (PostgreSQL server for the tests and clusters, ffmpeg for the agent's extract stage, and
# what building needs: see ensure_build_packages).
ensure_debian_packages() {
  local need=()
  if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then need+=(ffmpeg); fi
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
  # Debian's postgresql package may start its own cluster on 5432; ours use their own ports.
  apt_install "${need[@]}"
  ensure_build_packages
}

# Installs the named Debian packages (none: nothing to do).
apt_install() {
  if [ $# -eq 0 ]; then return 0; fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  echo "installing Debian packages: $*" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The agent's Python tools (yt-dlp) in ./.venv, from PyPI, pinned by requirements-agent.txt.
ensure_python_tools() {
  if [ ! -x .venv/bin/pip ]; then
    python3 -m venv .venv
  fi
  if ! .venv/bin/pip freeze 2>/dev/null | grep -qxF -f <(grep -v '^#' requirements-agent.txt); then
    .venv/bin/pip install -q --disable-pip-version-check -r requirements-agent.txt
  fi
}

# The test suite's Python tools (openapi-spec-validator, schemathesis) in ./.venv, from PyPI,
# pinned by requirements-dev.txt. Only the tests use them; the container images do not.
ensure_python_dev_tools() {
  ensure_python_tools
  local frozen pin
  frozen="$(.venv/bin/pip freeze 2>/dev/null)"
  # Every pin must be installed (one matching line is not enough).
  for pin in $(grep -v '^#' requirements-dev.txt); do
    if ! grep -qxF "$pin" <<<"$frozen"; then
      .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
      return
    fi
  done
}

# What building the binaries needs beyond a Rust toolchain (the Dockerfile's build stage too):
# pkg-config and libjpeg-turbo's development files (the agent decodes frames with
# libjpeg-turbo, as PIL does).
ensure_build_packages() {
  local need=()
  command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
  pkg-config --exists libturbojpeg 2>/dev/null || need+=(libturbojpeg0-dev)
  apt_install "${need[@]}"
}
