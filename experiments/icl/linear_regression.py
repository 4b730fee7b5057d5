"""In-context linear regression (Garg et al. 2022): train a transformer on prompts
(x_1, w.x_1, ..., x_k, w.x_k) and compare its error at every context length with least squares,
ridge, averaging and 3-nearest-neighbours on the same test prompts."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm.data import icl_regression as data
from jaxllm.icl import baselines
from jaxllm.models.transformer import build
from jaxllm.results import write_results
from jaxllm.train.loop import train


def check_prompt_fits(model_cfg: dict, n_points: int):
  """Raises ValueError when 2 * n_points prompt tokens exceed ``model.max_len``."""
  if 2 * n_points > model_cfg.get("max_len", 0):
    raise ValueError(f"model.max_len={model_cfg.get('max_len')} is shorter than the prompt "
                     f"(2 * task.n_points = {2 * n_points} tokens)")


def prompt_loss(model, batch):
  """Mean squared error of the predictions read at the x positions of interleaved prompts."""
  preds = model(batch["tokens"])[:, ::2, 0]
  return jnp.mean((preds - batch["ys"]) ** 2), {}


class LinearRegressionTask:
  """Batches are a pure function of (seed, step); the curriculum widens d and k over training."""

  def __init__(self, config):
    c = config.task
    self.n_dims, self.n_points = int(c.n_dims), int(c.n_points)
    self.batch_size = int(config.train.batch_size)
    self.noise_std = float(c.noise_std)
    self.seed = int(config.seed)
    cur = c.curriculum
    self.dims = data.Curriculum(int(cur.dims_start), self.n_dims, int(cur.dims_inc),
                                int(cur.interval))
    self.points = data.Curriculum(int(cur.points_start), self.n_points, int(cur.points_inc),
                                  int(cur.interval))
    self.model_cfg = dict(config.model.to_dict(), io="vectors", input_dim=self.n_dims,
                          output_dim=1)
    check_prompt_fits(self.model_cfg, self.n_points)

  def init_model(self, rngs):
    return build(self.model_cfg, rngs=rngs)

  def batch(self, step: int):
    rng = np.random.default_rng([self.seed, step])
    xs, ys, _ = data.sample_prompts(
        rng, self.batch_size, self.points.value(step), self.n_dims,
        active_dims=self.dims.value(step), noise_std=self.noise_std)
    return {"tokens": data.interleave(xs, ys), "ys": ys}

  def loss(self, model, batch):
    return prompt_loss(model, batch)


def predict(model, xs, ys, batch_size: int = 256) -> np.ndarray:
  """Transformer predictions [B, k] of y_i from the first i pairs."""
  fwd = nnx.jit(lambda m, tok: m(tok)[:, ::2, 0])
  out = [np.asarray(fwd(model, jnp.asarray(data.interleave(xs[i:i + batch_size],
                                                           ys[i:i + batch_size]))))
         for i in range(0, len(xs), batch_size)]
  return np.concatenate(out)


def evaluate(model, config) -> dict:
  """Normalised squared error (divided by d) at every context length, model and baselines."""
  c = config.task
  d, k = int(c.n_dims), int(c.n_points)
  rng = np.random.default_rng([int(config.seed), 10**9])  # disjoint from training streams
  xs, ys, _ = data.sample_prompts(rng, int(config.eval.num_prompts), k, d,
                                  noise_std=float(c.noise_std))
  ridge_lam = max(float(c.noise_std) ** 2, float(config.eval.ridge_lambda))
  preds = {
      "transformer": predict(model, xs, ys),
      "least_squares": baselines.least_squares(xs, ys),
      "ridge": baselines.ridge(xs, ys, ridge_lam),
      "averaging": baselines.averaging(xs, ys),
      "knn3": baselines.nearest_neighbours(xs, ys, 3),
  }
  errors = {name: baselines.squared_error(p, ys, normalizer=d) for name, p in preds.items()}
  sem = {name: (((p - ys) ** 2) / d).std(axis=0) / np.sqrt(len(ys)) for name, p in preds.items()}
  at = {f"k={kk}": {n: float(e[kk]) for n, e in errors.items()}
        for kk in sorted({d, 2 * d, k - 1}) if kk < k}
  return {"n_dims": d, "n_points": k, "num_prompts": len(ys), "ridge_lambda": ridge_lam,
          "errors": {n: e.tolist() for n, e in errors.items()},
          "stderr": {n: s.tolist() for n, s in sem.items()}, "at": at}


def run(config, workdir: str) -> dict:
  task = LinearRegressionTask(config)
  result = train(config, workdir, task)
  results = {"experiment": "icl.linear_regression", "train_steps": result.final_step,
             "final_train_loss": result.last_metrics.get("loss"),
             "steps_per_second": result.steps_per_second, **evaluate(result.model, config)}
  write_results(workdir, results)
  return results
