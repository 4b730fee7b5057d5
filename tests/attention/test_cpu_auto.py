"""``impl="auto"`` on CPU: the measured crossover tables pick a path, and every path they pick is
exact (dense, windows, sinks, packed segments, gradients) against the float32 reference."""

from unittest import mock

import jax
import jax.numpy as jnp
import pytest

from jaxllm.attention import attention
from jaxllm.attention.methods import dense, linear, sparse
from pallas_kernels.block_sparse import api
from tests.numerics import forward_and_grads, qkv, rel_err


def test_crossover_tables_cover_every_length():
  for table in (sparse.CPU_PATHS,) + tuple(linear.CPU_CHUNKS.values()):
    tops = [row[0] for row in table]
    assert tops[-1] is None and tops[:-1] == sorted(tops[:-1])
  for _, path, sizes in sparse.CPU_PATHS:
    assert (path == "gather" and isinstance(sizes, int)) or (
        path == "blocked" and len(sizes) == 2 and all(isinstance(x, int) for x in sizes))
  assert sparse.cpu_path(1) == sparse.CPU_PATHS[0][1:]
  assert sparse.cpu_path(sparse.CPU_PATHS[0][0] + 1) == sparse.CPU_PATHS[1][1:]
  assert sparse.cpu_path(10 ** 6) == sparse.CPU_PATHS[-1][1:]
  assert linear.chunk_size_for(4096, "retention") == 32


# A table of small tops, so both kinds of row (and the hand-over between them) run at test sizes.
SMALL_PATHS = ((24, "blocked", (8, 16)), (48, "gather", 16), (None, "blocked", (16, 24)))
SMALL_CASES = [  # (B, T, S, H, K, options, dtype)
    (2, 37, 37, 4, 2, dict(), jnp.float32),  # gather row, GQA, batch 2
    (1, 53, 71, 4, 1, dict(softcap=3.0), jnp.float32),  # last blocked row, chunked prefill
    pytest.param(1, 19, 19, 2, 2, dict(window=6, sinks=2), jnp.float32,  # first blocked row
                 marks=pytest.mark.slow),
    pytest.param(2, 61, 61, 2, 1, dict(window=9, sinks=3, softcap=2.0), jnp.float32,
                 marks=pytest.mark.slow),
    (1, 53, 60, 4, 2, dict(window=13), jnp.bfloat16),
]


@pytest.mark.parametrize("b,t,s,h,hk,opts,dtype", SMALL_CASES)
def test_auto_runs_each_table_row_exactly(b, t, s, h, hk, opts, dtype):
  """Every row kind of the table, with the sizes the row names, against the float32 reference:
  1e-5 on outputs and gradients in float32, 2e-2 in bfloat16."""
  q, k, v, w = qkv(jax.random.key(t + s), b, t, s, h, hk, 8, dtype)
  seen = []
  real_blocked, real_gather = dense.blocked, api.block_sparse_attention

  def spy_blocked(*args, **kwargs):
    seen.append(("blocked", (kwargs["block_q"], kwargs["key_chunk"])))
    return real_blocked(*args, **kwargs)

  def spy_gather(*args, **kwargs):
    seen.append(("gather", args[3].block_q))
    return real_gather(*args, **kwargs)

  with mock.patch.object(sparse, "CPU_PATHS", SMALL_PATHS), \
      mock.patch.object(dense, "blocked", spy_blocked), \
      mock.patch.object(api, "block_sparse_attention", spy_gather):
    got = forward_and_grads(lambda q, k, v: attention(q, k, v, method="dense", **opts), q, k, v, w)
    assert set(seen) == {sparse.cpu_path(t)}
  f32 = lambda x: x.astype(jnp.float32)
  want = forward_and_grads(lambda q, k, v: dense.reference(q, k, v, **opts), f32(q), f32(k),
                           f32(v), w)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  assert got[0].dtype == dtype and rel_err(got[0], want[0]) < tol
  for g, g_want in zip(got[1], want[1]):
    assert rel_err(g, g_want) < tol


