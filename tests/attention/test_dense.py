"""Dense attention reference vs a naive per-head softmax loop; dispatch errors; splash on CPU."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import attention as A
from jaxllm.attention.methods.dense import reference


def naive(q, k, v, *, causal, window=None, sinks=0, softcap=None, scale=None):
  """Loop over batch, head and query: the obvious float64 implementation."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  scale = 1 / math.sqrt(d) if scale is None else scale
  out = np.zeros((b, t, h, d))
  for bi in range(b):
    for hi in range(h):
      kh = hi // (h // hkv)
      for i in range(t):
        qpos = s - t + i
        logits = k[bi, :, kh] @ q[bi, i, hi] * scale
        if softcap:
          logits = softcap * np.tanh(logits / softcap)
        keep = np.ones(s, bool)
        for j in range(s):
          if causal and j > qpos:
            keep[j] = False
          if window is not None:
            near = (qpos - j < window) if causal else abs(qpos - j) < window
            keep[j] &= near or (j < sinks)
        if not keep.any():
          continue
        p = np.exp(logits[keep] - logits[keep].max())
        out[bi, i, hi] = (p / p.sum()) @ v[bi, keep, kh]
  return out


def rand_qkv(key, b, t, s, h, hkv, d, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(jax.random.key(key), 3)
  return (jax.random.normal(kq, (b, t, h, d), dtype), jax.random.normal(kk, (b, s, hkv, d), dtype),
          jax.random.normal(kv, (b, s, hkv, d), dtype))


CASES = [
    # (b, t, s, h, hkv, d, causal, window, sinks, softcap)
    (2, 7, 7, 4, 4, 8, True, None, 0, None),
    (1, 13, 13, 6, 2, 16, True, None, 0, None),  # GQA, odd T
    (2, 9, 9, 4, 1, 8, True, 3, 0, None),  # MQA + sliding window
    (1, 11, 11, 4, 2, 8, True, 4, 2, None),  # window + sinks
    (1, 5, 12, 4, 2, 8, True, None, 0, None),  # T < S: queries are the last positions (decode)
    (2, 10, 10, 2, 2, 8, False, None, 0, None),  # bidirectional
    (1, 10, 10, 2, 1, 8, False, 3, 0, None),  # bidirectional window
    (1, 8, 8, 2, 2, 8, True, None, 0, 5.0),  # logit soft-cap
]


@pytest.mark.parametrize("b,t,s,h,hkv,d,causal,window,sinks,softcap", CASES)
def test_reference_matches_naive(b, t, s, h, hkv, d, causal, window, sinks, softcap):
  q, k, v = rand_qkv(t * 31 + h, b, t, s, h, hkv, d)
  got = A.attention(q, k, v, method="dense", impl="xla", causal=causal, window=window,
                    sinks=sinks, softcap=softcap)
  want = naive(q, k, v, causal=causal, window=window, sinks=sinks, softcap=softcap)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_bfloat16_close_to_float32():
  q, k, v = rand_qkv(3, 2, 33, 33, 4, 2, 16)
  want = naive(q, k, v, causal=True)
  got = A.attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), method="dense", impl="xla")
  assert got.dtype == jnp.bfloat16
  rel = np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)
  assert rel < 1e-2


