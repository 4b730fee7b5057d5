"""Static block-sparse attention methods: sliding window, sink + window, and given tables.

All run ``pallas_kernels.block_sparse.api``: ``xla`` is its gather path (no T x T mask, fine on
CPU at long T), ``pallas`` the platform's kernel (Triton on GPU, Mosaic on TPU, the interpreted
Triton kernel elsewhere), ``auto`` the native kernel when the blocks fit it and the gather path
otherwise. Windows and sinks are exact: the table (``jaxllm.attention.sparse.patterns``) lists
the blocks they touch and the kernel masks element-wise inside them, so the results equal
``dense`` with the same options.
"""

import warnings

from jaxllm.attention.registry import register
from jaxllm.attention.sparse import patterns
from pallas_kernels.block_sparse import api, masks

BLOCK_Q = 128
BLOCK_K = 128  # multiples of the TPU lane width serve the Mosaic kernel too


def run(q, k, v, mask, *, impl, causal, scale=None, window=None, sinks=0, softcap=None,
        return_lse=False, segment_ids=None):
  """Block-sparse attention over ``mask`` with ``impl`` in {xla, pallas, auto}; ``segment_ids``
  [B, S] (packed rows) mask across segments inside the listed blocks (gather path only)."""
  return api.block_sparse_attention(q, k, v, mask, causal=causal, scale=scale, window=window,
                                    sinks=sinks, softcap=softcap, impl=impl,
                                    return_lse=return_lse, segment_ids=segment_ids)


def banded(q, k, v, *, impl, causal, window=None, sinks=0, scale=None, softcap=None,
           block_q=BLOCK_Q, block_k=BLOCK_K, segment_ids=None):
  """Dense (window None), sliding-window or sink + window attention through a band table."""
  t, s = q.shape[1], k.shape[1]
  if window is None:
    table = patterns.causal_table(t, s, block_q=block_q, block_k=block_k, causal=causal)
  else:
    table = patterns.sliding_window_table(t, s, window=window, sinks=sinks, block_q=block_q,
                                          block_k=block_k, causal=causal)
  return run(q, k, v, table, impl=impl, causal=causal, scale=scale, window=window, sinks=sinks,
             softcap=softcap, segment_ids=segment_ids)


def _positive(name, value, method):
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{method} attention: {name} must be a positive int, got {value!r}")


def sliding_window(q, k, v, *, impl="auto", causal=True, window=None, scale=None, softcap=None,
                   block_q=BLOCK_Q, block_k=BLOCK_K, segment_ids=None):
  """Each query sees the ``window`` most recent keys (|q - k| < window when not causal)."""
  _positive("window", window, "sliding_window")
  return banded(q, k, v, impl=impl, causal=causal, window=window, scale=scale, softcap=softcap,
                block_q=block_q, block_k=block_k, segment_ids=segment_ids)


def sink_window(q, k, v, *, impl="auto", causal=True, sinks=4, window=None, scale=None,
                softcap=None, block_q=BLOCK_Q, block_k=BLOCK_K, segment_ids=None):
  """StreamingLLM's attention sinks / MInference's A-shape: the first ``sinks`` keys plus the
  ``window`` most recent ones (default 4 sinks, as StreamingLLM)."""
  _positive("window", window, "sink_window")
  _positive("sinks", sinks, "sink_window")
  return banded(q, k, v, impl=impl, causal=causal, window=window, sinks=sinks, scale=scale,
                softcap=softcap, block_q=block_q, block_k=block_k, segment_ids=segment_ids)


def streaming(q, k, v, *, impl="auto", causal=True, sinks=4, window=None, scale=None,
              softcap=None, block_q=BLOCK_Q, block_k=BLOCK_K):
  """Deprecated name of ``sink_window`` (the KV-cache policy keeps the name ``streaming``)."""
  warnings.warn("attention method 'streaming' is renamed 'sink_window'; the old name will be "
                "removed in the next release", DeprecationWarning, stacklevel=3)
  return sink_window(q, k, v, impl=impl, causal=causal, sinks=sinks, window=window, scale=scale,
                     softcap=softcap, block_q=block_q, block_k=block_k)


def block_sparse(q, k, v, *, impl="auto", causal=True, table=None, scale=None, softcap=None,
                 segment_ids=None):
  """Attention over a given :class:`BlockTable` or :class:`VerticalSlash` (block sizes inside)."""
  if not isinstance(table, (masks.BlockTable, masks.VerticalSlash)):
    raise ValueError("block_sparse attention: table must be a pallas_kernels.block_sparse.masks "
                     f"BlockTable or VerticalSlash, got {type(table).__name__}")
  return run(q, k, v, table, impl=impl, causal=causal, scale=scale, softcap=softcap,
             segment_ids=segment_ids)


register("sliding_window", sliding_window, impls=("xla", "pallas", "auto"), decode="sparse")
register("sink_window", sink_window, impls=("xla", "pallas", "auto"), decode="sparse")
register("streaming", streaming, impls=("xla", "pallas", "auto"), decode="sparse")
register("block_sparse", block_sparse, impls=("xla", "pallas", "auto"))
