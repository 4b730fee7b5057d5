"""Static configuration and small helpers shared by the forward and backward kernels."""

import dataclasses

import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

NUM_LANES = 128  # TPU vreg lane width: sequence blocks and row statistics are laid out in it
NT_DIMS = (((1,), (1,)), ((), ()))  # a @ b.T
NN_DIMS = (((1,), (0,)), ((), ()))  # a @ b


@dataclasses.dataclass(frozen=True)
class Config:
  """Static sizes of one call; hashable so it can be a ``custom_vjp`` non-diff argument.

  Attributes:
    block_q, block_k: query and key block sizes.
    t, s: unpadded query and key lengths.
    heads, kv_heads: H and Hkv.
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


def widen(x_rl, n: int):
  """[rows, NUM_LANES] lane-replicated statistics -> [rows, n] by tiling whole vregs."""
  reps = -(-n // NUM_LANES)
  return jnp.tile(x_rl, (1, reps))[:, :n]
