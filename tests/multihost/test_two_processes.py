"""Two local processes (CPU, gloo collectives) run the tiny default job as one data-parallel run.

Both exit 0, only process 0 writes the run's files (one metrics.jsonl, no duplicate steps), and
the losses equal the single-process run on the same global batches. Multi-process tests run in
their own step of scripts/test.sh: pytest -m multiprocess.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.multiprocess
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The tiny default job with a data-parallel sharding block over every device of every process.
CONFIG_FILE = """
import ml_collections
from configs.icl import linear_regression
from jaxllm import sharding

def get_config(arg=None):
  c = linear_regression.get_config("tiny")
  c.sharding = ml_collections.ConfigDict(dict(
      mesh_axes=sharding.DEFAULT_AXES, mesh_shape=(-1, 1, 1), rules=sharding.DEFAULT_RULES))
  return c
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r["step"] for r in rows], np.array([r["loss"] for r in rows])


def test_two_processes_equal_one(tmp_path):
  config = tmp_path / "sharded_tiny.py"
  config.write_text(CONFIG_FILE)
  flag = f"--config={config}"
  single = str(tmp_path / "single")
  proc = subprocess.run([sys.executable, "-m", "jaxllm.main", flag, f"--workdir={single}"],
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]

  multi = str(tmp_path / "multi")
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "jaxllm.main", flag, f"--workdir={multi}", "--distributed"],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=_env(JAXLLM_COORDINATOR=f"127.0.0.1:{port}", JAXLLM_NUM_PROCESSES="2",
               JAXLLM_PROCESS_ID=str(i))) for i in range(2)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=600))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  # only process 0 prints the results summary (gloo prints its own connection line on both)
  assert '"experiment"' in outs[0][0] and '"experiment"' not in outs[1][0]
  steps_1, losses_1 = _losses(single)
  steps_2, losses_2 = _losses(multi)
  assert steps_2 == steps_1 and len(set(steps_2)) == len(steps_2)
  np.testing.assert_allclose(losses_2, losses_1, rtol=1e-5, atol=1e-6)
  assert os.path.exists(os.path.join(multi, "results.json"))
