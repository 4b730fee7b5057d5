"""Bayesian prism: prior samplers, task batches, the posterior-mean baselines' central claim
(the mixture posterior adapts to the family shown in context) and the low-rank family with its
nuclear-norm baseline."""

import numpy as np
import pytest
from flax import nnx

from configs.icl import bayesian_prism as cfg_mod
from experiments.icl import bayesian_prism as study
from jaxllm.data import prior_regression
from jaxllm.icl import baselines, low_rank, posterior


def test_samplers_draw_from_the_named_priors():
  rng = np.random.default_rng(0)
  w = prior_regression.sample_weights(rng, prior_regression.make_prior("sparse", 6, 2), 2000)
  assert np.all((w != 0).sum(1) == 2)
  np.testing.assert_allclose(w[w != 0].var(), 1.0, atol=0.1)
  w = prior_regression.sample_weights(rng, prior_regression.make_prior("sign", 4, 1), 500)
  np.testing.assert_array_equal(np.abs(w), 1.0)
  w = prior_regression.sample_weights(rng, prior_regression.make_prior("dense", 3, 1), 20000)
  np.testing.assert_allclose(np.cov(w.T), np.eye(3), atol=0.05)
  w = prior_regression.sample_weights(rng, prior_regression.make_prior("dense+sparse", 5, 1), 4000)
  assert abs(((w != 0).sum(1) == 1).mean() - 0.5) < 0.03


def test_make_prior_rejects_unknown_families():
  with pytest.raises(ValueError, match="allowed"):
    prior_regression.make_prior("dense+fourier", 4, 1)


def _errors(family, prior_name, k=8, d=5, noise=0.1):
  rng = np.random.default_rng(1)
  xs, ys, _ = prior_regression.sample_prompts(rng, prior_regression.make_prior(family, d, 1), 1000, k, noise)
  pm = posterior.posterior_mean(xs, ys, prior_regression.make_prior(prior_name, d, 1), noise)
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
  phi = prior_regression.fourier_features(np.array([[[2.5]]]), max_freq=2, half_period=5.0)
  # x = L/2: cos(pi/2), cos(pi), sin(pi/2), sin(pi).
  np.testing.assert_allclose(phi[0, 0], [1, 0, -1, 1, 0], atol=1e-12)
  pis, means, covs = prior_regression.fourier_prior(2)
  np.testing.assert_allclose(pis, [0.5, 0.5])
  np.testing.assert_array_equal(np.diagonal(covs, axis1=1, axis2=2), [[1, 1, 0, 1, 0],
                                                                      [1, 1, 1, 1, 1]])
  rng = np.random.default_rng(0)
  fam = prior_regression.make_family("fourier", 5, 1, max_freq=2)
  xs, ys = prior_regression.sample_family(rng, fam, 20000, 1, 0.0)
  # E f(x)^2 = 1 + (1/2) E[2N] over N uniform on {1, 2}: 1 + 1.5 = 2.5.
  assert np.mean(ys.astype(np.float64) ** 2) == pytest.approx(2.5, rel=0.05)


def test_monomial_family_posterior_is_ridge_on_the_chosen_monomials():
  fam = prior_regression.make_family("monomial", 4, 1, num_monomials=3, seed=1)
  pairs = prior_regression.monomial_pairs(1, 4, 3)
  assert len({tuple(p) for p in pairs}) == 3 and np.all(pairs[:, 0] <= pairs[:, 1])
  rng = np.random.default_rng(2)
  xs, ys = prior_regression.sample_family(rng, fam, 50, 6, 0.1)
  phi = fam.features(xs)
  np.testing.assert_allclose(phi[..., 0], xs[..., pairs[0, 0]] * xs[..., pairs[0, 1]], rtol=1e-6)
  pm = posterior.posterior_mean(phi, ys, fam.prior, 0.1)
  np.testing.assert_allclose(pm, baselines.ridge(phi, ys, 0.01), rtol=1e-4, atol=1e-6)
  # Noiseless, 3 examples determine the 3 weights: the 4th prediction is exact.
  xs, ys = prior_regression.sample_family(rng, fam, 50, 5, 0.0)
  ls = baselines.least_squares(fam.features(xs), ys)
  np.testing.assert_allclose(ls[:, 3:], ys[:, 3:], atol=1e-3)


