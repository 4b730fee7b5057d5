"""Shared fixtures of the sparse prefill tests: inputs, NumPy oracles, table comparisons."""

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.block_sparse.masks import dense_mask

# (B, T, S, H, Hkv): batch > 1, GQA, T == S, and an odd T < S (chunked prefill onto a cache).
SHAPES = {"full": (2, 160, 160, 4, 2), "chunk": (2, 77, 203, 4, 2)}
D = 16


def inputs(shape, *, dtype=jnp.float32, seed=0, planted=True):
  """q [B, T, H, D], k/v [B, S, Hkv, D]; ``planted`` adds a few strong key columns and a local
  bias so the selections are neither empty nor everything."""
  b, t, s, h, hkv = shape
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(kq, (b, t, h, D), jnp.float32)
  k = jax.random.normal(kk, (b, s, hkv, D), jnp.float32)
  v = jax.random.normal(kv, (b, s, hkv, D), jnp.float32)
  if planted:
    hot = np.array([3, s // 3, s // 2 + 5])
    k = k.at[:, hot].add(2.0 * jnp.ones((D,)) / np.sqrt(D))
    q = q + 0.5 * jnp.ones((D,)) / np.sqrt(D)
  return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def np32(x):
  return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


def softmax(x, axis=-1):
  m = np.max(x, axis=axis, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  e = np.exp(x - m)
  return e / np.sum(e, axis=axis, keepdims=True)


def dense_ref_probs(q, k):
  """Causal softmax weights in float64 [B, H, T, S], queries the last T of the S keys."""
  q, k = np32(q), np32(k)
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  logits = np.einsum("bthd,bshd->bhts", q, np.repeat(k, h // hkv, axis=2)) / np.sqrt(d)
  ok = np.arange(s)[None, :] <= (np.arange(t) + s - t)[:, None]
  return softmax(np.where(ok, logits, -np.inf))


def dense_ref(q, k, v):
  """Causal softmax attention in float64: [B, T, H, D]."""
  h, hkv = q.shape[2], k.shape[2]
  vx = np.repeat(np32(v), h // hkv, axis=2)
  return np.einsum("bhts,bshd->bthd", dense_ref_probs(q, k), vx)


def expand(blocks, t, s, block_q, block_k, columns=None):
  """Positions [B, H, T, S] of a NumPy block set (and per-query-block key columns) - no causal."""
  full = np.repeat(np.repeat(blocks, block_q, axis=2), block_k, axis=3)[:, :, :t, :s]
  if columns is not None:
    full = full | np.repeat(columns, block_q, axis=2)[:, :, :t]
  return full


def assert_same_positions(sel, expected, t, s):
  got = np.asarray(dense_mask(sel, t, s, causal=False))
  assert got.shape == expected.shape
  diff = np.argwhere(got != expected)
  assert diff.size == 0, f"{len(diff)} positions differ, first {diff[:5].tolist()}"


def assert_close_dense(out, q, k, v):
  tol = 1e-5 if out.dtype == jnp.float32 else 2e-2
  ref = dense_ref(q, k, v)
  err = np.max(np.abs(np32(out) - ref))
  assert err <= tol * max(1.0, np.max(np.abs(ref))), err


def query_block_bounds(t, s, block):
  """First and last key-aligned position of each query block."""
  nq = -(-t // block)
  first = np.arange(nq) * block + s - t
  last = np.minimum((np.arange(nq) + 1) * block, t) - 1 + s - t
  return first, last