def test_gradients_match_finite_differences():
  q, k, v = rand_qkv(4, 1, 6, 6, 2, 1, 4)

  def f(q, k, v):
    return jnp.sum(jnp.sin(reference(q, k, v, causal=True, window=3, sinks=1)))

  grads = jax.grad(f, argnums=(0, 1, 2))(q, k, v)
  eps = 1e-3
  for arg, g in zip(range(3), grads):
    args = [q, k, v]
    flat = np.asarray(args[arg]).ravel()
    for idx in (0, flat.size // 2, flat.size - 1):
      bump = np.zeros_like(flat)
      bump[idx] = eps
      plus = list(args)
      minus = list(args)
      plus[arg] = args[arg] + bump.reshape(args[arg].shape)
      minus[arg] = args[arg] - bump.reshape(args[arg].shape)
      fd = (f(*plus) - f(*minus)) / (2 * eps)
      assert abs(float(fd) - float(np.asarray(g).ravel()[idx])) < 2e-3


def test_fully_masked_rows_are_zero_not_nan():
  """Causal queries are the last T of S positions, so with T > S the first T - S see no key."""
  q, k, v = rand_qkv(5, 2, 6, 4, 2, 1, 4)
  out = np.asarray(reference(q, k, v, causal=True))
  np.testing.assert_array_equal(out[:, :2], 0.0)  # rows with no visible key: exactly zero
  want = reference(q[:, 2:], k, v, causal=True)  # the other rows are the T == S problem
  np.testing.assert_allclose(out[:, 2:], want, rtol=1e-6, atol=1e-6)
  grads = jax.grad(lambda q: jnp.sum(reference(q, k, v, causal=True) ** 2))(q)
  assert np.isfinite(np.asarray(grads)).all()
  np.testing.assert_array_equal(np.asarray(grads)[:, :2], 0.0)


def test_dense_is_registered_and_unknown_names_are_listed():
  assert "dense" in A.METHODS
  q, k, v = rand_qkv(0, 1, 4, 4, 2, 2, 4)
  with pytest.raises(ValueError, match="valid methods: .*dense"):
    A.attention(q, k, v, method="no_such_method")
  with pytest.raises(ValueError, match="no impl 'cuda'"):
    A.attention(q, k, v, impl="cuda")
  with pytest.raises(ValueError, match="unknown options \\['windw'\\]; allowed"):
    A.attention(q, k, v, windw=3)


@pytest.mark.parametrize("shapes,match", [
    (((1, 4, 3, 4), (1, 4, 2, 4), (1, 4, 2, 4)), "multiple of key/value heads"),
    (((1, 4, 2, 4), (1, 4, 2, 8), (1, 4, 2, 8)), "head dim differs"),
    (((1, 4, 2, 4), (2, 4, 2, 4), (2, 4, 2, 4)), "batch differs"),
    (((4, 2, 4), (1, 4, 2, 4), (1, 4, 2, 4)), "expects q \\[B, T, H, D\\]"),
    (((1, 4, 2, 4), (1, 4, 2, 4), (1, 5, 2, 4)), "k and v shapes differ"),
])
def test_bad_shapes_raise(shapes, match):
  q, k, v = (jnp.zeros(s) for s in shapes)
  with pytest.raises(ValueError, match=match):
    A.attention(q, k, v)


def test_bad_option_values_raise():
  q, k, v = rand_qkv(0, 1, 4, 4, 2, 2, 4)
  with pytest.raises(ValueError, match="window must be a positive int"):
    A.attention(q, k, v, window=0)
  with pytest.raises(ValueError, match="window must be a positive int or None, got True"):
    A.attention(q, k, v, window=True)  # a bool is not a window length
  with pytest.raises(ValueError, match="sinks must be a non-negative int, got True"):
    A.attention(q, k, v, window=2, sinks=True)
  with pytest.raises(ValueError, match="sinks only make sense"):
    A.attention(q, k, v, sinks=2)


def test_splash_tpu_kernel_matches_reference_in_interpret_mode():
  from jax.experimental.pallas import tpu as pltpu
  from jaxllm.attention import splash
  q, k, v = rand_qkv(7, 1, 128, 128, 2, 1, 64)
  want = reference(q, k, v, causal=True, window=40, scale=0.125)
  with pltpu.force_tpu_interpret_mode():
    got = splash.splash_dense(q, k, v, causal=True, scale=0.125, window=40)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)
  assert splash.splash_dense(q[:, :100], k[:, :100], v[:, :100], causal=True, scale=1.0) is None


BLOCKED_CASES = [  # (B, T, S, H, Hkv, causal, window, sinks, block_q, key_chunk)
    (2, 37, 37, 4, 2, True, None, 0, 8, 8),
    (1, 37, 50, 4, 1, True, None, 0, 16, 5),
    (2, 40, 40, 2, 2, True, 7, 0, 8, 3),
    (1, 40, 40, 2, 1, True, 7, 3, 8, 4),
    (2, 33, 33, 2, 2, False, None, 0, 8, 7),
    (1, 33, 33, 2, 2, False, 5, 0, 8, 6),
    (1, 29, 45, 6, 3, True, 9, 2, 5, 4),
    (1, 9, 9, 2, 1, True, 1, 0, 4, 2),
]


@pytest.mark.parametrize("b,t,s,h,hkv,causal,window,sinks,bq,kc", BLOCKED_CASES)
def test_blocked_equals_reference_with_gradients(b, t, s, h, hkv, causal, window, sinks, bq, kc):
  """The blocked path (auto on CPU) is the reference's math: 1e-5 on outputs and gradients."""
  from jaxllm.attention.methods.dense import blocked
  q, k, v = rand_qkv(b * 100 + t, b, t, s, h, hkv, 8)
  kw = dict(causal=causal, window=window, sinks=sinks, softcap=2.0 if window else None)
  want = reference(q, k, v, **kw)
  got = blocked(q, k, v, block_q=bq, key_chunk=kc, **kw)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))
  g_want = jax.grad(loss(lambda q, k, v: reference(q, k, v, **kw)), argnums=(0, 1, 2))(q, k, v)
  g_got = jax.grad(loss(lambda q, k, v: blocked(q, k, v, block_q=bq, key_chunk=kc, **kw)),
                   argnums=(0, 1, 2))(q, k, v)
  for x, y in zip(g_got, g_want):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_blocked_bfloat16_and_auto_on_cpu_is_blocked():
  q, k, v = rand_qkv(3, 2, 70, 70, 4, 2, 16, jnp.bfloat16)
  got = A.attention(q, k, v, method="dense", impl="auto")
  assert got.dtype == jnp.bfloat16
  want = naive(q, k, v, causal=True)
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2e-2, atol=2e-2)
  if jax.default_backend() == "cpu":
    from jaxllm.attention.methods.dense import blocked
    q32, k32, v32 = (x.astype(jnp.float32) for x in (q, k, v))
    np.testing.assert_array_equal(A.attention(q32, k32, v32, method="dense", impl="auto"),
                                  blocked(q32, k32, v32, causal=True))
