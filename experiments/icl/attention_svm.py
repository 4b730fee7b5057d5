"""Attention converges to a max-margin token separator (Tarzanagh et al. 2023).

Model: f(X_i) = v^T X_i^T softmax(X_i W z_i) with v fixed, logistic loss on labels y_i = +-1,
normalised gradient descent on W from a small random start. Tokens, queries and v lie on the unit
sphere. After training, the selected token of each sample is the one with the largest softmax weight
(as in the authors' procedure); Att-SVM is solved for that selection and cos(W_t, W_mm) is tracked
over the iterations. The selection is also checked for local optimality (it outscores its support
tokens) and compared with the globally optimal tokens (largest score y_i v^T x_it).
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.icl import svm
from jaxllm.results import write_results

QUERIES = ("separate", "first_token")


def _validate(config):
  t = config.task
  for name, value in (("task.num_samples", t.num_samples), ("task.num_tokens", t.num_tokens),
                      ("task.n_dims", t.n_dims), ("train.steps", config.train.steps),
                      ("train.log_every", config.train.log_every),
                      ("num_trials", config.num_trials)):
    if int(value) != value or value < 1:
      raise ValueError(f"config.{name} must be a positive integer, got {value}")
  if t.num_tokens < 2:
    raise ValueError(f"config.task.num_tokens must be at least 2, got {t.num_tokens}")
  if t.query not in QUERIES:
    raise ValueError(f"config.task.query must be one of {QUERIES}, got {t.query!r}")
  if config.optimizer.name != "normalized_gd":
    raise ValueError(f"config.optimizer.name must be 'normalized_gd' (the paper's rule), got "
                     f"{config.optimizer.name!r}")
  if config.optimizer.learning_rate <= 0 or config.model.init_scale < 0:
    raise ValueError("config.optimizer.learning_rate must be positive and config.model.init_scale "
                     f"non-negative, got {config.optimizer.learning_rate}, "
                     f"{config.model.init_scale}")
  if config.train.steps % config.train.log_every:
    raise ValueError(f"config.train.steps ({config.train.steps}) must be a multiple of "
                     f"config.train.log_every ({config.train.log_every})")


def _unit(key, shape):
  u = jax.random.normal(key, shape)
  return u / jnp.linalg.norm(u, axis=-1, keepdims=True)


def sample_problem(key, num_samples, num_tokens, dim, query):
  """Unit-norm tokens X (n, T, d), queries z (n, d), labels y (n,) and head v (d,)."""
  kx, kz, ky, kv = jax.random.split(key, 4)
  x = _unit(kx, (num_samples, num_tokens, dim))
  z = x[:, 0] if query == "first_token" else _unit(kz, (num_samples, dim))
  y = jnp.where(jax.random.bernoulli(ky, 0.5, (num_samples,)), 1.0, -1.0)
  return x, z, y, _unit(kv, (dim,))


def attention_probs(w, x_BTD, z_BD):
  """softmax(X_i W z_i) over the tokens (float32 or wider)."""
  logits_BT = jnp.einsum("btd,de,be->bt", x_BTD, w, z_BD)
  return jax.nn.softmax(logits_BT.astype(jnp.promote_types(logits_BT.dtype, jnp.float32)), axis=-1)


def logistic_loss(w, x_BTD, z_BD, y_B, v_D):
  """mean log(1 + exp(-y_i f(X_i))) with f(X) = v^T X^T softmax(X W z)."""
  probs_BT = attention_probs(w, x_BTD, z_BD)
  values_BT = jnp.einsum("btd,d->bt", x_BTD, v_D)
  # Once attention saturates the gradient lives in exp(-gap) terms; writing f relative to the
  # most-attended token's value keeps them from cancelling against O(1) numbers.
  top_B1 = jax.lax.stop_gradient(jnp.argmax(probs_BT, axis=-1))[:, None]
  ref_B1 = jnp.take_along_axis(values_BT, top_B1, axis=-1)
  out_B = ref_B1[:, 0] + jnp.sum(probs_BT * (values_BT - ref_B1), axis=-1)
  return jnp.mean(jnp.logaddexp(0.0, -y_B * out_B))


@partial(jax.jit, static_argnames=("num_iterations", "log_every"))
def normalized_gd(w0, x, z, y, v, lr, num_iterations, log_every):
  """W <- W - lr grad / ||grad||_F; returns the iterates every `log_every` steps and their losses."""

  def step(w, _):
    loss, g = jax.value_and_grad(logistic_loss)(w, x, z, y, v)
    return w - lr * g / jnp.maximum(jnp.linalg.norm(g), 1e-30), loss

  def chunk(w, _):
    w, losses = jax.lax.scan(step, w, None, length=log_every)
    return w, (w, losses[-1])

  _, (ws, losses) = jax.lax.scan(chunk, w0, None, length=num_iterations // log_every)
  return ws, losses


def _cosine(a, b):
  return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def run_trial(key, config):
  """One random problem: trains W and compares its direction with Att-SVM's solution."""
  # Float64 throughout: late iterates move by gradients of size exp(-logit gap).
  with jax.enable_x64(True):
    return _run_trial(key, config)


