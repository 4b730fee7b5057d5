"""Baseline regressors against closed forms and scikit-learn."""

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsRegressor

from jaxllm.data import icl_regression as data
from jaxllm.icl import baselines


@pytest.fixture(scope="module")
def prompts():
  return data.sample_prompts(np.random.default_rng(0), 4000, 12, 5)


def test_least_squares_error_is_d_minus_k_over_d_then_zero(prompts):
  xs, ys, _ = prompts
  err = baselines.squared_error(baselines.least_squares(xs, ys), ys, normalizer=5)
  # Min-norm interpolation removes the k observed directions: E err/d = (d - k)/d for k < d.
  np.testing.assert_allclose(err[:5], [(5 - k) / 5 for k in range(5)], atol=0.06)
  assert err[5:].max() < 1e-8


def test_ridge_tends_to_least_squares_and_matches_solve(prompts):
  xs, ys, _ = prompts
  np.testing.assert_allclose(baselines.ridge(xs[:50], ys[:50], 1e-9),
                             baselines.least_squares(xs[:50], ys[:50]), atol=1e-4)
  lam = 0.7
  x, y = xs[3, :8].astype(np.float64), ys[3, :8].astype(np.float64)
  w = np.linalg.inv(x.T @ x + lam * np.eye(5)) @ x.T @ y
  assert baselines.ridge(xs[3:4], ys[3:4], lam)[0, 8] == pytest.approx(xs[3, 8] @ w, rel=1e-6)


def test_averaging_error_matches_closed_form(prompts):
  xs, ys, _ = prompts
  err = baselines.squared_error(baselines.averaging(xs, ys), ys, normalizer=5)
  # w_hat = mean_i y_i x_i with x ~ N(0, I): E||w_hat - w||^2 = (d + 1)/k E||w||^2, and E||w||^2 = d.
  ks = np.arange(1, 12)
  np.testing.assert_allclose(err[1:], (5 + 1) / ks, rtol=0.12)


def test_nearest_neighbours_matches_sklearn(prompts):
  xs, ys, _ = prompts
  ours = baselines.nearest_neighbours(xs[:20], ys[:20], 3)
  for b in range(20):
    for i in range(3, 12):
      knn = KNeighborsRegressor(n_neighbors=3).fit(xs[b, :i], ys[b, :i])
      assert ours[b, i] == pytest.approx(knn.predict(xs[b, i:i + 1])[0], rel=1e-5)


def test_interleave_puts_y_after_its_x():
  xs = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
  ys = np.array([[10.0, 20.0, 30.0]], np.float32)
  tok = data.interleave(xs, ys)
  assert tok.shape == (1, 6, 4)
  np.testing.assert_array_equal(tok[0, ::2], xs[0])
  np.testing.assert_array_equal(tok[0, 1::2, 0], ys[0])
  assert not tok[0, 1::2, 1:].any()


def test_curriculum_and_bad_inputs():
  c = data.Curriculum(5, 20, 1, 2000)
  assert [c.value(s) for s in (0, 1999, 2000, 10**6)] == [5, 5, 6, 20]
  with pytest.raises(ValueError, match="start <= end"):
    data.Curriculum(6, 5)
  with pytest.raises(ValueError, match="active_dims"):
    data.sample_prompts(np.random.default_rng(0), 1, 2, 3, active_dims=4)
