"""Random q/k/v and comparison helpers shared by the trainable-sparse tests."""

import jax
import jax.numpy as jnp


def qkv(b=2, t=45, s=45, h=4, hkv=2, d=16, seed=0, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(kq, (b, t, h, d), dtype), jax.random.normal(kk, (b, s, hkv, d), dtype),
          jax.random.normal(kv, (b, s, hkv, d), dtype))


def rel(got, want):
  got, want = jnp.asarray(got, jnp.float32), jnp.asarray(want, jnp.float32)
  return float(jnp.abs(got - want).max() / jnp.abs(want).max())


def grads(fn, q, k, v):
  """d/d(q, k, v) of sum(sin(fn(q, k, v))): a loss with a non-trivial cotangent."""
  return jax.grad(lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v).astype(jnp.float32))),
                  (0, 1, 2))(q, k, v)
