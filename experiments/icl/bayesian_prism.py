"""Bayesian prism (Panwar et al.): train a transformer per prior (single families, mixtures and
the Fourier / degree-2-monomial feature families) and compare its error at every context length
with the posterior mean of the training prior, the posterior means of each single family, ridge
(lambda = sigma^2) and least squares. The low-rank family (w = vec of a rank-r sqrt(d) x sqrt(d)
matrix, d = task.lowrank_dims) has no closed-form posterior mean: its reference is nuclear-norm
minimisation (lambda = sigma, ``low_rank.default_lambda``)."""

import os

import numpy as np

from jaxllm.data import icl_regression
from jaxllm.data import prior_regression
from jaxllm.icl import baselines, low_rank, posterior
from jaxllm.icl.regression_task import LinearRegressionTask, predict
from jaxllm.results import write_results
from jaxllm.train.loop import train



def make_family(config, name: str, n_dims: int | None = None) -> prior_regression.Family:
  """The named family at ``n_dims`` (default task.n_dims, or task.lowrank_dims for ``lowrank``,
  whose d must be a perfect square)."""
  c = config.task
  if n_dims is None:
    n_dims = c.lowrank_dims if name == prior_regression.LOWRANK else c.n_dims
  n = int(n_dims)
  return prior_regression.make_family(
      name, n, min(int(c.sparsity), n),
      max_freq=int(c.max_freq), half_period=float(c.half_period),
      num_monomials=int(c.num_monomials), rank=int(c.rank), seed=int(config.seed))


class PrismTask(LinearRegressionTask):
  """Prompts from one named prior; batches are a pure function of (seed, step).

  As in the linear-regression study, a curriculum grows the number of in-context examples and,
  for the linear priors, the number of active input dimensions (the prior is drawn in the active
  subspace and the remaining coordinates are zero). The low-rank family keeps all d dimensions
  from the start: a zero-padded prefix of vec(W) is not the vec of a smaller square matrix.
  """

  def __init__(self, config, prior_name: str):
    self.family = make_family(config, prior_name)
    super().__init__(config, input_dim=self.family.input_dim,
                     grow_dims=prior_name not in prior_regression.SOLO_FAMILIES)
    self.name, self.config = prior_name, config
    self._families = {self.input_dim: self.family}

  def batch(self, step: int):
    rng = np.random.default_rng([self.seed, step])
    active = self.dims.value(step)
    if active not in self._families:
      self._families[active] = make_family(self.config, self.name, active)
    xs_active, ys = prior_regression.sample_family(rng, self._families[active], self.batch_size,
                                                   self.points.value(step), self.noise_std)
    xs = np.zeros(xs_active.shape[:2] + (self.input_dim,), np.float32)
    xs[..., :active] = xs_active
    return {"tokens": icl_regression.interleave(xs, ys), "ys": ys}


def evaluate(model, config, train_prior: str) -> dict:
  """Squared error per context length on prompts from each family of the training prior,
  normalised by d for the linear families (lowrank included) and by the zero predictor's error for
  the feature families."""
  c = config.task
  noise = float(c.noise_std)
  prior_family = make_family(config, train_prior)
  out = {}
  for i, name in enumerate(train_prior.split("+")):
    rng = np.random.default_rng([int(config.seed), 10**9, i])  # disjoint from training streams
    family = make_family(config, name)
    xs, ys = prior_regression.sample_family(rng, family, int(config.eval.num_prompts),
                                            int(c.n_points), noise)
    phi = family.features(xs)
    preds = {"transformer": predict(model, xs, ys)}
    if prior_family.prior is not None:
      preds["posterior_mean"] = posterior.posterior_mean(phi, ys, prior_family.prior, noise)
    if name == prior_regression.LOWRANK:
      preds["nuclear_norm"] = low_rank.nuclear_norm(xs, ys, low_rank.default_lambda(noise))
    preds["least_squares"] = baselines.least_squares(xs, ys)
    if name in prior_regression.FEATURE_FAMILIES:
      preds["least_squares_features"] = baselines.least_squares(phi, ys)
      normalizer = float(np.mean(ys.astype(np.float64) ** 2))
    else:
      preds["ridge"] = baselines.ridge(xs, ys, noise**2)
      normalizer = float(family.input_dim)
    if name == "monomial":  # knows the degree but not which monomials: ridge on all of them
      every = prior_regression.monomial_pairs(0, xs.shape[-1], xs.shape[-1] * (xs.shape[-1] + 1) // 2)
      preds["ridge_all_monomials"] = baselines.ridge(
          prior_regression.monomial_features(xs, every), ys, noise**2)
    for other in prior_regression.FAMILIES:  # "dense" is left out: its posterior mean is the ridge
      if other in train_prior.split("+") and other not in (train_prior, "dense"):
        preds[f"posterior_{other}"] = posterior.posterior_mean(
            xs, ys, make_family(config, other).prior, noise)
    errors = {n: baselines.squared_error(p, ys, normalizer=normalizer) for n, p in preds.items()}
    # Distance of the transformer's predictions to each estimator's (the paper's "tracks" measure).
    gaps = {n: float(((preds["transformer"] - p) ** 2).mean() / normalizer)
            for n, p in preds.items() if n != "transformer"}
    out[name] = {"errors": {n: e.tolist() for n, e in errors.items()}, "prediction_gap": gaps,
                 "normalizer": normalizer, "n_dims": family.input_dim}
  return out


def run(config, workdir: str) -> dict:
  results = {"experiment": "icl.bayesian_prism", "n_dims": int(config.task.n_dims),
             "n_points": int(config.task.n_points), "noise_std": float(config.task.noise_std),
             "runs": {}}
  for name in config.task.train_priors:
    task = PrismTask(config, name)
    result = train(config, os.path.join(workdir, name.replace("+", "_")), task)
    results["runs"][name] = {"train_steps": result.final_step,
                             "final_train_loss": result.last_metrics.get("loss"),
                             "eval": evaluate(result.model, config, name)}
  write_results(workdir, results)
  return results
