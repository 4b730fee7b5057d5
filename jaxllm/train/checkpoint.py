"""Orbax checkpoints of the whole train state (params, optimizer state, RNG, data position)."""

import os

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored."""


class Checkpointer:
  """Saves/restores ``{"params", "opt_state", "rng", "step"}`` plus JSON metadata.

  Orbax writes each step into a temporary directory and renames it when complete, so a run killed
  mid-save leaves the previous checkpoint as the latest readable one.
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state, meta: dict):
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self._mngr.wait_until_finished()

  def restore(self, step: int, abstract_state):
    try:
      out = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for unreadable or mismatched data
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} could not be restored ({type(e).__name__}: "
          f"{e}). It is corrupted or was written by a different model/optimizer config; delete "
          "that step directory or use another --workdir.") from e
    return out.state, out.meta

  def close(self):
    self._mngr.close()
