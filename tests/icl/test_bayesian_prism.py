"""Bayesian prism: prior samplers, task batches and the posterior-mean baselines' central claim
(the mixture posterior adapts to the family shown in context)."""

import numpy as np
import pytest

from configs.icl import bayesian_prism as cfg_mod
from experiments.icl import bayesian_prism as study
from jaxllm.data import prism_tasks
from jaxllm.icl import baselines, posterior


def test_samplers_draw_from_the_named_priors():
  rng = np.random.default_rng(0)
  w = prism_tasks.sample_weights(rng, prism_tasks.make_prior("sparse", 6, 2), 2000)
  assert np.all((w != 0).sum(1) == 2)
  np.testing.assert_allclose(w[w != 0].var(), 1.0, atol=0.1)
  w = prism_tasks.sample_weights(rng, prism_tasks.make_prior("sign", 4, 1), 500)
  np.testing.assert_array_equal(np.abs(w), 1.0)
  w = prism_tasks.sample_weights(rng, prism_tasks.make_prior("dense", 3, 1), 20000)
  np.testing.assert_allclose(np.cov(w.T), np.eye(3), atol=0.05)
  w = prism_tasks.sample_weights(rng, prism_tasks.make_prior("dense+sparse", 5, 1), 4000)
  assert abs(((w != 0).sum(1) == 1).mean() - 0.5) < 0.03


def test_make_prior_rejects_unknown_families():
  with pytest.raises(ValueError, match="allowed"):
    prism_tasks.make_prior("dense+fourier", 4, 1)


def _errors(family, prior_name, k=8, d=5, noise=0.1):
  rng = np.random.default_rng(1)
  xs, ys, _ = prism_tasks.sample_prompts(rng, prism_tasks.make_prior(family, d, 1), 1000, k, noise)
  pm = posterior.posterior_mean(xs, ys, prism_tasks.make_prior(prior_name, d, 1), noise)
  return (baselines.squared_error(pm, ys, d),
          baselines.squared_error(baselines.ridge(xs, ys, noise**2), ys, d))


def test_mixture_posterior_mean_adapts_to_the_family_in_context():
  # On sparse prompts the dense+sparse posterior beats ridge by far before k = d ...
  pm, ridge = _errors("sparse", "dense+sparse")
  assert pm[3] < 0.25 * ridge[3]
  # ... and on dense prompts it loses almost nothing to ridge (the dense-only optimum).
  pm, ridge = _errors("dense", "dense+sparse")
  np.testing.assert_array_less(pm, 1.1 * ridge + 1e-3)
  pm, ridge = _errors("sign", "dense+sign")
  assert pm[3] < 0.05 < 0.3 < ridge[3]


def test_task_batches_are_deterministic_and_interleaved():
  task = study.PrismTask(cfg_mod.get_config("smoke"), "dense+sparse")
  a, b = task.batch(7), task.batch(7)
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert a["tokens"].shape == (64, 20, 3)
  np.testing.assert_array_equal(a["tokens"][:, 1::2, 0], a["ys"])

