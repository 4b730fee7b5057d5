"""Bayes-optimal (posterior-mean) in-context regressors for Gaussian-mixture weight priors.

A prior sum_j pi_j N(m_j, C_j) on w with y = w.x + N(0, sigma^2) covers every linear family of the
Bayesian-prism study: a dense Gaussian is one component, an s-sparse Gaussian is one component per
support (C_j = diag(1_S)), sign vectors are point masses (C_j = 0), and a mixture of families is the
union of their components. Conditioned on a prefix, each component stays Gaussian with marginal
likelihood y ~ N(X m_j, X C_j X^T + sigma^2 I), so the posterior mean is the posterior-weighted
average of per-component Gaussian posterior means.
"""

import itertools

import numpy as np


def dense_prior(n_dims: int, scale: float = 1.0):
  """w ~ N(0, scale^2 I) as (weights [1], means [1, d], covs [1, d, d])."""
  return np.ones(1), np.zeros((1, n_dims)), scale**2 * np.eye(n_dims)[None]


def sparse_prior(n_dims: int, sparsity: int):
  """Support uniform over the s-subsets, nonzero entries N(0, 1): one component per support."""
  if not 1 <= sparsity <= n_dims:
    raise ValueError(f"sparsity must be in [1, n_dims={n_dims}], got {sparsity}")
  supports = list(itertools.combinations(range(n_dims), sparsity))
  covs = np.zeros((len(supports), n_dims, n_dims))
  for j, s in enumerate(supports):
    covs[j, list(s), list(s)] = 1.0
  return np.full(len(supports), 1.0 / len(supports)), np.zeros((len(supports), n_dims)), covs


def sign_prior(n_dims: int):
  """w uniform on {-1, +1}^d: 2^d point masses."""
  means = np.array(list(itertools.product((-1.0, 1.0), repeat=n_dims)))
  return np.full(len(means), 1.0 / len(means)), means, np.zeros((len(means), n_dims, n_dims))


def mix_priors(priors, mix_weights):
  """The prior sum_f mix_weights[f] * priors[f] as one list of components."""
  mix_weights = np.asarray(mix_weights, np.float64)
  if len(priors) != len(mix_weights) or np.any(mix_weights < 0) or mix_weights.sum() <= 0:
    raise ValueError(f"mix_weights must be {len(priors)} non-negative numbers, got {mix_weights}")
  mix_weights = mix_weights / mix_weights.sum()
  return (np.concatenate([m * p[0] for m, p in zip(mix_weights, priors)]),
          np.concatenate([p[1] for p in priors]), np.concatenate([p[2] for p in priors]))


def posterior_mean_weights(x_BND, y_BN, prior, noise_std: float):
  """E[w | the N pairs] [B, d] and the component posterior [B, J]."""
  if noise_std <= 0:
    raise ValueError(f"noise_std must be positive (point-mass priors need noise), got {noise_std}")
  pis, m_JD, c_JDD = prior
  x = np.asarray(x_BND, np.float64)
  y = np.asarray(y_BN, np.float64)
  b, n, _ = x.shape
  if n == 0:
    return np.tile(pis @ m_JD, (b, 1)), np.tile(pis, (b, 1))
  xc_BJND = np.einsum("bnd,jde->bjne", x, c_JDD)
  k_BJNN = np.einsum("bjnd,bmd->bjnm", xc_BJND, x) + noise_std**2 * np.eye(n)
  resid_BJN = y[:, None, :] - np.einsum("bnd,jd->bjn", x, m_JD)
  chol = np.linalg.cholesky(k_BJNN)
  alpha_BJN = np.linalg.solve(k_BJNN, resid_BJN[..., None])[..., 0]
  logdet_BJ = 2 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
  loglik_BJ = -0.5 * (np.einsum("bjn,bjn->bj", resid_BJN, alpha_BJN) + logdet_BJ)
  logpost_BJ = loglik_BJ + np.log(pis)
  post_BJ = np.exp(logpost_BJ - logpost_BJ.max(axis=1, keepdims=True))
  post_BJ /= post_BJ.sum(axis=1, keepdims=True)
  w_BJD = m_JD[None] + np.einsum("bjnd,bjn->bjd", xc_BJND, alpha_BJN)
  return np.einsum("bj,bjd->bd", post_BJ, w_BJD), post_BJ


def posterior_mean(xs, ys, prior, noise_std: float):
  """Predictions [B, k]: entry i is x_i . E[w | first i pairs] (entry 0 uses the prior mean)."""
  b, k, _ = xs.shape
  preds = np.zeros((b, k), np.float64)
  for i in range(k):
    w_BD, _ = posterior_mean_weights(xs[:, :i], ys[:, :i], prior, noise_std)
    preds[:, i] = np.einsum("bd,bd->b", xs[:, i], w_BD)
  return preds
