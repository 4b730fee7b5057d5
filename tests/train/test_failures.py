"""The training loop under failure: divergence, signals, damaged checkpoints, checkpoints of
another config, bad config values, and a task with its own input-pipeline state."""

import glob
import json
import os
import signal
import stat

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxllm.icl.regression_task import LinearRegressionTask
from jaxllm import main as launcher
from jaxllm.train import loop
from jaxllm.train import workdir as workdir_lib
from jaxllm.train.checkpoint import Checkpointer, ConfigMismatchError
from jaxllm.train.metrics import read_metrics
from tests.train.test_loop import losses, tiny_config


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted 8-step run (checkpoints at 4 and 8): its losses and final parameters."""
  config = tiny_config(steps=8, checkpoint_every=4)
  workdir = str(tmp_path_factory.mktemp("straight"))
  result = loop.train(config, workdir, LinearRegressionTask(config), progress=False)
  return losses(workdir), np.asarray(result.model.read_in.kernel[...])


def _same_run_as(straight, workdir, result):
  want, final = straight
  assert losses(workdir) == want  # bit-exact, every step logged once
  np.testing.assert_array_equal(np.asarray(result.model.read_in.kernel[...]), final)


# ---------------------------------------------------------------------------------------------
# Divergence: never checkpoint a state whose own loss was not seen finite.

@pytest.mark.parametrize("grad_clip", [None, pytest.param(1e30, marks=pytest.mark.slow)])
def test_diverging_run_keeps_only_checkpoints_with_a_finite_own_loss(tmp_path, grad_clip):
  config = tiny_config(steps=40, checkpoint_every=1, lr=3.0)
  config.optimizer.update(name="sgd", grad_clip=grad_clip, warmup_steps=0, schedule="constant")
  config.optimizer.hparams = {}  # the smoke recipe sets Adam's b2
  workdir = str(tmp_path / "nan")
  with pytest.raises(FloatingPointError) as info:
    loop.train(config, workdir, LinearRegressionTask(config), progress=False)
  message = str(info.value)
  if grad_clip is None:
    assert "or set optimizer.grad_clip" in message
  else:
    assert "set optimizer.grad_clip" not in message and f"grad_clip (now {grad_clip})" in message
  last = Checkpointer(workdir).latest_step()
  assert last is not None and f"Last checkpoint: step {last}." in message
  logged = losses(workdir)
  # The loss of step last + 1 is the saved state's own loss (and it was finite); the run died
  # on the metrics of the very next step.
  assert np.isfinite(logged[last + 1]) and max(logged) == last + 1
  # Resuming restarts from a finite state instead of failing on its first step.
  with pytest.raises(FloatingPointError, match=f"at step {last + 2}; training stopped"):
    loop.train(config, workdir, LinearRegressionTask(config), progress=False)


# ---------------------------------------------------------------------------------------------
# SIGTERM / SIGINT inside the loop (the command-line tests send them to a child process).

class SignallingTask(LinearRegressionTask):
  def __init__(self, config, signum, at):
    super().__init__(config)
    self.signum, self.at = signum, at

  def batch(self, step):
    if step == self.at:
      os.kill(os.getpid(), self.signum)
    return super().batch(step)


@pytest.mark.slow  # tests/test_cli_errors.py sends both signals to a child run in the default tier
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_the_current_step_and_resume_is_exact(tmp_path, straight, signum):
  config = tiny_config(steps=8, checkpoint_every=4)
  workdir = str(tmp_path / "sig")
  before = signal.getsignal(signum)
  with pytest.raises(loop.Interrupted, match=f"stopped by {signal.Signals(signum).name} at step "
                     "6/8; checkpoint saved at step 6") as info:
    loop.train(config, workdir, SignallingTask(config, signum, at=5), progress=False)
  assert info.value.signum == signum
  assert signal.getsignal(signum) is before  # the loop's handler is gone again
  assert Checkpointer(workdir).latest_step() == 6
  result = loop.train(config, workdir, LinearRegressionTask(config), progress=False)
  assert result.resumed_from == 6
  _same_run_as(straight, workdir, result)


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints: report in one line, fall back to the newest intact step, set it aside.

def _truncate(pattern):
  def damage(step_dir):
    (path,) = [p for p in glob.glob(os.path.join(step_dir, pattern)) if os.path.isfile(p)][:1]
    os.truncate(path, os.path.getsize(path) // 2)
  return damage


def _edit_meta(key, value):
  def damage(step_dir):
    path = os.path.join(step_dir, "meta", "metadata")
    with open(path) as f:
      meta = json.load(f)
    meta[key] = value
    with open(path, "w") as f:
      json.dump(meta, f)
  return damage


DAMAGE = {
    "array data": (_truncate("state/d/*"), "TensorStore|ValueError|Error"),
    "meta json": (_truncate("meta/metadata"), "JSONDecodeError"),
    "data_position edited": (_edit_meta("data_position", 999),
                             "its metadata says data_position=999, not its own step 8"),
    "array metadata": (_truncate("state/_METADATA"), "JSONDecodeError"),
    "ocdbt manifest": (_truncate("state/manifest.ocdbt"), "Error"),
}
SLOW_DAMAGE = ("meta json", "data_position edited", "array metadata", "ocdbt manifest")


@pytest.mark.parametrize("kind", [k if k not in SLOW_DAMAGE else pytest.param(
    k, marks=pytest.mark.slow) for k in DAMAGE])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, straight, capsys,
                                                                  kind):
  damage, reason = DAMAGE[kind]
  config = tiny_config(steps=8, checkpoint_every=4)
  workdir = str(tmp_path / "w")
  loop.train(config, workdir, LinearRegressionTask(config), progress=False)
  damage(os.path.join(workdir, "checkpoints", "8"))
  capsys.readouterr()
  result = loop.train(config, workdir, LinearRegressionTask(config), progress=False)
  assert result.resumed_from == 4
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith("warning: checkpoint step 8 is corrupt (")
  assert line.endswith("; resuming from step 4")
  assert any(r in line for r in reason.split("|")), line
  (aside,) = os.listdir(os.path.join(workdir, "checkpoints_corrupt"))
  assert f"moved to {os.path.join(workdir, 'checkpoints_corrupt', aside)};" in line
  assert aside.startswith("8-")
  _same_run_as(straight, workdir, result)
  assert Checkpointer(workdir).latest_step() == 8  # step 8 written again


@pytest.mark.slow  # the command-line table checks the same refusal leaves the workdir unchanged
def test_checkpoint_of_another_model_config_is_refused_and_left_alone(tmp_path):
  config = tiny_config(steps=4, checkpoint_every=4)
  workdir = str(tmp_path / "w")
  loop.train(config, workdir, LinearRegressionTask(config), progress=False)
  with open(os.path.join(workdir, "config.json")) as f:
    saved_config = f.read()
  listing = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  config.model.d_model = 32
  config.train.steps = 8
  with pytest.raises(ConfigMismatchError, match=r"different model or optimizer config \(params\."
                     r".* is \(\(16,\), 'float32'\) there, \(\(32,\), 'float32'\) now\).*"
                     r"model\.d_model: 16 there, 32 now"):
    loop.train(config, workdir, LinearRegressionTask(config), progress=False)
  with open(os.path.join(workdir, "config.json")) as f:
    assert f.read() == saved_config
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == listing
  assert not os.path.exists(os.path.join(workdir, "checkpoints_corrupt"))


@pytest.mark.parametrize("item,edit,why", [
    ("data", {"step": 3, "state": {"pos": 8}}, "its data state is for step 3, not 8"),
    ("meta", {"step": 8, "data_position": 999}, "its metadata says data_position=999, not its own "
     "step 8"),
    ("meta", {"step": 9, "data_position": 8}, "its metadata says step=9, not its own step 8"),
])
def test_metadata_that_disagrees_with_its_step_is_treated_as_corrupt(tmp_path, item, edit, why):
  state = {"params": {"w": jnp.arange(3.0)}, "step": jnp.array(0, jnp.int32)}
  ckpt = Checkpointer(str(tmp_path))
  for step in (4, 8):
    ckpt.save(step, dict(state, step=jnp.array(step, jnp.int32)),
              {"step": step, "data_position": step}, {"step": step, "state": {"pos": step}})
  with open(os.path.join(ckpt.directory, "8", item, "metadata"), "w") as f:
    json.dump(edit, f)
  ckpt.close()
  abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  ckpt = Checkpointer(str(tmp_path))
  step, restored, meta, data, aside = ckpt.restore_latest(abstract, with_data=True)
  ckpt.close()
  assert step == 4 and data == {"pos": 4} and int(restored["step"]) == 4
  assert meta == {"step": 4, "data_position": 4}
  assert [(s, w) for s, w, _ in aside] == [(8, f"ValueError: {why}")]
  assert os.listdir(os.path.join(tmp_path, "checkpoints_corrupt"))[0].startswith("8-")


# ---------------------------------------------------------------------------------------------
# A task with input-pipeline state of its own.

class PipelineTask(LinearRegressionTask):
  """Serves batches from its own position; correct batches after a resume need the hook."""

  def __init__(self, config, crash_at=None):
    super().__init__(config)
    self.position, self.crash_at, self.calls = 0, crash_at, []

  def batch(self, step):
    if step == self.crash_at:
      raise RuntimeError(f"simulated kill at step {step}")
    self.calls.append(("batch", step))
    out = super().batch(self.position)
    self.position += 1
    return out

  def data_state(self, step):
    self.calls.append(("data_state", step))
    return {"position": self.position}

  def restore_data_state(self, state):
    self.calls.append(("restore", state))
    self.position = state["position"]


def test_data_state_is_checkpointed_and_handed_back_before_training_continues(tmp_path,
                                                                             straight):
  config = tiny_config(steps=8, checkpoint_every=4)
  workdir = str(tmp_path / "data")
  with pytest.raises(RuntimeError, match="simulated kill"):
    loop.train(config, workdir, PipelineTask(config, crash_at=6), progress=False)
  with open(os.path.join(workdir, "checkpoints", "4", "data", "metadata")) as f:
    assert json.load(f) == {"step": 4, "state": {"position": 4}}
  task = PipelineTask(config)
  result = loop.train(config, workdir, task, progress=False)
  assert result.resumed_from == 4
  assert task.calls[:2] == [("restore", {"position": 4}), ("batch", 4)]
  assert ("data_state", 8) in task.calls
  _same_run_as(straight, workdir, result)


class HalfHookTask(LinearRegressionTask):
  def data_state(self, step):
    return {"step": step}


class BadDataStateTask(PipelineTask):
  def data_state(self, step):
    return {"position": np.arange(2)}


def test_bad_data_state_hooks_are_value_errors(tmp_path):
  config = tiny_config(steps=2, checkpoint_every=0)
  with pytest.raises(ValueError, match="must define both data_state.*restore_data_state"):
    loop.train(config, str(tmp_path / "a"), HalfHookTask(config), progress=False)
  with pytest.raises(ValueError, match=r"BadDataStateTask.data_state\(2\) is not "
                     "JSON-serialisable"):
    loop.train(config, str(tmp_path / "b"), BadDataStateTask(config), progress=False)


# ---------------------------------------------------------------------------------------------
# Config values, checked before anything is written.

@pytest.mark.parametrize("section,field,value,message", [
    ("train", "steps", 0, "train.steps must be an integer >= 1, got 0"),
    ("train", "batch_size", 0, "train.batch_size must be an integer >= 1, got 0"),
    ("train", "batch_size", -4, "train.batch_size=-4 must be >= 0"),
    ("train", "batch_size", 2.5, "train.batch_size must be an integer >= 1, got 2.5"),
    ("train", "checkpoint_every", -1, "train.checkpoint_every=-1 must be >= 0"),
    ("train", "log_every", 0, "train.log_every must be an integer >= 1, got 0"),
    ("optimizer", "learning_rate", -1e-3, "optimizer.learning_rate=-0.001 must be >= 0"),
    ("optimizer", "learning_rate", 0.0, "optimizer.learning_rate must be a number > 0, got 0.0"),
    ("optimizer", "learning_rate", "1e-3", "optimizer.learning_rate must be a number > 0"),
    ("optimizer", "grad_clip", "1", "optimizer.grad_clip must be None or a number > 0, got '1'"),
    ("optimizer", "grad_clip", float("inf"), "optimizer.grad_clip=inf must be a finite number"),
    ("optimizer", "warmup_steps", -5, "optimizer.warmup_steps=-5 must be >= 0"),
    ("task", "noise_std", float("nan"), "task.noise_std=nan must be a finite number"),
    ("task", "n_dims", -1, "task.n_dims=-1 must be >= 0"),
])
def test_bad_numbers_are_named_before_the_workdir_is_touched(tmp_path, section, field, value,
                                                             message):
  config = ml_collections.ConfigDict(tiny_config().to_dict(), type_safe=False)
  config[section][field] = value
  workdir = tmp_path / "w"
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    loop.train(config, str(workdir), None, progress=False)
  assert not workdir.exists()


def test_seed_must_be_a_non_negative_integer(tmp_path):
  config = tiny_config()
  config.seed = -1
  with pytest.raises(ValueError, match="seed=-1 must be >= 0"):
    loop.train(config, str(tmp_path), None, progress=False)


# ---------------------------------------------------------------------------------------------
# A finished run keeps its results; results files are world-readable like the others.

def test_rerunning_a_finished_launch_keeps_its_results(tmp_path):
  from configs.icl import linear_regression as lr_config  # pylint: disable=g-import-not-at-top
  config = lr_config.get_config("tiny")
  config.train.update(steps=6, checkpoint_every=3, log_every=3)
  config.eval.num_prompts = 16
  workdir = str(tmp_path / "run")
  first = launcher.launch(config, workdir)
  path = os.path.join(workdir, "results.json")
  with open(path, "rb") as f:
    written = f.read()
  assert first["final_train_loss"] is not None and first["steps_per_second"] > 0
  again = launcher.launch(config, workdir)
  assert again == first
  with open(path, "rb") as f:
    assert f.read() == written
  umask = os.umask(0o022)
  os.umask(umask)
  for name in ("results.json", "config.json", "metrics.jsonl"):
    assert stat.S_IMODE(os.stat(os.path.join(workdir, name)).st_mode) == 0o666 & ~umask, name
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_NAME))
  assert [m["step"] for m in read_metrics(workdir)] == [3, 6]
