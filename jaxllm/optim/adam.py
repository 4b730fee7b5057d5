"""The Adam form and the weight-decay order of the official GaLore, Fira, SPAM and SOAP code.

Those implementations descend from the transformers ``AdamW`` class: epsilon is added to sqrt(v)
before the bias correction, which is folded into the step size,
  update = sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps),
where optax puts it after (m_hat / (sqrt(v_hat) + eps)). The two agree for gradients far above
eps and differ by ~10% at gradients of 1e-4 with eps = 1e-6. They also decay the weights after the
step, p <- (p - lr u) (1 - lr wd), where optax's ``add_decayed_weights`` decays the weights before
it, p <- p - lr (u + wd p).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class ScaleByAdamState(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def adam_direction(m, v, count, b1: float, b2: float, eps: float):
  """sqrt(bc2) / bc1 * m / (sqrt(v) + eps) at 1-based step ``count``."""
  c = count.astype(jnp.float32)
  return jnp.sqrt(1.0 - b2 ** c) / (1.0 - b1 ** c) * m / (jnp.sqrt(v) + eps)


def scale_by_adam_eps_inside(b1: float = 0.9, b2: float = 0.999,
                             eps: float = 1e-6) -> optax.GradientTransformation:
  """Adam's direction with epsilon before the bias correction (transformers ``AdamW``)."""

  def init_fn(params):
    zeros = lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params)
    return ScaleByAdamState(jnp.zeros([], jnp.int32), zeros(), zeros())

  def update_fn(updates, state, params=None):
    del params
    c = state.count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g.astype(jnp.float32), state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * jnp.square(g.astype(jnp.float32)),
                      state.nu, updates)
    out = jax.tree.map(lambda m, v, g: adam_direction(m, v, c, b1, b2, eps).astype(g.dtype),
                       mu, nu, updates)
    return out, ScaleByAdamState(c, mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)


class ScheduleCountState(NamedTuple):
  count: jax.Array


def scale_by_lr_then_decay(learning_rate, weight_decay: float = 0.0,
                           skip_first: bool = False) -> optax.GradientTransformation:
  """-lr * u followed by decay of the stepped weights: p + dp = (p - lr u) (1 - lr wd).

  Replaces ``add_decayed_weights`` + ``scale_by_learning_rate`` for the methods whose official
  code decays after the step. ``skip_first``: no decay on the first call (SOAP's set-up step,
  which leaves the weights untouched). A step counter is kept only when it is needed (a schedule
  or ``skip_first``).
  """
  counted = callable(learning_rate) or skip_first

  def init_fn(params):
    del params
    return ScheduleCountState(jnp.zeros([], jnp.int32)) if counted else optax.EmptyState()

  def update_fn(updates, state, params=None):
    count = state.count if counted else jnp.zeros([], jnp.int32)
    lr = learning_rate(count) if callable(learning_rate) else learning_rate
    stepped = jax.tree.map(lambda u: -lr * u, updates)
    if weight_decay:
      if params is None:
        raise ValueError("weight decay needs the params passed to update")
      wd = jnp.where(count == 0, 0.0, weight_decay) if skip_first else weight_decay
      stepped = jax.tree.map(lambda s, p: (s - lr * wd * (p + s)).astype(s.dtype), stepped,
                             params)
    return stepped, (ScheduleCountState(count + 1) if counted else state)

  return optax.GradientTransformation(init_fn, update_fn)


def hf_adamw(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
             weight_decay: float = 0.0) -> optax.GradientTransformation:
  """transformers-style AdamW: epsilon before bias correction, decay after the step."""
  return optax.chain(scale_by_adam_eps_inside(b1, b2, eps),
                     scale_by_lr_then_decay(learning_rate, weight_decay))
