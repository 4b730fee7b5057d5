"""Learning-rate schedules by name."""

import optax

SCHEDULES = ("constant", "cosine", "linear", "wsd")


def make_schedule(name: str, *, peak: float, total_steps: int, warmup_steps: int = 0,
                  final_fraction: float = 0.1, decay_fraction: float = 0.2) -> optax.Schedule:
  """Warmup then ``constant``, ``cosine`` or ``linear`` decay to ``final_fraction * peak``;
  ``wsd`` = warmup-stable-decay with the last ``decay_fraction`` of steps decaying linearly."""
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; valid: {list(SCHEDULES)}")
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