def test_fourier_mixture_posterior_adapts_to_the_frequency_in_context():
  # Prompts with only frequency 1 present: the mixture posterior over N = 1..4 beats ridge on all
  # nine features (the N = 4 component alone) while few points are in context.
  fam = prior_regression.make_family("fourier", 1, 1, max_freq=4)
  lowest = (np.ones(1), np.zeros((1, 9)), prior_regression.fourier_prior(4)[2][:1])
  one = prior_regression.Family("fourier1", 1, lowest, fam.features, fam.sample_x)
  rng = np.random.default_rng(3)
  xs, ys = prior_regression.sample_family(rng, one, 1000, 8, 0.1)
  phi = fam.features(xs)
  mix = baselines.squared_error(posterior.posterior_mean(phi, ys, fam.prior, 0.1), ys)
  widest = baselines.squared_error(baselines.ridge(phi, ys, 0.01), ys)
  assert mix[4] < 0.5 * widest[4]


def test_feature_families_do_not_mix_and_bad_names_are_rejected():
  with pytest.raises(ValueError, match="train on their own"):
    prior_regression.make_family("dense+fourier", 4, 1)
  with pytest.raises(ValueError, match="num_monomials"):
    prior_regression.make_family("monomial", 3, 1, num_monomials=7)



def test_lowrank_samples_have_the_stated_rank_and_dense_scale():
  rng = np.random.default_rng(4)
  for d, rank in [(16, 1), (16, 2), (9, 3)]:
    fam = prior_regression.make_family("lowrank", d, 1, rank=rank)
    assert fam.prior is None and fam.input_dim == d
    w = fam.sample_w(rng, 4000)
    side = int(np.sqrt(d))
    np.testing.assert_array_equal(np.linalg.matrix_rank(w.reshape(-1, side, side)), rank)
    assert np.mean((w**2).sum(1)) == pytest.approx(d, rel=0.05)
  xs, ys = prior_regression.sample_family(rng, prior_regression.make_family("lowrank", 16, 1), 4000, 3, 0.0)
  assert xs.shape == (4000, 3, 16) and np.mean(ys.astype(np.float64) ** 2) == pytest.approx(
      16, rel=0.1)


def test_lowrank_rejects_bad_dims_rank_and_mixtures():
  with pytest.raises(ValueError, match=r"task.lowrank_dims.*perfect square"):
    prior_regression.make_family("lowrank", 20, 1)
  for rank in (0, 5):
    with pytest.raises(ValueError, match=r"task.rank must be in \[1, 4\]"):
      prior_regression.make_family("lowrank", 16, 1, rank=rank)
  with pytest.raises(ValueError, match="train on their own"):
    prior_regression.make_family("dense+lowrank", 16, 1)
  with pytest.raises(ValueError, match="alone"):
    prior_regression.make_prior("lowrank", 16, 1)


def test_singular_value_threshold_by_hand():
  m = np.diag([3.0, -1.0, 0.5])  # singular values 3, 1, 0.5 (the sign sits in U)
  np.testing.assert_allclose(low_rank.singular_value_threshold(m[None], 0.75)[0],
                             np.diag([2.25, -0.25, 0.0]), atol=1e-12)
  # One threshold per matrix of the batch; tau = 0 is the identity.
  out = low_rank.singular_value_threshold(np.stack([m, m]), np.array([0.0, 5.0]))
  np.testing.assert_allclose(out[0], m, atol=1e-12)
  np.testing.assert_allclose(out[1], 0.0, atol=1e-12)


