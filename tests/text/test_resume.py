"""Kill-and-resume through the train loop with packed text gives the identical loss sequence."""

import numpy as np
import pytest

from configs import lm_efficiency as cfg_module
from jaxllm.train.lm_task import TextTask
from jaxllm.data import text
from jaxllm.train.loop import train
from jaxllm.train.metrics import read_metrics


class Killed(Exception):
  pass


class KilledAt(TextTask):
  """Dies when asked for the batch of step ``kill_at``, as a preempted job would. The step-3
  checkpoint is written once step 4 (batch 3) came back finite, so the kill comes after it."""

  kill_at = 4

  def batch(self, step):
    if step == self.kill_at:
      raise Killed(step)
    return super().batch(step)


def _config(data_dir):
  c = cfg_module.get_config("tiny")
  c.text.update(data_dir=data_dir, seq_len=32, packing="first_fit", num_packing_bins=4)
  c.model.update(attention="dense", attention_options={})
  c.optimizer.update(schedule="constant", warmup_steps=0)
  c.train.update(steps=6, batch_size=4, log_every=1, checkpoint_every=3)
  return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """Short documents (a line each, 3 to 60 characters), so rows hold several of them."""
  d = tmp_path_factory.mktemp("data")
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "import", "return", "x", "=", "+", "1"]
  lines = [" ".join(rng.choice(words, int(n))) for n in rng.integers(1, 12, 400)]
  (d / "lines.txt").write_text("\n".join(lines) + "\n")
  text.build(str(d / "lines.txt"), str(d / "tfds"), text.DEFAULT_NAME, per_line=True)
  return str(d / "tfds")


def test_resumed_run_repeats_the_uninterrupted_losses_with_packing(tmp_path, data_dir):
  config = _config(data_dir)
  model_cfg = config.model.to_dict()
  full = train(config, str(tmp_path / "full"), TextTask(config, model_cfg), progress=False)
  assert full.final_step == 6
  with pytest.raises(Killed):
    train(config, str(tmp_path / "cut"), KilledAt(config, model_cfg), progress=False)
  resumed = train(config, str(tmp_path / "cut"), TextTask(config, model_cfg), progress=False)
  assert resumed.resumed_from == 3
  a, b = read_metrics(str(tmp_path / "full")), read_metrics(str(tmp_path / "cut"))
  assert [m["step"] for m in a] == [m["step"] for m in b] == list(range(1, 7))
  np.testing.assert_allclose([m["loss"] for m in b], [m["loss"] for m in a], rtol=1e-6)
  assert len({round(m["loss"], 6) for m in a}) == 6  # the batches differ from step to step


def test_data_state_hooks_restore_the_stream_in_a_new_task(data_dir):
  config = _config(data_dir)
  first = TextTask(config, config.model.to_dict())
  batches = [first.batch(s) for s in range(5)]
  assert batches[0]["segment_ids"].max() > 1  # several documents per row
  state = first.data_state(3)
  second = TextTask(config, config.model.to_dict())
  second.restore_data_state(state)
  for s in (3, 4):
    for key in batches[s]:
      np.testing.assert_array_equal(second.batch(s)[key], batches[s][key])
