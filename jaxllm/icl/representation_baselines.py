"""Baselines for in-context learning with a fixed representation (Guo et al. 2023).

Prompts are y = w . Phi(x) / sqrt(D) + N(0, sigma^2) with Phi a fixed map to R^D known to the
baseline and w ~ N(0, I_D) fresh per prompt (``jaxllm.data.icl_functions.representation``). The
rescaled weights w / sqrt(D) have prior N(0, I / D), so the posterior mean of y at a new x is ridge
regression on the features Phi(x) with lambda = D sigma^2; for sigma = 0 it is the limit lambda ->
0, the minimum-norm least-squares fit on the features. Same contract as ``jaxllm.icl.baselines``: xs
[B, k, d], ys [B, k] -> predictions [B, k], entry i fitted on the first i pairs.
"""

import numpy as np

from jaxllm.data.icl_functions import apply_mlp
from jaxllm.icl import baselines


def bayes_ridge_lambda(out_dim: int, noise_std: float) -> float:
  """The ridge penalty D sigma^2 whose fit is the posterior mean under the 1 / sqrt(D) scaling."""
  if out_dim < 1 or noise_std < 0:
    raise ValueError(f"need out_dim >= 1 and noise_std >= 0, got {out_dim}, {noise_std}")
  return float(out_dim) * float(noise_std) ** 2


def ridge_on_features(feats, ys, noise_std: float):
  """Bayes-optimal predictions [B, k] from features feats [B, k, D] (Phi(x) at each point)."""
  lam = bayes_ridge_lambda(feats.shape[-1], noise_std)
  if lam == 0:
    return baselines.least_squares(feats, ys)
  return baselines.ridge(feats, ys, lam)


def ridge_on_representation(phi, xs, ys, noise_std: float):
  """``ridge_on_features`` on Phi(xs), with Phi the weight list of ``random_mlp``."""
  return ridge_on_features(apply_mlp(phi, xs), ys, noise_std)


def least_squares_affine(xs, ys):
  """Minimum-norm least squares on (x, 1): the best raw-x predictor that may also fit an offset."""
  ones = np.ones(xs.shape[:-1] + (1,), xs.dtype)
  return baselines.least_squares(np.concatenate([xs, ones], axis=-1), ys)
