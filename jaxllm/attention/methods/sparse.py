"""Static block-sparse attention methods: sliding window, sink + window, and given tables.

All three run ``pallas_kernels.block_sparse``: ``xla`` is its gather path (no T x T mask, fine on
CPU at long T), ``pallas`` the Triton kernel on GPU, the Mosaic kernel of ``block_sparse_tpu`` on
TPU and the interpreted Triton kernel elsewhere, ``auto`` the backend's kernel when the blocks fit
it and the gather path otherwise. Windows and sinks are exact: the table lists the blocks they
touch and the kernel masks element-wise inside them, so the results equal ``dense`` with the same
options.
"""

import math

import jax

from jaxllm.attention.registry import register
from pallas_kernels.block_sparse import kernel_gpu, masks, ops
from pallas_kernels.block_sparse_tpu.config import NUM_LANES

BLOCK_Q = 128
BLOCK_K = 128  # multiples of the TPU lane width serve the Mosaic kernel too


def _impl(impl: str, table: masks.BlockTable) -> tuple[str, bool]:
  """Maps ``impl`` to the kernel of this backend; also says whether it must be interpreted.

  ``pallas`` is the Triton kernel on GPU, the Mosaic kernel on TPU and the interpreted Triton
  kernel elsewhere; ``auto`` takes the backend's kernel when the block sizes fit it, else ``xla``.
  """
  backend = jax.default_backend()
  if impl == "auto":
    if backend == "gpu" and kernel_gpu.blocks_fit(table.block_q, table.block_k):
      return "pallas", False
    if backend == "tpu" and table.block_q % NUM_LANES == 0 and table.block_k % NUM_LANES == 0:
      return "pallas_tpu", False
    return "xla", False
  if impl == "pallas" and backend == "tpu":
    return "pallas_tpu", False
  return impl, impl == "pallas" and backend != "gpu"


def run(q, k, v, mask, *, impl, causal, scale=None, window=None, sinks=0, softcap=None):
  """Block-sparse attention over ``mask`` with ``impl`` in {xla, pallas, auto}."""
  table = mask.table if isinstance(mask, masks.VerticalSlash) else mask
  impl, interpret = _impl(impl, table)
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
  return ops.block_sparse_attention(q, k, v, mask, causal=causal, scale=scale, window=window,
                                    sinks=sinks, softcap=softcap, impl=impl, interpret=interpret)


def banded(q, k, v, *, impl, causal, window=None, sinks=0, scale=None, softcap=None,
           block_q=BLOCK_Q, block_k=BLOCK_K):
  """Dense (window None), sliding-window or sink + window attention through a band table."""
  t, s = q.shape[1], k.shape[1]
  if window is None:
    table = masks.causal_table(t, s, block_q=block_q, block_k=block_k, causal=causal)
  else:
    table = masks.sliding_window_table(t, s, window=window, sinks=sinks, block_q=block_q,
                                       block_k=block_k, causal=causal)
  return run(q, k, v, table, impl=impl, causal=causal, scale=scale, window=window, sinks=sinks,
             softcap=softcap)


def _positive(name, value, method):
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{method} attention: {name} must be a positive int, got {value!r}")


def sliding_window(q, k, v, *, impl="auto", causal=True, window=None, scale=None, softcap=None,
                   block_q=BLOCK_Q, block_k=BLOCK_K):
  """Each query sees the ``window`` most recent keys (|q - k| < window when not causal)."""
  _positive("window", window, "sliding_window")
  return banded(q, k, v, impl=impl, causal=causal, window=window, scale=scale, softcap=softcap,
                block_q=block_q, block_k=block_k)


def streaming(q, k, v, *, impl="auto", causal=True, sinks=4, window=None, scale=None,
              softcap=None, block_q=BLOCK_Q, block_k=BLOCK_K):
  """StreamingLLM / A-shape: the first ``sinks`` keys plus the ``window`` most recent ones."""
  _positive("window", window, "streaming")
  _positive("sinks", sinks, "streaming")
  return banded(q, k, v, impl=impl, causal=causal, window=window, sinks=sinks, scale=scale,
                softcap=softcap, block_q=block_q, block_k=block_k)


def block_sparse(q, k, v, *, impl="auto", causal=True, table=None, scale=None, softcap=None):
  """Attention over a given :class:`BlockTable` or :class:`VerticalSlash` (block sizes inside)."""
  if not isinstance(table, (masks.BlockTable, masks.VerticalSlash)):
    raise ValueError("block_sparse attention: table must be a pallas_kernels.block_sparse.masks "
                     f"BlockTable or VerticalSlash, got {type(table).__name__}")
  return run(q, k, v, table, impl=impl, causal=causal, scale=scale, softcap=softcap)


register("sliding_window", sliding_window, impls=("xla", "pallas", "auto"), decode="sparse")
register("streaming", streaming, impls=("xla", "pallas", "auto"), decode="sparse")
register("block_sparse", block_sparse, impls=("xla", "pallas", "auto"))
