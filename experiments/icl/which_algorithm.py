"""What learning algorithm is in-context learning? (Akyurek et al. 2022).

One transformer per (depth, width, noise variance) of the grid is trained on noisy linear regression
(x ~ N(0, I_d), w ~ N(0, I_d) fresh per prompt, y = w.x + eps with eps ~ N(0, sigma^2)) with the
foundation study's task and training loop. Each is compared at every context length k, on test
prompts shared by all models of a noise level, with:

* GD from zero for each step count in eval.gd_steps, the step size tuned per k on other prompts;
* ridge with the Bayes lambda = sigma^2 (the posterior mean; eval.ridge_floor stands in when
  sigma = 0, where ridge tends to min-norm least squares);
* OLS, the min-norm least-squares solution.

The metrics are the squared prediction difference (SPD, on eval.num_prompts prompts) and the
implicit linear weight difference (ILWD, on the first eval.ilwd_prompts of them, the model's weight
fitted to its predictions at eval.num_probes probe queries); see jaxllm.icl.implicit_weights. Both,
and the errors against the targets, are divided by d.
"""

import math
import os

import ml_collections
import numpy as np

from jaxllm.data import icl_regression as data
from jaxllm.icl import baselines
from jaxllm.icl import implicit_weights as iw
from jaxllm.icl.regression_task import LinearRegressionTask, predict
from jaxllm.results import write_results
from jaxllm.train.loop import train


def model_grid(config) -> list[dict]:
  """The (depth, width, noise variance) of every model, validated, in training order."""
  g, heads = config.grid, int(config.model.num_heads)
  for field, values in (("depths", g.depths), ("widths", g.widths)):
    if not values or any(int(v) != v or v < 1 for v in values):
      raise ValueError(f"grid.{field} must be a non-empty list of positive integers, got {values}")
  if any(int(w) % heads for w in g.widths):
    raise ValueError(f"every grid.widths entry must be a multiple of model.num_heads={heads}, "
                     f"got {list(g.widths)}")
  if not g.noise_variances or any(v < 0 for v in g.noise_variances):
    raise ValueError(f"grid.noise_variances must be a non-empty list of values >= 0, got "
                     f"{g.noise_variances}")
  return [{"name": f"depth{int(depth)}_width{int(width)}_noise{float(var):g}",
           "depth": int(depth), "width": int(width), "noise_variance": float(var)}
          for var in g.noise_variances for depth in g.depths for width in g.widths]


