"""Static block-sparse attention methods: sliding window, sink + window, and given tables.

All run ``pallas_kernels.block_sparse.api``: ``xla`` is its gather path (no T x T mask, fine on
CPU at long T), ``pallas`` the platform's kernel (Triton on GPU, Mosaic on TPU, the interpreted
Triton kernel elsewhere), ``auto`` the native kernel when the blocks fit it and the gather path
otherwise. Windows and sinks are exact: the table (``jaxllm.attention.sparse.patterns``) lists
the blocks they touch and the kernel masks element-wise inside them, so the results equal
``dense`` with the same options. On CPU, ``auto`` with the default block sizes takes the fastest
exact path of :data:`CPU_PATHS` for the query length.
"""

import warnings

import jax

from jaxllm.attention.registry import register
from jaxllm.attention.sparse import patterns
from pallas_kernels.block_sparse import api, masks

BLOCK_Q = 128
BLOCK_K = 128  # multiples of the TPU lane width serve the Mosaic kernel too

# The fastest exact path on CPU by query length T, as (largest T, path, sizes): "blocked" is
# ``dense.blocked`` with sizes (block_q, key_chunk), "gather" the gather path with block size
# ``sizes``. Measured on the 2-core CPU (B 1, H 2, K 1, D 64, float32, causal and window 1024)
# by timing the candidates alternately in one run (``bench_cpu_attention.py --crossover``; the
# numbers are in ``scripts/benchmarks/notes/cpu_attention.md``): blocked at 256 x 1024 to 1k
# (query blocks of 256, each one exact softmax over its keys), 1.07-1.21x faster than one block
# of 512 and 1.2-1.4x faster than the gather path at 128 or 256, causal and windowed; blocked at
# 256 x 2048 (tiles of 512 stacked rows x 2048 keys, 4 MiB) at 2k-4k, within 1.1x of the best
# there; the gather path at 256 from 8k: from 15% ahead of blocked 256 x 2048 to 30% behind
# it at 8k-32k across runs, but compiling in 1-2 s where blocked's unrolled query blocks take 10-32 s forward and
# 24-119 s with the gradient at 16k-32k.
CPU_PATHS = ((1024, "blocked", (256, 1024)), (4096, "blocked", (256, 2048)), (None, "gather", 256))


def cpu_path(t):
  """(path, sizes) of :data:`CPU_PATHS` for ``t`` queries."""
  return next((path, sizes) for top, path, sizes in CPU_PATHS if top is None or t <= top)


def run(q, k, v, mask, *, impl, causal, scale=None, window=None, sinks=0, softcap=None,
        return_lse=False, segment_ids=None):
  """Block-sparse attention over ``mask`` with ``impl`` in {xla, pallas, auto}; ``segment_ids``
  [B, S] (packed rows) mask across segments inside the listed blocks (gather path only)."""
  return api.block_sparse_attention(q, k, v, mask, causal=causal, scale=scale, window=window,
                                    sinks=sinks, softcap=softcap, impl=impl,
                                    return_lse=return_lse, segment_ids=segment_ids)


def banded(q, k, v, *, impl, causal, window=None, sinks=0, scale=None, softcap=None,
           block_q=None, block_k=None, segment_ids=None):
  """Dense (window None), sliding-window or sink + window attention through a band table.

  Block sizes default to :data:`BLOCK_Q` / :data:`BLOCK_K`, except ``auto`` on CPU, which runs
  the fastest exact path of :data:`CPU_PATHS` for the length.
  """
  t, s = q.shape[1], k.shape[1]
  if block_q is None and block_k is None and impl == "auto" and jax.default_backend() == "cpu":
    path, sizes = cpu_path(t)
    if path == "blocked":
      from jaxllm.attention.methods import dense  # pylint: disable=g-import-not-at-top
      return dense.blocked(q, k, v, causal=causal, scale=scale, window=window, sinks=sinks,
                           softcap=softcap, segment_ids=segment_ids, block_q=sizes[0],
                           key_chunk=sizes[1])
    block_q = block_k = sizes
  block_q = BLOCK_Q if block_q is None else block_q
  block_k = BLOCK_K if block_k is None else block_k
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
                   block_q=None, block_k=None, segment_ids=None):
  """Each query sees the ``window`` most recent keys (|q - k| < window when not causal)."""
  _positive("window", window, "sliding_window")
  return banded(q, k, v, impl=impl, causal=causal, window=window, scale=scale, softcap=softcap,
                block_q=block_q, block_k=block_k, segment_ids=segment_ids)


def sink_window(q, k, v, *, impl="auto", causal=True, sinks=4, window=None, scale=None,
                softcap=None, block_q=None, block_k=None, segment_ids=None):
  """StreamingLLM's attention sinks / MInference's A-shape: the first ``sinks`` keys plus the
  ``window`` most recent ones (default 4 sinks, as StreamingLLM)."""
  _positive("window", window, "sink_window")
  _positive("sinks", sinks, "sink_window")
  return banded(q, k, v, impl=impl, causal=causal, window=window, sinks=sinks, scale=scale,
                softcap=softcap, block_q=block_q, block_k=block_k, segment_ids=segment_ids)


def streaming(q, k, v, *, impl="auto", causal=True, sinks=4, window=None, scale=None,
              softcap=None, block_q=None, block_k=None):
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
