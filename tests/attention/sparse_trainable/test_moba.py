"""MoBA: the gate against a NumPy transcription of the public naive rule, outputs and gradients
against the dense masked reference, full budget against dense, option errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import attention as attn
from jaxllm.attention.methods import dense
from jaxllm.attention.sparse import moba
from tests.attention.sparse_trainable.inputs import grads, qkv, rel


def _numpy_blocks(q, k, chunk, topk):
  """Selected key blocks per (b, h, query) following moba_attn_varlen_naive, loops in NumPy."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  b, t, h, _ = q.shape
  s, hkv = k.shape[1], k.shape[2]
  nk = -(-s // chunk)
  out = np.zeros((b, h, t, nk), bool)
  for bi in range(b):
    for hi in range(h):
      kh = k[bi, :, hi // (h // hkv)]
      means = np.stack([kh[i * chunk:(i + 1) * chunk].mean(0) for i in range(nk)])
      for ti in range(t):
        pos = ti + s - t
        own = pos // chunk
        past = [(float(q[bi, ti, hi] @ means[i]), i) for i in range(own)]
        keep = [i for _, i in sorted(past, key=lambda x: (-x[0], x[1]))[:topk - 1]]
        out[bi, hi, ti, keep + [own]] = True
  return out


@pytest.mark.parametrize("t,s,h,hkv,chunk,topk", [
    (33, 60, 6, 3, 7, 4), pytest.param(37, 37, 4, 2, 6, 3, marks=pytest.mark.slow)])
def test_gate_matches_numpy_rule(t, s, h, hkv, chunk, topk):
  q, k, _ = qkv(t=t, s=s, h=h, hkv=hkv, seed=t)
  idx, ok = moba.gate(q, k, chunk_size=chunk, topk=topk)
  nk = -(-s // chunk)
  got = np.any((np.asarray(idx)[..., None] == np.arange(nk)) & np.asarray(ok)[..., None], axis=-2)
  np.testing.assert_array_equal(got, _numpy_blocks(q, k, chunk, topk))


@pytest.mark.parametrize("b,t,s,h,hkv", [
    (2, 23, 70, 4, 2), pytest.param(3, 45, 45, 4, 1, marks=pytest.mark.slow)])
def test_attention_matches_dense_masked_reference(b, t, s, h, hkv):
  q, k, v = qkv(b=b, t=t, s=s, h=h, hkv=hkv, seed=s)
  o, lse = moba.attention(q, k, v, chunk_size=16, topk=3)
  o_ref, lse_ref = moba.reference(q, k, v, chunk_size=16, topk=3)
  assert rel(o, o_ref) < 1e-5
  assert float(jnp.abs(lse - lse_ref).max()) < 1e-5


@pytest.mark.slow
def test_pair_mask_is_the_reference_support():
  q, k, v = qkv(t=30, s=41, seed=5)
  mask = moba.pair_mask(q, k, chunk_size=8, topk=2)
  kf = jnp.repeat(k, 2, axis=2)
  logits = jnp.where(mask, jnp.einsum("bthd,bshd->bhts", q, kf) / 4.0, -jnp.inf)
  want = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, -1), jnp.repeat(v, 2, axis=2))
  assert rel(moba.reference(q, k, v, chunk_size=8, topk=2)[0], want) < 1e-5
  density = float(mask.mean(axis=(0, 1)).sum() / jnp.tri(30, 41, 11).sum())
  assert 0.2 < density < 0.9


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_full_budget_is_dense(dtype, tol):
  q, k, v = qkv(t=29, s=50, dtype=dtype, seed=3)
  got = attn.attention(q, k, v, method="moba", impl="xla", chunk_size=16, topk=4)
  want = dense.reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32))
  assert got.dtype == dtype
  assert rel(got, want) < tol


@pytest.mark.slow
def test_bf16_matches_fp32_reference():
  q, k, v = qkv(t=40, s=40, seed=4)
  low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  got = attn.attention(*low, method="moba", chunk_size=8, topk=2)
  want, _ = moba.reference(*[x.astype(jnp.float32) for x in low], chunk_size=8, topk=2)
  assert rel(got, want) < 2e-2


def test_gradients_match_reference():
  q, k, v = qkv(b=2, t=27, s=35, h=4, hkv=2, seed=6)
  got = jax.jit(lambda q, k, v: grads(lambda *a: moba.attention(
      *a, chunk_size=12, topk=2)[0], q, k, v))(q, k, v)
  want = grads(lambda *a: moba.reference(*a, chunk_size=12, topk=2)[0], q, k, v)
  for g, w in zip(got, want):
    assert rel(g, w) < 1e-5


def test_defaults_are_the_public_8k_configuration():
  opts = attn.get("moba").fn.__kwdefaults__
  assert (opts["chunk_size"], opts["topk"]) == (512, 3)


@pytest.mark.parametrize("opts,word", [({"chunk_size": 0}, "chunk_size"), ({"topk": 1.5}, "topk"),
                                       ({"topk": True}, "topk"), ({"scale": -1.0}, "scale")])
def test_bad_options_raise(opts, word):
  q, k, v = qkv(t=16, s=16)
  with pytest.raises(ValueError, match=word):
    attn.attention(q, k, v, method="moba", **opts)
  with pytest.raises(ValueError, match="causal"):
    attn.attention(q, k, v, method="moba", causal=False)


def test_select_entry_point_returns_the_gate():
  from jaxllm.attention import sparse
  q = jax.random.normal(jax.random.key(0), (1, 40, 2, 8))
  k = jax.random.normal(jax.random.key(1), (1, 40, 1, 8))
  idx, ok = sparse.select("moba", q, k, chunk_size=8, topk=2)
  want_idx, want_ok = moba.gate(q, k, chunk_size=8, topk=2)
  np.testing.assert_array_equal(idx, want_idx)
  np.testing.assert_array_equal(ok, want_ok)
  assert idx.shape == (1, 2, 40, 2)
