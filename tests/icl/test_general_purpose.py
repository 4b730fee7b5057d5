"""General-purpose ICL task generator on scikit-learn digits."""

import numpy as np
import pytest

from jaxllm.data import digits_tasks


def test_splits_are_disjoint_and_standardised():
  xtr, ytr = digits_tasks.digits("train")
  xte, yte = digits_tasks.digits("test")
  assert len(ytr) + len(yte) == 1797 and xtr.shape[1] == 64
  assert len(yte) == int(1797 * 0.2)
  assert abs(float(np.concatenate([xtr, xte]).std(0).mean()) - 1.0) < 0.3
  with pytest.raises(ValueError, match="split"):
    digits_tasks.digits("valid")


def test_sequences_shift_labels_and_apply_the_task():
  x, y = digits_tasks.digits("train")
  rng = np.random.default_rng(0)
  tokens, targets = digits_tasks.sequences(rng, x, y, [3, 3, 8], seed=1, out_dim=16, length=12)
  assert tokens.shape == (3, 12, 26)
  np.testing.assert_array_equal(tokens[:, 0, 16:], 0.0)  # no label before the first example
  np.testing.assert_array_equal(tokens[:, 1:, 16:].argmax(-1), targets[:, :-1])
  np.testing.assert_array_equal(tokens[:, 1:, 16:].sum(-1), 1.0)
  # The same task id gives the same projection and permutation; a different id another one.
  p3, perm3 = digits_tasks.task(1, 3, 64, 16)
  p8, _ = digits_tasks.task(1, 8, 64, 16)
  assert np.abs(p3 - p8).max() > 0.1
  np.testing.assert_array_equal(np.sort(perm3), np.arange(10))
  # Inputs are projections of real digits: each token lies on its task's projected image set.
  proj_images = x @ p3
  d = np.linalg.norm(proj_images[None] - tokens[0, :, None, :16], axis=-1).min(1)
  np.testing.assert_allclose(d, 0.0, atol=1e-4)
  # Projections keep roughly unit feature variance.
  assert 0.5 < proj_images.var() < 1.5
