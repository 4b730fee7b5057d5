"""General-purpose in-context learning (Kirsch et al. 2022) on scikit-learn digits.

For every pool size in ``config.task.num_tasks`` a transformer is meta-trained on sequences of
(x_i, y_{i-1}) tokens whose task (random projection + label permutation) is drawn from a pool of
that many tasks. Each trained model is then scored, at every position of the sequence, on
  * ``train_tasks``: tasks of its pool on training images (what it was trained on);
  * ``train_tasks_test_images``: tasks of its pool on held-out test images;
  * ``unseen_tasks``: projections and permutations outside every pool, on held-out test images.
Few tasks should give memorisation (train tasks solved, unseen tasks at chance 0.1 everywhere); many
tasks should give learning-to-learn (unseen-task accuracy rising with position towards the
train-task accuracy). Training sequences may reuse images (``task.train_images_per_row``) to shorten
the loss plateau; evaluation sequences always use distinct images, so no answer is a copied label of
the very same image.
"""

import os

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxllm.data import projected_digits
from jaxllm.models.transformer import build
from jaxllm.results import write_results
from jaxllm.train.loop import train

EVAL_SPLITS = ("train_tasks", "train_tasks_test_images", "unseen_tasks")


def _validate(config):
  c = config.task
  for field in ("proj_dim", "length"):
    if int(c[field]) != c[field] or c[field] < 1:
      raise ValueError(f"config.task.{field} must be a positive integer, got {c[field]}")
  ipr = c.get("train_images_per_row")
  if ipr is not None and (int(ipr) != ipr or ipr < 1):
    raise ValueError(f"config.task.train_images_per_row must be None or a positive integer, "
                     f"got {ipr}")
  pools = tuple(c.num_tasks)
  if not pools or any(int(n) != n or not 1 <= n <= projected_digits.UNSEEN_TASK_OFFSET
                      for n in pools):
    raise ValueError(f"config.task.num_tasks must list pool sizes in [1, "
                     f"{projected_digits.UNSEEN_TASK_OFFSET}], got {pools}")
  if len(set(pools)) != len(pools):
    raise ValueError(f"config.task.num_tasks has repeated pool sizes: {pools}")
  n_test = len(projected_digits.digits("test")[1])
  if c.length > n_test:
    raise ValueError(f"config.task.length={c.length} exceeds the {n_test} test images "
                     "(a sequence uses distinct images)")
  if c.length > config.model.max_len:
    raise ValueError(f"config.model.max_len={config.model.max_len} is shorter than "
                     f"config.task.length={c.length}")
  if int(config.eval.num_sequences) < 1:
    raise ValueError(f"config.eval.num_sequences must be >= 1, got {config.eval.num_sequences}")


class DigitsTask:
  """Meta-training on a pool of ``num_tasks`` tasks; batches are a pure function of (seed, step)."""

  def __init__(self, config, num_tasks: int):
    c = config.task
    self.num_tasks, self.seed = int(num_tasks), int(config.seed)
    self.proj_dim, self.length = int(c.proj_dim), int(c.length)
    self.batch_size = int(config.train.batch_size)
    ipr = c.get("train_images_per_row")
    self.images_per_row = None if ipr is None else int(ipr)
    self.images, self.labels = projected_digits.digits("train")
    self.model_cfg = dict(config.model.to_dict(), io="vectors",
                          input_dim=self.proj_dim + projected_digits.NUM_CLASSES,
                          output_dim=projected_digits.NUM_CLASSES)

  def init_model(self, rngs):
    return build(self.model_cfg, rngs=rngs)

  def batch(self, step: int):
    rng = np.random.default_rng([self.seed, self.num_tasks, step])
    ids = projected_digits.train_task_ids(rng, self.num_tasks, self.batch_size)
    tokens, targets = projected_digits.sequences(rng, self.images, self.labels, ids, self.seed,
                                                 self.proj_dim, self.length, self.images_per_row)
    return {"tokens": tokens, "targets": targets}

  def loss(self, model, batch):
    logits = model(batch["tokens"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["targets"])}


def accuracy_by_position(logits, targets) -> np.ndarray:
  """Fraction of sequences predicted right (argmax) per position: [B, L, C], [B, L] -> [L]."""
  logits, targets = np.asarray(logits), np.asarray(targets)
  if logits.shape[:2] != targets.shape:
    raise ValueError(f"logits {logits.shape} and targets {targets.shape} disagree on [B, L]")
  return (logits.argmax(-1) == targets).mean(0)


def eval_sequences(config, num_tasks: int, split: str):
  """The fixed evaluation sequences (tokens, targets) of one split for a pool of ``num_tasks``."""
  if split not in EVAL_SPLITS:
    raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
  c, n = config.task, int(config.eval.num_sequences)
  rng = np.random.default_rng([int(config.seed), int(num_tasks), EVAL_SPLITS.index(split), 10**9])
  images, labels = projected_digits.digits("train" if split == "train_tasks" else "test")
  ids = (projected_digits.unseen_task_ids(n) if split == "unseen_tasks"
         else projected_digits.train_task_ids(rng, int(num_tasks), n))
  return projected_digits.sequences(rng, images, labels, ids, int(config.seed), int(c.proj_dim),
                                    int(c.length))


def evaluate(model, config, num_tasks: int, batch_size: int = 256) -> dict:
  """Per-split accuracy by position, overall, at position 1 and over the last quarter."""
  fwd = nnx.jit(lambda m, tok: m(tok))
  out = {}
  for split in EVAL_SPLITS:
    tokens, targets = eval_sequences(config, num_tasks, split)
    logits = np.concatenate([np.asarray(fwd(model, jnp.asarray(tokens[i:i + batch_size])))
                             for i in range(0, len(tokens), batch_size)])
    by_pos = accuracy_by_position(logits, targets)
    late = by_pos[-max(len(by_pos) // 4, 1):]
    out[split] = {"by_position": by_pos.tolist(), "overall": float(by_pos.mean()),
                  "first": float(by_pos[0]), "late": float(late.mean())}
  return out


def run(config, workdir: str) -> dict:
  """Trains one model per pool size; writes workdir/results.json after each."""
  _validate(config)
  results = {"experiment": "icl.general_purpose", "proj_dim": int(config.task.proj_dim),
             "length": int(config.task.length),
             "train_images_per_row": config.task.get("train_images_per_row"),
             "chance": 1.0 / projected_digits.NUM_CLASSES,
             "num_eval_sequences": int(config.eval.num_sequences), "runs": {}, "complete": False}
  for num_tasks in config.task.num_tasks:
    task = DigitsTask(config, num_tasks)
    trained = train(config, os.path.join(workdir, f"tasks_{num_tasks}"), task)
    results["runs"][str(num_tasks)] = {
        "num_tasks": int(num_tasks), "train_steps": trained.final_step,
        "final_train_loss": trained.last_metrics.get("loss"),
        "final_train_accuracy": trained.last_metrics.get("accuracy"),
        "steps_per_second": trained.steps_per_second,
        **evaluate(trained.model, config, num_tasks)}
    write_results(workdir, results)  # partial results survive a later run's failure
  results["complete"] = True
  write_results(workdir, results)
  return results
