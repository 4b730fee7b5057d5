"""Bayesian-prism task families: regression prompts whose weights come from a named prior.

Linear families: ``dense`` (N(0, I)), ``sparse`` (s-sparse, N(0, 1) entries), ``sign``
({-1, +1}^d), and any ``+``-joined mixture of them with equal weights (e.g. ``dense+sparse``).
Feature families are linear in fixed features phi(x) of the input:

* ``fourier``: scalar x ~ U(-L, L), f(x) = a_0 + sum_{n <= N} a_n cos(n pi x / L) +
  b_n sin(n pi x / L) with coefficients N(0, 1) and the maximum frequency N uniform on
  1..max_freq per prompt, itself a mixture (one Gaussian component per N);
* ``monomial``: x ~ N(0, I_d), f(x) = sum_{(i, j) in S} w_ij x_i x_j over a fixed random set S of
  degree-2 monomials, w ~ N(0, I).

The same prior object drives the sampler and the posterior-mean baseline in
``jaxllm.icl.posterior`` (applied to phi(x) for the feature families).

``lowrank`` is linear in x ~ N(0, I_d) with w = vec(W), W a sqrt(d) x sqrt(d) matrix of rank r.
Its prior is not a Gaussian mixture and its posterior mean has no closed form, so its Family has
no ``prior`` but its own weight sampler; the study compares it with nuclear-norm minimisation
(``jaxllm.icl.low_rank``). Feature families and ``lowrank`` train on their own, never in mixtures.
"""

import dataclasses
from typing import Callable

import numpy as np

from jaxllm.icl import low_rank, posterior

FAMILIES = ("dense", "sparse", "sign")
FEATURE_FAMILIES = ("fourier", "monomial")
LOWRANK = "lowrank"
SOLO_FAMILIES = FEATURE_FAMILIES + (LOWRANK,)


def make_prior(name: str, n_dims: int, sparsity: int):
  """Gaussian-mixture prior (weights [J], means [J, d], covs [J, d, d]) for a family name."""
  parts = name.split("+")
  bad = [p for p in parts if p not in FAMILIES]
  if bad or not name:
    raise ValueError(f"task prior {name!r}: unknown families {bad}; allowed: {list(FAMILIES)} "
                     f"joined by '+', or one of {list(SOLO_FAMILIES)} alone (via make_family)")
  build = {"dense": lambda: posterior.dense_prior(n_dims),
           "sparse": lambda: posterior.sparse_prior(n_dims, sparsity),
           "sign": lambda: posterior.sign_prior(n_dims)}
  if len(parts) == 1:
    return build[parts[0]]()
  return posterior.mix_priors([build[p]() for p in parts], np.ones(len(parts)))


def sample_weights(rng: np.random.Generator, prior, batch: int) -> np.ndarray:
  """w [B, d] drawn from the mixture prior."""
  pis, m_JD, c_JDD = prior
  j_B = rng.choice(len(pis), size=batch, p=pis)
  evals, evecs = np.linalg.eigh(c_JDD[j_B])  # covariances may be singular (sparse, sign)
  root_BDD = evecs * np.sqrt(np.clip(evals, 0, None))[:, None, :]
  return m_JD[j_B] + np.einsum("bde,be->bd", root_BDD, rng.standard_normal(m_JD[j_B].shape))


def sample_prompts(rng: np.random.Generator, prior, batch: int, n_points: int, noise_std: float):
  """xs [B, k, d] ~ N(0, I), ys [B, k] = w.x + N(0, noise_std^2), and the weights w [B, d]."""
  w_BD = sample_weights(rng, prior, batch)
  xs = rng.standard_normal((batch, n_points, w_BD.shape[1]))
  ys = np.einsum("bkd,bd->bk", xs, w_BD) + noise_std * rng.standard_normal((batch, n_points))
  return xs.astype(np.float32), ys.astype(np.float32), w_BD


def fourier_features(x_BK1, max_freq: int, half_period: float) -> np.ndarray:
  """[1, cos(n pi x / L), sin(n pi x / L) for n = 1..max_freq]: [B, k, 2 max_freq + 1]."""
  arg = np.pi * np.asarray(x_BK1, np.float64) / half_period * np.arange(1, max_freq + 1)
  ones = np.ones(arg.shape[:-1] + (1,))
  return np.concatenate([ones, np.cos(arg), np.sin(arg)], axis=-1)


