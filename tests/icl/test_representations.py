"""Learning with representations (Guo et al. 2023): the ridge-on-Phi baseline against the Gaussian
posterior in closed form, the probes, and the wiring; the trained model's claims at smoke scale are
marked slow."""

import os

import numpy as np
import pytest
from flax import nnx

from configs.icl import representations as rep_config
from experiments.icl import representations
from jaxllm.data import icl_functions
from jaxllm.icl import baselines, posterior, representation_baselines
from tests.icl import figure_scripts


def _prompts(noise_std, num=400, k=12, d=4, dim=5, seed=0):
  phi = icl_functions.random_mlp(seed, d, 6, dim, 2)
  xs, ys = icl_functions.representation(np.random.default_rng(seed), num, k, d, phi=phi,
                                        noise_std=noise_std)
  return phi, xs, ys, icl_functions.apply_mlp(phi, xs)


def test_ridge_on_phi_is_the_gaussian_posterior_mean():
  phi, xs, ys, feats = _prompts(0.3, num=50)
  dim = feats.shape[-1]
  ridge = representation_baselines.ridge_on_representation(phi, xs, ys, 0.3)
  # w / sqrt(D) ~ N(0, I / D): the dense prior with scale 1 / sqrt(D), conditioned by Gaussian
  # elimination on the kernel matrix rather than by the ridge normal equations.
  post = posterior.posterior_mean(feats, ys, posterior.dense_prior(dim, 1 / np.sqrt(dim)), 0.3)
  np.testing.assert_allclose(ridge, post, atol=1e-8)
  assert representation_baselines.bayes_ridge_lambda(dim, 0.3) == pytest.approx(dim * 0.09)


def test_ridge_on_phi_error_matches_the_posterior_predictive_variance():
  noise = 0.2
  _, _, ys, feats = _prompts(noise, num=4000, k=9)
  dim = feats.shape[-1]
  pred = representation_baselines.ridge_on_features(feats, ys, noise)
  f = feats.astype(np.float64)
  for n in (2, 5, 8):
    # Var[y_n | first n pairs] = sigma^2 + f_n^T (F^T F / sigma^2 + D I)^-1 f_n.
    prec = np.einsum("bid,bie->bde", f[:, :n], f[:, :n]) / noise**2 + dim * np.eye(dim)
    var = noise**2 + np.einsum("bd,bd->b", f[:, n], np.linalg.solve(prec, f[:, n, :, None])[..., 0])
    gap = (pred[:, n] - ys[:, n]) ** 2 - var  # mean zero given the features
    assert abs(gap.mean()) < 4 * gap.std() / np.sqrt(len(gap)), (n, gap.mean())


def test_noiseless_ridge_on_phi_interpolates_once_k_reaches_d_features():
  phi, xs, _, feats = _prompts(0.0)
  dim = feats.shape[-1]
  # ys in float64 from the same float32 features: the float32 ys of the sampler carry rounding
  # errors that an ill-conditioned 5 x 5 system amplifies well above the interpolation tolerance.
  w = np.random.default_rng(1).standard_normal((len(xs), dim))
  ys = np.einsum("bkf,bf->bk", feats.astype(np.float64), w) / np.sqrt(dim)
  pred = representation_baselines.ridge_on_representation(phi, xs, ys, 0.0)
  np.testing.assert_allclose(pred, baselines.least_squares(feats, ys), atol=1e-10)
  sq = (pred - ys) ** 2 / (ys ** 2).mean()
  assert sq[:, dim - 1].mean() > 1e-2
  # Exact once the prefix's features have full column rank D; ReLU features of a d = 4 input are
  # rank-deficient on some prefixes (points sharing an activation pattern span only d dimensions).
  f64 = feats.astype(np.float64)
  cond = np.array([[np.linalg.cond(f64[b, :i]) for i in range(dim, xs.shape[1])]
                   for b in range(len(xs))])
  full_rank = cond < 1e4
  assert full_rank.mean() > 0.8
  assert sq[:, dim:][full_rank].max() < 1e-12
  raw = ((representation_baselines.least_squares_affine(xs, ys) - ys) ** 2).mean(0) / (ys**2).mean()
  assert raw[-1] > 0.1  # Phi is far from affine: no raw-x fit interpolates


def test_least_squares_affine_recovers_an_affine_map_from_d_plus_one_points():
  rng = np.random.default_rng(3)
  xs = rng.standard_normal((20, 8, 4))
  ys = np.einsum("bkd,bd->bk", xs, rng.standard_normal((20, 4))) + rng.standard_normal((20, 1))
  pred = representation_baselines.least_squares_affine(xs, ys)
  np.testing.assert_allclose(pred[:, 5:], ys[:, 5:], atol=1e-9)
  assert np.abs(baselines.least_squares(xs, ys)[:, 5:] - ys[:, 5:]).max() > 0.1


