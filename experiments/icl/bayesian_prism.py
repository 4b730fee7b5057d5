"""Bayesian prism (Panwar et al.): train a transformer per prior (single families and mixtures) and
compare its error at every context length with the posterior mean of the training prior, the
posterior means of each single family, ridge (lambda = sigma^2) and least squares."""

import os

import jax.numpy as jnp
import numpy as np

from jaxllm.data import icl_regression
from jaxllm.data import prism_tasks
from jaxllm.icl import baselines, posterior
from jaxllm.models.transformer import build
from jaxllm.results import write_results
from jaxllm.train.loop import train

from experiments.icl.linear_regression import predict


class PrismTask:
  """Prompts from one named prior; batches are a pure function of (seed, step)."""

  def __init__(self, config, prior_name: str):
    c = config.task
    self.n_dims, self.n_points = int(c.n_dims), int(c.n_points)
    self.noise_std = float(c.noise_std)
    self.prior = prism_tasks.make_prior(prior_name, self.n_dims, int(c.sparsity))
    self.batch_size, self.seed = int(config.train.batch_size), int(config.seed)
    self.model_cfg = dict(config.model.to_dict(), io="vectors", input_dim=self.n_dims,
                          output_dim=1)
    if 2 * self.n_points > self.model_cfg.get("max_len", 0):
      raise ValueError(f"model.max_len={self.model_cfg.get('max_len')} is shorter than the prompt "
                       f"(2 * task.n_points = {2 * self.n_points} tokens)")

  def init_model(self, rngs):
    return build(self.model_cfg, rngs=rngs)

  def batch(self, step: int):
    rng = np.random.default_rng([self.seed, step])
    xs, ys, _ = prism_tasks.sample_prompts(rng, self.prior, self.batch_size, self.n_points,
                                           self.noise_std)
    return {"tokens": icl_regression.interleave(xs, ys), "ys": ys}

  def loss(self, model, batch):
    preds = model(batch["tokens"])[:, ::2, 0]
    return jnp.mean((preds - batch["ys"]) ** 2), {}


def evaluate(model, config, train_prior: str) -> dict:
  """Squared error / d per context length on prompts from each family of the training prior."""
  c = config.task
  d, k, s, noise = int(c.n_dims), int(c.n_points), int(c.sparsity), float(c.noise_std)
  out = {}
  for i, family in enumerate(train_prior.split("+")):
    rng = np.random.default_rng([int(config.seed), 10**9, i])  # disjoint from training streams
    xs, ys, _ = prism_tasks.sample_prompts(rng, prism_tasks.make_prior(family, d, s),
                                           int(config.eval.num_prompts), k, noise)
    preds = {"transformer": predict(model, xs, ys),
             "posterior_mean": posterior.posterior_mean(
                 xs, ys, prism_tasks.make_prior(train_prior, d, s), noise),
             "ridge": baselines.ridge(xs, ys, noise**2),
             "least_squares": baselines.least_squares(xs, ys)}
    for other in prism_tasks.FAMILIES:  # "dense" is left out: its posterior mean is the ridge
      if other in train_prior.split("+") and other not in (train_prior, "dense"):
        preds[f"posterior_{other}"] = posterior.posterior_mean(
            xs, ys, prism_tasks.make_prior(other, d, s), noise)
    errors = {n: baselines.squared_error(p, ys, normalizer=d) for n, p in preds.items()}
    # Distance of the transformer's predictions to each estimator's (the paper's "tracks" measure).
    gaps = {n: float(((preds["transformer"] - p) ** 2).mean() / d)
            for n, p in preds.items() if n != "transformer"}
    out[family] = {"errors": {n: e.tolist() for n, e in errors.items()}, "prediction_gap": gaps}
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
