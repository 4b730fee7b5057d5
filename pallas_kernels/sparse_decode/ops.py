"""Sparse decode: one query token per sequence attending to the cache blocks its kv head selected.

Decode-time policies (Quest-style page selection, TokenSelect, H2O-like budgets) choose, per
sequence and kv head, a few blocks of the cache; this reads only those blocks. The query heads of
a kv head share its selection (GQA), so one program serves the whole group.
"""

import math

import jax.numpy as jnp

from pallas_kernels.sparse_decode import kernel

MIN_ROWS = 16  # Triton's smallest dot tile: group and head dims are padded up to it


def _pow2_at_least(n: int, floor: int) -> int:
  return max(floor, 1 << max(n - 1, 0).bit_length())


def _check(q, k, v, kv_idx, kv_cnt, lengths, block_k, num_splits):
  if q.ndim != 3 or k.ndim != 4 or k.shape != v.shape:
    raise ValueError("sparse_decode: expects q [B, H, D] and k, v [B, S, Hkv, D]; got "
                     f"q {q.shape}, k {k.shape}, v {v.shape}")
  b, h, d = q.shape
  if k.shape[0] != b or k.shape[3] != d:
    raise ValueError(f"sparse_decode: k/v {k.shape} must share B and D with q {q.shape}")
  hkv = k.shape[2]
  if hkv == 0 or h % hkv:
    raise ValueError(f"sparse_decode: query heads H={h} must be a multiple of kv heads Hkv={hkv}")
  if isinstance(block_k, bool) or not isinstance(block_k, int) or block_k < MIN_ROWS or (
      block_k & (block_k - 1)):
    raise ValueError(f"sparse_decode: block_k must be a power of two >= {MIN_ROWS} (Triton block "
                     f"shapes), got {block_k!r}")
  if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1:
    raise ValueError(f"sparse_decode: num_splits must be a positive int, got {num_splits!r}")
  if kv_idx.ndim != 3 or kv_idx.shape[:2] != (b, hkv) or kv_idx.shape[2] < 1:
    raise ValueError(f"sparse_decode: kv_idx must be [B, Hkv, max_blocks] = [{b}, {hkv}, >=1], "
                     f"got {kv_idx.shape}")
  if kv_cnt.shape != (b, hkv):
    raise ValueError(f"sparse_decode: kv_cnt must be [B, Hkv] = [{b}, {hkv}], got {kv_cnt.shape}")
  if lengths.shape != (b,):
    raise ValueError(f"sparse_decode: lengths must be [B] = [{b}], got {lengths.shape}")
  for name, x in (("kv_idx", kv_idx), ("kv_cnt", kv_cnt), ("lengths", lengths)):
    if not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(f"sparse_decode: {name} must be an integer array, got {x.dtype}")


def sparse_decode(q, k, v, kv_idx, kv_cnt, lengths, *, block_k, num_splits, scale=None,
                  interpret=False):
  """Attention of one new token per sequence over the listed blocks of its KV cache.

  Args:
    q: [B, H, D] queries of the current token.
    k, v: [B, S, Hkv, D] cache (H a multiple of Hkv). Allocate S as a multiple of block_k and D as
      a power of two (>= 16) to avoid a padded copy of the cache.
    kv_idx: int [B, Hkv, max_blocks] cache-block indices in [0, ceil(S / block_k)), distinct
      within a row; entries past the count are ignored.
    kv_cnt: int [B, Hkv] valid leading entries of kv_idx (0: the heads output 0).
    lengths: int [B] valid cache length per sequence; positions at or past it are masked.
    block_k: cache block size, a power of two >= 16.
    num_splits: programs per (sequence, kv head), each taking a contiguous share of the listed
      blocks; their partial results are merged by log-sum-exp.
    scale: logit multiplier, default 1 / sqrt(D).
    interpret: run the Pallas interpreter (CPU).

  Returns:
    [B, H, D] in q's dtype. Forward only: decoding needs no gradient.
  """
  _check(q, k, v, kv_idx, kv_cnt, lengths, block_k, num_splits)
  b, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  g = h // hkv
  scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
  g_pad, d_pad, s_pad = _pow2_at_least(g, MIN_ROWS), _pow2_at_least(d, MIN_ROWS), -(-s // block_k)
  s_pad *= block_k
  q_BKGD = jnp.pad(q.reshape(b, hkv, g, d), ((0, 0), (0, 0), (0, g_pad - g), (0, d_pad - d)))
  if (s_pad, d_pad) != (s, d):
    cache_pad = ((0, 0), (0, s_pad - s), (0, 0), (0, d_pad - d))
    k, v = jnp.pad(k, cache_pad), jnp.pad(v, cache_pad)
  max_blocks = kv_idx.shape[-1]
  kv_cnt = jnp.clip(kv_cnt.astype(jnp.int32), 0, max_blocks)
  kv_idx = jnp.clip(kv_idx.astype(jnp.int32), 0, s_pad // block_k - 1)  # never read off the cache
  lengths = jnp.minimum(lengths.astype(jnp.int32), s)
  parts = kernel.partials(q_BKGD, k, v, kv_idx, kv_cnt, lengths, block_k=block_k,
                          num_splits=num_splits, scale=scale, interpret=interpret)
  o_BKGD = kernel.combine(*parts)[:, :, :g, :d]
  return o_BKGD.reshape(b, h, d).astype(q.dtype)
