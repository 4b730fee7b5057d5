"""Trained linear self-attention converges to a closed form (Zhang, Frei & Bartlett 2023).

Trains one ZFB-parameterised LSA layer by small-step gradient descent (the discretised gradient flow of
the paper) on fresh prompts, then checks:
  * the learned matrix u * W^KQ_11^T against Gamma^-1 entrywise;
  * the test error at the training length and at other prompt lengths against the closed form;
  * task shift (w with a non-zero mean): the normalised error is unchanged and still falls with M;
  * covariate shift (test inputs scaled by c): the error does not vanish as M grows and predictions
    scale by c^2 relative to the truth.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxllm.icl import closed_forms
from jaxllm.icl.linear_tasks import sample_linear_prompts
from jaxllm.icl.training import train_regression
from jaxllm.icl.linear_self_attention import ZFBLinearSelfAttention, regression_tokens
from jaxllm.results import write_results


def _covariance(config):
  diag = np.asarray(config.covariance_diag, dtype=np.float64)
  if diag.shape != (config.dim,) or np.any(diag <= 0):
    raise ValueError(f"config.covariance_diag must hold config.dim = {config.dim} positive numbers, "
                     f"got {diag.tolist()}")
  return np.diag(diag)


def _validate(config):
  for field in ("dim", "num_examples", "batch_size", "num_steps", "eval_prompts"):
    value = config[field]
    if int(value) != value or value < 1:
      raise ValueError(f"config.{field} must be a positive integer, got {value}")
  if config.learning_rate <= 0 or config.init_scale <= 0:
    raise ValueError("config.learning_rate and config.init_scale must be positive, got "
                     f"{config.learning_rate} and {config.init_scale}")
  if any(int(m) != m or m < 1 for m in config.eval_lengths):
    raise ValueError(f"config.eval_lengths must be positive integers, got {config.eval_lengths}")
  if any(c <= 0 for c in config.covariate_scales):
    raise ValueError(f"config.covariate_scales must be positive, got {config.covariate_scales}")


def _evaluate(model, key, num_prompts, num_examples, dim, cov_sqrt, task_mean):
  """Monte-Carlo squared error and target energy E[y_q^2] on fresh prompts."""
  x, y, xq, yq, _ = sample_linear_prompts(key, num_prompts, num_examples, dim,
                                          input_cov_sqrt=cov_sqrt, task_mean=task_mean)
  pred = model(regression_tokens(x, y, xq))
  return float(jnp.mean(jnp.square(pred - yq))), float(jnp.mean(jnp.square(yq)))


def run(config, workdir):
  """Trains the ZFB layer and compares it with the closed forms; writes workdir/results.json."""
  _validate(config)
  d, n = config.dim, config.num_examples
  lam = _covariance(config)
  lam_sqrt = np.sqrt(lam)
  key_init, key_data, key_eval = jax.random.split(jax.random.key(config.seed), 3)
  model = ZFBLinearSelfAttention(d, init_scale=config.init_scale,
                                 rngs=nnx.Rngs(params=key_init))
  # A decaying step keeps the SGD noise around the gradient-flow limit small at the end.
  schedule = optax.cosine_decay_schedule(config.learning_rate, config.num_steps, alpha=0.02)
  history = train_regression(
      model, optax.sgd(schedule),
      lambda k: sample_linear_prompts(k, config.batch_size, n, d, input_cov_sqrt=lam_sqrt),
      num_steps=config.num_steps, key=key_data, log_every=config.log_every)

  learned = np.asarray(model.learned_matrix(), dtype=np.float64)
  gamma_inv = closed_forms.zfb_gamma_inv(lam, n)
  w_pv, w_kq = np.asarray(model.w_pv[...]), np.asarray(model.w_kq[...])
  off_block = np.concatenate([w_pv[:d].ravel(), w_pv[d, :d], w_kq[d].ravel(), w_kq[:d, d]])

  task_mean = np.full(d, config.task_shift_mean)
  scenarios = {"in_distribution": (lam, None)}
  scenarios["task_shift"] = (lam, task_mean)
  for c in config.covariate_scales:
    scenarios[f"covariate_scale_{c:g}"] = (c * c * lam, None)

  curves = {}
  for name, (test_lam, mean) in scenarios.items():
    second_moment = np.eye(d) if mean is None else np.eye(d) + np.outer(mean, mean)
    rows = {"num_examples": [], "error": [], "formula": [], "normalized_error": [],
            "normalized_formula": []}
    for m in config.eval_lengths:
      key_eval, sub = jax.random.split(key_eval)
      err, energy = _evaluate(model, sub, config.eval_prompts, m, d, np.sqrt(test_lam), mean)
      formula = closed_forms.lsa_prediction_error(learned, test_lam, m, second_moment)
      target_energy = float(np.trace(second_moment @ test_lam))
      rows["num_examples"].append(int(m))
      rows["error"].append(err)
      rows["formula"].append(formula)
      rows["normalized_error"].append(err / energy)
      rows["normalized_formula"].append(formula / target_energy)
    curves[name] = rows

  # Same prompts, inputs scaled by c: the model's output grows as c^3 while the truth grows as c.
  key_eval, sub = jax.random.split(key_eval)
  x, y, xq, _, _ = sample_linear_prompts(sub, config.eval_prompts, n, d, input_cov_sqrt=lam_sqrt)
  base = model(regression_tokens(x, y, xq))
  scaling = {"scale": [], "prediction_ratio_over_truth_ratio": [], "expected": []}
  for c in config.covariate_scales:
    pred_c = model(regression_tokens(c * x, c * y, c * xq))
    ratio = float(jnp.sum(pred_c * base) / jnp.sum(base * base))
    scaling["scale"].append(float(c))
    scaling["prediction_ratio_over_truth_ratio"].append(ratio / c)
    scaling["expected"].append(float(c * c))

  key_eval, sub = jax.random.split(key_eval)
  err_train, _ = _evaluate(model, sub, config.eval_prompts, n, d, lam_sqrt, None)
  results = {
      "study": "lsa_closed_form",
      "dim": d,
      "num_examples": n,
      "covariance": lam,
      "learned_matrix": learned,
      "gamma_inv": gamma_inv,
      "max_entry_error_relative": float(np.abs(learned - gamma_inv).max() / np.abs(gamma_inv).max()),
      "off_block_max_abs": float(np.abs(off_block).max()),
      "test_error_at_train_length": err_train,
      "formula_at_train_length": float(np.trace(lam) - np.trace(lam @ lam @ gamma_inv)),
      "isotropic_formula": closed_forms.zfb_isotropic_error(d, n),
      "train": history,
      "curves": curves,
      "scaling": scaling,
  }
  write_results(workdir, results)
  return results
