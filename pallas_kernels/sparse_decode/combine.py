"""Merging split-K partial results of the decode kernels by log-sum-exp, in plain jnp."""

import jax.numpy as jnp


def combine(o_part, m_part, l_part):
  """Merges split partials by log-sum-exp: [B, Hkv, splits, G, D] -> [B, Hkv, G, D] float32."""
  m = jnp.max(m_part, axis=2, keepdims=True)
  w = jnp.exp(m_part - jnp.where(m == -jnp.inf, 0.0, m))  # empty splits weigh 0
  num = jnp.sum(w[..., None] * o_part, axis=2)
  den = jnp.sum(w * l_part, axis=2)[..., None]
  return jnp.where(den == 0, 0.0, num / jnp.where(den == 0, 1.0, den))
