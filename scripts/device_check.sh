#!/usr/bin/env bash
# The prepared accelerator check (see scripts/device_check.py): one command, a time budget
# (--budget_s, default 540 s), --dry-run for CPU at tiny shapes. Uses the machine's python3
# unless PYTHON is set, since the GPU machine brings its own jax build.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$py" scripts/device_check.py --python="$py" "$@"
