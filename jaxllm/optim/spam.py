"""SPAM: Adam with periodic momentum reset, spike-aware clipping and post-reset warmup.

Step t (0-based; c = t + 1):
  * reset: when c % reset_interval == 0, m and v restart from zero (the bias-correction step count
    does not restart);
  * spike-aware clipping (skipped while c < clip_skip or c % reset_interval < clip_skip, because
    v is near zero right after a reset): where g^2 > theta * v_prev,
    g <- sign(g) sqrt(theta * v_prev);
  * Adam with bias correction, then the update is scaled by a cosine ramp from 0.01 to 1 over
    ``warmup`` steps after each reset: s = steps since the reset, scale = 1 - 0.99 (1 + cos(pi s /
    (warmup + 1))) / 2 for s < warmup, else 1. Training starts with scale 1 (no reset yet).
The public training script passes the LR warmup length (1000 by default) as the post-reset ramp
length; here it is its own hyperparameter with the paper's and the ``SPAM`` class's value (150).
Weight decay is decoupled and applied to the stepped weights, as in the official class.

Sparse momentum (``density``): for 2-D leaves, m and v live on a random subset of
``int(density * size)`` entries (a fixed count so shapes are static; the public code draws a
Bernoulli mask), re-drawn at every reset; entries outside the subset get no update. The official
sparse branch's weight decay writes into a copy of the masked entries and so never decays; here
weight decay applies to the whole leaf, as in the dense case.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxllm.optim import tree
from jaxllm.optim.adam import scale_by_lr_then_decay


class SpamState(NamedTuple):
  count: jax.Array
  key: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  idx: optax.Updates  # per leaf: flat indices of the sparse subset, or a scalar -1 when dense


def warmup_scale(count: jax.Array, reset_interval: int, warmup: int) -> jax.Array:
  """Update scale at 0-based step ``count``: cosine ramp 0.01 -> 1 after each reset."""
  c = count + 1
  s = jnp.where(c >= reset_interval, c % reset_interval, warmup)
  ramp = 1.0 - 0.99 * (1.0 + jnp.cos(jnp.pi * s / (warmup + 1))) / 2.0
  return jnp.where(s < warmup, ramp, 1.0).astype(jnp.float32)


def _sparse_size(x, density):
  if density is None or x.ndim != 2:
    return None
  return max(int(density * x.size), 1)


def _draw_idx(key, x, density):
  k = _sparse_size(x, density)
  if k is None:  # a scalar rather than an empty array: checkpointers refuse zero-size arrays
    return jnp.full((), -1, jnp.int32)
  return jnp.sort(jax.random.choice(key, x.size, (k,), replace=False)).astype(jnp.int32)


def _draw_all(key, params, density):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, max(len(leaves), 1))
  return jax.tree.unflatten(treedef, [_draw_idx(k, x, density) for k, x in zip(keys, leaves)])


def scale_by_spam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6, theta: float = 5000.0,
                  reset_interval: int = 500, clip_skip: int = 20, warmup: int = 150,
                  density: float | None = None, seed: int = 0) -> optax.GradientTransformation:
  """SPAM's update direction (before learning rate and weight decay)."""
  if reset_interval < 1:
    raise ValueError(f"spam reset_interval must be >= 1, got {reset_interval}")
  if density is not None and not 0.0 < density <= 1.0:
    raise ValueError(f"spam density must be in (0, 1] or None, got {density}")

  def moments_like(x, idx):
    return jnp.zeros(idx.shape if idx.ndim else x.shape, jnp.float32)

  def init_fn(params):
    key, sub = jax.random.split(jax.random.PRNGKey(seed))
    idx = _draw_all(sub, params, density)
    zeros = lambda: jax.tree.map(moments_like, params, idx)
    return SpamState(jnp.zeros([], jnp.int32), key, zeros(), zeros(), idx)

  def update_fn(updates, state, params=None):
    del params
    c = state.count + 1
    reset = c % reset_interval == 0
    key, sub = jax.random.split(state.key)
    idx = jax.lax.cond(reset, lambda: _draw_all(sub, updates, density), lambda: state.idx)
    clip = (c >= clip_skip) & (c % reset_interval >= clip_skip)
    bc1 = 1.0 - b1 ** c.astype(jnp.float32)
    bc2 = 1.0 - b2 ** c.astype(jnp.float32)
    scale = warmup_scale(state.count, reset_interval, warmup) * jnp.sqrt(bc2) / bc1

    def leaf(g, m, v, ix):
      g32 = g.astype(jnp.float32)
      g_sub = g32.reshape(-1)[ix] if ix.ndim else g32
      m = jnp.where(reset, 0.0, m)
      v = jnp.where(reset, 0.0, v)
      cap = jnp.sqrt(theta * v)
      spike = clip & (g_sub * g_sub > theta * v)
      g_sub = jnp.where(spike, jnp.sign(g_sub) * cap, g_sub)
      m = b1 * m + (1.0 - b1) * g_sub
      v = b2 * v + (1.0 - b2) * g_sub * g_sub
      u = scale * m / (jnp.sqrt(v) + eps)
      if ix.ndim:
        u = jnp.zeros((g.size,), jnp.float32).at[ix].set(u).reshape(g.shape)
      return u.astype(g.dtype), m, v

    out = jax.tree.map(leaf, updates, state.mu, state.nu, idx)
    u, mu, nu = tree.unzip(updates, out, 3)
    return u, SpamState(c, key, mu, nu, idx)

  return optax.GradientTransformation(init_fn, update_fn)


def spam(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
         weight_decay: float = 0.0, theta: float = 5000.0, reset_interval: int = 500,
         clip_skip: int = 20, warmup: int = 150, density: float | None = None,
         seed: int = 0) -> optax.GradientTransformation:
  """SPAM (lr 1e-3, b = (0.9, 0.999), eps 1e-6, theta 5000, dT 500, warmup 150: the class)."""
  return optax.chain(
      scale_by_spam(b1, b2, eps, theta, reset_interval, clip_skip, warmup, density, seed),
      scale_by_lr_then_decay(learning_rate, weight_decay))
