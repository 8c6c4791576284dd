#!/usr/bin/env bash
# The whole test suite, as CI runs it: system packages (as root on Debian/Ubuntu), install (dev extras), lint,
# type-check, then pytest.
#   bash deploy/test.sh [pytest args...]     e.g. bash deploy/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/system-packages.sh install
bash deploy/setup.sh --dev
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy (this platform, then macOS's: darwin-only and Linux-only calls must be guarded)"
.venv/bin/mypy
.venv/bin/mypy --platform darwin
echo "==> pytest"
status=0
.venv/bin/python -m pytest "$@" || status=$?
need="$(bash deploy/system-packages.sh missing)"
if [ "$(id -u)" != 0 ] || [ -n "$need" ]; then
  echo "note: the lab tests (tests/lab) and the browser test may have skipped; they need root${need:+ and these packages: $need}"
fi
exit "$status"
