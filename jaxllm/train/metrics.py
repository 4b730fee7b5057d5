"""Metric logs: JSON lines (one dict per logged step) plus TensorBoard event files."""

import json
import os

import jax


class MetricWriter:
  """Appends ``{"step": s, ...}`` lines to ``workdir/metrics.jsonl`` and TensorBoard scalars.

  Step s logs the metrics of the update that produced state s, so on resume from a checkpoint at
  step s the lines past s are dropped first and the log holds each step once. In a multi-process
  run only process 0 writes; the others' writer does nothing.
  """

  def __init__(self, workdir: str, *, resume_step: int = 0, tensorboard: bool = True):
    self._file = self._tb = None
    if jax.process_index() != 0:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._truncate(resume_step)
    self._file = open(self.path, "a")
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def _truncate(self, resume_step: int):
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      keep = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: dict):
    if self._file is None:
      return
    row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != "step":
          self._tb.add_scalar(k, v, step)

  def close(self):
    if self._file is None:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
