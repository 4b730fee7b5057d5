"""Per-head decay schedules, returned as log lambda_h (float32 [H], all <= 0).

Lightning (TransNormerLLM paper): lambda_h = exp(-(8 / H) * h * (1 - l / L)) for head h in
[0, H) of layer l in [0, L) (0-based). Head 0 is undecayed, decay is strongest in the first layer
and fades towards the last. We take the paper's schedule rather than the ALiBi-slope variant of the
public code so that the decay is a closed form of (h, l, H, L).

RetNet: gamma_h = 1 - 2^(-5 - h), the same in every layer.
"""

import jax
import jax.numpy as jnp
import numpy as np


def lightning_log_decay(num_heads: int, layer_index: int = 0, num_layers: int = 1) -> jnp.ndarray:
  """log lambda_h = -(8 / H) * h * (1 - l / L)."""
  if not isinstance(num_layers, int) or num_layers < 1:
    raise ValueError(f"lightning attention: num_layers must be a positive int, got {num_layers!r}")
  if not isinstance(layer_index, int) or not 0 <= layer_index < num_layers:
    raise ValueError(f"lightning attention: layer_index must be an int in [0, {num_layers}), "
                     f"got {layer_index!r}")
  h = np.arange(num_heads, dtype=np.float64)
  return jnp.asarray(-(8.0 / num_heads) * h * (1.0 - layer_index / num_layers), jnp.float32)


def retnet_log_decay(num_heads: int) -> jnp.ndarray:
  """log gamma_h with gamma_h = 1 - 2^(-5 - h)."""
  h = np.arange(num_heads, dtype=np.float64)
  return jnp.asarray(np.log1p(-np.exp2(-5.0 - h)), jnp.float32)


def log_decay_from(decay, num_heads: int, method: str) -> jnp.ndarray:
  """Turns a user ``decay`` (a float, or [H] values in (0, 1]) into log lambda_h.

  A jax array is taken as is (it may be traced, e.g. a learned decay), so only its shape is checked.
  """
  if isinstance(decay, jax.Array):
    arr = decay.astype(jnp.float32)
  else:
    values = np.asarray(decay, np.float64)
    if values.ndim == 0:
      values = np.full((num_heads,), float(values))
    if values.shape == (num_heads,) and not np.all((values > 0) & (values <= 1)):
      raise ValueError(f"{method} attention: decay values must lie in (0, 1], got {values}")
    arr = jnp.asarray(values, jnp.float32)
  if arr.shape != (num_heads,):
    raise ValueError(f"{method} attention: decay must be a float or have shape ({num_heads},) "
                     f"(one value per query head), got shape {arr.shape}")
  return jnp.log(arr)
