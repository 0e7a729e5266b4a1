#!/usr/bin/env bash
# Runs every test: unit tests and the behavioural suite on the embedded SQLite file and on a
# real PostgreSQL (including the OpenAPI checks: openapi-spec-validator and Schemathesis against
# a live control plane, tests/api/openapi.rs). Installs the Debian packages and the pinned
# Python tools (requirements-agent.txt, requirements-dev.txt, into ./.venv) the suite needs
# when they are missing, and starts a private PostgreSQL (scripts/test-postgres.sh) unless
# DATAMINER_TEST_PG_URL names one.
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
