"""In-context learning with a representation (Guo et al. 2023).

Prompts are y = w . Phi(x) / sqrt(D) + noise with Phi a fixed random ReLU MLP shared by every prompt
and w ~ N(0, I_D) fresh per prompt. The Bayes-optimal predictor is ridge regression on Phi(x)
(lambda = D sigma^2). A transformer is trained on these prompts; its error at every context length
is set beside ridge on Phi(x) and the raw-x baselines (least squares with and without an offset,
averaging, 3-NN) on the same test prompts, errors divided by E y^2 (the zero predictor's error).
Linear probes on each layer's hidden state at the x tokens then ask where Phi(x_i) becomes linearly
readable (pooled over positions), and where the ridge-on-Phi prediction of y_i and y_i itself do (at
fixed context lengths); every probe error is divided by its target's variance.
"""

import numpy as np
from flax import nnx

from jaxllm.data import icl_functions
from jaxllm.data.icl_regression import interleave
from jaxllm.icl import baselines, probes, representation_baselines
from jaxllm.icl.regression_task import LinearRegressionTask, hidden_states
from jaxllm.results import write_results
from jaxllm.train.loop import train


def make_phi(config):
  """The fixed representation: ``random_mlp`` from the task's phi_* fields."""
  c = config.task
  return icl_functions.random_mlp(int(c.phi_seed), int(c.n_dims), int(c.phi_hidden),
                                  int(c.rep_dim), int(c.phi_depth))


class RepresentationTask(LinearRegressionTask):
  """The foundation task with y = w . Phi(x) / sqrt(D) + noise; curriculum over k only."""

  def __init__(self, config):
    super().__init__(config)
    if self.dims.start != self.n_dims:
      # Zeroed input coordinates would change Phi's input distribution, not just the task's size.
      raise ValueError(f"task.curriculum.dims_start must equal task.n_dims={self.n_dims} (Phi "
                       f"reads every input coordinate), got {self.dims.start}")
    self.phi = make_phi(config)

  def batch(self, step: int):
    rng = np.random.default_rng([self.seed, step])
    xs, ys = icl_functions.representation(rng, self.batch_size, self.points.value(step),
                                          self.n_dims, phi=self.phi, noise_std=self.noise_std)
    return {"tokens": interleave(xs, ys), "ys": ys}


def eval_prompts(config, phi, num: int, stream: int):
  """xs [B, k, d], ys [B, k] from a stream disjoint from the training batches."""
  c = config.task
  rng = np.random.default_rng([int(config.seed), 10**9, stream])
  return icl_functions.representation(rng, num, int(c.n_points), int(c.n_dims), phi=phi,
                                      noise_std=float(c.noise_std))


def baseline_predictions(phi, xs, ys, noise_std: float) -> dict:
  """Ridge on Phi(x) (Bayes-optimal) and the raw-x baselines, predictions [B, k] each."""
  return {"ridge_phi": representation_baselines.ridge_on_representation(phi, xs, ys, noise_std),
          "least_squares": baselines.least_squares(xs, ys),
          "least_squares_affine": representation_baselines.least_squares_affine(xs, ys),
          "averaging": baselines.averaging(xs, ys),
          "knn3": baselines.nearest_neighbours(xs, ys, 3)}


def error_curves(preds: dict, ys) -> dict:
  """Squared error / E y^2 (zero predictor, averaged over positions) and its standard error."""
  norm = float((np.asarray(ys, np.float64) ** 2).mean())
  errors, stderr = {}, {}
  for name, p in preds.items():
    sq = (p - ys) ** 2 / norm
    errors[name] = sq.mean(axis=0)
    stderr[name] = sq.std(axis=0) / np.sqrt(len(ys))
  return {"normalizer": norm, "errors": errors, "stderr": stderr}


def probe_errors(h_tr_LPH, t_tr, h_te_LPH, t_te, ridge: float):
  """Per-layer probe error on the test rows, divided by the test target's total variance.

  Args:
    h_tr_LPH, h_te_LPH: hidden states [L, P, H] of the probe-fitting and the test rows.
    t_tr, t_te: targets [P] or [P, O] for those rows.
    ridge: the probes' ridge penalty.

  Returns:
    [L] normalised squared errors (0 = exact read-out, 1 = no better than the target's mean).
  """
  t_te = np.asarray(t_te, np.float64)
  var = ((t_te - t_te.mean(axis=0)) ** 2).sum()
  out = []
  for h_tr, h_te in zip(h_tr_LPH, h_te_LPH):
    probe = probes.fit_linear_probe(h_tr, t_tr, ridge)
    out.append(((probes.apply_probe(probe, h_te) - t_te) ** 2).sum() / var)
  return np.asarray(out)


def hidden_pair(model, first, second):
  """Hidden states [L, B, T, H] of two prompt sets (xs, ys) in one pass (one compilation), and the
  model's outputs at the x positions of the first."""
  n = len(first[0])
  h, out = hidden_states(model, np.concatenate([first[0], second[0]]),
                         np.concatenate([first[1], second[1]]))
  return h[:, :n], h[:, n:], out[:n]