def test_blocked_row_with_packed_segments_is_exact():
  t = 45
  q, k, v, w = qkv(jax.random.key(5), 2, t, t, 2, 1, 8, jnp.float32)
  seg = jnp.stack([jnp.repeat(jnp.arange(3), jnp.array([10, 30, 5]), total_repeat_length=t),
                   jnp.zeros(t, jnp.int32)])
  opts = dict(window=11, sinks=2, segment_ids=seg)
  with mock.patch.object(sparse, "CPU_PATHS", SMALL_PATHS[2:]):
    got = forward_and_grads(lambda q, k, v: attention(q, k, v, method="sink_window", **opts),
                            q, k, v, w)
  want = forward_and_grads(lambda q, k, v: dense.reference(q, k, v, **opts), q, k, v, w)
  assert rel_err(got[0], want[0]) < 1e-5
  for g, g_want in zip(got[1], want[1]):
    assert rel_err(g, g_want) < 1e-5


# (T, S, options) on the real table: T 520 runs its first row over three query blocks (the last
# partial), T 77 over one; the gather rows run at test sizes through SMALL_PATHS above.
CASES = [(520, 520, dict(window=200, sinks=3)), (77, 90, dict(softcap=4.0)),
         pytest.param(520, 600, dict(), marks=pytest.mark.slow)]


@pytest.mark.parametrize("t,s,opts", CASES)
def test_dense_auto_is_exact_on_the_path_it_picks(t, s, opts):
  q, k, v, w = qkv(jax.random.key(t), 1, t, s, 2, 1, 16, jnp.float32)
  calls = []
  real = api.block_sparse_attention

  def spy(*args, **kwargs):
    calls.append(args[3].block_q)
    return real(*args, **kwargs)

  with mock.patch.object(api, "block_sparse_attention", spy):
    got = forward_and_grads(lambda q, k, v: attention(q, k, v, method="dense", **opts), q, k, v, w)
  path, sizes = sparse.cpu_path(t)
  assert set(calls) == (set() if path == "blocked" else {sizes})  # traced twice
  want = forward_and_grads(lambda q, k, v: dense.reference(q, k, v, **opts), q, k, v, w)
  assert rel_err(got[0], want[0]) < 1e-5
  for g, g_want in zip(got[1], want[1]):
    assert rel_err(g, g_want) < 1e-5


def test_sink_window_auto_with_packed_segments_matches_dense():
  t = 530
  q, k, v = qkv(jax.random.key(1), 2, t, t, 2, 2, 8, jnp.bfloat16, cotangent=False)
  seg = jnp.stack([jnp.repeat(jnp.arange(3), jnp.array([200, 300, 30]), total_repeat_length=t),
                   jnp.zeros(t, jnp.int32)])
  got = jax.jit(lambda q, k, v: attention(q, k, v, method="sink_window", window=64, sinks=2,
                                          segment_ids=seg))(q, k, v)
  f32 = lambda x: x.astype(jnp.float32)
  want = dense.reference(f32(q), f32(k), f32(v), window=64, sinks=2, segment_ids=seg)
  assert got.dtype == jnp.bfloat16 and rel_err(got, want) < 2e-2


@pytest.mark.parametrize("method", ["linear", "retention"])
def test_linear_default_chunk_is_the_chosen_one(method):
  q, k, v = qkv(jax.random.key(2), 1, 70, 70, 2, 1, 8, jnp.float32, cotangent=False)
  run = lambda **o: jax.jit(lambda q, k, v: attention(q, k, v, method=method, impl="xla", **o))(
      q, k, v)
  got = run()
  assert rel_err(got, run(chunk_size=linear.chunk_size_for(70, method))) == 0.0
  other = run(chunk_size=7)
  assert rel_err(got, other) < 1e-5  # every chunk is the same math
