"""Closed-form checks of the ICL estimators: ZFB formulas, GD steps and the rate search, the SVM."""

import numpy as np
import pytest

from jaxllm.icl import closed_forms


def _random_spd(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.3 * np.eye(d)


def test_zfb_isotropic_error_reference_number():
  assert closed_forms.zfb_isotropic_error(5, 20) == pytest.approx(1.153846, abs=1e-6)
  gamma_inv = closed_forms.zfb_gamma_inv(np.eye(5), 20)
  np.testing.assert_allclose(gamma_inv, np.eye(5) / 1.3, rtol=1e-12)
  assert closed_forms.lsa_prediction_error(gamma_inv, np.eye(5), 20) == pytest.approx(
      1.153846, abs=1e-6)


def test_error_formula_at_training_length_matches_paper_expression():
  lam = _random_spd(np.random.default_rng(0), 4)
  n = 7
  gamma_inv = closed_forms.zfb_gamma_inv(lam, n)
  expected = np.trace(lam) - np.trace(lam @ lam @ gamma_inv)
  assert closed_forms.lsa_prediction_error(gamma_inv, lam, n) == pytest.approx(expected, rel=1e-10)


def test_gamma_inv_is_the_stationary_point_of_the_error():
  """Gamma^-1 minimises the population error over all matrices G (it is a convex quadratic in G)."""
  rng = np.random.default_rng(1)
  lam = _random_spd(rng, 3)
  n = 5
  gamma_inv = closed_forms.zfb_gamma_inv(lam, n)
  best = closed_forms.lsa_prediction_error(gamma_inv, lam, n)
  for _ in range(20):
    delta = 1e-2 * rng.normal(size=(3, 3))
    assert closed_forms.lsa_prediction_error(gamma_inv + delta, lam, n) > best
  eps = 1e-6
  grad = np.zeros((3, 3))
  for i in range(3):
    for j in range(3):
      bump = np.zeros((3, 3))
      bump[i, j] = eps
      grad[i, j] = (closed_forms.lsa_prediction_error(gamma_inv + bump, lam, n)
                    - closed_forms.lsa_prediction_error(gamma_inv - bump, lam, n)) / (2 * eps)
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)


def test_error_formula_matches_monte_carlo_under_shift():
  rng = np.random.default_rng(2)
  d, m, prompts = 3, 6, 400_000
  g = rng.normal(size=(d, d)) * 0.3 + np.eye(d)
  lam_test = _random_spd(rng, d)
  mean = np.array([1.0, -0.5, 0.2])
  x = rng.normal(size=(prompts, m + 1, d)) @ np.linalg.cholesky(lam_test).T
  w = rng.normal(size=(prompts, d)) + mean
  y = np.einsum("btd,bd->bt", x, w)
  ctx = np.einsum("bn,bnd->bd", y[:, :-1], x[:, :-1]) / m
  pred = np.einsum("bd,de,be->b", x[:, -1], g, ctx)
  mc = np.mean((pred - y[:, -1]) ** 2)
  formula = closed_forms.lsa_prediction_error(g, lam_test, m, np.eye(d) + np.outer(mean, mean))
  assert mc == pytest.approx(formula, rel=0.02)


def test_closed_form_validation():
  with pytest.raises(ValueError, match="covariance"):
    closed_forms.zfb_gamma(np.ones(3), 5)
  with pytest.raises(ValueError, match="num_examples"):
    closed_forms.zfb_gamma(np.eye(3), 0)
