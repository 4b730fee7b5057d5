"""Linear probes and error-similarity matching against closed forms."""

import numpy as np
import pytest

from jaxllm.icl import probes


def test_probe_recovers_an_exact_affine_read_out():
  rng = np.random.default_rng(0)
  h = rng.standard_normal((500, 8))
  w, b = rng.standard_normal(8), 0.7
  probe = probes.fit_linear_probe(h, h @ w + b, ridge=0.0)
  np.testing.assert_allclose(probe, np.append(w, b), atol=1e-10)
  h_new = rng.standard_normal((10, 8))
  np.testing.assert_allclose(probes.apply_probe(probe, h_new), h_new @ w + b, atol=1e-10)


def test_ridge_probe_shrinks_towards_zero_but_not_the_bias():
  rng = np.random.default_rng(1)
  h = rng.standard_normal((50, 4))
  y = h @ np.ones(4) + 3.0
  probe = probes.fit_linear_probe(h, y, ridge=1e6)
  assert np.abs(probe[:4]).max() < 0.01
  assert probe[4] == pytest.approx(y.mean(), abs=0.05)


def test_matching_finds_the_algorithm_each_layer_copies():
  rng = np.random.default_rng(2)
  algo = rng.standard_normal((6, 400))
  layers = algo[[0, 2, 5]] * np.array([[1.0], [0.5], [2.0]]) + 0.1 * rng.standard_normal((3, 400))
  best, cos = probes.match_by_error_similarity(layers, algo)
  assert best.tolist() == [0, 2, 5]
  assert cos.shape == (3, 6) and cos.max(axis=1).min() > 0.98
  assert cos[0, 1] == pytest.approx(probes.error_cosine(layers[0], algo[1]), abs=1e-12)
  assert probes.error_cosine([1.0, 0.0], [-2.0, 0.0]) == pytest.approx(-1.0)


def test_bad_shapes_are_rejected():
  with pytest.raises(ValueError, match="h_PD"):
    probes.fit_linear_probe(np.zeros((3, 2)), np.zeros(4))
  with pytest.raises(ValueError, match="equal P"):
    probes.match_by_error_similarity(np.zeros((2, 3)), np.zeros((2, 4)))
  with pytest.raises(ValueError, match="ridge"):
    probes.fit_linear_probe(np.zeros((3, 2)), np.zeros(3), ridge=-1.0)
