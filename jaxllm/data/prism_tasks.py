"""Bayesian-prism task families: linear regression prompts whose weights come from a named prior.

Names: ``dense`` (N(0, I)), ``sparse`` (s-sparse, N(0, 1) entries), ``sign`` ({-1, +1}^d), and any
``+``-joined mixture of them with equal weights (e.g. ``dense+sparse``). The same prior object
drives the sampler and the posterior-mean baseline in ``jaxllm.icl.posterior``.
"""

import numpy as np

from jaxllm.icl import posterior

FAMILIES = ("dense", "sparse", "sign")


def make_prior(name: str, n_dims: int, sparsity: int):
  """Gaussian-mixture prior (weights [J], means [J, d], covs [J, d, d]) for a family name."""
  parts = name.split("+")
  bad = [p for p in parts if p not in FAMILIES]
  if bad or not name:
    raise ValueError(f"task prior {name!r}: unknown families {bad}; allowed: {list(FAMILIES)} "
                     "joined by '+'")
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
