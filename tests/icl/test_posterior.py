"""Posterior-mean estimators against closed forms and brute-force integration."""

import numpy as np
import pytest

from jaxllm.icl import baselines, posterior


def _prompts(seed, b, k, d, w, noise):
  rng = np.random.default_rng(seed)
  xs = rng.standard_normal((b, k, d))
  return xs, np.einsum("bkd,bd->bk", xs, w) + noise * rng.standard_normal((b, k))


def test_dense_prior_is_ridge_with_lambda_sigma_squared():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((16, 4))
  xs, ys = _prompts(1, 16, 9, 4, w, 0.5)
  got = posterior.posterior_mean(xs, ys, posterior.dense_prior(4), 0.5)
  np.testing.assert_allclose(got, baselines.ridge(xs, ys, 0.25), rtol=1e-8, atol=1e-10)


def test_sign_prior_in_one_dimension_is_tanh():
  # Two point masses w = +-1: E[w | data] = tanh(sum_i x_i y_i / sigma^2).
  xs, ys = _prompts(2, 32, 4, 1, np.ones((32, 1)), 0.7)
  w, post = posterior.posterior_mean_weights(xs, ys, posterior.sign_prior(1), 0.7)
  want = np.tanh(np.einsum("bn,bn->b", xs[..., 0], ys) / 0.49)
  np.testing.assert_allclose(w[:, 0], want, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(post.sum(1), 1.0)


def test_sparse_mixture_matches_importance_sampling():
  rng = np.random.default_rng(3)
  d, n, noise = 3, 2, 0.4
  prior = posterior.mix_priors([posterior.dense_prior(d), posterior.sparse_prior(d, 1)], [0.3, 0.7])
  xs, ys = _prompts(4, 3, n, d, rng.standard_normal((3, d)), noise)
  got, _ = posterior.posterior_mean_weights(xs, ys, prior, noise)
  # Monte Carlo over the prior, weighted by the likelihood.
  s = 400_000
  dense = rng.standard_normal((s, d))
  sparse = np.zeros((s, d))
  sparse[np.arange(s), rng.integers(0, d, s)] = rng.standard_normal(s)
  ws = np.where((rng.random(s) < 0.3)[:, None], dense, sparse)
  for b in range(3):
    loglik = -0.5 * ((ys[b][None] - ws @ xs[b].T) ** 2).sum(1) / noise**2
    p = np.exp(loglik - loglik.max())
    np.testing.assert_allclose(got[b], p @ ws / p.sum(), atol=0.03)


def test_posterior_picks_the_true_support():
  # With clean data the sparse posterior puts its mass on the generating support.
  w = np.zeros((8, 5))
  w[:, [1, 3]] = np.random.default_rng(5).standard_normal((8, 2)) + 2.0
  xs, ys = _prompts(6, 8, 6, 5, w, 0.05)
  prior = posterior.sparse_prior(5, 2)
  w_hat, post = posterior.posterior_mean_weights(xs, ys, prior, 0.05)
  true_j = [j for j, c in enumerate(prior[2]) if c[1, 1] == 1 and c[3, 3] == 1][0]
  assert np.all(post[:, true_j] > 0.99)
  np.testing.assert_allclose(w_hat, w, atol=0.1)


def test_no_examples_predicts_prior_mean_and_bad_input_raises():
  prior = posterior.mix_priors([posterior.sign_prior(2), posterior.dense_prior(2)], [1, 1])
  xs, ys = _prompts(7, 4, 1, 2, np.ones((4, 2)), 0.1)
  np.testing.assert_allclose(posterior.posterior_mean(xs, ys, prior, 0.1)[:, 0], 0.0, atol=1e-12)
  with pytest.raises(ValueError, match="noise_std"):
    posterior.posterior_mean(xs, ys, prior, 0.0)
  with pytest.raises(ValueError, match="sparsity"):
    posterior.sparse_prior(3, 4)
