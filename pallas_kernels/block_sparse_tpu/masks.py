"""Elementwise visibility inside one (query block, key block) tile, computed in the kernel."""

import jax
import jax.numpy as jnp


def tile_visible(q_block, k_block, cfg, *, keys_first=False):
  """Boolean tile, True where the query may see the key; None when every entry is visible.

  Queries are the last ``t`` of the ``s`` key positions; keys at or past ``s`` are padding. Rules
  match ``pallas_kernels.block_sparse.reference.position_mask``.

  Args:
    q_block, k_block: traced block indices.
    cfg: the call's :class:`Config` (block sizes, lengths, causal, window, sinks).
    keys_first: lay the tile out [block_k, block_q] (the dk/dv kernel's orientation) instead of
      [block_q, block_k].
  """
  block_q, block_k, t, s = cfg.block_q, cfg.block_k, cfg.t, cfg.s
  key_padding = s % block_k != 0
  if not (cfg.causal or key_padding or cfg.window is not None):
    return None
  shape = (block_k, block_q) if keys_first else (block_q, block_k)
  q_axis, k_axis = (1, 0) if keys_first else (0, 1)
  q_pos = q_block * block_q + jax.lax.broadcasted_iota(jnp.int32, shape, q_axis) + (s - t)
  k_pos = k_block * block_k + jax.lax.broadcasted_iota(jnp.int32, shape, k_axis)
  ok = k_pos < s
  if cfg.causal:
    ok &= k_pos <= q_pos
  if cfg.window is not None:
    diff = q_pos - k_pos
    near = diff < cfg.window if cfg.causal else (diff < cfg.window) & (-diff < cfg.window)
    ok &= near | (k_pos < cfg.sinks)
  return ok
