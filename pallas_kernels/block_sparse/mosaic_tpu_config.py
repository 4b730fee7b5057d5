"""Static configuration of the Mosaic kernels, and their per-tile math (cap, visibility)."""

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxllm.attention.masks import visible_pairs
from pallas_kernels.block_sparse import masks


@dataclasses.dataclass(frozen=True)
class Config:
  """Static sizes of one call; hashable so it can be a ``custom_vjp`` non-diff argument.

  Attributes:
    block_q, block_k: query and key block sizes.
    t, s: unpadded query and key lengths.
    heads, kv_heads: H and K.
    causal: queries are the last t of the s positions and see keys at or before them.
    scale: logit multiplier.
    window: element-wise sliding window inside listed blocks (None: off).
    sinks: with a window, the first ``sinks`` keys stay visible.
    softcap: tanh logit cap (None: off).
    interpret: False on TPU; True for the generic Pallas interpreter; a
      ``pltpu.InterpretParams`` for the TPU interpreter, which also simulates VMEM and DMAs.
  """
  block_q: int
  block_k: int
  t: int
  s: int
  heads: int
  kv_heads: int
  causal: bool
  scale: float
  window: int | None
  sinks: int
  softcap: float | None
  interpret: bool | pltpu.InterpretParams

  @property
  def group(self) -> int:
    return self.heads // self.kv_heads

  @property
  def num_q_blocks(self) -> int:
    return -(-self.t // self.block_q)

  @property
  def num_kv_blocks(self) -> int:
    return -(-self.s // self.block_k)

  @property
  def masks_anything(self) -> bool:
    """Whether any tile needs an element mask (else every block is full)."""
    return self.causal or self.window is not None or self.s % self.block_k != 0

  def full(self, q_block, k_block):
    """Traced scalar: the tile needs no element mask."""
    return masks.block_is_full(q_block, k_block, seq_q=self.t, seq_k=self.s, block_q=self.block_q,
                               block_k=self.block_k, causal=self.causal, window=self.window,
                               sinks=self.sinks)


def table_index_maps(cfg: Config, max_blocks: int):
  """Index maps of the (B, H, nq, max_blocks) grid walking the scalar-prefetched table.

  Returns (q_map, row_map, kv_map): the query tile, the [1, block_q] row statistics, and the key
  block listed at slot j (the kv head of query head h is h // group).
  """
  nq, g, h = cfg.num_q_blocks, cfg.group, cfg.heads

  def q_map(bi, hi, i, j, idx, cnt):
    del j, idx, cnt
    return bi, hi, i, 0

  def row_map(bi, hi, i, j, idx, cnt):
    del j, idx, cnt
    return bi, hi, 0, i

  def kv_map(bi, hi, i, j, idx, cnt):
    del cnt
    return bi, jax.lax.div(hi, g), idx[((bi * h + hi) * nq + i) * max_blocks + j], 0

  return q_map, row_map, kv_map


def cap(cfg: Config, logits):
  """Scaled and (optionally) soft-capped logits, float32."""
  logits = logits * cfg.scale
  return logits if cfg.softcap is None else cfg.softcap * jnp.tanh(logits / cfg.softcap)


def uncap_grad(cfg: Config, ds, capped):
  """Chain rule through the cap: d(c tanh(x / c)) / dx = 1 - tanh^2, with tanh = capped / c."""
  if cfg.softcap is None:
    return ds
  t = capped / cfg.softcap
  return ds * (1.0 - t * t)


def tile_visible(q_block, k_block, cfg: Config, *, keys_first=False):
  """Boolean tile, True where the query may see the key (``jaxllm.attention.masks`` rule).

  Queries are the last ``t`` of the ``s`` key positions; keys at or past ``s`` are padding.

  Args:
    q_block, k_block: traced block indices.
    cfg: the call's :class:`Config`; ``cfg.masks_anything`` must hold.
    keys_first: lay the tile out [block_k, block_q] (the dk/dv kernel's orientation) instead of
      [block_q, block_k].
  """
  block_q, block_k, t, s = cfg.block_q, cfg.block_k, cfg.t, cfg.s
  shape = (block_k, block_q) if keys_first else (block_q, block_k)
  q_axis, k_axis = (1, 0) if keys_first else (0, 1)
  q_pos = q_block * block_q + jax.lax.broadcasted_iota(jnp.int32, shape, q_axis) + (s - t)
  k_pos = k_block * block_k + jax.lax.broadcasted_iota(jnp.int32, shape, k_axis)
  ok = k_pos < s
  if cfg.causal or cfg.window is not None:
    ok &= visible_pairs(q_pos, k_pos, causal=cfg.causal, window=cfg.window, sinks=cfg.sinks)
  return ok


def when_full_or_masked(cfg: Config, live, q_block, k_block, step):
  """Runs ``step(masked)`` where ``live``: unmasked on full tiles, masked on the rest."""
  if not cfg.masks_anything:
    pl.when(live)(lambda: step(False))
    return
  full = cfg.full(q_block, k_block)
  pl.when(live & full)(lambda: step(False))
  pl.when(live & jnp.logical_not(full))(lambda: step(True))
