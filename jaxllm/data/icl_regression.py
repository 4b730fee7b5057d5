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


INPUT_DISTRIBUTIONS = ("gaussian", "uniform")


def sample_prompts(rng: np.random.Generator, batch: int, n_points: int, n_dims: int, *,
                   active_dims: int | None = None, noise_std: float = 0.0,
                   input_dist: str = "gaussian", input_cov_sqrt=None, task_mean=None):
  """Samples x ~ N(0, I_d), w ~ N(0, I_d), y = w.x + noise.

  With ``active_dims`` < n_dims (curriculum) the trailing coordinates of x are zero, so the task
  lives in a lower-dimensional subspace while the input width stays fixed.

  Args:
    rng: NumPy generator (x is drawn first, then w, then the noise).
    batch, n_points, n_dims: B prompts of k points (the query included) in d dimensions.
    active_dims: leading coordinates in use (all when None).
    noise_std: standard deviation of the label noise.
    input_dist: "gaussian" (x = A z, z ~ N(0, I)) or "uniform" (x ~ U(-0.5, 0.5)^d, the von
      Oswald et al. notebook's inputs).
    input_cov_sqrt: (d, d) matrix A with covariance A A^T for Gaussian inputs; identity when None.
    task_mean: (d,) mean of w (the Zhang-Frei-Bartlett task shift); zero when None.

  Returns:
    xs [B, k, d] float32, ys [B, k] float32, ws [B, d] float32.
  """
  if input_dist not in INPUT_DISTRIBUTIONS:
    raise ValueError(f"input_dist must be one of {INPUT_DISTRIBUTIONS}, got {input_dist!r}")
  for name, n in (("batch", batch), ("n_points", n_points), ("n_dims", n_dims)):
    if int(n) != n or n < 1:
      raise ValueError(f"{name} must be a positive integer, got {n}")
  active = n_dims if active_dims is None else active_dims
  if not 1 <= active <= n_dims:
    raise ValueError(f"active_dims={active_dims} must be in [1, n_dims={n_dims}]")
  if input_cov_sqrt is not None and (input_dist != "gaussian" or active != n_dims):
    raise ValueError("input_cov_sqrt applies only to input_dist='gaussian' with every dimension "
                     "active")
  shape = (batch, n_points, n_dims)
  if input_dist == "uniform":
    xs = rng.uniform(-0.5, 0.5, shape).astype(np.float32)
  else:
    xs = rng.standard_normal(shape, dtype=np.float32)
    if input_cov_sqrt is not None:
      xs = (xs @ np.asarray(input_cov_sqrt, np.float32).T).astype(np.float32)
  xs[..., active:] = 0.0
  ws = rng.standard_normal((batch, n_dims), dtype=np.float32)
  if task_mean is not None:
    ws = ws + np.asarray(task_mean, np.float32)
  ws[:, active:] = 0.0
  ys = np.einsum("bkd,bd->bk", xs, ws)
  if noise_std:
    ys = ys + noise_std * rng.standard_normal(ys.shape, dtype=np.float32)
  return xs, ys.astype(np.float32), ws


def split_query(xs, ys):
  """The context x_BND, y_BN (first k - 1 points) and the query xq_BD, yq_B (the last point)."""
  return xs[:, :-1], ys[:, :-1], xs[:, -1], ys[:, -1]


def interleave(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
  """Token sequence x_1, (y_1, 0, ..., 0), x_2, ... of shape [B, 2k, d]; y_i is predicted at x_i."""
  b, k, d = xs.shape
  y_tok = np.zeros_like(xs)
  y_tok[..., 0] = ys
  return np.stack([xs, y_tok], axis=2).reshape(b, 2 * k, d)
