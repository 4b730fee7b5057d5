"""Transformers learn higher-order optimisation methods in context (Fu et al. 2023).

A transformer is trained on in-context linear regression (optionally with ill-conditioned input
covariances). Each layer gets a linear probe read out at the query position; each layer is then
matched to the Iterative Newton iteration and to the GD step count whose errors over the test
prompts are most similar (cosine of error vectors). The algorithms alone are also measured: iterations each
needs to reach least squares at d = 20, n = 40 for several condition numbers.
"""

import numpy as np

from jaxllm.data import icl_regression as data
from jaxllm.icl import baselines, newton, probes
from jaxllm.icl.regression_task import LinearRegressionTask, conditioned_inputs, hidden_states
from jaxllm.results import write_results
from jaxllm.train.loop import train


class ConditionedRegressionTask(LinearRegressionTask):
  """The foundation task with x ~ N(0, Sigma), Sigma of condition number task.condition_number."""

  def __init__(self, config):
    super().__init__(config)
    self.kappa = float(config.task.condition_number)

  def batch(self, step: int):
    rng = np.random.default_rng([self.seed, step])
    active = self.dims.value(step)
    xs, _, ws = data.sample_prompts(rng, self.batch_size, self.points.value(step), self.n_dims,
                                    active_dims=active)
    xs = conditioned_inputs(rng, xs, self.kappa, active)
    ys = np.einsum("bkd,bd->bk", xs, ws).astype(np.float32)
    return {"tokens": data.interleave(xs, ys), "ys": ys}


def test_prompts(rng, num, n_points, n_dims, kappa):
  xs, _, ws = data.sample_prompts(rng, num, n_points, n_dims)
  xs = conditioned_inputs(rng, xs, kappa)
  return xs, np.einsum("bkd,bd->bk", xs, ws).astype(np.float32)


def algorithm_errors(xs, ys, n, newton_iters, gd_steps, gd_lr):
  """Query-prediction errors of Newton iterations 0..J, GD step counts and least squares at n."""
  x, y, xq, yq = xs[:, :n], ys[:, :n], xs[:, n].astype(np.float64), ys[:, n]
  w_newton = newton.newton_weights(x, y, newton_iters)
  w_gd = np.stack([newton.gd_unnormalised_weights(x, y, gd_lr, t) for t in gd_steps])
  w_ls = baselines.least_squares_weights(x, y)
  return (np.einsum("jbd,bd->jb", w_newton, xq) - yq, np.einsum("jbd,bd->jb", w_gd, xq) - yq,
          np.einsum("bd,bd->b", w_ls, xq) - yq)


def probe_study(model, config, kappa):
  """Layer probes at each eval context length, matched to Newton iterations and GD steps."""
  c, e = config.task, config.eval
  d, k = int(c.n_dims), int(c.n_points)
  rng = np.random.default_rng([int(config.seed), 10**9])
  x_tr, y_tr = test_prompts(rng, int(e.probe_train_prompts), k, d, kappa)
  x_te, y_te = test_prompts(rng, int(e.num_prompts), k, d, kappa)
  h_tr, _ = hidden_states(model, x_tr, y_tr)
  h_te, out_te = hidden_states(model, x_te, y_te)
  gd_steps = [int(t) for t in e.gd_steps]
  per_n = {}
  for n in e.context_lengths:
    n = int(n)
    layer_err = []
    for h_l_tr, h_l_te in zip(h_tr, h_te):
      probe = probes.fit_linear_probe(h_l_tr[:, 2 * n], y_tr[:, n], float(e.probe_ridge))
      layer_err.append(probes.apply_probe(probe, h_l_te[:, 2 * n]) - y_te[:, n])
    layer_err = np.stack(layer_err)
    newton_err, gd_err, ls_err = algorithm_errors(x_te, y_te, n, int(e.newton_iters), gd_steps,
                                                  float(e.gd_lr))
    best_newton, cos_newton = probes.match_by_error_similarity(layer_err, newton_err)
    best_gd, cos_gd = probes.match_by_error_similarity(layer_err, gd_err)
    mse = lambda err: (err ** 2).mean(axis=-1) / d  # noqa: E731
    per_n[f"n={n}"] = {
        "layer_mse": mse(layer_err).tolist(),
        "model_output_mse": float(mse(out_te[:, n] - y_te[:, n])),
        "newton_mse": mse(newton_err).tolist(), "gd_mse": mse(gd_err).tolist(),
        "least_squares_mse": float(mse(ls_err)),
        "best_newton_iter": best_newton.tolist(), "best_newton_cos": cos_newton.max(1).tolist(),
        "best_gd_steps": [gd_steps[i] for i in best_gd], "best_gd_cos": cos_gd.max(1).tolist(),
        "cos_newton": cos_newton.tolist(), "cos_gd": cos_gd.tolist()}
  return {"layers": len(h_te), "gd_steps": gd_steps, "context": per_n}


def algorithm_convergence(config):
  """Iterations Newton and GD (rate gd_lr) need to reach least squares, per condition number."""
  a = config.algorithms
  d, n = int(a.n_dims), int(a.n_points)
  out = {}
  for kappa in a.condition_numbers:
    rng = np.random.default_rng([int(config.seed), int(kappa), 7])
    xs, ys = test_prompts(rng, int(a.num_prompts), n, d, float(kappa))
    w_star = baselines.least_squares_weights(xs, ys)
    w_newton = newton.newton_weights(xs, ys, int(a.max_newton_iters))
    gd_hit = -1
    for t in a.gd_steps:
      w = newton.gd_unnormalised_weights(xs, ys, float(config.eval.gd_lr), int(t))
      if newton.iterations_to_reach(w[None], w_star, float(a.rel_tol)) == 0:
        gd_hit = int(t)
        break
    out[f"kappa={kappa:g}"] = {
        "newton_iters": newton.iterations_to_reach(w_newton, w_star, float(a.rel_tol)),
        "gd_steps": gd_hit}
  return {"n_dims": d, "n_points": n, "rel_tol": float(a.rel_tol), "by_condition_number": out}


def run(config, workdir: str) -> dict:
  kappa = float(config.task.condition_number)
  task = ConditionedRegressionTask(config)
  trained = train(config, workdir, task)
  results = {"experiment": "icl.higher_order", "n_dims": int(config.task.n_dims),
             "condition_number": kappa, "train_steps": trained.final_step,
             "final_train_loss": trained.last_metrics.get("loss"),
             "probes": probe_study(trained.model, config, kappa),
             "algorithms": algorithm_convergence(config)}
  write_results(workdir, results)
  return results
