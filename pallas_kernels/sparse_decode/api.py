"""Sparse decode: one query token per sequence attending to the cache blocks its kv head selected.

Decode-time policies (Quest-style page selection, TokenSelect, H2O-like budgets) choose, per
sequence and kv head, a few blocks of the cache; this reads only those blocks. The query heads of
a kv head share its selection (GQA), so one program serves the whole group. ``impl``: ``xla``
(the plain-jnp reference), ``pallas`` (this platform's split-K kernel: Mosaic on TPU, Triton on
GPU, interpreted Triton elsewhere) or ``auto`` (the native kernel when the block fits it).
"""

import math

import jax.numpy as jnp

from pallas_kernels import common
from pallas_kernels.sparse_decode import combine, mosaic_tpu, reference, triton

# Ordered by preference; the xla path is the reference (decode reads the cache once anyway).
IMPLEMENTATIONS = {"mosaic_tpu": mosaic_tpu.partials, "triton": triton.partials,
                   "xla": reference.sparse_decode}


def _block_rule(platform):
  """(predicate, message) of the cache block size each kernel tiles."""
  if platform == "gpu":
    return (lambda x: x >= common.TRITON_MIN_TILE and common.is_pow2(x),
            f"a power of two >= {common.TRITON_MIN_TILE} for the GPU kernel (Triton block shapes)")
  return (lambda x: x > 0 and not x % common.NUM_LANES,
          f"a positive multiple of {common.NUM_LANES} for the TPU kernel (lane width)")


def _check_int(name, value, ok, allowed):
  if isinstance(value, bool) or not isinstance(value, int) or not ok(value):
    raise ValueError(f"sparse_decode: {name} must be {allowed}, got {value!r}")


def _check(q, k, v, kv_idx, kv_cnt, lengths, block_k, num_splits):
  if q.ndim != 3 or k.ndim != 4 or k.shape != v.shape:
    raise ValueError("sparse_decode: expects q [B, H, D] and k, v [B, S, K, D]; got "
                     f"q {q.shape}, k {k.shape}, v {v.shape}")
  b, h, d = q.shape
  if k.shape[0] != b or k.shape[3] != d:
    raise ValueError(f"sparse_decode: k/v {k.shape} must share B and D with q {q.shape}")
  hkv = k.shape[2]
  if hkv == 0 or h % hkv:
    raise ValueError(f"sparse_decode: query heads H={h} must be a multiple of kv heads K={hkv}")
  _check_int("block_k", block_k, lambda x: x > 0, "a positive int")
  _check_int("num_splits", num_splits, lambda x: x >= 1, "a positive int")
  if kv_idx.ndim != 3 or kv_idx.shape[:2] != (b, hkv) or kv_idx.shape[2] < 1:
    raise ValueError(f"sparse_decode: kv_idx must be [B, K, max_blocks] = [{b}, {hkv}, >=1], "
                     f"got {kv_idx.shape}")
  if kv_cnt.shape != (b, hkv):
    raise ValueError(f"sparse_decode: kv_cnt must be [B, K] = [{b}, {hkv}], got {kv_cnt.shape}")
  if lengths.shape != (b,):
    raise ValueError(f"sparse_decode: lengths must be [B] = [{b}], got {lengths.shape}")
  for name, x in (("kv_idx", kv_idx), ("kv_cnt", kv_cnt), ("lengths", lengths)):
    if not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(f"sparse_decode: {name} must be an integer array, got {x.dtype}")


def sparse_decode(q, k, v, kv_idx, kv_cnt, lengths, *, block_k, num_splits, scale=None,
                  impl="auto", interpret=None):
  """Attention of one new token per sequence over the listed blocks of its KV cache.

  Args:
    q: [B, H, D] queries of the current token.
    k, v: [B, S, K, D] cache (H a multiple of K). Allocate S as a multiple of block_k and D as
      the kernel likes it (GPU: a power of two >= 16; TPU: a multiple of 128, or K = 1) to
      avoid a padded copy of the cache.
    kv_idx: int [B, K, max_blocks] cache-block indices in [0, ceil(S / block_k)), distinct
      within a row; entries past the count are ignored.
    kv_cnt: int [B, K] valid leading entries of kv_idx (0: the heads output 0).
    lengths: int [B] valid cache length per sequence: the new token sits at position
      length - 1 and sees the cache causally (``jaxllm.attention.masks``).
    block_k: cache block size: GPU kernel a power of two >= 16, TPU kernel a multiple of 128.
    num_splits: programs per (sequence, kv head), each taking a contiguous share of the listed
      blocks; their partial results are merged by log-sum-exp.
    scale: logit multiplier, default 1 / sqrt(D).
    impl: ``xla``, ``pallas`` or ``auto``.
    interpret: None interprets the kernel only off its hardware; True (or a
      ``pltpu.InterpretParams`` for the Mosaic kernel) forces the interpreter.

  Returns:
    [B, H, D] in q's dtype. Forward only: decoding needs no gradient.
  """
  common.check_impl("sparse_decode", impl)
  _check(q, k, v, kv_idx, kv_cnt, lengths, block_k, num_splits)
  platform, interpret = common.choose("sparse_decode", impl, interpret,
                                      fits=lambda p: _block_rule(p)[0](block_k))
  if platform is None:
    return IMPLEMENTATIONS["xla"](q, k, v, kv_idx, kv_cnt, lengths, block_k=block_k, scale=scale)
  _check_int("block_k", block_k, *_block_rule(platform))
  b, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  g = h // hkv
  scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
  if platform == "gpu":
    g_pad = common.pow2_at_least(g, common.TRITON_MIN_TILE)
    d_pad = common.pow2_at_least(d, common.TRITON_MIN_TILE)
  else:
    g_pad, d_pad = common.round_up(g, 8), d if hkv == 1 else common.round_up(d, common.NUM_LANES)
  s_pad = common.round_up(s, block_k)
  q_BKGD = jnp.pad(q.reshape(b, hkv, g, d), ((0, 0), (0, 0), (0, g_pad - g), (0, d_pad - d)))
  k, v = (common.pad_axis(common.pad_axis(x, 1, s_pad), 3, d_pad) for x in (k, v))
  # Clipped indices never read off the cache; repeating the last valid one past the count lets
  # the TPU pipeline skip those fetches.
  kv_idx, kv_cnt = common.normalize_table(kv_idx, kv_cnt, s_pad // block_k)
  lengths = jnp.minimum(lengths.astype(jnp.int32), s)
  partials = IMPLEMENTATIONS["triton" if platform == "gpu" else "mosaic_tpu"]
  parts = partials(q_BKGD, k, v, kv_idx, kv_cnt, lengths, block_k=block_k, num_splits=num_splits,
                   scale=scale, interpret=interpret)
  o_BKGD = combine.combine(*parts)[:, :, :g, :d]
  return o_BKGD.reshape(b, h, d).astype(q.dtype)
