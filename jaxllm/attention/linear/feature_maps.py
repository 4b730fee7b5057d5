"""Feature maps phi applied to queries and keys before the linear-attention product."""

import jax

FEATURE_MAPS = {
    # elu(x) + 1 keeps phi positive, so the normaliser phi(q)^T z never vanishes.
    "elu1": lambda x: jax.nn.elu(x) + 1.0,
    "relu": jax.nn.relu,
    "identity": lambda x: x,
}


def feature_map(name: str):
  """Returns phi for ``name`` in :data:`FEATURE_MAPS`."""
  if name not in FEATURE_MAPS:
    raise ValueError(f"linear attention: feature_map must be one of {sorted(FEATURE_MAPS)}, "
                     f"got {name!r}")
  return FEATURE_MAPS[name]
