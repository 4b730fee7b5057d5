"""Smoke-scale check of Tarzanagh et al.: GD on softmax attention aligns with the Att-SVM solution."""

import os

import jax
import numpy as np
import pytest

from configs.icl import attention_svm as config_lib
from experiments.icl import attention_svm
from jaxllm.icl import svm
from tests.icl import figure_scripts


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  config = config_lib.get_config("smoke")
  config.num_trials = 3
  return attention_svm.run(config, str(tmp_path_factory.mktemp("attention_svm")))


def test_direction_converges_to_max_margin_solution(results):
  for trial in results["trials"]:
    cos = trial["cos_to_w_mm"]
    assert cos[-1] > 0.99
    # Alignment improves over training rather than being there from the start.
    assert cos[0] < 0.9
    assert trial["selection_is_locally_optimal"]
    # The norm diverges while the direction settles: the hallmark of implicit max-margin bias.
    assert trial["norm_ratio"][-1] > 10 * trial["norm_ratio"][0]


def test_self_attention_variant_converges_too(tmp_path):
  config = config_lib.get_config("smoke")
  config.task.query = "first_token"
  config.num_trials = 2
  config.seed = 1
  results = attention_svm.run(config, str(tmp_path))
  assert results["final_cos_min"] > 0.98


def test_a_wrong_selection_gives_a_different_direction():
  """The cosine threshold is informative: Att-SVM for another token choice points elsewhere."""
  x, z, _, _ = attention_svm.sample_problem(jax.random.key(0), 6, 8, 10, "separate")
  w_a = svm.attention_svm(x, z, np.zeros(6, int))["w"]
  w_b = svm.attention_svm(x, z, np.ones(6, int))["w"]
  assert abs(np.sum(w_a * w_b)) / (np.linalg.norm(w_a) * np.linalg.norm(w_b)) < 0.9


def test_config_validation():
  config = config_lib.get_config("smoke")
  config.task.query = "middle"
  with pytest.raises(ValueError, match="query"):
    attention_svm.run(config, "/nonexistent")


def _load_figure(name):
  return figure_scripts.load(f"fig_{name}")


def test_figure_is_written(tmp_path, results):
  out = _load_figure("attention_svm").plot(results, str(tmp_path / "attention_svm.png"))
  assert os.path.getsize(out) > 10_000
