"""In-context linear regression (Garg et al. 2022): train a transformer on prompts
(x_1, w.x_1, ..., x_k, w.x_k) and compare its error at every context length with least squares,
ridge, averaging and 3-nearest-neighbours on the same test prompts."""

import numpy as np

from jaxllm.data import icl_regression as data
from jaxllm.icl import baselines
from jaxllm.icl.regression_task import LinearRegressionTask, predict
from jaxllm.results import write_results
from jaxllm.train.loop import train


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
