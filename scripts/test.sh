#!/usr/bin/env bash
# Set up (idempotent), lint, and run the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ruff check .
lint-imports
# one worker per core (pytest-xdist); a module's tests stay on one worker so its builds are made once;
# the slowest tests listed at the end (the suite has a 20-minute budget)
exec python3 -m pytest -q -p no:cacheprovider -n auto --dist loadscope --durations=15 "$@"
