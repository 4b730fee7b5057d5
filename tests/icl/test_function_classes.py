"""Function-class generators and their baselines (Garg et al. 2022) against closed forms; the
trained transformer's claim at smoke scale is marked slow."""

import os

import numpy as np
import pytest
from flax import nnx

from configs.icl import function_classes as fc_config
from experiments.icl import function_classes
from jaxllm.data import icl_functions
from jaxllm.icl import baselines, function_baselines
from tests.icl import figure_scripts


def _rng(seed=0):
  return np.random.default_rng(seed)


def test_sparse_linear_has_s_nonzero_weights_and_variance_s():
  xs, ys = icl_functions.sparse_linear(_rng(), 2000, 30, 10, sparsity=3)
  w = np.stack([np.linalg.lstsq(x, y, rcond=None)[0] for x, y in zip(xs[:50], ys[:50])])
  assert ((np.abs(w) > 1e-4).sum(axis=1) == 3).all()
  assert (ys ** 2).mean() == pytest.approx(3.0, rel=0.05)


def test_relu_net_second_moment_is_the_input_dimension():
  # E relu(v.x)^2 = |x|^2 / 2, so sqrt(2/h) sum_j a_j relu(v_j.x) has E y^2 = E|x|^2 = active dims.
  _, ys = icl_functions.relu_net(_rng(1), 4000, 10, 8, hidden=100)
  assert (ys ** 2).mean() == pytest.approx(8.0, rel=0.06)
  xs, ys = icl_functions.relu_net(_rng(2), 4000, 10, 8, hidden=100, active_dims=3)
  assert not xs[..., 3:].any()
  assert (ys ** 2).mean() == pytest.approx(3.0, rel=0.06)


def test_decision_tree_is_piecewise_constant_on_sign_patterns():
  xs, ys = icl_functions.decision_tree(_rng(3), 300, 200, 5, depth=4)
  assert max(len(np.unique(y)) for y in ys) <= 16
  assert (ys ** 2).mean() == pytest.approx(1.0, rel=0.1)
  for x, y in zip(xs[:20], ys[:20]):  # equal sign patterns -> equal outputs
    keys = [tuple(row) for row in (x > 0)]
    by_key = {}
    for key, value in zip(keys, y):
      assert by_key.setdefault(key, value) == value


def test_lasso_is_soft_thresholding_on_an_orthogonal_design():
  # With X^T X = n I, argmin 1/(2n)|y - Xw|^2 + a|w|_1 is soft-thresholding of z = X^T y / n.
  n, d, alpha = 8, 4, 0.3
  q, _ = np.linalg.qr(_rng(4).standard_normal((n, d)))
  x = np.sqrt(n) * q
  y = x @ np.array([1.0, -0.2, 0.5, 0.0]) + 0.05 * _rng(5).standard_normal(n)
  z = x.T @ y / n
  w = np.sign(z) * np.maximum(np.abs(z) - alpha, 0.0)
  xq = _rng(6).standard_normal(d)
  xs = np.concatenate([x, xq[None]])[None]
  ys = np.concatenate([y, [0.0]])[None]
  assert function_baselines.lasso(xs, ys, alpha)[0, n] == pytest.approx(xq @ w, abs=1e-6)


def test_lasso_beats_least_squares_on_sparse_tasks_below_d():
  xs, ys = icl_functions.sparse_linear(_rng(7), 40, 11, 10, sparsity=2)
  ls = baselines.squared_error(baselines.least_squares(xs, ys), ys, normalizer=2)
  la = baselines.squared_error(function_baselines.lasso(xs, ys, 0.01), ys, normalizer=2)
  assert ls[8] > 0.1 and la[8] < 0.25 * ls[8]  # LS still misses (d - k)/d of the signal at k = 8


def test_gradient_boosting_recovers_a_stump():
  # On y = c sign(x_0) boosting starts at the mean and each exact stump removes 10% of the residual:
  # the prediction is y - (y - mean) 0.9^100.
  x = _rng(8).standard_normal((1, 30, 3))
  y = 2.0 * np.sign(x[..., 0])
  pred = function_baselines.gradient_boosting(x, y, n_estimators=100, learning_rate=0.1,
                                              max_depth=1)
  for i in range(20, 30):
    target = y[0, i] - (y[0, i] - y[0, :i].mean()) * 0.9 ** 100
    assert pred[0, i] == pytest.approx(target, rel=1e-6)
  assert pred[0, 1] == pytest.approx(y[0, 0])  # one point: its value


def test_zero_baseline_error_is_the_normaliser():
  for family, norm in (("sparse_linear", 3.0), ("decision_tree", 1.0)):
    config = fc_config.get_config("smoke")
    xs, ys = icl_functions.sample(family, _rng(9), 3000, 4, 5,
                                  **function_classes.family_kwargs(config, family))
    err = baselines.squared_error(function_baselines.zero(xs, ys), ys,
                                  function_classes.normalizer(config, family))
    assert err.mean() == pytest.approx(1.0, rel=0.08), family
    assert function_classes.normalizer(config, family) == norm


def test_unknown_family_is_rejected():
  with pytest.raises(ValueError, match="allowed"):
    icl_functions.sample("fourier", _rng(), 1, 2, 3)
  with pytest.raises(ValueError, match="task.families"):
    function_classes.FunctionTask(fc_config.get_config("smoke"), "fourier")


@pytest.mark.slow
def test_smoke_run_learns_the_sparse_and_tree_classes(tmp_path):
  results = function_classes.run(fc_config.get_config("smoke"), str(tmp_path))
  sparse = results["families"]["sparse_linear"]["at"]["k=10"]
  assert sparse["transformer"] < 0.5 * sparse["averaging"]
  assert sparse["lasso"] < 0.05
  tree = results["families"]["decision_tree"]["at"]["k=20"]
  assert tree["transformer"] < tree["least_squares"]


def test_evaluation_of_an_untrained_model_renders_the_figure(tmp_path):
  config = fc_config.get_config("smoke")
  config.model.update(d_model=16, num_layers=1)
  config.eval.update(num_prompts=32, num_sklearn_prompts=2, gbt_estimators=5)
  task = function_classes.FunctionTask(config, "decision_tree")
  res = function_classes.evaluate(task.init_model(nnx.Rngs(0)), config, "decision_tree")
  assert len(res["errors"]["gradient_boosting"]) == 21 and res["normalizer"] == 1.0
  assert res["errors"]["least_squares"][0] == pytest.approx(
      res["errors"]["averaging"][0])  # no examples: both predict 0
  fig = figure_scripts.load("fig_function_classes")
  out = fig.plot({"n_dims": 5, "families": {"decision_tree": res}}, str(tmp_path / "f.png"))
  assert os.path.getsize(out) > 10_000


def test_representation_targets_are_linear_in_the_fixed_features():
  phi = icl_functions.random_mlp(0, 4, 16, 8)
  assert [w.shape for w in phi] == [(4, 16), (16, 8)]
  xs, ys = icl_functions.representation(_rng(10), 5, 30, 4, phi=phi)
  feats = icl_functions.apply_mlp(phi, xs)
  np.testing.assert_allclose(feats, np.maximum(xs @ phi[0], 0.0) @ phi[1], rtol=1e-5, atol=1e-6)
  for f, y in zip(feats, ys):  # 30 points, 8 features: an exact linear fit in Phi-space
    w = np.linalg.lstsq(f, y, rcond=None)[0]
    np.testing.assert_allclose(f @ w, y, atol=1e-4)
  with pytest.raises(ValueError, match="positive sizes"):
    icl_functions.random_mlp(0, 4, 0, 8)
