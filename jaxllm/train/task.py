"""What the training loop needs from an experiment: a model, batches and a loss."""

from typing import Any, Protocol

from flax import nnx


class Task(Protocol):
  """A trainable problem.

  ``batch(step)`` must be a pure function of the step (and the task's seed): the step is the data
  position, so a resumed run sees exactly the batches the uninterrupted run would have seen.
  Optionally a task defines ``logits(model, batch) -> (logits [..., V], mask [...])`` for optimizers
  that sample labels from the model (Sophia-G), and
  ``after_update(step, params, opt_state, key) -> (params, opt_state)`` (traced inside the jitted
  step; ``step`` counts completed updates) to edit parameters and optimizer state after each
  update, e.g. re-initialise embeddings and zero their moments.
  """

  def init_model(self, rngs: nnx.Rngs) -> nnx.Module:
    ...

  def batch(self, step: int) -> dict[str, Any]:
    ...

  def loss(self, model: nnx.Module, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    ...
