"""Learning-rate schedules by name."""

import math
import numbers

import optax

SCHEDULES = ("constant", "cosine", "linear", "wsd")


def make_schedule(name: str, *, peak: float, total_steps: int, warmup_steps: int = 0,
                  final_fraction: float = 0.1, decay_fraction: float = 0.2) -> optax.Schedule:
  """Warmup then ``constant``, ``cosine`` or ``linear`` decay to ``final_fraction * peak``;
  ``wsd`` = warmup-stable-decay with the last ``decay_fraction`` of steps decaying linearly."""
  if not isinstance(name, str) or name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; valid: {list(SCHEDULES)}")
  for field, value, low, high in (("learning_rate", peak, 0.0, math.inf),
                                  ("final_fraction", final_fraction, 0.0, 1.0),
                                  ("decay_fraction", decay_fraction, 0.0, 1.0)):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
        or not low <= float(value) <= high):
      raise ValueError(f"schedule {field} must be a number in [{low}, {high}], got {value!r}")
  for field, value in (("total_steps", total_steps), ("warmup_steps", warmup_steps)):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
      raise ValueError(f"schedule {field} must be an integer, got {value!r}")
  if warmup_steps < 0 or warmup_steps > total_steps:
    raise ValueError(
        f"schedule warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]")
  end = peak * final_fraction
  rest = max(total_steps - warmup_steps, 1)
  if name == "constant":
    after = optax.constant_schedule(peak)
  elif name == "cosine":
    after = optax.cosine_decay_schedule(peak, rest, alpha=final_fraction)
  elif name == "linear":
    after = optax.linear_schedule(peak, end, rest)
  else:
    n_decay = max(int(rest * decay_fraction), 1)
    after = optax.join_schedules(
        [optax.constant_schedule(peak), optax.linear_schedule(peak, end, n_decay)],
        [rest - n_decay])
  if warmup_steps == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup_steps), after],
                              [warmup_steps])
