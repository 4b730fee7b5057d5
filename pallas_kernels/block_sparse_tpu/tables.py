"""Key-block tables in plain JAX: normalising the forward table and transposing it for dk/dv.

The forward table lists, per (batch, head, query block), the key blocks to visit: ``kv_idx``
[B, H, nq, max_blocks] with ``kv_cnt`` [B, H, nq] leading entries valid. The dk/dv pass walks the
other way, per (batch, kv head, key block), over the (query head, query block) pairs that list it.
"""

import jax.numpy as jnp

from pallas_kernels.block_sparse import masks
from pallas_kernels.block_sparse_tpu.config import Config


def normalize(kv_idx, kv_cnt, num_kv_blocks: int):
  """Clips the table into range and repeats the last valid index past the count.

  Repeating the index makes the skipped grid steps ask for the block already in VMEM, so the
  pipeline issues no DMA for them; clipping keeps a malformed table from reading out of bounds.

  Returns:
    (kv_idx, kv_cnt) int32 with the shapes of the inputs.
  """
  max_blocks = kv_idx.shape[-1]
  cnt = jnp.clip(kv_cnt.astype(jnp.int32), 0, max_blocks)
  idx = jnp.clip(kv_idx.astype(jnp.int32), 0, num_kv_blocks - 1)
  last = jnp.take_along_axis(idx, jnp.maximum(cnt - 1, 0)[..., None], axis=-1)
  valid = jnp.arange(max_blocks, dtype=jnp.int32) < cnt[..., None]
  return jnp.where(valid, idx, last), cnt


def transpose(kv_idx, kv_cnt, cfg: Config):
  """For each (batch, kv head, key block), the (query head in group, query block) pairs using it.

  Args:
    kv_idx: [B, H, nq, max_blocks] normalised key-block indices.
    kv_cnt: [B, H, nq] valid counts.
    cfg: static sizes; query head h belongs to kv head h // (H // Hkv).

  Returns:
    q_idx [B, Hkv, nk, g * nq] int32 with entries e = head_in_group * nq + query_block in
    ascending order, padded by repeating the last valid entry; q_cnt [B, Hkv, nk] int32.
  """
  b, h, nq, _ = kv_idx.shape
  g, hk, nk = cfg.group, cfg.kv_heads, cfg.num_kv_blocks
  table = masks.BlockTable(kv_idx, kv_cnt, cfg.block_q, cfg.block_k)
  hit = masks.block_mask(table, nk).reshape(b, hk, g, nq, nk)
  hit = hit.transpose(0, 1, 4, 2, 3).reshape(b, hk, nk, g * nq)
  q_cnt = hit.sum(-1, dtype=jnp.int32)
  order = jnp.argsort(~hit, axis=-1, stable=True).astype(jnp.int32)
  last = jnp.take_along_axis(order, jnp.maximum(q_cnt - 1, 0)[..., None], axis=-1)
  q_idx = jnp.where(jnp.arange(g * nq) < q_cnt[..., None], order, last)
  return q_idx, q_cnt
