"""Trained linear self-attention converges to a closed form (Zhang, Frei & Bartlett 2023).

Trains one ZFB-parameterised LSA layer by small-step gradient descent (the discretised gradient flow of
the paper) on fresh prompts, then checks:
  * the learned matrix u * W^KQ_11^T against Gamma^-1 entrywise;
  * the test error at the training length and at other prompt lengths against the closed form;
  * task shift (w with a non-zero mean): the normalised error is unchanged and still falls with M;
  * covariate shift (test inputs scaled by c): the error does not vanish as M grows and predictions
    scale by c^2 relative to the truth.
"""

import os

import jax.numpy as jnp
import numpy as np

from jaxllm.data import icl_regression as data
from jaxllm.icl import closed_forms
from jaxllm.icl.linear_self_attention import ZFBLinearSelfAttention, regression_tokens
from jaxllm.icl.regression_task import QueryRegressionTask
from jaxllm.results import write_results
from jaxllm.train.loop import train
from jaxllm.train.metrics import read_metrics


def _covariance(config):
  t = config.task
  diag = np.asarray(t.covariance_diag, dtype=np.float64)
  if diag.shape != (t.n_dims,) or np.any(diag <= 0):
    raise ValueError(f"config.task.covariance_diag must hold task.n_dims = {t.n_dims} positive "
                     f"numbers, got {diag.tolist()}")
  return np.diag(diag)


def _validate(config):
  t, e = config.task, config.eval
  for name, value in (("task.n_dims", t.n_dims), ("task.n_points", t.n_points),
                      ("train.batch_size", config.train.batch_size),
                      ("train.steps", config.train.steps), ("eval.num_prompts", e.num_prompts)):
    if int(value) != value or value < 1:
      raise ValueError(f"config.{name} must be a positive integer, got {value}")
  if config.optimizer.learning_rate <= 0 or config.model.init_scale <= 0:
    raise ValueError("config.optimizer.learning_rate and config.model.init_scale must be "
                     f"positive, got {config.optimizer.learning_rate} and "
                     f"{config.model.init_scale}")
  if any(int(m) != m or m < 1 for m in e.eval_lengths):
    raise ValueError(f"config.eval.eval_lengths must be positive integers, got {e.eval_lengths}")
  if any(c <= 0 for c in e.covariate_scales):
    raise ValueError(f"config.eval.covariate_scales must be positive, got {e.covariate_scales}")


def _prompts(rng, num_prompts, num_examples, dim, cov_sqrt, task_mean=None):
  xs, ys, _ = data.sample_prompts(rng, num_prompts, num_examples + 1, dim,
                                  input_cov_sqrt=cov_sqrt, task_mean=task_mean)
  return data.split_query(xs, ys)


def _evaluate(model, rng, num_prompts, num_examples, dim, cov_sqrt, task_mean):
  """Monte-Carlo squared error and target energy E[y_q^2] on fresh prompts."""
  x, y, xq, yq = _prompts(rng, num_prompts, num_examples, dim, cov_sqrt, task_mean)
  pred = model(regression_tokens(x, y, xq))
  return float(jnp.mean(jnp.square(pred - yq))), float(jnp.mean(jnp.square(yq)))


def run(config, workdir):
  """Trains the ZFB layer and compares it with the closed forms; writes workdir/results.json."""
  _validate(config)
  t, e = config.task, config.eval
  d, n = int(t.n_dims), int(t.n_points) - 1
  lam = _covariance(config)
  lam_sqrt = np.sqrt(lam)
  task = QueryRegressionTask(
      config, lambda rngs: ZFBLinearSelfAttention(d, init_scale=float(config.model.init_scale),
                                                  rngs=rngs),
      input_cov_sqrt=lam_sqrt)
  train_dir = os.path.join(workdir, "train")
  model = train(config, train_dir, task, progress=False).model
  logged = read_metrics(train_dir)
  history = {"step": [r["step"] for r in logged], "loss": [r["loss"] for r in logged]}
  rng = np.random.default_rng([int(config.seed), 10**9])  # disjoint from the training batches

  learned = np.asarray(model.learned_matrix(), dtype=np.float64)
  gamma_inv = closed_forms.zfb_gamma_inv(lam, n)
  w_pv, w_kq = np.asarray(model.w_pv[...]), np.asarray(model.w_kq[...])
  off_block = np.concatenate([w_pv[:d].ravel(), w_pv[d, :d], w_kq[d].ravel(), w_kq[:d, d]])

  task_mean = np.full(d, float(e.task_shift_mean))
  scenarios = {"in_distribution": (lam, None)}
  scenarios["task_shift"] = (lam, task_mean)
  for c in e.covariate_scales:
    scenarios[f"covariate_scale_{c:g}"] = (c * c * lam, None)

  curves = {}
  for name, (test_lam, mean) in scenarios.items():
    second_moment = np.eye(d) if mean is None else np.eye(d) + np.outer(mean, mean)
    rows = {"num_examples": [], "error": [], "formula": [], "normalized_error": [],
            "normalized_formula": []}
    for m in e.eval_lengths:
      err, energy = _evaluate(model, rng, int(e.num_prompts), m, d, np.sqrt(test_lam), mean)
      formula = closed_forms.lsa_prediction_error(learned, test_lam, m, second_moment)
      target_energy = float(np.trace(second_moment @ test_lam))
      rows["num_examples"].append(int(m))
      rows["error"].append(err)
      rows["formula"].append(formula)
      rows["normalized_error"].append(err / energy)
      rows["normalized_formula"].append(formula / target_energy)
    curves[name] = rows

  # Same prompts, inputs scaled by c: the model's output grows as c^3 while the truth grows as c.
  x, y, xq, _ = _prompts(rng, int(e.num_prompts), n, d, lam_sqrt)
  base = model(regression_tokens(x, y, xq))
  scaling = {"scale": [], "prediction_ratio_over_truth_ratio": [], "expected": []}
  for c in e.covariate_scales:
    pred_c = model(regression_tokens(c * x, c * y, c * xq))
    ratio = float(jnp.sum(pred_c * base) / jnp.sum(base * base))
    scaling["scale"].append(float(c))
    scaling["prediction_ratio_over_truth_ratio"].append(ratio / c)
    scaling["expected"].append(float(c * c))

  err_train, _ = _evaluate(model, rng, int(e.num_prompts), n, d, lam_sqrt, None)
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
