"""Position-based visibility rules shared by the attention references."""

import jax.numpy as jnp


def positions(t: int, s: int):
  """Query and key positions: the T queries are the last T of the S keys (decode-friendly)."""
  q_pos = jnp.arange(t) + (s - t)
  k_pos = jnp.arange(s)
  return q_pos, k_pos


def visible(q_pos, k_pos, *, causal: bool, window: int | None = None, sinks: int = 0):
  """Boolean [T, S] mask: True where query i may attend key j.

  ``window`` w keeps keys with q - w < k <= q (causal) or |q - k| < w (bidirectional);
  ``sinks`` n always keeps the first n keys that are not in the future.
  """
  q = q_pos[:, None]
  k = k_pos[None, :]
  ok = jnp.ones((q_pos.shape[0], k_pos.shape[0]), bool)
  if causal:
    ok &= k <= q
  if window is not None:
    near = (q - k < window) if causal else (jnp.abs(q - k) < window)
    sink = k < sinks
    if causal:
      sink &= k <= q
    ok &= near | sink
  return ok
