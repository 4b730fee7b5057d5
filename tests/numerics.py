"""Numerics helpers shared by the kernel tests: error measures and one-program value + gradients."""

import jax
import jax.numpy as jnp
import numpy as np

TOL = {jnp.float32: 2e-5, jnp.bfloat16: 2e-2}


def rel_err(got, want) -> float:
  """Max absolute error relative to the largest reference magnitude."""
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6))


def rel_rmse(got, want) -> float:
  """Root-mean-square error relative to the reference's RMS, in float64."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.sqrt(np.mean((got - want) ** 2)) / (np.sqrt(np.mean(want ** 2)) + 1e-30))


def forward_and_grads(fn, q, k, v, w):
  """fn(q, k, v) -> o; returns (o, (dq, dk, dv)) of sum(o * w), in one jitted program."""
  def loss(q, k, v):
    return jnp.sum(fn(q, k, v).astype(jnp.float32) * w)
  run = jax.jit(lambda q, k, v: (fn(q, k, v), jax.grad(loss, (0, 1, 2))(q, k, v)))
  return run(q, k, v)


def value_and_vjp(fn, args, cotangent, grads=True):
  """Outputs and the vjp of ``cotangent`` in one compiled program (compiles dominate on CPU)."""

  def run(args, cotangent):
    out, vjp = jax.vjp(fn, *args)
    return out, (vjp(cotangent) if grads else ())

  return jax.jit(run)(args, cotangent)


def qkv(key, b, t, s, h, hkv, d, dtype, *, cotangent=True):
  """Normal q [B, T, H, D], k, v [B, S, K, D] (and a float32 output cotangent [B, T, H, D])."""
  kq, kk, kv, kw = jax.random.split(key, 4)
  q = jax.random.normal(kq, (b, t, h, d), jnp.float32).astype(dtype)
  k = jax.random.normal(kk, (b, s, hkv, d), jnp.float32).astype(dtype)
  v = jax.random.normal(kv, (b, s, hkv, d), jnp.float32).astype(dtype)
  if not cotangent:
    return q, k, v
  return q, k, v, jax.random.normal(kw, (b, t, h, d), jnp.float32)
