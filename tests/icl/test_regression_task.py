"""The shared regression prompts and tasks: batches are a pure function of (seed, step), the loss and
the predictions read the x positions, the generator's input and task options have the requested
moments, ill-conditioned inputs the requested spectrum, and the query task splits the last point."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs.icl import linear_regression as lr_config
from jaxllm.data import icl_regression as data
from jaxllm.icl.linear_self_attention import LSAStack, regression_tokens
from jaxllm.icl.regression_task import (LinearRegressionTask, QueryRegressionTask,
                                        check_prompt_fits, conditioned_inputs, hidden_states,
                                        predict, prompt_loss)


def test_conditioned_inputs_have_the_requested_spectrum():
  rng = np.random.default_rng(0)
  xs = rng.standard_normal((4, 20000, 6)).astype(np.float32)
  out = conditioned_inputs(rng, xs, 100.0)
  for x in out:
    eig = np.sort(np.linalg.eigvalsh(x.T @ x / len(x)))[::-1]
    np.testing.assert_allclose(eig, np.geomspace(1.0, 0.01, 6), rtol=0.05)
  assert conditioned_inputs(rng, xs, 1.0) is xs
  curriculum_xs = xs[:, :10].copy()
  curriculum_xs[..., 3:] = 0.0  # inactive coordinates (curriculum) stay zero
  part = conditioned_inputs(rng, curriculum_xs, 10.0, active_dims=3)
  assert not part[..., 3:].any() and not np.allclose(part[..., :3], curriculum_xs[..., :3])
  with pytest.raises(ValueError, match="condition_number"):
    conditioned_inputs(rng, xs, 0.5)


def test_batches_are_a_function_of_seed_and_step_and_follow_the_curriculum():
  config = lr_config.get_config("tiny")
  task, again = LinearRegressionTask(config), LinearRegressionTask(config)
  np.testing.assert_array_equal(task.batch(3)["tokens"], again.batch(3)["tokens"])
  assert not np.array_equal(task.batch(3)["tokens"], task.batch(4)["tokens"])
  first = task.batch(0)  # curriculum start: dims_start active coordinates, points_start pairs
  cur = config.task.curriculum
  assert first["tokens"].shape == (config.train.batch_size, 2 * cur.points_start,
                                   config.task.n_dims)
  assert not first["tokens"][:, ::2, cur.dims_start:].any()
  np.testing.assert_array_equal(first["tokens"][:, 1::2, 0], first["ys"])


def test_loss_and_predictions_read_the_x_positions():
  config = lr_config.get_config("tiny")
  task = LinearRegressionTask(config)
  model = task.init_model(nnx.Rngs(0))
  batch = task.batch(0)
  xs, ys = batch["tokens"][:, ::2], batch["ys"]
  preds = predict(model, xs, ys, batch_size=3)  # uneven batches give the same predictions
  np.testing.assert_allclose(preds, np.asarray(model(jnp.asarray(batch["tokens"])))[:, ::2, 0],
                             rtol=1e-5, atol=1e-6)
  loss, _ = prompt_loss(model, batch)
  np.testing.assert_allclose(float(loss), np.mean((preds - ys) ** 2), rtol=1e-5)
  hidden, outs = hidden_states(model, xs, ys, batch_size=5)
  assert hidden.shape[:3] == (config.model.num_layers + 1, len(xs), 2 * xs.shape[1])
  np.testing.assert_allclose(outs, preds, rtol=1e-5, atol=1e-6)


def test_prompts_longer_than_the_model_are_refused():
  with pytest.raises(ValueError, match="max_len"):
    check_prompt_fits({"max_len": 10}, 6)


def test_prompt_options_uniform_covariance_and_task_mean():
  rng = np.random.default_rng(0)
  xs, _, _ = data.sample_prompts(rng, 200, 50, 3, input_dist="uniform")
  assert xs.min() >= -0.5 and xs.max() < 0.5
  np.testing.assert_allclose(xs.reshape(-1, 3).var(0), 1 / 12, rtol=0.03)
  a = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.5]])
  xs, ys, ws = data.sample_prompts(rng, 400, 100, 3, input_cov_sqrt=a, task_mean=[1.0, -2.0, 0.0])
  flat = xs.reshape(-1, 3)
  np.testing.assert_allclose(flat.T @ flat / len(flat), a @ a.T, atol=0.05)
  np.testing.assert_allclose(ws.mean(0), [1.0, -2.0, 0.0], atol=0.15)
  np.testing.assert_allclose(ys, np.einsum("bkd,bd->bk", xs, ws), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="input_dist"):
    data.sample_prompts(rng, 2, 3, 3, input_dist="laplace")
  with pytest.raises(ValueError, match="input_cov_sqrt"):
    data.sample_prompts(rng, 2, 3, 3, input_dist="uniform", input_cov_sqrt=a)


def test_query_task_splits_the_last_point_and_scores_half_mse():
  config = ml_collections.ConfigDict(dict(
      seed=3, task=dict(n_dims=4, n_points=6, input_dist="uniform"), train=dict(batch_size=5)))
  task = QueryRegressionTask(config, lambda rngs: LSAStack(4, 1, rngs=rngs))
  batch = task.batch(7)
  assert batch["x"].shape == (5, 5, 4) and batch["xq"].shape == (5, 4)
  np.testing.assert_array_equal(task.batch(7)["yq"], batch["yq"])
  model = task.init_model(nnx.Rngs(0))
  pred = np.asarray(model(regression_tokens(batch["x"], batch["y"], batch["xq"])))
  loss, _ = task.loss(model, batch)
  np.testing.assert_allclose(float(loss), 0.5 * np.mean((pred - batch["yq"]) ** 2), rtol=1e-5)
  config.task.n_points = 1
  with pytest.raises(ValueError, match="n_points"):
    QueryRegressionTask(config, None)
