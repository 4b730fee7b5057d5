"""The TPU VM launcher's dry run prints exactly the golden gcloud commands; bad flags exit 2."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "tpu", "launch.py")
GOLDEN = os.path.join(ROOT, "tests", "data", "tpu")
COMMON = ["--name=jaxllm-v5e", "--zone=us-west4-a", "--project=my-project",
          "--config=configs/lm_efficiency.py:smoke", "--workdir=gs://my-bucket/runs/lm",
          "--override=--config.train.steps=100"]


def launch(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        timeout=60, cwd=ROOT)


@pytest.mark.parametrize("action", ["create", "setup", "run", "logs", "delete"])
def test_dry_run_matches_golden(action):
  proc = launch(f"--action={action}", "--dry_run", *COMMON)
  assert proc.returncode == 0, proc.stderr
  with open(os.path.join(GOLDEN, f"{action}.txt")) as f:
    assert proc.stdout == f.read()


def test_run_targets_every_worker_and_worker_zero_for_logs():
  run = launch("--action=run", "--dry_run", *COMMON).stdout
  assert "--worker=all" in run and "JAXLLM_DISTRIBUTED=1" in run
  assert "--worker=0" in launch("--action=logs", "--dry_run", *COMMON).stdout


@pytest.mark.parametrize("args, word", [
    (["--action=bogus", "--name=x", "--zone=z", "--project=p"], "--action"),
    (["--action=create", "--zone=z", "--project=p"], "--name"),
    (["--action=create", "--name=x", "--project=p"], "--zone"),
    (["--action=logs", "--name=x", "--zone=z", "--project=p", "--log_lines=0"], "log_lines"),
])
def test_bad_flags_exit_2_with_one_line(args, word):
  proc = launch(*args, "--dry_run")
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and word in lines[0], proc.stderr
  assert proc.stdout == ""