def _run_trial(key, config):
  k_data, k_init = jax.random.split(key)
  t, tc = config.task, config.train
  x, z, y, v = (a.astype(jnp.float64) for a in sample_problem(
      k_data, t.num_samples, t.num_tokens, t.n_dims, t.query))
  w0 = config.model.init_scale * jax.random.normal(k_init, (t.n_dims, t.n_dims), jnp.float64)
  ws, losses = normalized_gd(w0, x, z, y, v, config.optimizer.learning_rate, tc.steps,
                             tc.log_every)
  ws = np.asarray(ws, np.float64)
  w_final = ws[-1]
  selected = np.asarray(jnp.argmax(attention_probs(jnp.asarray(w_final), x, z), -1))
  scores = np.asarray(y[:, None] * jnp.einsum("btd,d->bt", x, v))
  solution = svm.attention_svm(x, z, selected)
  w_mm = solution["w"]
  globally_opt = scores.argmax(-1)
  if np.array_equal(globally_opt, selected):
    cos_global = [_cosine(w, w_mm) for w in ws]
  else:
    w_global = svm.attention_svm(x, z, globally_opt)["w"]
    cos_global = [_cosine(w, w_global) for w in ws]
  probs_final = np.asarray(attention_probs(jnp.asarray(w_final), x, z))
  return {
      "iteration": [(i + 1) * tc.log_every for i in range(len(ws))],
      "loss": np.asarray(losses).tolist(),
      "cos_to_w_mm": [_cosine(w, w_mm) for w in ws],
      "cos_to_global_w_mm": cos_global,
      "norm_ratio": [float(np.linalg.norm(w) / np.linalg.norm(w_mm)) for w in ws],
      "selected_tokens": selected.tolist(),
      "globally_optimal_tokens": globally_opt.tolist(),
      "selection_is_global": bool(np.array_equal(globally_opt, selected)),
      "selection_is_locally_optimal": svm.is_locally_optimal(x, selected, solution["support"],
                                                             scores),
      "min_selected_prob": float(probs_final[np.arange(len(selected)), selected].min()),
      "w_mm_norm": float(np.linalg.norm(w_mm)),
      "svm_min_margin": float(solution["margins"].min()),
  }


def run(config, workdir):
  """Runs `num_trials` random problems; writes workdir/results.json."""
  _validate(config)
  keys = jax.random.split(jax.random.key(config.seed), config.num_trials)
  trials = [run_trial(k, config) for k in keys]
  final_cos = np.array([t["cos_to_w_mm"][-1] for t in trials])
  results = {
      "study": "attention_svm",
      "num_samples": config.task.num_samples,
      "num_tokens": config.task.num_tokens,
      "dim": config.task.n_dims,
      "query": config.task.query,
      "learning_rate": config.optimizer.learning_rate,
      "final_cos_mean": float(final_cos.mean()),
      "final_cos_min": float(final_cos.min()),
      "fraction_locally_optimal": float(np.mean([t["selection_is_locally_optimal"]
                                                 for t in trials])),
      "fraction_global": float(np.mean([t["selection_is_global"] for t in trials])),
      "trials": trials,
  }
  write_results(workdir, results)
  return results
