"""The launcher end to end: a tiny run, resume from its workdir, and bad-config exits."""

import json
import os
import subprocess
import sys

import pytest

from configs.icl import linear_regression as lr_config
from jaxllm import main as launcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "jaxllm.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_tiny_run_writes_results_and_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  cfg = "--config=configs/icl/linear_regression.py:tiny"
  proc = run_cli(cfg, f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["train_steps"] == 20 and results["n_dims"] == 5
  errors = results["errors"]
  assert set(errors) == {"transformer", "least_squares", "ridge", "averaging", "knn3"}
  assert len(errors["transformer"]) == 11  # k = 0..2d
  assert errors["least_squares"][10] < 1e-6  # noiseless, k = 2d: least squares is exact
  # Second launch with more steps resumes from the step-20 checkpoint.
  proc = run_cli(cfg, f"--workdir={workdir}", "--config.train.steps=30")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "resumed from checkpoint at step 20" in proc.stderr
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == [5, 10, 15, 20, 25, 30]


@pytest.mark.parametrize("override,message", [
    ("--config.experiment=icl.no_such_study", "unknown experiment 'icl.no_such_study'"),
    ("--config.model.attention=flashy", "unknown attention method 'flashy'; valid methods"),
    ("--config.model.num_heads=3", "model.d_model=32 is not divisible by model.num_heads=3"),
    ("--config.optimizer.name=adamz", "unknown optimizer 'adamz'; valid"),
])
def test_bad_configs_exit_nonzero_with_one_clear_message(override, message, tmp_path):
  proc = run_cli("--config=configs/icl/linear_regression.py:tiny", override,
                 f"--workdir={tmp_path / 'bad'}")
  assert proc.returncode == 2
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr


def test_unknown_config_arg_is_listed():
  with pytest.raises(ValueError, match="unknown arg 'huge'; allowed"):
    lr_config.get_config("huge")


def test_default_workdir_and_experiment_listing():
  assert launcher.default_workdir("configs/icl/linear_regression.py:smoke") == os.path.join(
      "runs", "linear_regression_smoke")
  assert "icl.linear_regression" in launcher.available_experiments()
