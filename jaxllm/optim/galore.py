"""GaLore: Adam on a rank-r projection of each hidden kernel's gradient (official code's rule).

For each hidden kernel G (projector P refreshed from the SVD of G every ``update_proj_gap``
steps, 0-based step t with t % gap == 0; moments kept across refreshes), on the shorter side of
the matrix as the official ``GaLoreProjector`` with ``proj_type="std"`` does (``lowrank``):
  R = P^T G (or G P),  m = EMA_b1(R),  v = EMA_b2(R^2)
  update = scale * sqrt(bc2) / bc1 * P (m / (sqrt(v) + eps))   (eps before bias correction)
optax's ``scale_by_galore`` projects the longer side instead (a 16 x 12 kernel at rank 4 keeps
(4, 12) moments where the official code keeps (16, 4)) and puts eps after the bias correction, so
it is not used. Defaults follow the published pre-training script (rank 128, gap 200, scale 0.25,
eps 1e-6 of the class).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxllm.optim import lowrank, tree
from jaxllm.optim.adam import adam_direction


class GaloreState(NamedTuple):
  count: jax.Array
  proj: optax.Updates
  mu: optax.Updates
  nu: optax.Updates


def scale_by_galore(rank: int = 128, update_proj_gap: int = 200, scale: float = 0.25,
                    b1: float = 0.9, b2: float = 0.999,
                    eps: float = 1e-6) -> optax.GradientTransformation:
  """GaLore's update direction for 2-D leaves (before learning rate and weight decay)."""

  def init_fn(params):
    for x in jax.tree.leaves(params):
      if x.ndim != 2:
        raise ValueError(f"galore treats 2-D kernels only; got a leaf of shape {x.shape}")
    f32 = lambda s: jnp.zeros(s, jnp.float32)
    return GaloreState(
        jnp.zeros([], jnp.int32),
        jax.tree.map(lambda x: f32(lowrank.projector_shape(x.shape, rank)), params),
        jax.tree.map(lambda x: f32(lowrank.lowrank_shape(x.shape, rank)), params),
        jax.tree.map(lambda x: f32(lowrank.lowrank_shape(x.shape, rank)), params))

  def update_fn(updates, state, params=None):
    del params
    c = state.count + 1
    refresh = state.count % update_proj_gap == 0

    def leaf(g, p, m, v):
      g32 = g.astype(jnp.float32)
      p = jax.lax.cond(refresh, lambda: lowrank.svd_projector(g32, rank), lambda: p)
      r = lowrank.project(g32, p)
      m = b1 * m + (1.0 - b1) * r
      v = b2 * v + (1.0 - b2) * r * r
      u = scale * lowrank.project_back(adam_direction(m, v, c, b1, b2, eps), p, g.shape)
      return u.astype(g.dtype), p, m, v

    out = jax.tree.map(leaf, updates, state.proj, state.mu, state.nu)
    u, proj, mu, nu = tree.unzip(updates, out, 4)
    return u, GaloreState(c, proj, mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)
