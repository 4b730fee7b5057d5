#!/usr/bin/env bash
# jaxllm on jax 0.11.2, the version the lent GPU machines carry: a second, small environment
# (.venv-jax011: the pinned packages of constraints.txt with jax and jaxlib at 0.11.2) that
# imports every package and runs the kernel and model tests. No shims are needed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-jax011
if [ ! -x "$venv/bin/python" ]; then
  .venv/bin/python -m venv "$venv"
fi
grep -v -E '^(jax|jaxlib)==' constraints.txt > "$venv/constraints.txt"
printf 'jax==0.11.2\njaxlib==0.11.2\n' >> "$venv/constraints.txt"
"$venv/bin/python" -m pip install -q -c "$venv/constraints.txt" jax jaxlib flax optax \
  orbax-checkpoint ml-collections absl-py numpy scipy scikit-learn matplotlib tensorboardX \
  tokamax safetensors tokenizers pytest
export JAX_PLATFORMS=cpu PYTHONPATH="$PWD"
"$venv/bin/python" -c "import jax; assert jax.__version__ == '0.11.2', jax.__version__; \
import jaxllm.attention, jaxllm.models.transformer, jaxllm.inference.decode, jaxllm.optim, \
jaxllm.train.loop, jaxllm.interop, pallas_kernels.block_sparse.api, pallas_kernels.sparse_decode.api, \
pallas_kernels.linear_chunk.api; print('jaxllm imports on jax', jax.__version__)"
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/kernels/test_block_sparse.py \
  tests/kernels/test_sparse_decode.py tests/kernels/test_linear_chunk.py tests/models/test_transformer.py
