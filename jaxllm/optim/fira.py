"""Fira: GaLore's low-rank Adam plus a norm-scaled full-rank residual and a norm-growth limiter.

For each hidden kernel G (projector P refreshed from the SVD of G every ``update_proj_gap``
steps, shorter side, see ``lowrank``; Adam moments are kept across refreshes, as in GaLore):
  R = P^T G (or G P),  psi(R) = m / (sqrt(v) + eps)  (Adam in the r-dim space)
  phi_j = ||psi(R)_j|| / (||R_j|| + 1e-8)             (per index j of the unprojected axis)
  S = (G - alpha P R) * phi                            (residual, scaled per column/row)
  limiter: if ||S_t|| > gamma ||S_{t-1}|| then S_t <- S_t * gamma ||S_{t-1}|| / ||S_t||, where
           ||S_{t-1}|| is the norm after limiting (gamma = 1.01)
  update = sqrt(bc2) / bc1 * (alpha * P psi(R) + S)
The residual subtracts alpha P R as the official ``FiraAdamW`` does (the paper writes G - P R; the
two agree at alpha = 1). eps is added before the bias correction, as there. Defaults follow the
published pre-training script (rank 128, gap 200, alpha 0.25) and the class (b = (0.9, 0.999),
eps 1e-6, limiter 1.01).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxllm.optim import lowrank, tree


class FiraState(NamedTuple):
  count: jax.Array
  proj: optax.Updates
  mu: optax.Updates
  nu: optax.Updates
  residual_norm: optax.Updates  # per leaf scalar: ||S_{t-1}|| after limiting


def scale_by_fira(rank: int = 128, update_proj_gap: int = 200, alpha: float = 0.25,
                  b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
                  limiter: float = 1.01) -> optax.GradientTransformation:
  """Fira's update direction for 2-D leaves (before learning rate and weight decay)."""
  if rank < 1 or update_proj_gap < 1:
    raise ValueError(f"fira rank and update_proj_gap must be >= 1, got {rank}, {update_proj_gap}")

  def check(x):
    if x.ndim != 2:
      raise ValueError(f"fira treats 2-D kernels only; got a leaf of shape {x.shape}")

  def init_fn(params):
    jax.tree.map(check, params)
    f32 = lambda s: jnp.zeros(s, jnp.float32)
    return FiraState(
        jnp.zeros([], jnp.int32),
        jax.tree.map(lambda x: f32(lowrank.projector_shape(x.shape, rank)), params),
        jax.tree.map(lambda x: f32(lowrank.lowrank_shape(x.shape, rank)), params),
        jax.tree.map(lambda x: f32(lowrank.lowrank_shape(x.shape, rank)), params),
        jax.tree.map(lambda x: f32(()), params))

  def update_fn(updates, state, params=None):
    del params
    c = state.count + 1
    bc = jnp.sqrt(1.0 - b2 ** c.astype(jnp.float32)) / (1.0 - b1 ** c.astype(jnp.float32))
    refresh = state.count % update_proj_gap == 0
    first = state.count == 0

    def leaf(g, p, m, v, prev):
      g32 = g.astype(jnp.float32)
      p = jax.lax.cond(refresh, lambda: lowrank.svd_projector(g32, rank), lambda: p)
      r = lowrank.project(g32, p)
      m = b1 * m + (1.0 - b1) * r
      v = b2 * v + (1.0 - b2) * r * r
      psi = m / (jnp.sqrt(v) + eps)
      ax = lowrank.rank_axis(g.shape)
      phi = (jnp.linalg.norm(psi, axis=ax, keepdims=True)
             / (jnp.linalg.norm(r, axis=ax, keepdims=True) + 1e-8))
      s = (g32 - alpha * lowrank.project_back(r, p, g.shape)) * phi
      n = jnp.linalg.norm(s)
      lim = jnp.where(first, 1.0, jnp.maximum(n / (prev + 1e-8), limiter) / limiter)
      s = s / lim
      u = bc * (alpha * lowrank.project_back(psi, p, g.shape) + s)
      return u.astype(g.dtype), p, m, v, n / lim

    out = jax.tree.map(leaf, updates, state.proj, state.mu, state.nu, state.residual_norm)
    u, proj, mu, nu, rn = tree.unzip(updates, out, 5)
    return u, FiraState(c, proj, mu, nu, rn)

  return optax.GradientTransformation(init_fn, update_fn)
