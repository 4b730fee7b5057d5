"""Muon: momentum orthogonalised by Newton-Schulz, for the hidden kernels (official ``Muon``).

  m = beta m + (1 - beta) g
  u = (1 - beta) g + beta m   (Nesterov, the default; no bias correction)   or   u = m
  update = NS5(u) * sqrt(max(1, fan_out / fan_in))
optax's ``scale_by_muon`` bias-corrects the momentum and the gradient term of the Nesterov mix
separately (0.155 off the official step at step 2) and normalises with eps 1e-8 instead of 1e-7,
so the official rule is written here. Newton-Schulz runs in float32 (the official code casts to
bfloat16). Defaults: ``Muon`` / ``MuonWithAuxAdam`` (lr 0.02, momentum 0.95, 5 NS steps).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxllm.optim import tree
from jaxllm.optim.cosmos import newton_schulz5


class MuonState(NamedTuple):
  mu: optax.Updates


def scale_by_muon(beta: float = 0.95, ns_steps: int = 5,
                  nesterov: bool = True) -> optax.GradientTransformation:
  """Muon's update direction for 2-D (in, out) leaves (before learning rate and weight decay)."""

  def init_fn(params):
    for x in jax.tree.leaves(params):
      if x.ndim != 2:
        raise ValueError(f"muon treats 2-D kernels only; got a leaf of shape {x.shape}")
    return MuonState(jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params))

  def update_fn(updates, state, params=None):
    del params

    def leaf(g, m):
      g32 = g.astype(jnp.float32)
      m = beta * m + (1.0 - beta) * g32
      u = (1.0 - beta) * g32 + beta * m if nesterov else m
      u = newton_schulz5(u, ns_steps) * max(1.0, g.shape[1] / g.shape[0]) ** 0.5
      return u.astype(g.dtype), m

    out = jax.tree.map(leaf, updates, state.mu)
    u, mu = tree.unzip(updates, out, 2)
    return u, MuonState(mu)

  return optax.GradientTransformation(init_fn, update_fn)
