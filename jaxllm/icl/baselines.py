"""Classical in-context regressors, evaluated at every prefix of a prompt.

Each function takes xs [B, k, d] and ys [B, k] and returns predictions [B, k] where entry i predicts
y_i from the first i pairs (entry 0 sees no example and predicts 0).
"""

import numpy as np


def by_prefix(xs, ys, fit):
  """Predictions [B, k] of ``fit(x [B, i, d], y [B, i]) -> w [B, d]`` fitted on each prefix of
  i < k pairs and applied to x_i (entry 0 stays 0)."""
  b, k, _ = xs.shape
  preds = np.zeros((b, k), np.float64)
  for i in range(1, k):
    w = fit(xs[:, :i].astype(np.float64), ys[:, :i].astype(np.float64))  # [B, d]
    preds[:, i] = np.einsum("bd,bd->b", xs[:, i], w)
  return preds


def least_squares_weights(x_BND, y_BN):
  """Minimum-norm least squares w = X^+ y [B, d] (the pseudo-inverse solution)."""
  return np.einsum("bdn,bn->bd", np.linalg.pinv(np.asarray(x_BND, np.float64)),
                   np.asarray(y_BN, np.float64))


def ridge_weights(x_BND, y_BN, lam: float):
  """w = (X^T X + lam I)^-1 X^T y [B, d]: the posterior mean for w ~ N(0, I) and noise variance
  lam."""
  if not lam > 0:
    raise ValueError(f"ridge lam must be positive, got {lam}")
  x = np.asarray(x_BND, np.float64)
  gram_BDD = np.einsum("bnd,bne->bde", x, x) + lam * np.eye(x.shape[-1])
  xty_BD = np.einsum("bnd,bn->bd", x, np.asarray(y_BN, np.float64))
  return np.linalg.solve(gram_BDD, xty_BD[..., None])[..., 0]


def least_squares(xs, ys):
  """Minimum-norm least squares on each prefix (interpolates while i < d)."""
  return by_prefix(xs, ys, least_squares_weights)


def ridge(xs, ys, lam: float):
  """Ridge regression on each prefix (Bayes-optimal for noise variance lam)."""
  if not lam > 0:
    raise ValueError(f"ridge lam must be positive, got {lam}")
  return by_prefix(xs, ys, lambda x, y: ridge_weights(x, y, lam))


def averaging(xs, ys):
  """w = mean_i y_i x_i (one step of gradient descent from zero, up to scale)."""
  return by_prefix(xs, ys, lambda x, y: np.einsum("bid,bi->bd", x, y) / x.shape[1])


def nearest_neighbours(xs, ys, n_neighbours: int = 3):
  """Mean y of the ``n_neighbours`` closest previous x (all of them while fewer exist)."""
  if n_neighbours < 1:
    raise ValueError(f"n_neighbours must be >= 1, got {n_neighbours}")
  b, k, _ = xs.shape
  preds = np.zeros((b, k), np.float64)
  for i in range(1, k):
    dist = np.linalg.norm(xs[:, :i] - xs[:, i:i + 1], axis=-1)  # [B, i]
    m = min(n_neighbours, i)
    idx = np.argsort(dist, axis=1, kind="stable")[:, :m]
    preds[:, i] = np.take_along_axis(ys[:, :i], idx, axis=1).mean(axis=1)
  return preds


def squared_error(preds, ys, normalizer: float = 1.0):
  """Mean over prompts of the squared error at each position, divided by ``normalizer``."""
  return ((preds - ys) ** 2).mean(axis=0) / normalizer
