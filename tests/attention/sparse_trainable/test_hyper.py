"""HyperAttention: Gray-code LSH ranks, the non-causal routine against a NumPy transcription of
the public algorithm, the causal recursion against dense softmax over its own pair set, exactness
below min_seq_len, the kernel path, option errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import attention as attn
from jaxllm.attention.methods import dense
from jaxllm.attention.sparse import hyper
from tests.attention.sparse_trainable.inputs import qkv, rel


def test_gray_ranks_put_one_bit_flips_next_to_each_other():
  for r in (1, 3, 7):
    table = hyper.gray_rank_table(r, "gray")
    by_rank = np.argsort(table)  # code at each rank
    flips = by_rank[1:] ^ by_rank[:-1]
    assert np.all(flips & (flips - 1) == 0) and np.all(flips > 0)
  # The public code indexes the reflected sequence 0, 1, 3, 2, 6, 7, 5, 4 by the code.
  np.testing.assert_array_equal(hyper.gray_rank_table(3, "public"), [0, 1, 3, 2, 6, 7, 5, 4])


def _numpy_noncausal(q, k, v, proj, table, block, samples_idx, scale):
  """One problem [n, D] of the public forward_no_causal_mask, in float64 NumPy."""
  q, k, v, proj = (np.asarray(x, np.float64) for x in (q, k, v, proj))
  code = lambda x: ((x @ proj > 0) * 2 ** np.arange(proj.shape[1])).sum(-1)
  qo = np.argsort(table[code(q)], kind="stable")
  ko = np.argsort(table[code(k)], kind="stable")
  nq, nk = len(q), len(k)
  nb = -(-nk // block)
  qbs = -(-nq // nb)
  out, lse = np.zeros_like(q), np.zeros(nq)
  for i in range(nq):  # i: sorted query position
    blk = i // qbs
    keys = [j for j in range(nk) if j // block == blk]  # sorted key positions
    logits = [q[qo[i]] @ k[ko[j]] * scale for j in keys]
    vals = [v[ko[j]] for j in keys]
    for j in samples_idx:
      if j // block != blk:
        logits.append(q[qo[i]] @ k[ko[j]] * scale + math.log(nk / len(samples_idx)))
        vals.append(v[ko[j]])
    logits = np.array(logits)
    m = logits.max()
    p = np.exp(logits - m)
    out[qo[i]] = p @ np.array(vals) / p.sum()
    lse[qo[i]] = m + np.log(p.sum())
  return out, lse


def test_noncausal_routine_matches_numpy_transcription():
  n, nq, nk, d = 3, 40, 44, 8
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(kk, (n, length, d)) for kk, length in zip(keys, (nq, nk, nk)))
  proj = hyper._projections(0, d, 3)
  table = hyper.gray_rank_table(3, "gray")
  r = hyper._Routines(scale=0.3, block_size=8, sample_size=6, min_seq_len=4, proj=proj,
                      table=table, impl=("xla", False), pairs=False)
  o, lse, _ = r.noncausal(q, k, v, keys[3])
  samples = np.asarray(jax.random.randint(keys[3], (n, 6), 0, nk))
  for i in range(n):
    want_o, want_lse = _numpy_noncausal(q[i], k[i], v[i], proj, table, 8, samples[i], 0.3)
    np.testing.assert_allclose(np.asarray(o[i]), want_o, atol=1e-5)
    np.testing.assert_allclose(np.asarray(lse[i]), want_lse, atol=1e-5)


@pytest.mark.parametrize("t,s", [(30, 77), pytest.param(45, 45, marks=pytest.mark.slow)])
def test_causal_recursion_is_softmax_over_its_pairs(t, s):
  """Without samples the output is exact softmax over the pair set the recursion reports."""
  q, k, v = qkv(b=2, t=t, s=s, h=4, hkv=2, seed=s)
  opts = dict(min_seq_len=8, block_size=4, sample_size=0, lsh_num_projs=3)
  o, lse = hyper.attention(q, k, v, **opts)
  mask = hyper.pair_mask(q, k, **opts)
  assert not bool(jnp.any(mask & ~jnp.tri(t, s, s - t, dtype=bool)))  # never a future key
  logits = jnp.einsum("bthd,bshd->bhts", q, jnp.repeat(k, 2, axis=2)) / 4.0
  logits = jnp.where(mask, logits, -jnp.inf)
  want = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, -1), jnp.repeat(v, 2, axis=2))
  assert rel(o, want) < 1e-5
  assert float(jnp.abs(lse - jax.nn.logsumexp(logits, -1)).max()) < 1e-5
  assert 0.1 < float(mask.mean(axis=(0, 1)).sum() / jnp.tri(t, s, s - t).sum()) < 0.9


@pytest.mark.slow
def test_samples_reduce_the_error_on_average():
  q, k, v = qkv(b=1, t=128, s=128, h=2, hkv=2, seed=7)
  want = dense.reference(q, k, v)
  err = lambda n: np.mean([rel(hyper.attention(q, k, v, min_seq_len=16, block_size=8,
                                               sample_size=n, seed=sd)[0], want)
                           for sd in range(3)])
  assert err(64) < err(0)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_exact_below_min_seq_len(dtype, tol):
  q, k, v = qkv(t=31, s=60, dtype=dtype, seed=3)
  got = attn.attention(q, k, v, method="hyper", impl="xla", min_seq_len=60, block_size=8)
  want = dense.reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32))
  assert got.dtype == dtype
  assert rel(got, want) < tol


@pytest.mark.slow
def test_kernel_path_equals_dense_blocks():
  q, k, v = qkv(b=2, t=64, s=64, h=2, hkv=1, seed=9)
  opts = dict(min_seq_len=16, block_size=16, sample_size=4, lsh_num_projs=2)
  got = attn.attention(q, k, v, method="hyper", impl="pallas", **opts)
  want = attn.attention(q, k, v, method="hyper", impl="xla", **opts)
  assert rel(got, want) < 1e-5


def test_defaults_follow_the_paper():
  opts = attn.get("hyper").fn.__kwdefaults__
  assert (opts["lsh_num_projs"], opts["block_size"], opts["sample_size"],
          opts["min_seq_len"]) == (7, 256, 256, 4096)


@pytest.mark.parametrize("opts,word", [({"block_size": 0}, "block_size"),
                                       ({"sample_size": -1}, "sample_size"),
                                       ({"lsh_order": "binary"}, "lsh_order"),
                                       ({"lsh_num_projs": 40}, "lsh_num_projs")])
def test_bad_options_raise(opts, word):
  q, k, v = qkv(t=16, s=16)
  with pytest.raises(ValueError, match=word):
    attn.attention(q, k, v, method="hyper", **opts)
