"""What the training loop needs from an experiment: a model, batches and a loss."""

from typing import Any, Protocol

from flax import nnx


class Task(Protocol):
  """A trainable problem.

  ``batch(step)`` must be a pure function of the step (and the task's seed): the step is the data
  position, so a resumed run sees exactly the batches the uninterrupted run would have seen.

  Optional hooks:

  * ``logits(model, batch) -> (logits [..., V], mask [...])`` for optimizers that sample labels
    from the model (Sophia-G).
  * ``after_update(step, params, opt_state, key) -> (params, opt_state)``, traced inside the
    jitted step (``step`` counts completed updates), to edit parameters and optimizer state after
    each update, e.g. re-initialise embeddings and zero their moments.
  * ``data_state(step) -> dict`` and ``restore_data_state(state: dict)``, both or neither, for an
    input pipeline with state of its own (a shuffle buffer, a file offset). ``data_state(step)``
    is called when a checkpoint of step ``step`` is written, after ``batch(step - 1)`` and before
    ``batch(step)``, and must return a JSON-serialisable dict: the checkpoint stores it next to
    the model, tagged with the step. On resume from that checkpoint the loop passes the dict to
    ``restore_data_state`` before it asks for ``batch(step)``. A checkpoint whose stored step
    differs from its own is treated as corrupt.
  * ``host_local_batches = True``: ``batch(step)`` returns only this process's rows (a per-host
    slice of the global batch); in a multi-process run the loop assembles global arrays from every
    process's rows. Without it every process returns the whole global batch.
  """

  def init_model(self, rngs: nnx.Rngs) -> nnx.Module:
    ...

  def batch(self, step: int) -> dict[str, Any]:
    ...

  def loss(self, model: nnx.Module, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    ...