def test_nuclear_norm_recovers_rank_one_matrices_from_fewer_examples_than_d():
  # d = 16 (4 x 4, rank 1: 7 degrees of freedom), noiseless, k = 10 < d examples. Measured mean
  # relative error: nuclear norm 0.155, min-norm least squares 0.573 (ratio 0.27; 0.21 to 0.32
  # over seeds 0-4); 32 of the 50 matrices are recovered to within 5 % (22 to 34 over seeds),
  # none by least squares.
  rng = np.random.default_rng(0)
  w = prior_regression.make_family("lowrank", 16, 1).sample_w(rng, 50)
  x = rng.standard_normal((50, 10, 16))
  y = np.einsum("bnd,bd->bn", x, w)
  w_nn = low_rank.nuclear_norm_weights(x, y, low_rank.default_lambda(0.0))
  w_ls = np.einsum("bdn,bn->bd", np.linalg.pinv(x), y)
  rel = lambda est: np.linalg.norm(est - w, axis=1) / np.linalg.norm(w, axis=1)
  assert rel(w_nn).mean() < 0.4 * rel(w_ls).mean()
  assert (rel(w_nn) < 0.05).mean() > 0.35 and (rel(w_ls) < 0.05).mean() == 0
  # The predictions apply the same solver to every prefix.
  xs = np.concatenate([x, rng.standard_normal((50, 1, 16))], axis=1)
  ys = np.einsum("bnd,bd->bn", xs, w)
  preds = low_rank.nuclear_norm(xs[:5], ys[:5], 1e-2)
  np.testing.assert_allclose(preds[:, 10], np.einsum("bd,bd->b", xs[:5, 10], w_nn[:5]), rtol=1e-3)
  with pytest.raises(ValueError, match="perfect square"):
    low_rank.nuclear_norm_weights(x[..., :15], y, 0.1)


def test_lowrank_family_trains_at_its_own_size_and_wires_into_evaluation():
  config = cfg_mod.get_config("smoke")
  config.task.update(lowrank_dims=4, n_points=8)
  config.model.update(d_model=16, num_layers=1)
  config.eval.num_prompts = 16
  task = study.PrismTask(config, "lowrank")
  tokens = task.batch(0)["tokens"]
  assert tokens.shape == (64, 12, 4) and np.all(tokens[:, ::2] != 0)  # no curriculum over d
  res = study.evaluate(task.init_model(nnx.Rngs(0)), config, "lowrank")
  ev = res["lowrank"]
  assert set(ev["errors"]) == {"transformer", "nuclear_norm", "least_squares", "ridge"}
  assert ev["normalizer"] == 4.0 and ev["n_dims"] == 4
  assert all(len(e) == 8 for e in ev["errors"].values())
  assert ev["errors"]["nuclear_norm"][0] == pytest.approx(ev["errors"]["least_squares"][0])
  assert set(ev["prediction_gap"]) == {"nuclear_norm", "least_squares", "ridge"}


@pytest.mark.slow
def test_smoke_model_tracks_its_training_prior_not_a_mismatched_one(tmp_path):
  """Smoke config, dense+sparse mixture only (4000 steps). Measured (seed 0): dense-prompt error
  / d 0.59 at k = 2 and 0.12 at k = 10; prediction gap to the mixture posterior 0.127 against
  0.490 to the sparse-only posterior."""
  config = cfg_mod.get_config("smoke")
  config.task.train_priors = ("dense+sparse",)
  results = study.run(config, str(tmp_path))
  dense = results["runs"]["dense+sparse"]["eval"]["dense"]
  err = dense["errors"]["transformer"]
  # Learns in context: the error falls with the number of examples, far below the k = 0 level.
  assert err[10] < 0.3 * err[0] and err[10] < 0.5 * err[2]
  # Closer to the posterior mean of the prior it was trained on than to a mismatched prior's.
  gap = dense["prediction_gap"]
  assert gap["posterior_mean"] < 0.5 * gap["posterior_sparse"]
