"""AdaHessian: Adam whose second moment is an EMA of the squared Hutchinson Hessian diagonal.

Every step: v ~ Rademacher, D = |H v| (= |v * H v|, the Hutchinson diagonal estimate up to sign),
averaged over the two spatial axes for 4-D (conv, Flax HWIO) kernels; m = EMA_b1(g),
s = EMA_b2(D^2), update = (m / bc1) / ((sqrt(s / bc2))^k + eps) with hessian power k.
Defaults: the official ``Adahessian`` class (lr 0.15, b = (0.9, 0.999), eps 1e-4, k = 1, wd 0).

Needs ``obj_fn`` (params -> scalar loss on the current batch) to form H v with one
forward-over-reverse product.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class AdaHessianState(NamedTuple):
  count: jax.Array
  key: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def rademacher_like(key, params):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, max(len(leaves), 1))
  return jax.tree.unflatten(treedef, [
      jax.random.rademacher(k, x.shape, jnp.float32).astype(x.dtype)
      for k, x in zip(keys, leaves)])


def hessian_diag(obj_fn, params, key):
  """|H v| per leaf with Rademacher v (spatially averaged for 4-D kernels)."""
  v = rademacher_like(key, params)
  hv = jax.jvp(jax.grad(obj_fn), (params,), (v,))[1]

  def spatial(d):
    d = jnp.abs(d.astype(jnp.float32))
    if d.ndim == 4:
      d = jnp.broadcast_to(jnp.mean(d, axis=(0, 1), keepdims=True), d.shape)
    return d

  return jax.tree.map(spatial, hv)


def scale_by_adahessian(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-4,
                        hessian_power: float = 1.0,
                        seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """AdaHessian's update direction (before learning rate and weight decay)."""

  def init_fn(params):
    zeros = lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params)
    return AdaHessianState(jnp.zeros([], jnp.int32), jax.random.PRNGKey(seed), zeros(), zeros())

  def update_fn(updates, state, params=None, *, obj_fn=None, **extra):
    del extra
    if params is None or obj_fn is None:
      raise ValueError("adahessian needs params and obj_fn (params -> loss) passed to update")
    key, sub = jax.random.split(state.key)
    d = hessian_diag(obj_fn, params, sub)
    c = state.count + 1
    bc1 = 1.0 - b1 ** c.astype(jnp.float32)
    bc2 = 1.0 - b2 ** c.astype(jnp.float32)
    mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g.astype(jnp.float32), state.mu, updates)
    nu = jax.tree.map(lambda s, dd: b2 * s + (1.0 - b2) * dd * dd, state.nu, d)
    out = jax.tree.map(
        lambda m, s, g: ((m / bc1) / (jnp.sqrt(s / bc2) ** hessian_power + eps)).astype(g.dtype),
        mu, nu, updates)
    return out, AdaHessianState(c, key, mu, nu)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adahessian(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-4,
               hessian_power: float = 1.0, weight_decay: float = 0.0, seed: int = 0):
  """AdaHessian with decoupled weight decay (p -= lr (u + wd p), as the reference code)."""
  return optax.chain(
      scale_by_adahessian(b1, b2, eps, hessian_power, seed),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate))
