"""General-purpose in-context learning tasks (Kirsch et al.) from scikit-learn's bundled 8x8 digits.

Task t is a fixed random Gaussian projection A_t [64, d] of the standardised images and a fixed
random permutation of the 10 labels, both drawn from seed (seed, t); a pool of ``num_tasks`` tasks
sets how many distinct tasks training sees. Training draws task ids from [0, num_tasks); unseen
tasks use ids from UNSEEN_TASK_OFFSET on, which no training pool reaches. A sequence of n examples
(distinct images of one split) is fed as tokens [x_i, onehot(y_{i-1})] (the label of the previous
example beside the current input) and the model predicts y_i at every position.
"""

import numpy as np
from sklearn.datasets import load_digits

NUM_CLASSES = 10
# Task ids of unseen (evaluation) tasks start here; training pools must stay below it.
UNSEEN_TASK_OFFSET = 2**40


def digits(split: str = "train", test_fraction: float = 0.2):
  """Standardised images [N, 64] and labels [N] of a fixed split (test images never train)."""
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  x, y = load_digits(return_X_y=True)
  x = (x - x.mean(0)) / (x.std(0) + 1e-6)
  order = np.random.default_rng(0).permutation(len(y))
  n_test = int(len(y) * test_fraction)
  idx = order[:n_test] if split == "test" else order[n_test:]
  return x[idx].astype(np.float32), y[idx]


def task(seed: int, task_id: int, in_dim: int, out_dim: int):
  """(projection [in_dim, out_dim] scaled to keep unit variance, label permutation [10])."""
  rng = np.random.default_rng([seed, task_id])
  proj = rng.standard_normal((in_dim, out_dim)) / np.sqrt(in_dim)
  return proj.astype(np.float32), rng.permutation(NUM_CLASSES)


def train_task_ids(rng: np.random.Generator, num_tasks: int, size: int):
  """``size`` task ids drawn uniformly from the training pool [0, num_tasks)."""
  if not 1 <= num_tasks <= UNSEEN_TASK_OFFSET:
    raise ValueError(f"num_tasks must be in [1, {UNSEEN_TASK_OFFSET}], got {num_tasks}")
  return rng.integers(num_tasks, size=size)


def unseen_task_ids(count: int):
  """``count`` task ids no training pool contains."""
  return UNSEEN_TASK_OFFSET + np.arange(count)


def sequences(rng: np.random.Generator, images, labels, task_ids, seed: int, out_dim: int,
              length: int, images_per_row: int | None = None):
  """Tokens [B, length, out_dim + 10] and targets [B, length], one task per row.

  By default the images of a row are distinct, so a query is never answered by copying an earlier
  label of the very same image. With ``images_per_row`` = m a row instead draws its examples with
  replacement from m distinct images, so images recur within the sequence.
  """
  if not 1 <= length <= len(labels):
    raise ValueError(f"length must be in [1, {len(labels)}] (distinct images), got {length}")
  if images_per_row is not None and not 1 <= images_per_row <= len(labels):
    raise ValueError(f"images_per_row must be None or in [1, {len(labels)}], got {images_per_row}")
  b = len(task_ids)
  tokens = np.zeros((b, length, out_dim + NUM_CLASSES), np.float32)
  targets = np.zeros((b, length), np.int64)
  for r, t in enumerate(task_ids):
    proj, perm = task(seed, int(t), images.shape[1], out_dim)
    if images_per_row is None:
      idx = rng.choice(len(labels), size=length, replace=False)
    else:
      idx = rng.choice(len(labels), size=images_per_row, replace=False)[
          rng.integers(images_per_row, size=length)]
    y = perm[labels[idx]]
    tokens[r, :, :out_dim] = images[idx] @ proj
    tokens[r, np.arange(1, length), out_dim + y[:-1]] = 1.0
    targets[r] = y
  return tokens, targets
