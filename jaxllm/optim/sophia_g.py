"""Sophia-G: clipped diagonal-preconditioned momentum with the Gauss-Newton-Bartlett estimator.

optax.contrib.sophia is Sophia-H (Hutchinson estimator, bias-corrected momentum, gamma-scaled
Hessian); the official Sophia-G differs in the estimator and in the update, so it is written here:

  m = b1 m + (1 - b1) g                           (no bias correction)
  u = sign(m) * min(|m| / (rho * bs * h + eps), 1)  (eps = 1e-15, bs = tokens per step)
  every k steps (0-based t with t % k == k - 1): h = b2 h + (1 - b2) g_hat^2, where g_hat is the
  gradient of the mean cross-entropy against labels sampled from the model's own softmax, clipped
  to global norm ``hess_clip``. h starts at zero, so the first k steps are sign steps.

The update needs ``logits_fn`` (params -> (logits [..., V] float32, mask [...])) as an extra
argument. The official loop computes g_hat after the parameter step; here it is computed at the
current parameters, one step earlier.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxllm.optim import labels


class SophiaGState(NamedTuple):
  count: jax.Array
  key: jax.Array
  mu: optax.Updates
  h: optax.Updates
  tokens: jax.Array  # tokens counted in the latest estimate (bs when batch_tokens is None)


def gnb_gradient(params, logits_fn, key):
  """Gradient of the masked mean cross-entropy against labels sampled from the model, and the
  number of tokens that counted."""

  def sampled_loss(p):
    logits, mask = logits_fn(p)
    logits = logits.astype(jnp.float32)
    y = jax.random.categorical(key, jax.lax.stop_gradient(logits))
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
    mask = mask.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(mask), 1.0)
    return jnp.sum(nll * mask) / n, n

  grads, n = jax.grad(sampled_loss, has_aux=True)(params)
  return grads, n


def win_rate(state: SophiaGState, rho: float, batch_tokens: float | None = None) -> jax.Array:
  """Fraction of coordinates whose update is not clipped (|m| < rho * bs * h); keep in 0.1-0.5."""
  bs = state.tokens if batch_tokens is None else batch_tokens
  hits = jax.tree.leaves(jax.tree.map(lambda m, h: jnp.sum(jnp.abs(m) < rho * bs * h),
                                      state.mu, state.h))
  size = sum(x.size for x in jax.tree.leaves(state.mu))
  return sum(hits) / max(size, 1)


def scale_by_sophia_g(b1: float = 0.965, b2: float = 0.99, rho: float = 0.05,
                      update_interval: int = 10, hess_clip: float | None = 1.0,
                      eps: float = 1e-15, batch_tokens: float | None = None,
                      seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """Sophia-G's update direction (before learning rate and weight decay)."""
  if update_interval < 1:
    raise ValueError(f"sophia_g update_interval must be >= 1, got {update_interval}")

  def init_fn(params):
    zeros = lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params)
    return SophiaGState(jnp.zeros([], jnp.int32), jax.random.PRNGKey(seed), zeros(), zeros(),
                        jnp.zeros([], jnp.float32))

  def update_fn(updates, state, params=None, *, logits_fn=None, **extra):
    del extra
    if params is None or logits_fn is None:
      raise ValueError("sophia_g needs params and logits_fn (params -> (logits, mask)) "
                       "passed to update; it samples labels from the model's softmax")
    mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g.astype(jnp.float32), state.mu, updates)
    bs = state.tokens if batch_tokens is None else jnp.float32(batch_tokens)
    out = jax.tree.map(
        lambda m, h, g: (jnp.sign(m) * jnp.minimum(jnp.abs(m) / (rho * bs * h + eps), 1.0)
                         ).astype(g.dtype), mu, state.h, updates)
    key, sub = jax.random.split(state.key)

    def refresh():
      g_hat, n = gnb_gradient(params, logits_fn, sub)
      if hess_clip is not None:
        g_hat = optax.clip_by_global_norm(hess_clip).update(g_hat, optax.EmptyState())[0]
      h = jax.tree.map(lambda h, gh: b2 * h + (1.0 - b2) * jnp.square(gh.astype(jnp.float32)),
                       state.h, g_hat)
      return h, n

    h, tokens = jax.lax.cond(state.count % update_interval == update_interval - 1, refresh,
                             lambda: (state.h, state.tokens))
    return out, SophiaGState(state.count + 1, key, mu, h, tokens)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sophia_g(learning_rate, b1: float = 0.965, b2: float = 0.99, rho: float = 0.05,
             weight_decay: float = 0.2, update_interval: int = 10, hess_clip: float | None = 1.0,
             batch_tokens: float | None = None, seed: int = 0):
  """Sophia-G with decoupled weight decay on rank>=2 leaves.

  Defaults follow the published GPT-2 small script (lr 6e-4, rho 0.05, wd 0.2), not the
  ``SophiaG`` class (rho 0.04, wd 0.1); betas (0.965, 0.99) and k = 10 are both's.
  """
  return optax.chain(
      scale_by_sophia_g(b1, b2, rho, update_interval, hess_clip, batch_tokens=batch_tokens,
                        seed=seed),
      optax.add_decayed_weights(weight_decay, mask=labels.decay_mask),
      optax.scale_by_learning_rate(learning_rate))
