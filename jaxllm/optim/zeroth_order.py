"""Zeroth-order training (MeZO / ZO-Bench) and forward-gradient as gradient-free updates.

The train step does not backpropagate for these (``GRADIENT_FREE`` in the registry): it passes
zero gradients and ``obj_fn`` (params -> loss on the current batch), and the update builds its own
gradient estimate from a direction z ~ N(0, I) drawn from the optimizer's key:
  two-sided: pg = (L(theta + eps z) - L(theta - eps z)) / (2 eps)   (one-sided: (L(theta + eps z)
             - L(theta)) / eps), both losses on the same batch, evaluated functionally;
  forward gradient: pg = grad L . z exactly, by one ``jax.jvp``;
  g_hat = pg z, or sign(pg) z for ZO-sign.
g_hat then feeds SGD (``zo_sgd``, ``forward_grad``), SGD with momentum (``zo_sgd_momentum``) or
Adam (``zo_adam``); weight decay is added as wd * theta (MeZO: theta -= lr (pg z + wd theta)).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

ESTIMATORS = ("two_sided", "one_sided", "forward", "sign")
METHODS = ("zo_sgd", "zo_sgd_momentum", "zo_adam", "zo_sign", "forward_grad")


class ZerothOrderState(NamedTuple):
  key: jax.Array


def normal_like(key, params):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, max(len(leaves), 1))
  return jax.tree.unflatten(treedef, [
      jax.random.normal(k, x.shape, jnp.float32).astype(x.dtype) for k, x in zip(keys, leaves)])


def projected_gradient(obj_fn, params, z, estimator: str, eps: float) -> jax.Array:
  """The scalar directional-derivative estimate pg along z."""
  if estimator == "forward":
    return jax.jvp(obj_fn, (params,), (z,))[1]
  shifted = lambda s: jax.tree.map(lambda p, d: p + (s * eps) * d.astype(p.dtype), params, z)
  plus = obj_fn(shifted(1.0))
  if estimator == "one_sided":
    return (plus - obj_fn(params)) / eps
  return (plus - obj_fn(shifted(-1.0))) / (2.0 * eps)


def zo_gradient_estimate(estimator: str = "two_sided", eps: float = 1e-3,
                         seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """Replaces the (zero) incoming gradient by g_hat = pg z (or sign(pg) z)."""
  if estimator not in ESTIMATORS:
    raise ValueError(f"zeroth-order estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")

  def init_fn(params):
    del params
    return ZerothOrderState(jax.random.PRNGKey(seed))

  def update_fn(updates, state, params=None, *, obj_fn=None, **extra):
    del updates, extra
    if params is None or obj_fn is None:
      raise ValueError("zeroth-order optimizers need params and obj_fn (params -> loss) in update")
    key, sub = jax.random.split(state.key)
    z = normal_like(sub, params)
    pg = projected_gradient(obj_fn, params, z, "two_sided" if estimator == "sign" else estimator,
                            eps)
    if estimator == "sign":
      pg = jnp.sign(pg)
    g_hat = jax.tree.map(lambda d: (pg * d.astype(jnp.float32)).astype(d.dtype), z)
    return g_hat, ZerothOrderState(key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def zeroth_order(learning_rate, method: str = "zo_sgd", eps: float = 1e-3,
                 weight_decay: float = 0.0, momentum: float = 0.9, b1: float = 0.9,
                 b2: float = 0.999, adam_eps: float = 1e-8, one_sided: bool = False,
                 seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """The gradient-free optimizers by method name (see ``METHODS``)."""
  if method not in METHODS:
    raise ValueError(f"zeroth-order method must be one of {list(METHODS)}, got {method!r}")
  estimator = {"zo_sign": "sign", "forward_grad": "forward"}.get(
      method, "one_sided" if one_sided else "two_sided")
  if method == "zo_adam":
    base = optax.adam(learning_rate, b1=b1, b2=b2, eps=adam_eps)
  elif method == "zo_sgd_momentum":
    base = optax.sgd(learning_rate, momentum=momentum)
  else:
    base = optax.sgd(learning_rate)
  return optax.chain(zo_gradient_estimate(estimator, eps, seed),
                     optax.add_decayed_weights(weight_decay), base)

