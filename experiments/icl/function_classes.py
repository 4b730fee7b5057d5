"""In-context learning of function classes (Garg et al. 2022): one transformer per family (sparse
linear, two-layer ReLU nets, decision trees), each compared at every context length with least
squares, averaging, 3-NN and the family's strong baseline (Lasso, gradient-boosted trees)."""

import os

import numpy as np

from jaxllm.data import icl_functions
from jaxllm.data import icl_regression as data
from jaxllm.icl import baselines, function_baselines
from jaxllm.icl.regression_task import LinearRegressionTask, predict
from jaxllm.results import write_results
from jaxllm.train.loop import train

FAMILIES = ("linear", "sparse_linear", "relu_net", "decision_tree")


def family_kwargs(config, family):
  c = config.task
  return {"sparse_linear": {"sparsity": int(c.sparsity)}, "relu_net": {"hidden": int(c.hidden)},
          "decision_tree": {"depth": int(c.tree_depth)}}.get(family, {})


def normalizer(config, family):
  """E y^2 of the family (the zero predictor's error): d, s, d and 1 (Garg et al.'s scaling)."""
  c = config.task
  return {"sparse_linear": float(c.sparsity), "decision_tree": 1.0}.get(family, float(c.n_dims))


class FunctionTask(LinearRegressionTask):
  """Prompts of one family; batches are a pure function of (seed, step); curriculum over d and k."""

  def __init__(self, config, family):
    if family not in FAMILIES:
      raise ValueError(f"task.families entry {family!r} unknown; allowed: {list(FAMILIES)}")
    super().__init__(config)
    self.family, self.kwargs = family, family_kwargs(config, family)

  def batch(self, step: int):
    rng = np.random.default_rng([self.seed, FAMILIES.index(self.family), step])
    xs, ys = icl_functions.sample(self.family, rng, self.batch_size, self.points.value(step),
                                  self.n_dims, active_dims=self.dims.value(step), **self.kwargs)
    return {"tokens": data.interleave(xs, ys), "ys": ys}


def baseline_predictions(config, family, xs, ys):
  """The baselines Garg et al. show for ``family``; sklearn ones on the first few prompts only."""
  e = config.eval
  out = {"least_squares": baselines.least_squares(xs, ys),
         "averaging": baselines.averaging(xs, ys),
         "knn3": baselines.nearest_neighbours(xs, ys, 3)}
  few = slice(0, int(e.num_sklearn_prompts))
  if family == "sparse_linear":
    out["lasso"] = function_baselines.lasso(xs[few], ys[few], float(e.lasso_alpha))
  if family == "decision_tree":
    out["gradient_boosting"] = function_baselines.gradient_boosting(
        xs[few], ys[few], n_estimators=int(e.gbt_estimators), learning_rate=float(e.gbt_lr),
        max_depth=int(e.gbt_depth))
  return out


def evaluate(model, config, family) -> dict:
  """Squared error / E y^2 at every context length for the model and the family's baselines."""
  c = config.task
  d, k = int(c.n_dims), int(c.n_points)
  rng = np.random.default_rng([int(config.seed), FAMILIES.index(family), 10**9])
  xs, ys = icl_functions.sample(family, rng, int(config.eval.num_prompts), k, d,
                                **family_kwargs(config, family))
  norm = normalizer(config, family)
  preds = {"transformer": predict(model, xs, ys), **baseline_predictions(config, family, xs, ys)}
  errors, stderr = {}, {}
  for name, p in preds.items():
    sq = (p - ys[:len(p)]) ** 2 / norm
    errors[name] = sq.mean(axis=0)
    stderr[name] = sq.std(axis=0) / np.sqrt(len(p))
  # The transformer on exactly the prompts the slow sklearn baselines saw, for a paired comparison.
  few = int(config.eval.num_sklearn_prompts)
  errors["transformer_sklearn_prompts"] = ((preds["transformer"][:few] - ys[:few]) ** 2 / norm
                                           ).mean(axis=0)
  at = {f"k={kk}": {n: float(e[kk]) for n, e in errors.items()}
        for kk in sorted({d, 2 * d, k - 1}) if kk < k}
  return {"normalizer": norm, "num_prompts": len(ys), "num_sklearn_prompts": few,
          "errors": {n: e.tolist() for n, e in errors.items()},
          "stderr": {n: s.tolist() for n, s in stderr.items()}, "at": at}


def run(config, workdir: str) -> dict:
  results = {"experiment": "icl.function_classes", "n_dims": int(config.task.n_dims),
             "n_points": int(config.task.n_points), "families": {}}
  for family in config.task.families:
    task = FunctionTask(config, family)
    trained = train(config, os.path.join(workdir, family), task)
    results["families"][family] = {
        "train_steps": trained.final_step, "final_train_loss": trained.last_metrics.get("loss"),
        **evaluate(trained.model, config, family)}
    write_results(workdir, results)  # partial results survive a later family's failure
  return results
