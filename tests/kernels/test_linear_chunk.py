"""Pallas chunk kernels, Triton and Mosaic (compiled on hardware, interpreted on CPU), vs the
plain-jnp chunked reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.attention import attention
from pallas_kernels import common
from pallas_kernels.linear_chunk import api
from pallas_kernels.linear_chunk.reference import linear_chunk_reference
from tests.kernels.modes import modes, running
from tests.numerics import rel_rmse


def _inputs(seed, b, t, h, d, e, lam_lo, dtype):
  rng = np.random.default_rng(seed)
  q, k = (jnp.asarray(rng.normal(size=(b, t, h, d)) / np.sqrt(d), dtype) for _ in range(2))
  v = jnp.asarray(rng.normal(size=(b, t, h, e)), dtype)
  lam = np.concatenate([[1.0], rng.uniform(lam_lo, 1.0, size=h - 1)])
  s0 = jnp.asarray(rng.normal(size=(b, h, d, e)), jnp.float32)
  do = jnp.asarray(rng.normal(size=(b, t, h, e)), jnp.float32)
  dst = jnp.asarray(rng.normal(size=(b, h, d, e)), jnp.float32)
  return q, k, v, jnp.log(jnp.asarray(lam, jnp.float32)), s0, do, dst


def _grads(fn, q, k, v, a, s0, do, dst):
  def loss(q, k, v, a, s0):
    o, s = fn(q, k, v, a, s0)
    return jnp.sum(o * do) + jnp.sum(s * dst), (o, s)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(q, k, v, a, s0)


CASES = [  # (platform, seed, B, T, H, D, E, chunk, smallest decay, dtype, tol)
    ("gpu", 0, 1, 45, 2, 8, 12, 16, 0.9, jnp.float32, 1e-5),
    ("gpu", 1, 2, 32, 2, 16, 16, 16, 0.2, jnp.float32, 1e-5),
    ("gpu", 2, 1, 70, 2, 16, 8, 32, 0.5, jnp.float32, 1e-5),
    ("gpu", 3, 1, 37, 2, 8, 8, 16, 0.7, jnp.bfloat16, 1e-2),
    ("tpu", 4, 1, 21, 2, 8, 4, 8, 0.3, jnp.float32, 1e-5),
    ("tpu", 5, 1, 19, 1, 8, 8, 16, 0.8, jnp.bfloat16, 1e-2),
]
TWINS = [pytest.param(mode.values[0], *case, id=f"{mode.id}-{i}", marks=mode.marks)
         for i, case in enumerate(CASES) for mode in modes(case[0])]


@pytest.mark.parametrize("mode,platform,seed,b,t,h,d,e,chunk,lam_lo,dtype,tol", TWINS)
def test_kernel_matches_reference(mode, platform, seed, b, t, h, d, e, chunk, lam_lo, dtype, tol):
  q, k, v, a, s0, do, dst = _inputs(seed, b, t, h, d, e, lam_lo, dtype)
  kern = lambda q, k, v, a, s0: api.linear_chunk(q, k, v, a, s0, chunk_size=chunk, impl="pallas")
  ref = lambda q, k, v, a, s0: linear_chunk_reference(q, k, v, a, s0, chunk_size=chunk)
  with running(platform, mode):
    g_k, (o_k, s_k) = _grads(kern, q, k, v, a, s0, do, dst)
  # The bf16 kernel is judged against the float32 reference on the same (rounded) inputs.
  f32 = lambda x: x.astype(jnp.float32)
  g_r, (o_r, s_r) = _grads(ref, f32(q), f32(k), f32(v), a, s0, do, dst)
  assert o_k.dtype == jnp.float32 and o_k.shape == (b, t, h, e)
  assert rel_rmse(o_k, o_r) < tol
  assert rel_rmse(s_k, s_r) < tol
  for name, x, y in zip("q k v decay state".split(), g_k, g_r):
    assert x.dtype == (dtype if name in "qkv" else jnp.float32), name
    assert rel_rmse(x, y) < tol, name


def test_method_pallas_impl_matches_xla():
  """impl='pallas' through the registry (GQA, normaliser) equals the jnp chunked form."""
  rng = np.random.default_rng(5)
  q = jnp.asarray(rng.normal(size=(1, 33, 4, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(1, 33, 2, 8)), jnp.float32) for _ in range(2))
  for method, opts in (("lightning", {"num_layers": 2}), ("linear", {})):
    got = attention(q, k, v, method=method, impl="pallas", chunk_size=16, **opts)
    want = attention(q, k, v, method=method, impl="xla", chunk_size=16, **opts)
    assert rel_rmse(got, want) < 1e-5, method


def test_xla_impl_is_the_reference():
  q, k, v, a, s0, _, _ = _inputs(6, 1, 23, 2, 8, 8, 0.5, jnp.float32)
  got = api.linear_chunk(q, k, v, a, s0, chunk_size=8, impl="xla")
  want = linear_chunk_reference(q, k, v, a, s0, chunk_size=8)
  for x, y in zip(got, want):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  auto = api.linear_chunk(q, k, v, a, s0, chunk_size=8, impl="auto")  # no native kernel here
  if jax.default_backend() == "cpu":
    np.testing.assert_array_equal(np.asarray(auto[0]), np.asarray(want[0]))


def test_tiling_rules_are_checked():
  q = jnp.zeros((1, 20, 2, 8))
  with pytest.raises(ValueError, match="chunk_size"):
    api.linear_chunk(q, q, q, jnp.zeros(2), chunk_size=24, impl="pallas")
  with pytest.raises(ValueError, match="chunk_size"):
    api.linear_chunk(q, q, q, jnp.zeros(2), chunk_size=8, impl="pallas")
  with common.interpret_as("tpu"), pytest.raises(ValueError, match="multiple of 8"):
    api.linear_chunk(q, q, q, jnp.zeros(2), chunk_size=12, impl="pallas")
  with pytest.raises(ValueError, match="impl"):
    api.linear_chunk(q, q, q, jnp.zeros(2), chunk_size=16, impl="ipu")
  with pytest.raises(ValueError, match="form"):
    attention(q, q, q, method="lightning", impl="pallas", form="parallel")