def test_probe_errors_are_zero_for_linear_targets_and_near_one_for_noise():
  rng = np.random.default_rng(4)
  h_tr, h_te = rng.standard_normal((2, 3000, 6))
  a = rng.standard_normal((6, 3))
  layers = lambda h: np.stack([h, h[:, ::-1] * 2.0])  # noqa: E731  (two invertible views of h)
  err = representations.probe_errors(layers(h_tr), h_tr @ a + 1.0, layers(h_te), h_te @ a + 1.0,
                                     1e-6)
  np.testing.assert_allclose(err, 0.0, atol=1e-10)
  noise = representations.probe_errors(layers(h_tr), rng.standard_normal(3000), layers(h_te),
                                       rng.standard_normal(3000), 1e-6)
  assert np.all((noise > 0.95) & (noise < 1.05))


def test_bad_inputs_name_the_field():
  with pytest.raises(ValueError, match="allowed"):
    rep_config.get_config("tiny")
  with pytest.raises(ValueError, match="noise_std"):
    representation_baselines.bayes_ridge_lambda(5, -0.1)
  config = rep_config.get_config("smoke")
  config.task.curriculum.dims_start = 2
  with pytest.raises(ValueError, match="dims_start"):
    representations.RepresentationTask(config)
  config = rep_config.get_config("smoke")
  config.eval.context_lengths = (5, 21)
  with pytest.raises(ValueError, match="context_lengths"):
    representations.evaluate(None, config)


def test_task_batches_follow_the_representation():
  config = rep_config.get_config("smoke")
  task = representations.RepresentationTask(config)
  batch = task.batch(10_000)
  tokens, ys = batch["tokens"], batch["ys"]
  k = int(config.task.n_points)
  assert tokens.shape == (int(config.train.batch_size), 2 * k, int(config.task.n_dims))
  np.testing.assert_array_equal(tokens[:, 1::2, 0], ys)
  # Noise aside, each prompt's ys lie in the span of its Phi(x) (D = 5 < k = 21 points).
  feats = icl_functions.apply_mlp(task.phi, tokens[:, ::2])
  w = np.linalg.lstsq(feats[0].astype(np.float64), ys[0], rcond=None)[0]
  resid = ys[0] - feats[0] @ w
  assert resid.std() < 2 * float(config.task.noise_std) and ys[0].std() > 0.5
  np.testing.assert_array_equal(task.batch(7)["ys"], task.batch(7)["ys"])


def test_evaluate_an_untrained_model_and_render_the_figure(tmp_path):
  config = rep_config.get_config("smoke")
  config.model.update(d_model=16, num_layers=2)
  config.eval.update(num_prompts=64, probe_train_prompts=128, context_lengths=(5,))
  task = representations.RepresentationTask(config)
  model = task.init_model(nnx.Rngs(0))
  res = representations.evaluate(model, config, init_model=model)
  k = int(config.task.n_points)
  assert set(res["errors"]) == {"transformer", "ridge_phi", "least_squares",
                                "least_squares_affine", "averaging", "knn3"}
  assert all(len(v) == k for v in res["errors"].values())
  assert res["probes"]["layers"] == 3 and res["probes"]["phi"] == res["probes"]["phi_untrained"]
  assert res["summary"]["k"] == 10 and res["summary"]["best_phi_probe_layer"] == 1
  fig = figure_scripts.load("fig_representations")
  meta = {"n_dims": 5, "rep_dim": 5, "phi_depth": 2, "noise_std": 0.1, "train_steps": 0}
  out = fig.plot({**meta, **res}, str(tmp_path / "r.png"))
  assert os.path.getsize(out) > 10_000


@pytest.mark.slow
def test_smoke_transformer_learns_on_top_of_the_representation(tmp_path):
  results = representations.run(rep_config.get_config("smoke"), str(tmp_path))
  s = results["summary"]  # errors at k = 2D = 10 in-context examples
  assert s["transformer"] < s["ridge_phi"] + 0.05  # near the Bayes-optimal ridge on Phi
  assert s["transformer"] < 0.2 * s["least_squares_affine"]  # what no raw-x linear fit reaches
  # Phi(x) is linearly readable below the top, far better than from x or from untrained layers.
  assert s["best_phi_probe"] < 0.2 * s["phi_probe_embedding"]
  assert s["best_phi_probe"] < 0.5 * s["best_phi_probe_untrained"]
  # The ridge-on-Phi prediction is readable at the top, not in the first block.
  ridge_probe = results["probes"]["context"]["n=10"]["ridge_phi"]
  assert ridge_probe[-1] < 0.1 and ridge_probe[-1] < 0.2 * ridge_probe[1]