def probe_study(config, phi, train_set, test_set, untrained=None):
  """Phi(x_i) probes pooled over x positions, and ridge-on-Phi / y probes at each context length.

  Args:
    config: the study config (``task.noise_std``, ``eval`` fields).
    phi: the representation's weights.
    train_set, test_set: (xs [B, k, d], ys [B, k], hidden [L, B, T, H]) of the prompts the probes
      are fitted on and of those they are scored on.
    untrained: hidden states (train, test) of the same network before training; its Phi probes are
      the control that separates features learned for the task from those any random ReLU layer
      already offers.
  """
  e, noise, ridge = config.eval, float(config.task.noise_std), float(config.eval.probe_ridge)
  (xs_tr, ys_tr, h_tr), (xs_te, ys_te, h_te) = train_set, test_set
  ridge_tr = representation_baselines.ridge_on_representation(phi, xs_tr, ys_tr, noise)
  ridge_te = representation_baselines.ridge_on_representation(phi, xs_te, ys_te, noise)
  f_tr, f_te = (icl_functions.apply_mlp(phi, x).reshape(-1, phi[-1].shape[1])
                for x in (xs_tr, xs_te))

  def phi_probe(h_tr, h_te):  # the x token of every position is a row
    n_layers, hdim = h_te.shape[0], h_te.shape[-1]
    return probe_errors(h_tr[:, :, ::2].reshape(n_layers, -1, hdim), f_tr,
                        h_te[:, :, ::2].reshape(n_layers, -1, hdim), f_te, ridge).tolist()

  out = {"layers": h_te.shape[0], "probe_train_prompts": len(xs_tr), "phi": phi_probe(h_tr, h_te),
         "context": {}}
  for n in e.context_lengths:
    n = int(n)
    out["context"][f"n={n}"] = {
        "ridge_phi": probe_errors(h_tr[:, :, 2 * n], ridge_tr[:, n], h_te[:, :, 2 * n],
                                  ridge_te[:, n], ridge).tolist(),
        "y": probe_errors(h_tr[:, :, 2 * n], ys_tr[:, n], h_te[:, :, 2 * n], ys_te[:, n],
                          ridge).tolist()}
  if untrained is not None:
    out["phi_untrained"] = phi_probe(*untrained)
  return out


def summary(curves: dict, probe: dict, k_mid: int) -> dict:
  """The study's claims as numbers: the model against ridge on Phi and raw least squares at k_mid,
  and the best Phi probe strictly between the embedding and the top layer against the embedding's
  (and against the same layers before training, when those were probed)."""
  err = {name: float(e[k_mid]) for name, e in curves["errors"].items()}
  phi = np.asarray(probe["phi"])
  if len(phi) < 3:
    raise ValueError(f"the Phi probe summary needs model.num_layers >= 2, got {len(phi) - 1}")
  best = 1 + int(np.argmin(phi[1:-1]))
  out = {"k": k_mid, "transformer": err["transformer"], "ridge_phi": err["ridge_phi"],
         "least_squares_affine": err["least_squares_affine"],
         "least_squares": err["least_squares"], "phi_probe_embedding": float(phi[0]),
         "best_phi_probe_layer": best, "best_phi_probe": float(phi[best])}
  if "phi_untrained" in probe:
    out["best_phi_probe_untrained"] = float(np.min(probe["phi_untrained"][1:-1]))
  return out


def evaluate(model, config, init_model=None) -> dict:
  """Error curves of the model and the baselines, probes and the summary, on fresh test prompts;
  ``init_model`` (the network before training) adds the untrained Phi-probe control."""
  c, e = config.task, config.eval
  d, k, dim = int(c.n_dims), int(c.n_points), int(c.rep_dim)
  if not all(1 <= int(n) < k for n in e.context_lengths):
    raise ValueError(f"eval.context_lengths must lie in [1, task.n_points - 1 = {k - 1}], got "
                     f"{tuple(e.context_lengths)}")
  phi = make_phi(config)
  test = eval_prompts(config, phi, int(e.num_prompts), stream=0)
  fit = eval_prompts(config, phi, int(e.probe_train_prompts), stream=1)
  h_te, h_tr, out_te = hidden_pair(model, test, fit)
  untrained = None
  if init_model is not None:
    h0_te, h0_tr, _ = hidden_pair(init_model, test, fit)
    untrained = (h0_tr, h0_te)
  preds = {"transformer": out_te, **baseline_predictions(phi, *test, float(c.noise_std))}
  curves = error_curves(preds, test[1])
  probe = probe_study(config, phi, (*fit, h_tr), (*test, h_te), untrained)
  at = {f"k={kk}": {n: float(v[kk]) for n, v in curves["errors"].items()}
        for kk in sorted({d, dim, 2 * dim, k - 1}) if kk < k}
  return {"num_prompts": len(test[1]), "normalizer": curves["normalizer"],
          "ridge_lambda": representation_baselines.bayes_ridge_lambda(dim, float(c.noise_std)),
          "errors": {n: v.tolist() for n, v in curves["errors"].items()},
          "stderr": {n: v.tolist() for n, v in curves["stderr"].items()}, "at": at,
          "probes": probe, "summary": summary(curves, probe, min(2 * dim, k - 1))}


def run(config, workdir: str) -> dict:
  c = config.task
  task = RepresentationTask(config)
  trained = train(config, workdir, task)
  results = {"experiment": "icl.representations", "n_dims": int(c.n_dims),
             "n_points": int(c.n_points), "rep_dim": int(c.rep_dim),
             "phi_hidden": int(c.phi_hidden), "phi_depth": int(c.phi_depth),
             "noise_std": float(c.noise_std), "train_steps": trained.final_step,
             "final_train_loss": trained.last_metrics.get("loss"),
             "steps_per_second": trained.steps_per_second,
             **evaluate(trained.model, config, task.init_model(nnx.Rngs(int(config.seed))))}
  write_results(workdir, results)
  return results
