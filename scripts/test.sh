#!/usr/bin/env bash
# The test suite: the default tier (CPU, no slow/gpu/tpu/multidevice tests), then the multidevice
# tests in their own process on 8 fake CPU devices, the multi-process tests, the notebooks (nbmake
# at their CI size), then the device check's dry run (every step of scripts/device_check.sh on CPU
# at tiny shapes), then the kernel and model tests on jax 0.11.2 (scripts/test_jax011.sh), the
# version the lent GPU machines carry. Extra arguments go to the default tier.
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu
# glibc's arenas on transparent huge pages: XLA:CPU's buffers then stop costing a page fault per
# 4 KiB on every call (jaxllm.host; the launcher sets it itself). Results do not change.
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"
.venv/bin/python -m pytest -n 2 "$@"
status=0
XLA_FLAGS="--xla_force_host_platform_device_count=8" \
  .venv/bin/python -m pytest -m multidevice -q || status=$?
# pytest exits 5 when no test carries the marker
if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then exit "$status"; fi
# Multi-process runs (two local processes, jax.distributed over gloo) in their own step.
.venv/bin/python -m pytest -m multiprocess -q
JAXLLM_NOTEBOOK_SIZE=ci .venv/bin/python -m pytest -o addopts="" -q -n 2 --nbmake scripts/notebooks
dry=$(mktemp -d)
.venv/bin/python scripts/device_check.py --dry-run --budget_s=400 --out="$dry"
rm -rf "$dry"
bash scripts/test_jax011.sh
