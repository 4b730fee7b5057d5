"""Linear self-attention implements gradient descent (von Oswald et al. 2023; Dai et al. 2023).

Trains L-layer LSA models (keys/values exclude the query; prediction = minus the query's y-slot) on
noiseless linear regression prompts and compares each with L steps of GD from w = 0 at the best step
size, and with least squares:
  * loss of the model vs loss of GD;
  * prediction difference 0.5 * mean (y_model - y_GD)^2 (and the same to OLS);
  * cosine between the input sensitivities d y_hat / d x_q of the model and of the estimator.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.data import icl_regression as data
from jaxllm.icl import baselines, gd
from jaxllm.icl.linear_self_attention import LSAStack, regression_tokens
from jaxllm.icl.regression_task import QueryRegressionTask
from jaxllm.results import write_results
from jaxllm.train.loop import train
from jaxllm.train.metrics import read_metrics


def _validate(config):
  t, e = config.task, config.eval
  for name, value in (("task.n_dims", t.n_dims), ("task.n_points", t.n_points),
                      ("train.batch_size", config.train.batch_size),
                      ("train.steps", config.train.steps), ("eval.num_prompts", e.num_prompts),
                      ("eval.rate_search_prompts", e.rate_search_prompts)):
    if int(value) != value or value < 1:
      raise ValueError(f"config.{name} must be a positive integer, got {value}")
  layers = config.model.num_layers
  if not layers or any(int(n) != n or n < 1 for n in layers):
    raise ValueError(f"config.model.num_layers must be positive integers, got {layers}")
  if t.input_dist not in data.INPUT_DISTRIBUTIONS:
    raise ValueError(f"config.task.input_dist must be one of {data.INPUT_DISTRIBUTIONS}, "
                     f"got {t.input_dist!r}")
  if config.optimizer.learning_rate <= 0:
    raise ValueError(f"config.optimizer.learning_rate must be positive, got "
                     f"{config.optimizer.learning_rate}")


def _sensitivity_cosine(model_fn, x, y, xq, w_BD):
  """Mean over prompts of cos(d y_model / d x_q, w) for a linear estimator y = w . x_q."""
  grad_BD = jax.vmap(jax.grad(lambda xq1, x1, y1: model_fn(x1[None], y1[None], xq1[None])[0]))(
      xq, x, y)
  cos = jnp.sum(grad_BD * w_BD, -1) / (jnp.linalg.norm(grad_BD, axis=-1) *
                                        jnp.linalg.norm(w_BD, axis=-1))
  return float(jnp.mean(cos))


def _half_mse(a, b):
  return float(0.5 * jnp.mean(jnp.square(a - b)))


def run(config, workdir):
  """Trains one LSA stack per depth and compares it with GD and OLS; writes workdir/results.json."""
  _validate(config)
  t, e = config.task, config.eval
  d, n = int(t.n_dims), int(t.n_points) - 1

  def sample(stream, batch):  # evaluation streams, disjoint from the training batches
    xs, ys, _ = data.sample_prompts(np.random.default_rng([int(config.seed), 10**9, stream]),
                                    batch, n + 1, d, input_dist=t.input_dist)
    return data.split_query(xs, ys)

  x_r, y_r, xq_r, yq_r = sample(0, int(e.rate_search_prompts))
  x, y, xq, yq = sample(1, int(e.num_prompts))
  xs = np.concatenate([x, xq[:, None]], axis=1)
  ys = np.concatenate([y, yq[:, None]], axis=1)
  ols_pred = jnp.asarray(baselines.least_squares(xs, ys)[:, -1], jnp.float32)
  w_ols = jnp.asarray(baselines.least_squares_weights(x, y), jnp.float32)

  gd_rows = {"num_steps": [], "rate": [], "loss": []}
  for steps in sorted(set(config.model.num_layers) | set(e.gd_steps) | {1}):
    rate, _ = gd.best_gd_rate(x_r, y_r, xq_r, yq_r, steps)
    gd_rows["num_steps"].append(steps)
    gd_rows["rate"].append(rate)
    gd_rows["loss"].append(float(gd.gd_loss(x, y, xq, yq, rate, steps)))

  models = {}
  for depth in config.model.num_layers:
    task = QueryRegressionTask(config, lambda rngs, depth=depth: LSAStack(
        d, depth, init_scale=float(config.model.init_scale), rngs=rngs))
    run_dir = os.path.join(workdir, f"depth_{depth}")
    model = train(config, run_dir, task, progress=False).model
    logged = read_metrics(run_dir)
    history = {"step": [r["step"] for r in logged], "loss": [r["loss"] for r in logged]}

    def model_fn(x1, y1, xq1, model=model):
      return model(regression_tokens(x1, y1, xq1))

    rate = gd_rows["rate"][gd_rows["num_steps"].index(depth)]
    pred = model_fn(x, y, xq)
    gd_pred = gd.gd_predict(x, y, xq, rate, depth)
    w_gd = gd.gd_weights(x, y, rate, depth)
    models[str(depth)] = {
        "num_layers": depth,
        "train": history,
        "loss": _half_mse(pred, yq),
        "gd_steps": depth,
        "gd_rate": rate,
        "gd_loss": _half_mse(gd_pred, yq),
        "ols_loss": _half_mse(ols_pred, yq),
        "pred_diff_gd": _half_mse(pred, gd_pred),
        "pred_diff_ols": _half_mse(pred, ols_pred),
        "pred_diff_gd_one_step": _half_mse(
            pred, gd.gd_predict(x, y, xq, gd_rows["rate"][gd_rows["num_steps"].index(1)], 1)),
        "sensitivity_cos_gd": _sensitivity_cosine(model_fn, x, y, xq, w_gd),
        "sensitivity_cos_ols": _sensitivity_cosine(model_fn, x, y, xq, w_ols),
    }

  results = {
      "study": "lsa_gd",
      "dim": d,
      "num_examples": n,
      "input_dist": t.input_dist,
      "zero_predictor_loss": float(0.5 * jnp.mean(jnp.square(yq))),
      "gd": gd_rows,
      "models": models,
  }
  write_results(workdir, results)
  return results
