"""Linear in-context estimators as weights at every prefix, and the comparison metrics of Akyurek
et al. (2022).

A linear in-context estimator maps the first k pairs of a prompt to a weight vector w_k and predicts
y at the next x as w_k . x. Two predictors f and g of the same prompts are compared by

  SPD(f, g)  = mean over prompts of (f(x_k) - g(x_k))^2           (squared prediction difference)
  ILWD(f, g) = mean over prompts of ||w_f,k - w_g,k||^2          (implicit linear weight difference)

at each context length k. A predictor that is not linear in the query (a transformer) gets an
implicit weight: the least-squares linear fit (no intercept, like every estimator compared) to its
predictions at many probe queries that follow the same k context pairs.

Arrays: xs [B, K, d], ys [B, K]; weights [B, K, d] where entry k is fitted on the first k pairs
(entry 0 sees no pair and is zero).
"""

import jax
import numpy as np

from jaxllm.icl import gd


def weights_by_prefix(xs, ys, fit):
  """Weights [B, K, d] of ``fit(x_BND, y_BN) -> w_BD`` applied to every prefix of the prompts."""
  xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
  if xs.ndim != 3 or ys.shape != xs.shape[:2]:
    raise ValueError(f"need xs [B, K, d] and ys [B, K], got {xs.shape} and {ys.shape}")
  w_BKD = np.zeros(xs.shape, np.float64)
  for k in range(1, xs.shape[1]):
    w_BKD[:, k] = np.asarray(fit(xs[:, :k], ys[:, :k]), np.float64)
  return w_BKD


def predictions(xs, w_BKD):
  """Predictions [B, K] w_k . x_k of weights from ``weights_by_prefix`` on the same prompts."""
  return np.einsum("bkd,bkd->bk", np.asarray(xs, np.float64), w_BKD)


def _prefix_moments(xs, ys):
  """C_k = (1/k) sum_{i<k} x_i x_i^T [B, K, d, d] and b_k = (1/k) sum_{i<k} y_i x_i [B, K, d]."""
  xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
  if xs.ndim != 3 or ys.shape != xs.shape[:2]:
    raise ValueError(f"need xs [B, K, d] and ys [B, K], got {xs.shape} and {ys.shape}")
  count_K = np.maximum(np.arange(xs.shape[1]), 1)[None, :, None]
  outer_BKDD = np.einsum("bkd,bke->bkde", xs, xs)
  c_BKDD = np.concatenate([np.zeros_like(outer_BKDD[:, :1]),
                           np.cumsum(outer_BKDD, axis=1)[:, :-1]], axis=1) / count_K[..., None]
  yx_BKD = xs * ys[..., None]
  b_BKD = np.concatenate([np.zeros_like(yx_BKD[:, :1]), np.cumsum(yx_BKD, axis=1)[:, :-1]],
                         axis=1) / count_K
  return c_BKDD, b_BKD


def _gd_steps(c_BKDD, b_BKD, rates_GK, num_steps: int):
  """Weights [G, B, K, d] of ``gd.gd_weights_from_moments`` from the prefix moments, for G rate
  rows, in float64 (diverging rates come back non-finite and are scored as inf)."""
  with jax.enable_x64(True):
    w_GBKD = gd.gd_weights_from_moments(np.asarray(c_BKDD, np.float64)[None],
                                        np.asarray(b_BKD, np.float64)[None],
                                        np.asarray(rates_GK, np.float64)[:, None, :], num_steps)
    return np.asarray(w_GBKD, np.float64)


def gd_weights_by_prefix(xs, ys, rates_K, num_steps: int):
  """Weights [B, K, d] of ``num_steps`` GD steps from zero on every prefix, rate rates_K[k] at k.

  The iteration of ``gd.gd_weights`` (loss 1/(2k) sum_i (w.x_i - y_i)^2 on the first k pairs, so
  the gradient is C_k w - b_k), run for every prefix at once without one compile per length.
  """
  rates_K = np.asarray(rates_K, np.float64)
  if rates_K.shape != (np.shape(xs)[1],):
    raise ValueError(f"rates_K needs one rate per context length ({np.shape(xs)[1]}), got "
                     f"shape {rates_K.shape}")
  return _gd_steps(*_prefix_moments(xs, ys), rates_K[None], num_steps)[0]


