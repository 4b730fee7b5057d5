"""Optimizers as Optax chains, by name."""

from jaxllm.optim.registry import NAMES, make
from jaxllm.optim.schedules import SCHEDULES, make_schedule

__all__ = ["NAMES", "SCHEDULES", "make", "make_schedule"]
