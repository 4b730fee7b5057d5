#!/usr/bin/env bash
# Creates .venv with Python 3.12 and installs jaxllm (editable) with the pinned versions in
# constraints.txt. Usage: bash scripts/setup.sh [extras, default: test]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"

find_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  if command -v python3.12 >/dev/null 2>&1 && python3.12 -c "" >/dev/null 2>&1; then
    echo python3.12; return
  fi
  # pyenv shims answer only when the version is selected
  if command -v pyenv >/dev/null 2>&1; then
    local v
    v=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -V | tail -n 1 || true)
    if [ -n "$v" ]; then echo "$(pyenv root)/versions/$v/bin/python3.12"; return; fi
  fi
  for p in /usr/local/bin/python3.12 /usr/bin/python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    if [ -x "$p" ]; then echo "$p"; return; fi
  done
  echo "error: Python 3.12 not found; install it or set PYTHON=/path/to/python3.12" >&2
  exit 1
}

py=$(find_python)
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
  rm -rf .venv
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[${extras}]"
echo "jaxllm installed in .venv ($(.venv/bin/python --version))"
