"""Higher-order methods study (Fu et al. 2023): ill-conditioned inputs and the algorithm side in
closed form; the trained transformer's layer-to-Newton matching at smoke scale is marked slow."""

import os

import numpy as np
import pytest
from flax import nnx

from configs.icl import higher_order as ho_config
from experiments.icl import higher_order
from tests.icl import figure_scripts


def test_algorithm_errors_end_at_least_squares_and_gd_lags():
  rng = np.random.default_rng(1)
  xs, ys = higher_order.test_prompts(rng, 300, 11, 5, 1.0)
  newton_err, gd_err, ls_err = higher_order.algorithm_errors(xs, ys, 10, 20, [1, 4, 16], 0.01)
  assert newton_err.shape == (21, 300) and gd_err.shape == (3, 300)
  np.testing.assert_allclose(newton_err[-1], ls_err, atol=1e-6)
  mse = (gd_err ** 2).mean(axis=1)
  assert mse[0] > mse[1] > mse[2] > 10 * (ls_err ** 2).mean()


def test_algorithm_convergence_orders_condition_numbers():
  config = ho_config.get_config("smoke")
  config.algorithms.update(num_prompts=50, condition_numbers=(1.0, 100.0),
                           gd_steps=(64, 256, 1024))
  out = higher_order.algorithm_convergence(config)["by_condition_number"]
  assert 10 <= out["kappa=1"]["newton_iters"] <= 16
  assert out["kappa=100"]["newton_iters"] > out["kappa=1"]["newton_iters"]
  assert out["kappa=1"]["gd_steps"] == 256 and out["kappa=100"]["gd_steps"] == -1


@pytest.mark.slow
def test_smoke_layers_move_through_newton_iterations(tmp_path):
  results = higher_order.run(ho_config.get_config("smoke"), str(tmp_path))
  res = results["probes"]["context"]["n=10"]
  best = np.asarray(res["best_newton_iter"])
  assert best[-1] > best[1]  # later layers match later Newton iterations
  assert res["layer_mse"][-1] < 0.5 * res["layer_mse"][1]


def test_probe_study_of_an_untrained_model_renders_the_figure(tmp_path):
  config = ho_config.get_config("smoke")
  config.model.update(d_model=16, num_layers=2)
  config.eval.update(num_prompts=64, probe_train_prompts=128, context_lengths=(5,),
                     gd_steps=(1, 8))
  model = higher_order.ConditionedRegressionTask(config).init_model(nnx.Rngs(0))
  probes = higher_order.probe_study(model, config, 1.0)
  res = probes["context"]["n=5"]
  assert probes["layers"] == 3 and len(res["best_newton_iter"]) == 3
  assert np.asarray(res["cos_newton"]).shape == (3, int(config.eval.newton_iters) + 1)
  fig = figure_scripts.load("fig_higher_order")
  out = fig.plot({"n_dims": 5, "condition_number": 1.0, "probes": probes}, str(tmp_path / "h.png"))
  assert os.path.getsize(out) > 10_000
