"""What packed rows mean for a model: loss mask, per-document positions and attention visibility.

A packed row holds several documents; ``segment_ids`` [B, T] numbers them 1, 2, ... within the row
(0 is padding), as grain's packers emit them. A model honours packing when

* token t attends to token s only if both are in the same segment (and s <= t when causal):
  ``visibility`` for dense attention, ``block_visibility`` for block-sparse tables (a (q-block,
  k-block) tile is needed only if some pair in it is visible), ``segment_starts`` for linear and
  recurrent forms (the running state is reset to zero at the first token of each document);
* positions restart at 0 at each document's first token in the row (``positions``), so RoPE and
  learned position embeddings see a document the same way wherever it was packed;
* the loss skips targets that begin a new document or are padding (``loss_mask``): the first token
  of a document is not predictable from the one before it.

Every function works on numpy and jax arrays alike (``xp`` is taken from the input).
"""

import jax
import jax.numpy as jnp
import numpy as np


def _xp(x):
  return np if isinstance(x, np.ndarray) else jnp


def segment_starts(segment_ids_BT):
  """bool [B, T]: token t is the first of its segment in the row (never true on padding)."""
  xp = _xp(segment_ids_BT)
  prev_BT = xp.concatenate([xp.zeros_like(segment_ids_BT[:, :1]), segment_ids_BT[:, :-1]], axis=1)
  return (segment_ids_BT != prev_BT) & (segment_ids_BT > 0)


def positions(segment_ids_BT):
  """int32 [B, T]: index of each token within its segment of the row (0 at starts and padding)."""
  xp = _xp(segment_ids_BT)
  t = segment_ids_BT.shape[1]
  index_BT = xp.broadcast_to(xp.arange(t, dtype=np.int32), segment_ids_BT.shape)
  start_BT = xp.where(segment_starts(segment_ids_BT), index_BT, 0)
  if xp is np:
    start_BT = np.maximum.accumulate(start_BT, axis=1)
  else:
    start_BT = jax.lax.cummax(start_BT, axis=1)
  return xp.where(segment_ids_BT > 0, index_BT - start_BT, 0).astype(np.int32)


def loss_mask(segment_ids_BT):
  """bool [B, T - 1]: target t + 1 is scored given inputs <= t (same segment, not padding)."""
  nxt = segment_ids_BT[:, 1:]
  return (nxt == segment_ids_BT[:, :-1]) & (nxt > 0)


def visibility(q_segment_ids_BT, k_segment_ids_BS=None, *, causal: bool = True):
  """bool [B, T, S]: query t may attend key s (same non-zero segment; s <= t if causal).

  Queries and keys are the same row (training, prefill) unless ``k_segment_ids_BS`` is given; with
  a causal mask the query positions are taken as the last T of the S keys.
  """
  xp = _xp(q_segment_ids_BT)
  k_segment_ids_BS = q_segment_ids_BT if k_segment_ids_BS is None else k_segment_ids_BS
  t, s = q_segment_ids_BT.shape[1], k_segment_ids_BS.shape[1]
  vis_BTS = ((q_segment_ids_BT[:, :, None] == k_segment_ids_BS[:, None, :])
             & (q_segment_ids_BT[:, :, None] > 0))
  if causal:
    q_pos_T = xp.arange(t) + (s - t)
    vis_BTS = vis_BTS & (xp.arange(s)[None, :] <= q_pos_T[:, None])[None]
  return vis_BTS


def block_visibility(segment_ids_BT, block_q: int, block_k: int, *, causal: bool = True):
  """bool [B, T / block_q, T / block_k]: tiles holding at least one visible (query, key) pair."""
  b, t = segment_ids_BT.shape
  if t % block_q or t % block_k:
    raise ValueError(f"sequence length {t} must be a multiple of block_q={block_q} and "
                     f"block_k={block_k}")
  vis_BTS = visibility(segment_ids_BT, causal=causal)
  tiles = vis_BTS.reshape(b, t // block_q, block_q, t // block_k, block_k)
  return tiles.any(axis=(2, 4))
