"""Linear self-attention implements gradient descent (von Oswald et al. 2023; Dai et al. 2023).

Trains L-layer LSA models (keys/values exclude the query; prediction = minus the query's y-slot) on
noiseless linear regression prompts and compares each with L steps of GD from w = 0 at the best step
size, and with least squares:
  * loss of the model vs loss of GD;
  * prediction difference 0.5 * mean (y_model - y_GD)^2 (and the same to OLS);
  * cosine between the input sensitivities d y_hat / d x_q of the model and of the estimator.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxllm.icl import baselines, gd
from jaxllm.icl.linear_tasks import INPUT_DISTRIBUTIONS, sample_linear_prompts
from jaxllm.icl.training import train_regression
from jaxllm.icl.linear_self_attention import LSAStack, regression_tokens
from jaxllm.results import write_results


def _validate(config):
  for field in ("dim", "num_examples", "batch_size", "num_steps", "eval_prompts",
                "rate_search_prompts"):
    value = config[field]
    if int(value) != value or value < 1:
      raise ValueError(f"config.{field} must be a positive integer, got {value}")
  if not config.num_layers or any(int(n) != n or n < 1 for n in config.num_layers):
    raise ValueError(f"config.num_layers must be positive integers, got {config.num_layers}")
  if config.input_dist not in INPUT_DISTRIBUTIONS:
    raise ValueError(f"config.input_dist must be one of {INPUT_DISTRIBUTIONS}, "
                     f"got {config.input_dist!r}")
  if config.learning_rate <= 0:
    raise ValueError(f"config.learning_rate must be positive, got {config.learning_rate}")


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
  d, n = config.dim, config.num_examples

  def sample(key, batch):
    return sample_linear_prompts(key, batch, n, d, input_dist=config.input_dist)

  key = jax.random.key(config.seed)
  key, k_rate, k_eval = jax.random.split(key, 3)
  x_r, y_r, xq_r, yq_r, _ = sample(k_rate, config.rate_search_prompts)
  x, y, xq, yq, _ = sample(k_eval, config.eval_prompts)
  xs = np.concatenate([np.asarray(x), np.asarray(xq)[:, None]], axis=1)
  ys = np.concatenate([np.asarray(y), np.asarray(yq)[:, None]], axis=1)
  ols_pred = jnp.asarray(baselines.least_squares(xs, ys)[:, -1], jnp.float32)
  w_ols = jnp.asarray(baselines.least_squares_weights(x, y), jnp.float32)

  gd_rows = {"num_steps": [], "rate": [], "loss": []}
  for steps in sorted(set(config.num_layers) | set(config.gd_steps_reported) | {1}):
    rate, _ = gd.best_gd_rate(x_r, y_r, xq_r, yq_r, steps)
    gd_rows["num_steps"].append(steps)
    gd_rows["rate"].append(rate)
    gd_rows["loss"].append(float(gd.gd_loss(x, y, xq, yq, rate, steps)))

  models = {}
  for depth in config.num_layers:
    key, k_init, k_data = jax.random.split(key, 3)
    model = LSAStack(d, depth, init_scale=config.init_scale, rngs=nnx.Rngs(params=k_init))
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip), optax.adam(config.learning_rate))
    history = train_regression(model, tx, lambda k: sample(k, config.batch_size),
                               num_steps=config.num_steps, key=k_data, log_every=config.log_every)

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
      "input_dist": config.input_dist,
      "zero_predictor_loss": float(0.5 * jnp.mean(jnp.square(yq))),
      "gd": gd_rows,
      "models": models,
  }
  write_results(workdir, results)
  return results
