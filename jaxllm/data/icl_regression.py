"""In-context linear regression prompts (Garg et al. 2022) with a curriculum over d and k."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Curriculum:
  """A value that grows by ``inc`` every ``interval`` steps from ``start`` up to ``end``."""
  start: int
  end: int
  inc: int = 1
  interval: int = 2000

  def __post_init__(self):
    if self.start < 1 or self.end < self.start:
      raise ValueError(f"curriculum needs 1 <= start <= end, got start={self.start}, end={self.end}")
    if self.inc < 0 or self.interval < 1:
      raise ValueError(f"curriculum needs inc >= 0 and interval >= 1, got {self.inc}, {self.interval}")

  def value(self, step: int) -> int:
    return min(self.start + self.inc * (step // self.interval), self.end)


def sample_prompts(rng: np.random.Generator, batch: int, n_points: int, n_dims: int, *,
                   active_dims: int | None = None, noise_std: float = 0.0):
  """Samples x ~ N(0, I_d), w ~ N(0, I_d), y = w.x + noise.

  With ``active_dims`` < n_dims (curriculum) the trailing coordinates of x are zero, so the task
  lives in a lower-dimensional subspace while the input width stays fixed.

  Returns:
    xs [B, k, d] float32, ys [B, k] float32, ws [B, d] float32.
  """
  active = n_dims if active_dims is None else active_dims
  if not 1 <= active <= n_dims:
    raise ValueError(f"active_dims={active_dims} must be in [1, n_dims={n_dims}]")
  xs = rng.standard_normal((batch, n_points, n_dims), dtype=np.float32)
  xs[..., active:] = 0.0
  ws = rng.standard_normal((batch, n_dims), dtype=np.float32)
  ws[:, active:] = 0.0
  ys = np.einsum("bkd,bd->bk", xs, ws)
  if noise_std:
    ys = ys + noise_std * rng.standard_normal(ys.shape, dtype=np.float32)
  return xs, ys.astype(np.float32), ws


def interleave(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
  """Token sequence x_1, (y_1, 0, ..., 0), x_2, ... of shape [B, 2k, d]; y_i is predicted at x_i."""
  b, k, d = xs.shape
  y_tok = np.zeros_like(xs)
  y_tok[..., 0] = ys
  return np.stack([xs, y_tok], axis=2).reshape(b, 2 * k, d)
