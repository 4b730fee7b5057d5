"""Sparse decode: one query token per sequence attending to the cache blocks its kv head selected.

Decode-time policies (Quest-style page selection, TokenSelect, H2O-like budgets) choose, per
sequence and kv head, a few blocks of the cache; this reads only those blocks. The query heads of
a kv head share its selection (GQA), so one program serves the whole group.
"""

import math

import jax
import jax.numpy as jnp

from pallas_kernels.block_sparse_tpu import tables
from pallas_kernels.sparse_decode import combine, kernel_gpu, kernel_tpu

TARGETS = ("gpu", "tpu")
MIN_ROWS = 16  # Triton's smallest dot tile: group and head dims are padded up to it
TPU_LANES = 128  # Mosaic: cache blocks span whole lanes; head dims slice the lane axis


def _pow2_at_least(n: int, floor: int) -> int:
  return max(floor, 1 << max(n - 1, 0).bit_length())


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _check_int(name, value, ok, allowed):
  if isinstance(value, bool) or not isinstance(value, int) or not ok(value):
    raise ValueError(f"sparse_decode: {name} must be {allowed}, got {value!r}")


def _check(q, k, v, kv_idx, kv_cnt, lengths, block_k, num_splits, target):
  if q.ndim != 3 or k.ndim != 4 or k.shape != v.shape:
    raise ValueError("sparse_decode: expects q [B, H, D] and k, v [B, S, Hkv, D]; got "
                     f"q {q.shape}, k {k.shape}, v {v.shape}")
  b, h, d = q.shape
  if k.shape[0] != b or k.shape[3] != d:
    raise ValueError(f"sparse_decode: k/v {k.shape} must share B and D with q {q.shape}")
  hkv = k.shape[2]
  if hkv == 0 or h % hkv:
    raise ValueError(f"sparse_decode: query heads H={h} must be a multiple of kv heads Hkv={hkv}")
  if target == "gpu":
    _check_int("block_k", block_k, lambda x: x >= MIN_ROWS and not x & (x - 1),
               f"a power of two >= {MIN_ROWS} for the GPU kernel (Triton block shapes)")
  else:
    _check_int("block_k", block_k, lambda x: x > 0 and not x % TPU_LANES,
               f"a positive multiple of {TPU_LANES} for the TPU kernel (lane width)")
  _check_int("num_splits", num_splits, lambda x: x >= 1, "a positive int")
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
                  interpret=False, target=None):
  """Attention of one new token per sequence over the listed blocks of its KV cache.

  Args:
    q: [B, H, D] queries of the current token.
    k, v: [B, S, Hkv, D] cache (H a multiple of Hkv). Allocate S as a multiple of block_k and D as
      the kernel likes it (GPU: a power of two >= 16; TPU: a multiple of 128, or Hkv = 1) to
      avoid a padded copy of the cache.
    kv_idx: int [B, Hkv, max_blocks] cache-block indices in [0, ceil(S / block_k)), distinct
      within a row; entries past the count are ignored.
    kv_cnt: int [B, Hkv] valid leading entries of kv_idx (0: the heads output 0).
    lengths: int [B] valid cache length per sequence; positions at or past it are masked.
    block_k: cache block size: GPU a power of two >= 16, TPU a multiple of 128.
    num_splits: programs per (sequence, kv head), each taking a contiguous share of the listed
      blocks; their partial results are merged by log-sum-exp.
    scale: logit multiplier, default 1 / sqrt(D).
    interpret: run the Pallas interpreter (CPU): True, or for the TPU kernel also a
      ``pltpu.InterpretParams``.
    target: ``gpu`` (Triton-style kernel) or ``tpu`` (Mosaic kernel); None picks ``tpu`` on a TPU
      backend and ``gpu`` otherwise.

  Returns:
    [B, H, D] in q's dtype. Forward only: decoding needs no gradient.
  """
  if target is None:
    target = "tpu" if jax.default_backend() == "tpu" else "gpu"
  if target not in TARGETS:
    raise ValueError(f"sparse_decode: target must be one of {TARGETS} or None, got {target!r}")
  _check(q, k, v, kv_idx, kv_cnt, lengths, block_k, num_splits, target)
  b, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  g = h // hkv
  scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
  if target == "gpu":
    g_pad, d_pad = _pow2_at_least(g, MIN_ROWS), _pow2_at_least(d, MIN_ROWS)
  else:
    g_pad, d_pad = _round_up(g, 8), d if hkv == 1 else _round_up(d, TPU_LANES)
  s_pad = _round_up(s, block_k)
  q_BKGD = jnp.pad(q.reshape(b, hkv, g, d), ((0, 0), (0, 0), (0, g_pad - g), (0, d_pad - d)))
  if (s_pad, d_pad) != (s, d):
    cache_pad = ((0, 0), (0, s_pad - s), (0, 0), (0, d_pad - d))
    k, v = jnp.pad(k, cache_pad), jnp.pad(v, cache_pad)
  # Clipped indices never read off the cache; repeating the last valid one past the count lets
  # the TPU pipeline skip those fetches.
  kv_idx, kv_cnt = tables.normalize(kv_idx, kv_cnt, s_pad // block_k)
  lengths = jnp.minimum(lengths.astype(jnp.int32), s)
  partials = kernel_gpu.partials if target == "gpu" else kernel_tpu.partials
  parts = partials(q_BKGD, k, v, kv_idx, kv_cnt, lengths, block_k=block_k, num_splits=num_splits,
                   scale=scale, interpret=interpret)
  o_BKGD = combine.combine(*parts)[:, :, :g, :d]
  return o_BKGD.reshape(b, h, d).astype(q.dtype)
