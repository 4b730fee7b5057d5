"""The long-context run end to end at a tiny size (slow: trains and evaluates an LM)."""

import math
import os
import subprocess
import sys

import pytest

from configs import lm_long as cfg_module
from experiments import lm_long

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_tiny_run_reports_position_loss_and_retrieval_grids(tmp_path):
  c = cfg_module.get_config("smoke")
  c.text.update(data_dir=str(tmp_path / "tfds"), seq_len=64)
  c.model.update(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1)
  c.train.update(steps=3, batch_size=2, log_every=1, checkpoint_every=3)
  c.optimizer.warmup_steps = 1
  c.eval.update(length_multiples=(1, 4), depths=(0.0, 1.0), num_samples=1, ppl_sequences=2,
                ppl_bucket=32)
  c.eval.tasks = ("passkey", "multikey")
  c.eval.style = "code"
  # Four multi-key needles and the question are ~125 bytes: 64-token rows cannot hold them.
  with pytest.raises(ValueError, match="too short"):
    lm_long.run(c, str(tmp_path / "short"))
  c.eval.length_multiples = (2, 4)
  r = lm_long.run(c, str(tmp_path / "run"))
  assert set(r["position_perplexity"]["lengths"]) == {128, 256}
  assert len(r["position_perplexity"]["lengths"][256]["loss"]) == 8
  assert all(math.isfinite(x) for x in r["position_perplexity"]["lengths"][256]["loss"])
  assert set(r["retrieval"]) == {"passkey", "multikey"}
  assert r["retrieval"]["multikey"]["num_keys"] == 4
  assert "| 256 |" in r["tables"] and r["train_tokens_per_s"] > 0
  fig = subprocess.run([sys.executable, "scripts/figures/fig_lm_long.py",
                        f"--workdir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert fig.returncode == 0, fig.stderr[-2000:]
  assert os.path.getsize(tmp_path / "run" / "lm_long.png") > 1000
