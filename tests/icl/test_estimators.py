"""Closed-form checks of the ICL estimators: ZFB formulas, GD steps and the rate search, the SVM."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from jaxllm.data import icl_regression as data
from jaxllm.icl import baselines, closed_forms, gd, svm


def _prompts(seed, batch, num_examples, dim, **kw):
  """Context x_BND, y_BN and the query xq_BD, yq_B of noiseless linear prompts."""
  xs, ys, _ = data.sample_prompts(np.random.default_rng(seed), batch, num_examples + 1, dim, **kw)
  return data.split_query(xs, ys)


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


def test_best_one_step_gd_reference_numbers():
  rate, loss = gd.best_one_step_gd(10, 10, 1 / 12, 1 / 80)
  assert rate == pytest.approx(6.0606, abs=1e-4)
  assert loss == pytest.approx(0.20623, abs=1e-5)


@pytest.mark.parametrize("input_dist,variance,fourth", [("uniform", 1 / 12, 1 / 80),
                                                        ("gaussian", 1.0, 3.0)])
def test_rate_search_matches_closed_form(input_dist, variance, fourth):
  x, y, xq, yq = _prompts(0, 60_000, 8, 6, input_dist=input_dist)
  rate, loss = gd.best_gd_rate(x, y, xq, yq, 1)
  exact_rate, exact_loss = gd.best_one_step_gd(6, 8, variance, fourth)
  assert rate == pytest.approx(exact_rate, rel=0.03)
  assert loss == pytest.approx(exact_loss, rel=0.03)


def test_gd_weights_match_geometric_series():
  x, y, _, _ = _prompts(1, 4, 7, 3)
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  lr, steps = 0.3, 5
  cov = np.einsum("bnd,bne->bde", x, x) / 7
  b = np.einsum("bn,bnd->bd", y, x) / 7
  expected = np.zeros_like(b)
  for i in range(4):
    step = np.eye(3) - lr * cov[i]
    expected[i] = lr * sum(np.linalg.matrix_power(step, j) for j in range(steps)) @ b[i]
  got = np.asarray(gd.gd_weights(jnp.asarray(x), jnp.asarray(y), lr, steps))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_many_gd_steps_reach_least_squares():
  x, y, xq, yq = _prompts(2, 16, 12, 4)
  xs = np.concatenate([np.asarray(x), np.asarray(xq)[:, None]], 1)
  ys = np.concatenate([np.asarray(y), np.asarray(yq)[:, None]], 1)
  ols = baselines.least_squares(xs, ys)[:, -1]
  np.testing.assert_allclose(np.asarray(gd.gd_predict(x, y, xq, 0.2, 3000)), ols, atol=1e-3)
  np.testing.assert_allclose(ols, np.asarray(yq), atol=1e-3)


def test_attention_svm_single_constraint_closed_form():
  """T = 2, n = 1: one constraint <A, W> >= 1, so W_mm = A / ||A||_F^2."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(1, 2, 4))
  z = rng.normal(size=(1, 4))
  a = np.outer(x[0, 1] - x[0, 0], z[0])
  w = svm.attention_svm(x, z, np.array([1]))["w"]
  np.testing.assert_allclose(w, a / np.sum(a * a), rtol=1e-7, atol=1e-10)


def test_attention_svm_orthogonal_constraints_closed_form():
  """Constraint matrices with disjoint supports: W_mm is the sum of A_k / ||A_k||^2."""
  x = np.zeros((2, 2, 3))
  x[0, 0] = [2.0, 0.0, 0.0]
  x[1, 0] = [0.0, 0.5, 0.0]
  z = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
  w = svm.attention_svm(x, z, np.array([0, 0]))["w"]
  expected = np.outer([2.0, 0, 0], z[0]) / 4.0 + np.outer([0, 0.5, 0], z[1]) / 0.25
  np.testing.assert_allclose(w, expected, rtol=1e-7, atol=1e-10)


def test_attention_svm_matches_primal_solver_and_kkt():
  rng = np.random.default_rng(4)
  n, t, d = 3, 4, 3
  x = rng.normal(size=(n, t, d))
  z = rng.normal(size=(n, d))
  opt = np.array([0, 2, 1])
  sol = svm.attention_svm(x, z, opt)
  rows = np.stack([np.outer(x[i, opt[i]] - x[i, j], z[i]).ravel()
                   for i in range(n) for j in range(t) if j != opt[i]])
  primal = optimize.minimize(lambda w: 0.5 * w @ w, np.zeros(d * d), jac=lambda w: w,
                             constraints=[{"type": "ineq", "fun": lambda w: rows @ w - 1,
                                           "jac": lambda w: rows}],
                             method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
  np.testing.assert_allclose(sol["w"].ravel(), primal.x, atol=1e-6)
  # KKT: feasibility, dual feasibility, complementary slackness, stationarity.
  assert sol["margins"].min() >= 1 - 1e-8
  assert sol["dual"].min() >= 0
  np.testing.assert_allclose(sol["dual"] * (sol["margins"].ravel() - 1), 0, atol=1e-8)
  np.testing.assert_allclose(sol["dual"] @ rows, sol["w"].ravel(), atol=1e-10)


def test_attention_svm_rejects_bad_indices():
  with pytest.raises(ValueError, match="opt indices"):
    svm.attention_svm(np.ones((1, 3, 2)), np.ones((1, 2)), np.array([3]))
