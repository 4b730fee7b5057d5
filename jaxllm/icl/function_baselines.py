"""Baselines for the non-linear function classes of Garg et al. (2022), at every prefix of a prompt.

Same contract as ``jaxllm.icl.baselines``: xs [B, k, d], ys [B, k] -> predictions [B, k] where
entry i is fitted on the first i pairs (entry 0 predicts 0). These wrap scikit-learn estimators,
which are fitted one prompt and one prefix at a time, so they are slow: pass few prompts.
"""

import warnings

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso


def _per_prompt(xs, ys, fit_predict, min_points=1):
  b, k, _ = xs.shape
  preds = np.zeros((b, k), np.float64)
  for j in range(b):
    for i in range(min_points, k):
      preds[j, i] = fit_predict(xs[j, :i].astype(np.float64), ys[j, :i].astype(np.float64),
                                xs[j, i:i + 1].astype(np.float64))
  return preds


def lasso(xs, ys, alpha: float):
  """Lasso without intercept: argmin_w 1/(2i) ||y - X w||^2 + alpha ||w||_1 (scikit-learn's)."""
  if alpha <= 0:
    raise ValueError(f"lasso alpha must be positive, got {alpha}")

  def fit_predict(x, y, xq):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", ConvergenceWarning)  # tiny prefixes; the fit is still usable
      model = Lasso(alpha=alpha, fit_intercept=False, max_iter=10_000).fit(x, y)
    return model.predict(xq)[0]

  return _per_prompt(xs, ys, fit_predict)


def gradient_boosting(xs, ys, *, n_estimators: int = 100, learning_rate: float = 0.1,
                      max_depth: int = 4, seed: int = 0):
  """Gradient-boosted regression trees (squared loss); predicts the context mean for one point."""
  if n_estimators < 1 or learning_rate <= 0 or max_depth < 1:
    raise ValueError(f"gradient_boosting needs n_estimators >= 1, learning_rate > 0, "
                     f"max_depth >= 1; got {n_estimators}, {learning_rate}, {max_depth}")

  def fit_predict(x, y, xq):
    if len(y) < 2:
      return y.mean()
    model = GradientBoostingRegressor(n_estimators=n_estimators, learning_rate=learning_rate,
                                      max_depth=max_depth, random_state=seed).fit(x, y)
    return model.predict(xq)[0]

  return _per_prompt(xs, ys, fit_predict)


def zero(xs, ys):
  """Always 0: the trivial predictor whose error is E y^2, the normaliser of the error curves."""
  return np.zeros(ys.shape, np.float64)