def tune_gd_rates(xs, ys, num_steps: int, max_rate: float = 2.0, grid_points: int = 41):
  """Per context length k, the step size minimising the mean squared query error of
  ``num_steps`` GD steps from zero on the first k pairs (use prompts kept apart from the test ones).

  A grid over [0, max_rate] (GD on the normalised loss diverges past 2 / lambda_max, and
  lambda_max >= 1 on average) and then a finer grid around each k's best point; every k and rate
  is searched in one pass, where ``gd.best_gd_rate`` would compile and search once per k.

  Returns:
    rates [K] (entry 0 is 0: no pair, nothing to step on).
  """
  if not max_rate > 0 or grid_points < 3:
    raise ValueError(f"need max_rate > 0 and grid_points >= 3, got {max_rate}, {grid_points}")
  xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
  c_BKDD, b_BKD = _prefix_moments(xs, ys)

  def best(grid_GK):
    w_GBKD = _gd_steps(c_BKDD, b_BKD, grid_GK, num_steps)
    with np.errstate(over="ignore", invalid="ignore"):
      err_GK = ((np.einsum("gbkd,bkd->gbk", w_GBKD, xs) - ys) ** 2).mean(axis=1)
    err_GK = np.where(np.isfinite(err_GK), err_GK, np.inf)
    return np.take_along_axis(grid_GK, np.argmin(err_GK, axis=0)[None], 0)[0]

  coarse_G = np.linspace(0.0, max_rate, grid_points)
  best_K = best(np.repeat(coarse_G[:, None], xs.shape[1], 1))
  offsets_G = np.linspace(-coarse_G[1], coarse_G[1], grid_points)
  rates_K = best(np.clip(best_K[None, :] + offsets_G[:, None], 0.0, max_rate))
  rates_K[0] = 0.0
  return rates_K


def implicit_weights(predict_fn, xs, ys, probes_PD, max_rows: int = 65536):
  """Implicit linear weights [B, K, d] of a predictor at every context length.

  For each prompt and k, the predictor sees the first k pairs followed by each probe query; the
  weight is the least-squares fit w minimising sum_p (w . q_p - f(q_p))^2.

  Args:
    predict_fn: ``predict_fn(xs, ys) -> [B, K]`` predictions of y_k from the first k pairs at x_k
      (causal: entry k may not depend on x_j, y_j for j > k or on y_k).
    xs, ys: the contexts [B, K, d], [B, K].
    probes_PD: P >= d probe queries, shared by every prompt and k.
    max_rows: at most this many probed prompts go to one ``predict_fn`` call (whole k at a time).

  Returns:
    w [B, K, d].
  """
  xs, ys = np.asarray(xs), np.asarray(ys)
  q_in = np.asarray(probes_PD).astype(xs.dtype)  # the fit uses the probes the predictor sees
  q = q_in.astype(np.float64)
  b, num_k, d = xs.shape
  if q.ndim != 2 or q.shape[1] != d or q.shape[0] < d:
    raise ValueError(f"probes_PD must be [P, d={d}] with P >= d, got {q.shape}")
  if np.linalg.matrix_rank(q) < d:
    raise ValueError("probes_PD must span R^d (rank d) for the linear fit to be unique")
  pinv_DP = np.linalg.pinv(q)
  num_p = len(q)
  xs_rep, ys_rep = np.repeat(xs, num_p, axis=0), np.repeat(ys, num_p, axis=0)  # row b * P + p
  per_call = max(1, int(max_rows) // (b * num_p))
  w_BKD = np.zeros((b, num_k, d), np.float64)
  for start in range(0, num_k, per_call):
    ks = range(start, min(start + per_call, num_k))
    xs_t = np.concatenate([xs_rep] * len(ks))  # one block of prompts per k, probe at position k
    for i, k in enumerate(ks):
      xs_t[i * b * num_p:(i + 1) * b * num_p, k] = np.tile(q_in, (b, 1))
    f = np.asarray(predict_fn(xs_t, np.concatenate([ys_rep] * len(ks))), np.float64)
    for i, k in enumerate(ks):
      w_BKD[:, k] = f[i * b * num_p:(i + 1) * b * num_p, k].reshape(b, num_p) @ pinv_DP.T
  return w_BKD


def spd(preds_a_BK, preds_b_BK):
  """Squared prediction difference [K]: mean over prompts of (f - g)^2 at every context length."""
  a, b = np.asarray(preds_a_BK, np.float64), np.asarray(preds_b_BK, np.float64)
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f"need two [B, K] prediction arrays of one shape, got {a.shape}, {b.shape}")
  return ((a - b) ** 2).mean(axis=0)


def ilwd(w_a_BKD, w_b_BKD):
  """Implicit linear weight difference [K]: mean over prompts of ||w_a - w_b||^2 at every k."""
  a, b = np.asarray(w_a_BKD, np.float64), np.asarray(w_b_BKD, np.float64)
  if a.shape != b.shape or a.ndim != 3:
    raise ValueError(f"need two [B, K, d] weight arrays of one shape, got {a.shape}, {b.shape}")
  return ((a - b) ** 2).sum(axis=-1).mean(axis=0)
