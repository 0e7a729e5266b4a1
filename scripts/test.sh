#!/usr/bin/env bash
# Runs every test: unit tests and the behavioural suite on the embedded SQLite file and on a
# real PostgreSQL (including the OpenAPI checks: openapi-spec-validator and Schemathesis against
# a live control plane, tests/api/openapi.rs). Installs the Debian packages and the pinned
# Python tools (requirements-agent.txt, requirements-dev.txt, into ./.venv) the suite needs
# when they are missing, and starts a private PostgreSQL (scripts/test-postgres.sh) unless
# DATAMINER_TEST_PG_URL names one. Then the agent's model tests: the `models` build against
# libtorch from ./.venv-models (scripts/models/setup.sh), on the CI model packages, with parity
# against scripts/models/reference.py.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prereqs.sh
ensure_debian_packages
ensure_python_dev_tools
if [ -z "${DATAMINER_TEST_PG_URL:-}" ]; then
  DATAMINER_TEST_PG_URL="$(DATAMINER_PG_FAST=1 bash scripts/test-postgres.sh)"
  export DATAMINER_TEST_PG_URL
fi
echo "test PostgreSQL: $DATAMINER_TEST_PG_URL"
cargo test --workspace --locked "$@"
# The model stages: the agent's `models` build against libtorch from the pinned venv, on the
# CI model packages (made here by the export script), with parity against the reference.
(
  eval "$(bash scripts/models/setup.sh --print-env)"
  export DATAMINER_TEST_MODELS_DIR="${DATAMINER_TEST_MODELS_DIR:-$PWD/target/test-models}"
  export DATAMINER_TEST_PYTHON="$VIRTUAL_ENV/bin/python"
  bash scripts/models/make_test_packages.sh "$DATAMINER_TEST_MODELS_DIR" >&2
  python3 scripts/models/selfcheck.py
  cargo test -p dataminer-agent --features models --locked "$@"
  # Through real processes: control plane + agents serving the model stages with the oracle
  # packages (mining, each filter rule at its boundaries, failure paths).
  cargo test -p dataminer-tests --features models --locked --test e2e "$@" -- models:: model_rules:: model_failures::
)
