"""General-purpose ICL (Kirsch et al.) on scikit-learn digits: generator, metric and the claim."""

import importlib.util
import os

import numpy as np
import pytest

from experiments.icl import general_purpose as gp
from jaxllm.data import projected_digits

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "icl", "general_purpose.py")


def get_config(arg="smoke"):
  spec = importlib.util.spec_from_file_location("general_purpose_config", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_splits_are_disjoint_and_standardised():
  xtr, ytr = projected_digits.digits("train")
  xte, yte = projected_digits.digits("test")
  assert len(ytr) + len(yte) == 1797 and xtr.shape[1] == 64
  assert len(yte) == int(1797 * 0.2)
  assert abs(float(np.concatenate([xtr, xte]).std(0).mean()) - 1.0) < 0.3
  with pytest.raises(ValueError, match="split"):
    projected_digits.digits("valid")


def test_sequences_shift_labels_and_apply_the_task():
  x, y = projected_digits.digits("train")
  rng = np.random.default_rng(0)
  tokens, targets = projected_digits.sequences(rng, x, y, [3, 3, 8], seed=1, out_dim=16, length=12)
  assert tokens.shape == (3, 12, 26)
  np.testing.assert_array_equal(tokens[:, 0, 16:], 0.0)  # no label before the first example
  np.testing.assert_array_equal(tokens[:, 1:, 16:].argmax(-1), targets[:, :-1])
  np.testing.assert_array_equal(tokens[:, 1:, 16:].sum(-1), 1.0)
  # The same task id gives the same projection and permutation; a different id another one.
  p3, perm3 = projected_digits.task(1, 3, 64, 16)
  p8, _ = projected_digits.task(1, 8, 64, 16)
  assert np.abs(p3 - p8).max() > 0.1
  np.testing.assert_array_equal(np.sort(perm3), np.arange(10))
  # Inputs are projections of real digits: each token lies on its task's projected image set.
  proj_images = x @ p3
  d = np.linalg.norm(proj_images[None] - tokens[0, :, None, :16], axis=-1).min(1)
  np.testing.assert_allclose(d, 0.0, atol=1e-4)
  # Projections keep roughly unit feature variance.
  assert 0.5 < proj_images.var() < 1.5


def test_sequences_use_distinct_images_and_apply_the_label_permutation():
  x, y = projected_digits.digits("test")
  rng = np.random.default_rng(1)
  tokens, targets = projected_digits.sequences(rng, x, y, [5, 6], seed=2, out_dim=64, length=40)
  for r, t in enumerate([5, 6]):
    proj, perm = projected_digits.task(2, t, 64, 64)
    # A 64 -> 64 Gaussian projection is invertible: recover which images the row used.
    idx = np.linalg.norm((x @ proj)[None] - tokens[r, :, None, :64], axis=-1).argmin(1)
    assert len(set(idx.tolist())) == 40  # distinct images within a sequence
    np.testing.assert_array_equal(targets[r], perm[y[idx]])  # label permutation applied
    assert (perm != np.arange(10)).any()
  with pytest.raises(ValueError, match="length"):
    projected_digits.sequences(rng, x, y, [0], seed=2, out_dim=8, length=len(y) + 1)


def test_unseen_task_ids_are_outside_every_training_pool():
  rng = np.random.default_rng(0)
  pool = projected_digits.train_task_ids(rng, 2**24, 10_000)
  assert pool.min() >= 0 and pool.max() < 2**24
  assert len(np.unique(pool)) > 9_900  # a large pool is sampled broadly
  np.testing.assert_array_equal(projected_digits.train_task_ids(rng, 1, 5), 0)
  unseen = projected_digits.unseen_task_ids(100)
  assert unseen.min() >= projected_digits.UNSEEN_TASK_OFFSET and len(np.unique(unseen)) == 100
  with pytest.raises(ValueError, match="num_tasks"):
    projected_digits.train_task_ids(rng, 0, 3)


def test_accuracy_by_position_on_a_hand_checked_case():
  logits = np.zeros((2, 3, 10))
  logits[0, [0, 1, 2], [4, 1, 7]] = 1.0  # predicts 4, 1, 7
  logits[1, [0, 1, 2], [2, 1, 9]] = 1.0  # predicts 2, 1, 9
  targets = np.array([[4, 0, 7], [3, 1, 9]])
  np.testing.assert_allclose(gp.accuracy_by_position(logits, targets), [0.5, 0.5, 1.0])
  with pytest.raises(ValueError, match="disagree"):
    gp.accuracy_by_position(logits, targets[:, :2])


def _rows_on_image_set(tokens, images, seed, task_ids, dim):
  """Whether every token of every row is a projection (by its row's task) of one of ``images``."""
  out = []
  for row, t in zip(tokens, task_ids):
    proj, _ = projected_digits.task(seed, int(t), 64, dim)
    d = np.linalg.norm((images @ proj)[None] - row[:, None, :dim], axis=-1).min(1)
    out.append(bool((d < 1e-3).all()))
  return out


def test_evaluation_splits_keep_unseen_tasks_and_test_images_apart():
  config = get_config()
  config.eval.num_sequences = 6
  dim = config.task.proj_dim
  x_train, _ = projected_digits.digits("train")
  x_test, _ = projected_digits.digits("test")
  unseen_ids = projected_digits.unseen_task_ids(6)
  tokens, targets = gp.eval_sequences(config, 16, "unseen_tasks")
  assert tokens.shape == (6, config.task.length, dim + 10) and targets.shape == tokens.shape[:2]
  assert all(_rows_on_image_set(tokens, x_test, config.seed, unseen_ids, dim))
  assert not any(_rows_on_image_set(tokens, x_train, config.seed, unseen_ids, dim))
  # Training tasks: one task of the pool reproduces each row, on training images only.
  tokens, _ = gp.eval_sequences(config, 1, "train_tasks")
  assert all(_rows_on_image_set(tokens, x_train, config.seed, [0] * 6, dim))
  tokens, _ = gp.eval_sequences(config, 1, "train_tasks_test_images")
  assert all(_rows_on_image_set(tokens, x_test, config.seed, [0] * 6, dim))
  with pytest.raises(ValueError, match="split"):
    gp.eval_sequences(config, 1, "validation")


def test_batches_are_a_pure_function_of_the_step_and_the_pool():
  config = get_config()
  task = gp.DigitsTask(config, 4)
  a, b = task.batch(7), task.batch(7)
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert a["tokens"].shape == (config.train.batch_size, config.task.length,
                               config.task.proj_dim + 10)
  assert not np.array_equal(task.batch(8)["tokens"], a["tokens"])
  assert not np.array_equal(gp.DigitsTask(config, 5).batch(7)["tokens"], a["tokens"])


@pytest.mark.parametrize("field,value,match", [
    ("num_tasks", (), "num_tasks"), ("num_tasks", (4, 0), "num_tasks"),
    ("num_tasks", (4, 4), "repeated"), ("length", 400, "test images"),
    ("proj_dim", 0, "proj_dim")])
def test_bad_task_config_is_rejected(tmp_path, field, value, match):
  config = get_config()
  config.task[field] = value
  with pytest.raises(ValueError, match=match):
    gp.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_unknown_config_arg_names_the_allowed_ones():
  with pytest.raises(ValueError, match="smoke"):
    get_config("huge")


def test_images_per_row_makes_images_recur_within_a_sequence():
  x, y = projected_digits.digits("train")
  rng = np.random.default_rng(3)
  tokens, _ = projected_digits.sequences(rng, x, y, [0, 1], seed=0, out_dim=64, length=30,
                                         images_per_row=12)
  for r in range(2):
    proj, _ = projected_digits.task(0, r, 64, 64)
    idx = np.linalg.norm((x @ proj)[None] - tokens[r, :, None, :64], axis=-1).argmin(1)
    assert len(set(idx.tolist())) <= 12
  with pytest.raises(ValueError, match="images_per_row"):
    projected_digits.sequences(rng, x, y, [0], seed=0, out_dim=8, length=5, images_per_row=0)


@pytest.mark.slow
def test_few_tasks_memorise_and_many_tasks_learn_to_learn(tmp_path):
  """The smoke sweep's two ends: 1 task -> memorisation, 2^16 tasks -> learning-to-learn."""
  config = get_config()
  config.task.num_tasks = (1, 2**16)
  runs = gp.run(config, str(tmp_path))["runs"]
  few, many = runs["1"], runs[str(2**16)]
  # Memorisation: the training task is solved from the first position on, unseen tasks stay at
  # chance 0.1 everywhere (a learner that used the context would climb at late positions).
  assert few["train_tasks"]["late"] > 0.8 and few["train_tasks_test_images"]["late"] > 0.7
  assert few["unseen_tasks"]["overall"] < 0.16 and few["unseen_tasks"]["late"] < 0.18
  # Learning-to-learn: unseen tasks start at chance, rise with position, and match training tasks.
  unseen = many["unseen_tasks"]
  assert unseen["first"] < 0.17
  assert unseen["late"] > 0.22 and unseen["late"] > unseen["first"] + 0.1
  assert abs(unseen["late"] - many["train_tasks"]["late"]) < 0.07
  assert few["unseen_tasks"]["late"] + 0.1 < unseen["late"]
