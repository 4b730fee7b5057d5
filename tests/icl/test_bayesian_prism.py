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


def test_task_batches_are_deterministic_interleaved_and_follow_the_curriculum():
  config = cfg_mod.get_config("smoke")
  task = study.PrismTask(config, "dense+sparse")
  a, b = task.batch(7), task.batch(7)
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert a["tokens"].shape == (64, 12, 5)  # 6 points and 2 active dims at the start
  np.testing.assert_array_equal(a["tokens"][:, 1::2, 0], a["ys"])
  assert not a["tokens"][:, ::2, 2:].any()
  late = task.batch(10_000)["tokens"]
  assert late.shape == (64, 2 * config.task.n_points, 5) and late[:, ::2, 4].any()
  fourier = study.PrismTask(config, "fourier").batch(0)["tokens"]
  assert fourier.shape == (64, 12, 1) and np.abs(fourier[:, ::2]).max() <= config.task.half_period


def test_fourier_features_and_prior_by_hand():
  phi = prism_tasks.fourier_features(np.array([[[2.5]]]), max_freq=2, half_period=5.0)
  # x = L/2: cos(pi/2), cos(pi), sin(pi/2), sin(pi).
  np.testing.assert_allclose(phi[0, 0], [1, 0, -1, 1, 0], atol=1e-12)
  pis, means, covs = prism_tasks.fourier_prior(2)
  np.testing.assert_allclose(pis, [0.5, 0.5])
  np.testing.assert_array_equal(np.diagonal(covs, axis1=1, axis2=2), [[1, 1, 0, 1, 0],
                                                                      [1, 1, 1, 1, 1]])
  rng = np.random.default_rng(0)
  fam = prism_tasks.make_family("fourier", 5, 1, max_freq=2)
  xs, ys = prism_tasks.sample_family(rng, fam, 20000, 1, 0.0)
  # E f(x)^2 = 1 + (1/2) E[2N] over N uniform on {1, 2}: 1 + 1.5 = 2.5.
  assert np.mean(ys.astype(np.float64) ** 2) == pytest.approx(2.5, rel=0.05)


def test_monomial_family_posterior_is_ridge_on_the_chosen_monomials():
  fam = prism_tasks.make_family("monomial", 4, 1, num_monomials=3, seed=1)
  pairs = prism_tasks.monomial_pairs(1, 4, 3)
  assert len({tuple(p) for p in pairs}) == 3 and np.all(pairs[:, 0] <= pairs[:, 1])
  rng = np.random.default_rng(2)
  xs, ys = prism_tasks.sample_family(rng, fam, 50, 6, 0.1)
  phi = fam.features(xs)
  np.testing.assert_allclose(phi[..., 0], xs[..., pairs[0, 0]] * xs[..., pairs[0, 1]], rtol=1e-6)
  pm = posterior.posterior_mean(phi, ys, fam.prior, 0.1)
  np.testing.assert_allclose(pm, baselines.ridge(phi, ys, 0.01), rtol=1e-4, atol=1e-6)
  # Noiseless, 3 examples determine the 3 weights: the 4th prediction is exact.
  xs, ys = prism_tasks.sample_family(rng, fam, 50, 5, 0.0)
  ls = baselines.least_squares(fam.features(xs), ys)
  np.testing.assert_allclose(ls[:, 3:], ys[:, 3:], atol=1e-3)


def test_fourier_mixture_posterior_adapts_to_the_frequency_in_context():
  # Prompts with only frequency 1 present: the mixture posterior over N = 1..4 beats ridge on all
  # nine features (the N = 4 component alone) while few points are in context.
  fam = prism_tasks.make_family("fourier", 1, 1, max_freq=4)
  lowest = (np.ones(1), np.zeros((1, 9)), prism_tasks.fourier_prior(4)[2][:1])
  one = prism_tasks.Family("fourier1", 1, lowest, fam.features, fam.sample_x)
  rng = np.random.default_rng(3)
  xs, ys = prism_tasks.sample_family(rng, one, 1000, 8, 0.1)
  phi = fam.features(xs)
  mix = baselines.squared_error(posterior.posterior_mean(phi, ys, fam.prior, 0.1), ys)
  widest = baselines.squared_error(baselines.ridge(phi, ys, 0.01), ys)
  assert mix[4] < 0.5 * widest[4]


def test_feature_families_do_not_mix_and_bad_names_are_rejected():
  with pytest.raises(ValueError, match="train on their own"):
    prism_tasks.make_family("dense+fourier", 4, 1)
  with pytest.raises(ValueError, match="num_monomials"):
    prism_tasks.make_family("monomial", 3, 1, num_monomials=7)

