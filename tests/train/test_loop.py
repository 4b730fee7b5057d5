"""Training loop: exact resume after an interruption, NaN guard, metric logs, corrupt checkpoints."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.icl import linear_regression as lr_config
from jaxllm.icl.regression_task import LinearRegressionTask
from jaxllm.train import loop
from jaxllm.train.checkpoint import CheckpointError
from jaxllm.train.metrics import read_metrics


def tiny_config(steps=8, checkpoint_every=4, lr=3e-3):
  c = lr_config.get_config("tiny")
  c.train.update(steps=steps, checkpoint_every=checkpoint_every, log_every=1, batch_size=4)
  c.optimizer.update(learning_rate=lr, warmup_steps=2, schedule="cosine")
  c.model.update(d_model=16, num_layers=1, num_heads=2)
  c.task.curriculum.interval = 5  # shapes change mid-run, across a checkpoint
  return c


class Crash(Exception):
  pass


class CrashingTask(LinearRegressionTask):
  def __init__(self, config, crash_at):
    super().__init__(config)
    self.crash_at = crash_at

  def batch(self, step):
    if step == self.crash_at:
      raise Crash(f"simulated kill at step {step}")
    return super().batch(step)


def losses(workdir):
  return {m["step"]: m["loss"] for m in read_metrics(workdir)}


def test_resume_after_interruption_reproduces_the_uninterrupted_run(tmp_path):
  config = tiny_config()
  straight = str(tmp_path / "straight")
  loop.train(config, straight, LinearRegressionTask(config), progress=False)

  resumed = str(tmp_path / "resumed")
  with pytest.raises(Crash):
    loop.train(config, resumed, CrashingTask(config, crash_at=6), progress=False)
  partial = losses(resumed)
  # Steps 1..6 ran; step 6's metrics were still in flight (read one step late) when it died.
  assert max(partial) == 5
  result = loop.train(config, resumed, LinearRegressionTask(config), progress=False)
  assert result.resumed_from == 4

  want, got = losses(straight), losses(resumed)
  assert sorted(got) == list(range(1, 9))  # each step logged exactly once
  np.testing.assert_array_equal([got[s] for s in range(1, 9)], [want[s] for s in range(1, 9)])


def test_nan_guard_stops_with_a_clear_message(tmp_path):
  config = tiny_config(steps=30, checkpoint_every=0, lr=1e12)
  config.optimizer.update(name="sgd", grad_clip=None, warmup_steps=0, schedule="constant")
  config.optimizer.hparams = {}  # the smoke recipe sets Adam's b2
  with pytest.raises(FloatingPointError, match="non-finite metrics .* at step .*learning_rate"):
    loop.train(config, str(tmp_path / "nan"), LinearRegressionTask(config), progress=False)


def test_corrupted_only_checkpoint_is_moved_aside_and_the_next_run_starts_over(tmp_path):
  config = tiny_config(steps=4, checkpoint_every=4)
  workdir = str(tmp_path / "w")
  loop.train(config, workdir, LinearRegressionTask(config), progress=False)
  step_dir = os.path.join(workdir, "checkpoints", "4", "state")
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  config.train.steps = 8
  with pytest.raises(CheckpointError, match="no intact checkpoint .*step 4 .*moved to"):
    loop.train(config, workdir, LinearRegressionTask(config), progress=False)
  assert os.listdir(os.path.join(workdir, "checkpoints")) == []
  (aside,) = os.listdir(os.path.join(workdir, "checkpoints_corrupt"))
  assert aside.startswith("4-")
  result = loop.train(config, workdir, LinearRegressionTask(config), progress=False)
  assert result.resumed_from is None and sorted(losses(workdir)) == list(range(1, 9))


def test_checkpoint_past_requested_steps_is_an_error(tmp_path):
  config = tiny_config(steps=4, checkpoint_every=4)
  workdir = str(tmp_path / "w")
  loop.train(config, workdir, LinearRegressionTask(config), progress=False)
  config.train.steps = 2
  with pytest.raises(ValueError, match="past train.steps=2"):
    loop.train(config, workdir, LinearRegressionTask(config), progress=False)


def test_unknown_optimizer_and_schedule_are_listed(tmp_path):
  config = tiny_config()
  config.optimizer.name = "adamz"
  with pytest.raises(ValueError, match="unknown optimizer 'adamz'; valid: .*adamw"):
    loop.train(config, str(tmp_path / "a"), LinearRegressionTask(config), progress=False)
  config = tiny_config()
  config.optimizer.schedule = "cosinus"
  with pytest.raises(ValueError, match="unknown schedule 'cosinus'"):
    loop.train(config, str(tmp_path / "b"), LinearRegressionTask(config), progress=False)


class ResettingTask(LinearRegressionTask):
  """Zeroes the read-in bias after every 3rd update."""

  def after_update(self, step, params, opt_state, key):
    del key
    bias = params["read_in"]["bias"]
    params["read_in"]["bias"] = jnp.where(step % 3 == 0, jnp.zeros_like(bias), bias)
    return params, opt_state


@pytest.mark.parametrize("steps,zeroed", [(6, True), (7, False)])
def test_after_update_hook_edits_params(tmp_path, steps, zeroed):
  config = tiny_config(steps=steps, checkpoint_every=0)
  result = loop.train(config, str(tmp_path / "h"), ResettingTask(config), progress=False)
  bias = np.asarray(result.model.read_in.bias[...])
  assert (np.abs(bias).max() == 0.0) == zeroed


class MomentResettingTask(LinearRegressionTask):
  """Zeroes the read-in bias and its optimizer moments after update 4."""

  def after_update(self, step, params, opt_state, key):
    del key
    reset = step == 4

    def clear(path, x):
      names = [getattr(k, "key", None) for k in path]
      if names[-2:] == ["read_in", "bias"]:
        return jnp.where(reset, jnp.zeros_like(x), x)
      return x

    params = jax.tree_util.tree_map_with_path(clear, params)
    return params, jax.tree_util.tree_map_with_path(clear, opt_state)


def _moment_leaves(opt_state, names):
  """Leaves of ``opt_state`` whose path ends in ``names`` (one per moment tree)."""
  leaves = jax.tree_util.tree_leaves_with_path(opt_state)
  return [x for path, x in leaves if [getattr(k, "key", None) for k in path][-2:] == names]


def test_opt_state_hook_resets_params_and_moments(tmp_path, monkeypatch):
  config = tiny_config(steps=4, checkpoint_every=0)
  config.optimizer.update(name="adam", schedule="constant", warmup_steps=0)
  seen = {}
  real_save = loop.Checkpointer.save

  def save(self, step, state, meta, data=None):
    seen["opt_state"] = jax.device_get(state["opt_state"])
    return real_save(self, step, state, meta, data)

  monkeypatch.setattr(loop.Checkpointer, "save", save)
  result = loop.train(config, str(tmp_path / "m"), MomentResettingTask(config), progress=False)
  assert np.abs(np.asarray(result.model.read_in.bias[...])).max() == 0.0
  moments = _moment_leaves(seen["opt_state"], ["read_in", "bias"])
  assert len(moments) == 2  # Adam's mu and nu
  for m in moments:
    np.testing.assert_array_equal(m, 0.0)
  # Other parameters' moments are untouched.
  kernels = _moment_leaves(seen["opt_state"], ["read_in", "kernel"])
  assert len(kernels) == 2 and all(np.abs(np.asarray(m)).max() > 0 for m in kernels)
