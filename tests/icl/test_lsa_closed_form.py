"""Smoke-scale check of Zhang-Frei-Bartlett: trained LSA learns Gamma^-1 and the predicted errors."""

import os

import numpy as np
import pytest

from configs.icl import lsa_closed_form as config_lib
from experiments.icl import lsa_closed_form
from tests.icl import figure_scripts


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  config = config_lib.get_config("smoke")
  # A non-isotropic Lambda makes Gamma^-1 differ from both Lambda^-1 and a multiple of I.
  config.task.covariance_diag = (1.5, 1.0, 1.0, 1.0, 0.75)
  config.eval.update(num_prompts=6000, eval_lengths=(20, 320), covariate_scales=(2.0,))
  return lsa_closed_form.run(config, str(tmp_path_factory.mktemp("lsa_closed_form")))


def test_learned_matrix_matches_gamma_inverse_entrywise(results):
  learned = np.asarray(results["learned_matrix"])
  gamma_inv = np.asarray(results["gamma_inv"])
  scale = np.abs(gamma_inv).max()
  assert np.abs(learned - gamma_inv).max() < 0.05 * scale
  # The tolerance separates the closed form from the nearby wrong answers.
  lam = np.asarray(results["covariance"])
  for wrong in (np.linalg.inv(lam), np.eye(5) * np.trace(gamma_inv) / 5):
    assert np.abs(learned - wrong).max() > 0.15 * scale


def test_test_error_matches_formula(results):
  assert results["test_error_at_train_length"] == pytest.approx(
      results["formula_at_train_length"], rel=0.06)
  rows = results["curves"]["in_distribution"]
  np.testing.assert_allclose(rows["error"], rows["formula"], rtol=0.08)


def test_task_shift_is_harmless_and_covariate_shift_is_not(results):
  base = results["curves"]["in_distribution"]["normalized_error"]
  task = results["curves"]["task_shift"]["normalized_error"]
  cov = results["curves"]["covariate_scale_2"]["normalized_error"]
  np.testing.assert_allclose(task, base, rtol=0.15)
  assert base[-1] < 0.5 * base[0]
  # Long prompts fix the in-distribution error but not the covariate-shifted one.
  assert cov[-1] > 10 * base[-1]
  assert results["scaling"]["prediction_ratio_over_truth_ratio"][0] == pytest.approx(4.0, rel=1e-3)


def test_config_validation():
  with pytest.raises(ValueError, match="smoke"):
    config_lib.get_config("tiny")
  config = config_lib.get_config("smoke")
  config.task.n_dims = 3
  with pytest.raises(ValueError, match="covariance_diag"):
    lsa_closed_form.run(config, "/nonexistent")


def _load_figure(name):
  return figure_scripts.load(f"fig_{name}")


def test_figure_is_written(tmp_path, results):
  out = _load_figure("lsa_closed_form").plot(results, str(tmp_path / "lsa_closed_form.png"))
  assert os.path.getsize(out) > 10_000
