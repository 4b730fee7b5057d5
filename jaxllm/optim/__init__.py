"""Optimizers as Optax chains, by name, with parameter labelling and state-memory accounting."""

from jaxllm.optim.labels import hidden_mask, label_params
from jaxllm.optim.memory import measured_state_bytes, state_bytes
from jaxllm.optim.registry import EXTRA_ARGS, GRADIENT_FREE, NAMES, make
from jaxllm.optim.schedules import SCHEDULES, make_schedule
from jaxllm.optim.step_law import non_embedding_params, step_law

__all__ = ["EXTRA_ARGS", "GRADIENT_FREE", "NAMES", "SCHEDULES", "hidden_mask", "label_params",
           "make", "make_schedule", "measured_state_bytes", "non_embedding_params",
           "state_bytes", "step_law"]
