"""Optimizers as Optax chains, by name, with parameter labelling and state-memory accounting."""

from jaxllm.optim.labels import hidden_mask, label_params
from jaxllm.optim.registry import EXTRA_ARGS, GRADIENT_FREE, NAMES, make
from jaxllm.optim.schedules import SCHEDULES, make_schedule

__all__ = ["EXTRA_ARGS", "GRADIENT_FREE", "NAMES", "SCHEDULES", "hidden_mask", "label_params",
           "make", "make_schedule"]
