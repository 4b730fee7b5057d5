"""General-purpose in-context learning tasks (Kirsch et al.) from scikit-learn's bundled 8x8 digits.

Task t is a fixed random Gaussian projection A_t [64, d] of the standardised images and a fixed
random permutation of the 10 labels, both drawn from seed (seed, t); a pool of ``num_tasks`` tasks
sets how many distinct tasks training sees. A sequence of n examples is fed as tokens
[x_i, onehot(y_{i-1})] (the label of the previous example beside the current input) and the model
predicts y_i at every position.
"""

import numpy as np
from sklearn.datasets import load_digits

NUM_CLASSES = 10


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


def sequences(rng: np.random.Generator, images, labels, task_ids, seed: int, out_dim: int,
              length: int):
  """Tokens [B, length, out_dim + 10] and targets [B, length], one task per row."""
  b = len(task_ids)
  tokens = np.zeros((b, length, out_dim + NUM_CLASSES), np.float32)
  targets = np.zeros((b, length), np.int64)
  for r, t in enumerate(task_ids):
    proj, perm = task(seed, int(t), images.shape[1], out_dim)
    idx = rng.integers(len(labels), size=length)
    y = perm[labels[idx]]
    tokens[r, :, :out_dim] = images[idx] @ proj
    tokens[r, np.arange(1, length), out_dim + y[:-1]] = 1.0
    targets[r] = y
  return tokens, targets