def fourier_prior(max_freq: int):
  """Uniform mixture over N = 1..max_freq of N(0, diag(1 on the frequencies <= N))."""
  if max_freq < 1:
    raise ValueError(f"task.max_freq must be >= 1, got {max_freq}")
  f = 2 * max_freq + 1
  covs = np.zeros((max_freq, f, f))
  for j in range(max_freq):
    keep = np.r_[0, 1 + np.arange(j + 1), 1 + max_freq + np.arange(j + 1)]
    covs[j, keep, keep] = 1.0
  return np.full(max_freq, 1.0 / max_freq), np.zeros((max_freq, f)), covs


def monomial_pairs(seed: int, n_dims: int, count: int) -> np.ndarray:
  """A fixed random set S of ``count`` distinct degree-2 monomials (i <= j): [count, 2]."""
  pairs = np.array([(i, j) for i in range(n_dims) for j in range(i, n_dims)])
  if not 1 <= count <= len(pairs):
    raise ValueError(f"task.num_monomials must be in [1, {len(pairs)}] for d = {n_dims}, got {count}")
  return pairs[np.sort(np.random.default_rng([seed, 2]).choice(len(pairs), count, replace=False))]


def monomial_features(x_BKD, pairs) -> np.ndarray:
  x = np.asarray(x_BKD, np.float64)
  return x[..., pairs[:, 0]] * x[..., pairs[:, 1]]


def lowrank_sampler(n_dims: int, rank: int) -> Callable:
  """``sample(rng, batch)`` -> w [B, d] = vec(U V^T) / sqrt(rank), U, V [sqrt(d), rank] with
  N(0, 1) entries: every W has rank ``rank`` and E w w^T = I, so E||w||^2 = d as for ``dense``."""
  side = low_rank.matrix_side(n_dims, "lowrank family: n_dims (task.lowrank_dims)")
  if not 1 <= rank <= side:
    raise ValueError(f"lowrank family: task.rank must be in [1, {side}] for {side} x {side} "
                     f"matrices (n_dims = {n_dims}), got {rank}")

  def sample(rng, batch):
    u = rng.standard_normal((batch, side, rank))
    v = rng.standard_normal((batch, side, rank))
    return (u @ v.transpose(0, 2, 1)).reshape(batch, n_dims) / np.sqrt(rank)

  return sample


@dataclasses.dataclass(frozen=True)
class Family:
  """A prior over functions: inputs ``sample_x(rng, batch, k)`` [B, k, input_dim], features
  ``features(xs)`` [B, k, F] and a Gaussian-mixture ``prior`` over the F feature weights, or, for
  a prior that is no such mixture (``lowrank``), ``prior=None`` and ``sample_w(rng, batch)``."""

  name: str
  input_dim: int
  prior: tuple | None
  features: Callable
  sample_x: Callable
  sample_w: Callable | None = None


def make_family(name: str, n_dims: int, sparsity: int, *, max_freq: int = 10,
                half_period: float = 5.0, num_monomials: int = 20, rank: int = 1,
                seed: int = 0) -> Family:
  """The Family for a linear prior name (see ``make_prior``), ``lowrank`` or a feature family."""
  def gaussian_x(rng, b, k):
    return rng.standard_normal((b, k, n_dims))

  if name == LOWRANK:
    return Family(name, n_dims, None, lambda xs: xs, gaussian_x, lowrank_sampler(n_dims, rank))
  if name == "fourier":
    return Family(name, 1, fourier_prior(max_freq),
                  lambda xs: fourier_features(xs, max_freq, half_period),
                  lambda rng, b, k: rng.uniform(-half_period, half_period, (b, k, 1)))
  if name == "monomial":
    pairs = monomial_pairs(seed, n_dims, num_monomials)
    return Family(name, n_dims, posterior.dense_prior(len(pairs)),
                  lambda xs: monomial_features(xs, pairs), gaussian_x)
  if set(name.split("+")) & set(SOLO_FAMILIES):
    raise ValueError(f"task prior {name!r}: families {list(SOLO_FAMILIES)} train on their own, "
                     "not in '+' mixtures")
  return Family(name, n_dims, make_prior(name, n_dims, sparsity), lambda xs: xs, gaussian_x)


def sample_family(rng: np.random.Generator, family: Family, batch: int, n_points: int,
                  noise_std: float):
  """xs [B, k, input_dim], ys [B, k] = w.phi(x) + N(0, noise_std^2) with w from the prior."""
  if family.sample_w is not None:
    w_BF = family.sample_w(rng, batch)
  else:
    w_BF = sample_weights(rng, family.prior, batch)
  xs = family.sample_x(rng, batch, n_points)
  ys = np.einsum("bkf,bf->bk", family.features(xs), w_BF)
  ys = ys + noise_std * rng.standard_normal((batch, n_points))
  return xs.astype(np.float32), ys.astype(np.float32)
