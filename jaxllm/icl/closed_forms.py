"""Closed forms for the trained linear self-attention layer of Zhang, Frei & Bartlett (2023).

One LSA layer trained by gradient flow on prompts of N noiseless examples with x ~ N(0, Lambda) and
w ~ N(0, I) converges to the predictor

  y_hat = x_q^T Gamma^-1 (1/N) sum_i y_i x_i,   Gamma = (1 + 1/N) Lambda + (tr(Lambda) / N) I.

The error formula below holds for any test covariance, prompt length and task second moment, so it
also gives the task-shift and covariate-shift predictions of the paper.
"""

import numpy as np


def _check_square(name, a):
  a = np.asarray(a, dtype=np.float64)
  if a.ndim != 2 or a.shape[0] != a.shape[1]:
    raise ValueError(f"{name} must be a square matrix, got shape {a.shape}")
  return a


def _check_length(name, n):
  if int(n) != n or n < 1:
    raise ValueError(f"{name} must be a positive integer, got {n}")
  return int(n)


def zfb_gamma(covariance, num_examples):
  """Gamma = (1 + 1/N) Lambda + tr(Lambda)/N I, the matrix whose inverse the trained LSA learns."""
  lam = _check_square("covariance", covariance)
  n = _check_length("num_examples", num_examples)
  return (1.0 + 1.0 / n) * lam + np.trace(lam) / n * np.eye(lam.shape[0])


def zfb_gamma_inv(covariance, num_examples):
  """The global minimiser's matrix Gamma^-1 (the value scalar times the key-query block)."""
  return np.linalg.inv(zfb_gamma(covariance, num_examples))


def lsa_prediction_error(gamma_inv, test_covariance, num_examples, task_second_moment=None):
  """E (y_hat - y_q)^2 for the predictor x_q^T G (1/M) sum_i y_i x_i on Gaussian prompts.

  With x ~ N(0, L'), M context examples, y = w.x and S = E[w w^T], B = G C_hat - I and
  C_hat = (1/M) sum_i x_i x_i^T, the error is tr(S E[B^T L' B]). Gaussian fourth moments give
  E[C_hat A C_hat] = (1 + 1/M) L' A L' + tr(A L')/M L' for symmetric A.

  Args:
    gamma_inv: (d, d) matrix G the predictor applies.
    test_covariance: (d, d) covariance L' of the test inputs.
    num_examples: prompt length M at test time.
    task_second_moment: (d, d) E[w w^T]; identity when None.

  Returns:
    The expected squared error (a float).
  """
  g = _check_square("gamma_inv", gamma_inv)
  lam = _check_square("test_covariance", test_covariance)
  m = _check_length("num_examples", num_examples)
  if g.shape != lam.shape:
    raise ValueError(f"gamma_inv {g.shape} and test_covariance {lam.shape} must have equal shapes")
  s = np.eye(lam.shape[0]) if task_second_moment is None else _check_square(
      "task_second_moment", task_second_moment)
  a = g.T @ lam @ g
  quad = (1.0 + 1.0 / m) * lam @ a @ lam + np.trace(a @ lam) / m * lam
  err_matrix = quad - lam @ g @ lam - lam @ g.T @ lam + lam
  return float(np.trace(s @ err_matrix))


def zfb_isotropic_error(dim, num_examples):
  """d(d+1)/(N+d+1): the trained LSA's test error at its training length when Lambda = I."""
  n = _check_length("num_examples", num_examples)
  d = _check_length("dim", dim)
  return d * (d + 1) / (n + d + 1)
