"""The dk/dv walk of the Mosaic kernels: the forward table inverted, in plain JAX.

The forward table lists, per (batch, head, query block), the key blocks to visit: ``kv_idx``
[B, H, nq, max_blocks] with ``kv_cnt`` [B, H, nq] leading entries valid. The dk/dv pass walks the
other way, per (batch, kv head), key block by key block over the (query head, query block) pairs
that list it.
"""

import jax
import jax.numpy as jnp

from pallas_kernels.block_sparse.mosaic_tpu_config import Config


FIRST, COMPUTE, LAST = 1, 2, 4  # step flags of the dk/dv walk


def key_block_runs(kv_idx, kv_cnt, cfg: Config):
  """The dk/dv walk: per (batch, kv head), all (key block, query entry) pairs, by key block.

  Each key block gets one run of consecutive steps: a step per (query head in group, query
  block) that lists it, then a closing step that writes its dk/dv (so blocks nobody lists are
  written as zeros). The walk has a static length, g * nq * max_blocks + nk, the size of the
  forward table plus one step per key block; the unused tail repeats the last step with no flags.
  Steps that compute nothing carry the previous step's indices, so they fetch nothing.

  Args:
    kv_idx: [B, H, nq, max_blocks] normalised key-block indices.
    kv_cnt: [B, H, nq] valid counts.
    cfg: static sizes; query head h belongs to kv head h // (H // Hkv).

  Returns:
    (kb, entry, flags), int32 [B, Hkv, g * nq * max_blocks + nk] each: the key block, the query
    entry ``head_in_group * nq + query_block``, and FIRST | COMPUTE | LAST bits.
  """
  b, h, nq, max_blocks = kv_idx.shape
  g, hk, nk = cfg.group, cfg.kv_heads, cfg.num_kv_blocks
  width = g * nq + 1  # sort key kb * width + entry; entry g * nq is the closing step
  unused = jnp.iinfo(jnp.int32).max
  valid = jnp.arange(max_blocks) < kv_cnt[..., None]
  entry = (jnp.arange(h) % g)[:, None, None] * nq + jnp.arange(nq)[:, None]  # [H, nq, 1]
  pairs = jnp.where(valid, kv_idx * width + entry, unused).reshape(b, hk, g * nq * max_blocks)
  closing = jnp.broadcast_to(jnp.arange(nk, dtype=jnp.int32) * width + (width - 1), (b, hk, nk))
  keys = jnp.sort(jnp.concatenate([pairs, closing], axis=-1), axis=-1)
  used = keys != unused
  kb, entry = keys // width, keys % width
  close = used & (entry == width - 1)
  compute = used & ~close
  prev_kb = jnp.concatenate([jnp.full_like(kb[..., :1], -1), kb[..., :-1]], axis=-1)
  first = used & (kb != prev_kb)
  flags = first * FIRST + compute * COMPUTE + close * LAST
  return _carry_forward(kb, used), _carry_forward(entry, compute), flags.astype(jnp.int32)


def _carry_forward(x, keep):
  """x where ``keep``, else the last kept value before it on the last axis (0 if none yet)."""
  pos = jnp.arange(x.shape[-1], dtype=jnp.int32)
  src = jax.lax.cummax(jnp.where(keep, pos, -1), axis=x.ndim - 1)
  return jnp.where(src >= 0, jnp.take_along_axis(x, jnp.maximum(src, 0), axis=-1), 0)
