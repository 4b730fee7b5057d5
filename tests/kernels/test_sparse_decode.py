"""Split-K sparse decode kernels (compiled on hardware, interpreted on CPU) vs the dense-mask
reference, which is also the op's ``xla`` path."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from jaxllm.attention.methods import dense
from pallas_kernels import common
from pallas_kernels.sparse_decode import api, combine, reference
from tests.kernels.modes import modes, platform_modes, running
from tests.numerics import TOL, rel_err

GPU, TPU = modes("gpu"), modes("tpu")


def _inputs(key, b, s, h, hkv, d, dtype):
  kq, kk, kv = jax.random.split(key, 3)
  q = jax.random.normal(kq, (b, h, d), dtype)
  k = jax.random.normal(kk, (b, s, hkv, d), dtype)
  v = jax.random.normal(kv, (b, s, hkv, d), dtype)
  return q, k, v


def _random_table(key, b, hkv, num_blocks, max_blocks):
  """``max_blocks`` distinct ascending block indices per (sequence, kv head)."""
  keys = jax.random.split(key, b * hkv)
  pick = jax.vmap(lambda kk: jnp.sort(jax.random.permutation(kk, num_blocks)[:max_blocks]))
  return pick(keys).reshape(b, hkv, max_blocks).astype(jnp.int32)


_reference = jax.jit(reference.sparse_decode, static_argnames=("block_k",))


def _decode(platform, mode, q, k, v, kv_idx, kv_cnt, lengths, *, block_k, num_splits):
  """The kernel of ``platform``; jitted inside ``running`` (the platform is chosen at trace)."""
  with running(platform, mode):
    fn = jax.jit(functools.partial(api.sparse_decode, block_k=block_k, num_splits=num_splits,
                                   impl="pallas"))
    return fn(q, k, v, kv_idx, kv_cnt, lengths)


def _check(platform, mode, dtype, s, h, hkv, d, block_k, num_splits):
  b, max_blocks = 3, 3
  q, k, v = _inputs(jax.random.key(0), b, s, h, hkv, d, dtype)
  kv_idx = _random_table(jax.random.key(1), b, hkv, -(-s // block_k), max_blocks)
  kv_cnt = jnp.full((b, hkv), max_blocks, jnp.int32).at[1, 0].set(0).at[2, -1].set(1)
  lengths = jnp.array([s, 200, 37], jnp.int32)
  o = _decode(platform, mode, q, k, v, kv_idx, kv_cnt, lengths, block_k=block_k,
              num_splits=num_splits)
  o_ref = _reference(q, k, v, kv_idx, kv_cnt, lengths, block_k=block_k)
  assert o.shape == q.shape and o.dtype == q.dtype
  assert rel_err(o, o_ref) < TOL[dtype]
  np.testing.assert_array_equal(np.asarray(o[1, :h // hkv], np.float32), 0.0)  # empty selection


@pytest.mark.parametrize("mode", GPU)
@pytest.mark.parametrize("dtype,h,hkv,d,num_splits", [
    (jnp.float32, 8, 2, 64, 2),   # GQA, cache length not a multiple of the block
    (jnp.bfloat16, 2, 2, 80, 4),  # head dim padded up to a power of two; more splits than blocks
    pytest.param(jnp.bfloat16, 4, 4, 128, 3, marks=pytest.mark.slow),
])
def test_gpu_kernel_matches_reference(dtype, h, hkv, d, num_splits, mode):
  _check("gpu", mode, dtype, 300, h, hkv, d, 32, num_splits)


@pytest.mark.parametrize("mode", TPU)
@pytest.mark.parametrize("dtype,h,hkv,d,num_splits", [
    (jnp.float32, 8, 2, 128, 2),  # GQA, kv heads side by side on the lane axis
    (jnp.bfloat16, 4, 1, 64, 2),  # one kv head: any head dim is the full lane extent
    pytest.param(jnp.float32, 6, 2, 64, 4, marks=pytest.mark.slow),  # D and G padded
])
def test_tpu_kernel_matches_reference(dtype, h, hkv, d, num_splits, mode):
  _check("tpu", mode, dtype, 700, h, hkv, d, 128, num_splits)


def test_tpu_kernel_in_tpu_interpreter():
  # The TPU interpreter fills uninitialised VMEM with nan and raises on out-of-bounds reads.
  b, s, h, hkv, d, block_k = 2, 512, 4, 2, 128, 128
  q, k, v = _inputs(jax.random.key(8), b, s, h, hkv, d, jnp.float32)
  kv_idx = _random_table(jax.random.key(9), b, hkv, s // block_k, 2)
  kv_cnt = jnp.array([[2, 1], [0, 2]], jnp.int32)
  lengths = jnp.array([400, 512], jnp.int32)
  with common.interpret_as("tpu"):
    o = api.sparse_decode(q, k, v, kv_idx, kv_cnt, lengths, block_k=block_k, num_splits=2,
                          impl="pallas", interpret=pltpu.InterpretParams())
  o_ref = _reference(q, k, v, kv_idx, kv_cnt, lengths, block_k=block_k)
  assert rel_err(o, o_ref) < 2e-5


def _traced(platform, block_k, s):
  b, h, hkv, d = 2, 8, 2, 128
  sds = jax.ShapeDtypeStruct
  args = (sds((b, h, d), jnp.bfloat16), sds((b, s, hkv, d), jnp.bfloat16),
          sds((b, s, hkv, d), jnp.bfloat16), sds((b, hkv, 4), jnp.int32),
          sds((b, hkv), jnp.int32), sds((b,), jnp.int32))
  with common.interpret_as(platform):
    fn = jax.jit(functools.partial(api.sparse_decode, block_k=block_k, num_splits=2,
                                   impl="pallas", interpret=False))
    return fn.trace(*args)


def test_tpu_kernel_lowers_to_mosaic():
  text = _traced("tpu", 128, 1024).lower(lowering_platforms=("tpu",)).as_text()
  assert text.count("tpu_custom_call") == 1


def test_gpu_kernel_lowers_to_triton():
  gpu = jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=132, platform="gpu")
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",),
                                                                abstract_device=gpu)):
    text = _traced("gpu", 64, 512).lower(lowering_platforms=("cuda",)).as_text()
  assert "triton" in text


@pytest.mark.parametrize("mode", GPU)
def test_all_blocks_is_dense_decode(mode):
  b, s, h, hkv, d, block_k = 2, 256, 4, 2, 64, 64
  q, k, v = _inputs(jax.random.key(2), b, s, h, hkv, d, jnp.float32)
  kv_idx = jnp.broadcast_to(jnp.arange(s // block_k, dtype=jnp.int32), (b, hkv, s // block_k))
  kv_cnt = jnp.full((b, hkv), s // block_k, jnp.int32)
  lengths = jnp.full((b,), s, jnp.int32)
  o = _decode("gpu", mode, q, k, v, kv_idx, kv_cnt, lengths, block_k=block_k, num_splits=2)
  o_dense = dense.reference(q[:, None], k, v, causal=True)[:, 0]
  assert rel_err(o, o_dense) < 1e-5
  o_xla = api.sparse_decode(q, k, v, kv_idx, kv_cnt, lengths, block_k=block_k, num_splits=2,
                            impl="xla")
  assert rel_err(o_xla, o_dense) < 1e-5


@pytest.mark.parametrize("mode", GPU)
def test_split_count_does_not_change_result(mode):
  b, s, h, hkv, d, block_k = 1, 512, 4, 1, 64, 32
  q, k, v = _inputs(jax.random.key(3), b, s, h, hkv, d, jnp.float32)
  kv_idx = _random_table(jax.random.key(4), b, hkv, s // block_k, 6)
  kv_cnt = jnp.full((b, hkv), 6, jnp.int32)
  lengths = jnp.array([450], jnp.int32)
  outs = [_decode("gpu", mode, q, k, v, kv_idx, kv_cnt, lengths, block_k=block_k, num_splits=n)
          for n in (1, 6)]
  assert rel_err(outs[1], outs[0]) < 1e-5


def test_combine_merges_by_log_sum_exp():
  # Two splits over disjoint key sets merge to the softmax over their union; an empty split is 0.
  logits = jnp.array([[0.3, -1.0], [2.0, 0.5]])  # [split, key]
  vals = jnp.array([[[1.0], [2.0]], [[3.0], [-4.0]]])  # [split, key, 1]
  m = logits.max(-1)
  o = jnp.einsum("sk,skd->sd", jnp.exp(logits - m[:, None]), vals)
  l = jnp.exp(logits - m[:, None]).sum(-1)
  empty = (jnp.zeros((1, 1)), jnp.full((1,), -jnp.inf), jnp.zeros((1,)))
  o_part = jnp.concatenate([o, empty[0]])[None, None, :, None]  # [1, 1, 3, 1, 1]
  m_part = jnp.concatenate([m, empty[1]])[None, None, :, None]
  l_part = jnp.concatenate([l, empty[2]])[None, None, :, None]
  p = jax.nn.softmax(logits.reshape(-1))
  expected = p @ vals.reshape(-1)
  np.testing.assert_allclose(combine.combine(o_part, m_part, l_part).reshape(()), expected,
                             rtol=1e-6)


def test_auto_falls_back_to_the_reference_off_hardware():
  b, s, h, hkv, d, block_k = 2, 100, 4, 2, 16, 32
  q, k, v = _inputs(jax.random.key(5), b, s, h, hkv, d, jnp.float32)
  kv_idx = _random_table(jax.random.key(6), b, hkv, 4, 2)
  kv_cnt = jnp.array([[2, 1], [0, 2]], jnp.int32)
  lengths = jnp.array([90, 100], jnp.int32)
  args = (q, k, v, kv_idx, kv_cnt, lengths)
  want = _reference(*args, block_k=block_k)
  assert common.choose("sparse_decode", "auto")[0] is None or jax.default_backend() != "cpu"
  got = api.sparse_decode(*args, block_k=block_k, num_splits=2, impl="auto")
  assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("kwargs,match", [
    (dict(block_k=48), "block_k must be a power of two"),
    (dict(block_k=8), "block_k must be a power of two"),
    (dict(block_k=64, platform="tpu"), "block_k must be a positive multiple of 128"),
    (dict(impl="cuda"), "impl must be one of"),
    (dict(num_splits=0), "num_splits must be a positive int"),
    (dict(kv_idx=jnp.zeros((2, 1, 2), jnp.int32)), "kv_idx must be"),
    (dict(kv_cnt=jnp.zeros((2,), jnp.int32)), "kv_cnt must be"),
    (dict(lengths=jnp.zeros((2, 1), jnp.int32)), "lengths must be"),
    (dict(kv_idx=jnp.zeros((2, 2, 2), jnp.float32)), "kv_idx must be an integer"),
])
def test_bad_inputs_raise(kwargs, match):
  args = dict(q=jnp.zeros((2, 4, 64)), k=jnp.zeros((2, 64, 2, 64)), v=jnp.zeros((2, 64, 2, 64)),
              kv_idx=jnp.zeros((2, 2, 2), jnp.int32), kv_cnt=jnp.ones((2, 2), jnp.int32),
              lengths=jnp.full((2,), 64, jnp.int32), block_k=32, num_splits=2, impl="pallas")
  platform = kwargs.pop("platform", "gpu")
  args.update(kwargs)
  with common.interpret_as(platform), pytest.raises(ValueError, match=match):
    api.sparse_decode(**args)


@pytest.mark.slow
@pytest.mark.parametrize("platform,mode", platform_modes("gpu", "tpu"))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_long_cache(dtype, platform, mode):
  block_k = 64 if platform == "gpu" else 128
  b, s, h, hkv, d, max_blocks = 4, 4000, 16, 4, 128, 20
  q, k, v = _inputs(jax.random.key(5), b, s, h, hkv, d, dtype)
  kv_idx = _random_table(jax.random.key(6), b, hkv, -(-s // block_k), max_blocks)
  kv_cnt = jax.random.randint(jax.random.key(7), (b, hkv), 0, max_blocks + 1)
  lengths = jnp.array([4000, 3999, 1500, 64], jnp.int32)
  o = _decode(platform, mode, q, k, v, kv_idx, kv_cnt, lengths, block_k=block_k, num_splits=4)
  o_ref = _reference(q, k, v, kv_idx, kv_cnt, lengths, block_k=block_k)
  assert rel_err(o, o_ref) < TOL[dtype]