def model_config(config, spec: dict) -> ml_collections.ConfigDict:
  """``config`` with the model's depth and width and the task's noise set from a grid entry."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.model.update(num_layers=spec["depth"], d_model=spec["width"])
  c.task.noise_std = math.sqrt(spec["noise_variance"])
  return c


def estimator_names(config) -> list[str]:
  return [f"gd_{int(t)}" for t in config.eval.gd_steps] + ["ridge", "ols"]


def reference_estimators(config, noise_variance: float, index: int) -> dict:
  """Test prompts of one noise level and every estimator's weights and predictions on them.

  Args:
    config: the study config.
    noise_variance: sigma^2 of the targets (context and query).
    index: position of the noise level in grid.noise_variances (keeps the prompt streams apart).

  Returns:
    dict with xs [B, K, d], ys [B, K], the tuned GD rates per step count, and per estimator name
    its weights [B, K, d] and predictions [B, K].
  """
  c, e = config.task, config.eval
  d, k, seed = int(c.n_dims), int(c.n_points), int(config.seed)
  noise_std = math.sqrt(noise_variance)
  xs, ys, _ = data.sample_prompts(np.random.default_rng([seed, 10**9, index]),
                                  int(e.num_prompts), k, d, noise_std=noise_std)
  tune_x, tune_y, _ = data.sample_prompts(np.random.default_rng([seed, 10**9 + 1, index]),
                                          int(e.tune_prompts), k, d, noise_std=noise_std)
  lam = max(noise_variance, float(e.ridge_floor))
  rates = {}
  weights = {}
  for t in e.gd_steps:
    rates[f"gd_{int(t)}"] = iw.tune_gd_rates(tune_x, tune_y, int(t))
    weights[f"gd_{int(t)}"] = iw.gd_weights_by_prefix(xs, ys, rates[f"gd_{int(t)}"], int(t))
  weights["ridge"] = iw.weights_by_prefix(xs, ys, lambda x, y: baselines.ridge_weights(x, y, lam))
  weights["ols"] = iw.weights_by_prefix(xs, ys, baselines.least_squares_weights)
  return {"xs": xs, "ys": ys, "ridge_lambda": lam, "gd_rates": rates, "weights": weights,
          "predictions": {n: iw.predictions(xs, w) for n, w in weights.items()}}


def summarise(curve_K, d: int) -> dict:
  """Mean over k >= 1 and the values at k = d // 2, d, 2d and the last k of a [K] curve."""
  curve_K = np.asarray(curve_K)
  at = sorted({max(d // 2, 1), d, 2 * d, len(curve_K) - 1} & set(range(1, len(curve_K))))
  return {"mean": float(curve_K[1:].mean()), **{f"k={k}": float(curve_K[k]) for k in at}}


def compare(model, config, ref: dict) -> dict:
  """SPD and ILWD (divided by d) of a model to every estimator, and the errors, at every k."""
  e = config.eval
  d = int(config.task.n_dims)
  xs, ys = ref["xs"], ref["ys"]
  preds = predict(model, xs, ys)
  n_ilwd = int(e.ilwd_prompts)
  probes = np.random.default_rng([int(config.seed), 10**9 + 2]).standard_normal(
      (int(e.num_probes), d))
  w_model = iw.implicit_weights(lambda x, y: predict(model, x, y), xs[:n_ilwd], ys[:n_ilwd],
                                probes)
  spd = {n: iw.spd(preds, p) / d for n, p in ref["predictions"].items()}
  ilwd = {n: iw.ilwd(w_model, w[:n_ilwd]) / d for n, w in ref["weights"].items()}
  errors = {"transformer": ((preds - ys) ** 2).mean(axis=0) / d,
            **{n: ((p - ys) ** 2).mean(axis=0) / d for n, p in ref["predictions"].items()}}
  # How far the model is from being linear in the query: its error to its own linear fit.
  fit_gap = iw.spd(preds[:n_ilwd], iw.predictions(xs[:n_ilwd], w_model)) / d
  summary = {"spd": {n: summarise(v, d) for n, v in spd.items()},
             "ilwd": {n: summarise(v, d) for n, v in ilwd.items()},
             "errors": {n: summarise(v, d) for n, v in errors.items()}}
  return {"spd": spd, "ilwd": ilwd, "errors": errors, "linear_fit_gap": fit_gap,
          "summary": summary,
          "closest_by_spd": min(spd, key=lambda n: summary["spd"][n]["mean"]),
          "closest_by_ilwd": min(ilwd, key=lambda n: summary["ilwd"][n]["mean"])}


def run(config, workdir: str) -> dict:
  specs = model_grid(config)
  c = config.task
  results = {"experiment": "icl.which_algorithm", "n_dims": int(c.n_dims),
             "n_points": int(c.n_points), "num_prompts": int(config.eval.num_prompts),
             "ilwd_prompts": int(config.eval.ilwd_prompts),
             "num_probes": int(config.eval.num_probes), "normalizer": int(c.n_dims),
             "estimators": estimator_names(config), "noise": {}, "models": {}}
  refs = {}
  for i, var in enumerate(config.grid.noise_variances):
    ref = reference_estimators(config, float(var), i)
    refs[float(var)] = ref
    results["noise"][f"{float(var):g}"] = {
        "ridge_lambda": ref["ridge_lambda"], "gd_rates": ref["gd_rates"],
        "errors": {n: ((p - ref["ys"]) ** 2).mean(axis=0) / int(c.n_dims)
                   for n, p in ref["predictions"].items()}}
  for spec in specs:
    mc = model_config(config, spec)
    trained = train(mc, os.path.join(workdir, spec["name"]), LinearRegressionTask(mc))
    results["models"][spec["name"]] = {
        **spec, "train_steps": trained.final_step,
        "final_train_loss": trained.last_metrics.get("loss"),
        "steps_per_second": trained.steps_per_second,
        **compare(trained.model, config, refs[spec["noise_variance"]])}
    write_results(workdir, results)  # finished models survive a later one's failure
  return results
