#!/usr/bin/env bash
# The whole test suite, as CI runs it: install (dev extras), lint, type-check, then pytest.
#   bash deploy/test.sh [pytest args...]     e.g. bash deploy/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh --dev
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/python -m pytest "$@"
