"""Trainable and LSH-sampled sparse methods: ``cca``, ``hyper`` and ``moba``.

The math lives in ``jaxllm.attention.sparse.{cca,hyper,moba}`` (each with a dense-masked
reference); this module validates options and registers the methods. All three are causal
self-attention rules (queries are the last T of S keys). ``cca`` (key slices per query tile, plain
JAX) and ``moba`` (its selected pairs only, on the block-sparse gather path) run one path
(``xla``; ``auto`` is the same) and are differentiable end to end. ``hyper`` also accepts
``pallas``: its sorted block-diagonal part then runs the block-sparse kernel with a diagonal
table (Triton on GPU, Mosaic on TPU, interpreted elsewhere).
"""

import jax

from jaxllm.attention.registry import register
from jaxllm.attention.sparse import cca as cca_lib
from jaxllm.attention.sparse import hyper as hyper_lib
from jaxllm.attention.sparse import moba as moba_lib


def _need_causal(method, causal):
  if not causal:
    raise ValueError(f"{method} attention is causal only: causal must be True, got {causal!r}")


def _scale(method, scale):
  if scale is not None and (isinstance(scale, bool) or not scale > 0):
    raise ValueError(f"{method} attention: scale must be a positive float or None, got {scale!r}")
  return None if scale is None else float(scale)


def cca(q, k, v, *, impl="auto", causal=True, group_size=cca_lib.GROUP_SIZE,
        window=cca_lib.WINDOW, prefix_q=None, scale=None):
  """Core-context-aware attention: pooled core tokens + local window in one softmax."""
  del impl  # one path: the tiled gather in plain JAX
  _need_causal("cca", causal)
  cca_lib.check_options(group_size, window)
  o, _ = cca_lib.attention(q, k, v, group_size=group_size, window=window, prefix_q=prefix_q,
                           scale=_scale("cca", scale))
  return o


def moba(q, k, v, *, impl="auto", causal=True, chunk_size=moba_lib.CHUNK_SIZE,
         topk=moba_lib.TOPK, scale=None):
  """Mixture of block attention: each query's top-k key blocks by <q, mean k>, own block causal."""
  del impl  # one path: the block-sparse gather path over the selected pairs
  _need_causal("moba", causal)
  moba_lib.check_options(chunk_size, topk)
  o, _ = moba_lib.attention(q, k, v, chunk_size=chunk_size, topk=topk,
                            scale=_scale("moba", scale))
  return o


def _kernel_impl(impl):
  """hyper's block-diagonal part runs the kernel for ``pallas``, and for ``auto`` on GPU / TPU."""
  if impl == "auto":
    return "pallas" if jax.default_backend() in ("gpu", "tpu") else "xla"
  return impl


def hyper(q, k, v, *, impl="auto", causal=True, lsh_num_projs=hyper_lib.LSH_NUM_PROJS,
          block_size=hyper_lib.BLOCK_SIZE, sample_size=hyper_lib.SAMPLE_SIZE,
          min_seq_len=hyper_lib.MIN_SEQ_LEN, seed=0, lsh_order="gray", scale=None):
  """HyperAttention: LSH-sorted block diagonal + sampled residual, causal recursive halving."""
  _need_causal("hyper", causal)
  hyper_lib.check_options(lsh_num_projs, block_size, sample_size, min_seq_len, seed, lsh_order)
  o, _ = hyper_lib.attention(q, k, v, lsh_num_projs=lsh_num_projs, block_size=block_size,
                             sample_size=sample_size, min_seq_len=min_seq_len, seed=seed,
                             lsh_order=lsh_order, scale=_scale("hyper", scale),
                             impl=_kernel_impl(impl))
  return o


register("cca", cca, impls=("xla", "auto"))
register("moba", moba, impls=("xla", "auto"))
register("hyper", hyper, impls=("xla", "pallas", "auto"))
