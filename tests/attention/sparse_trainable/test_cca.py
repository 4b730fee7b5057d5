"""CCA: visibility and pooling against a NumPy transcription of the public code, outputs and
gradients against the dense masked reference, chunked prefill, full budget, option errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import attention as attn
from jaxllm.attention.methods import dense
from jaxllm.attention.sparse import cca
from tests.attention.sparse_trainable.inputs import grads, qkv, rel


def _numpy_cca(q, k, v, g, w):
  """Per query row: public generate_mask (1-based) over [pooled; keys] and CCA weight pooling."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, s, h, d = q.shape
  k, v = np.repeat(k, h // k.shape[2], 2), np.repeat(v, h // v.shape[2], 2)
  n = s // g
  out = np.zeros_like(q)
  for bi in range(b):
    for hi in range(h):
      kc, vc = np.zeros((n, d)), np.zeros((n, d))
      for j in range(n):
        grp = slice(j * g, (j + 1) * g)
        logit = k[bi, grp, hi] @ q[bi, (j + 1) * g - 1, hi] / np.sqrt(d)
        wt = np.exp(logit - logit.max())
        wt /= wt.sum()
        kc[j], vc[j] = wt @ k[bi, grp, hi], wt @ v[bi, grp, hi]
      for i in range(s):
        r = i + 1
        pools = [p for p in range(1, n + 1) if r > w and (r - w) // g >= p]
        pooled = max((r - w) // g * g, 0)
        cols = [c for c in range(1, s + 1) if pooled < c <= r]
        keys = np.concatenate([kc[[p - 1 for p in pools]].reshape(-1, d),
                               k[bi, [c - 1 for c in cols], hi]])
        vals = np.concatenate([vc[[p - 1 for p in pools]].reshape(-1, d),
                               v[bi, [c - 1 for c in cols], hi]])
        logit = keys @ q[bi, i, hi] / np.sqrt(d)
        p = np.exp(logit - logit.max())
        out[bi, i, hi] = p @ vals / p.sum()
  return out


def test_matches_numpy_transcription_of_public_code():
  q, k, v = qkv(b=2, t=41, s=41, h=4, hkv=2, d=8, seed=1)
  got, _ = cca.attention(q, k, v, group_size=4, window=9, tile=16)
  np.testing.assert_allclose(np.asarray(got), _numpy_cca(q, k, v, 4, 9), atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("b,t,h,hkv,g,w", [(2, 77, 4, 2, 4, 10), (1, 50, 3, 1, 5, 7)])
def test_attention_matches_dense_masked_reference(b, t, h, hkv, g, w):
  q, k, v = qkv(b=b, t=t, s=t, h=h, hkv=hkv, seed=t)
  o, lse = cca.attention(q, k, v, group_size=g, window=w, tile=16)
  o_ref, lse_ref = cca.reference(q, k, v, group_size=g, window=w)
  assert rel(o, o_ref) < 1e-5
  assert float(jnp.abs(lse - lse_ref).max()) < 1e-5


def test_chunked_prefill_equals_the_last_rows():
  q, k, v = qkv(b=2, t=70, s=70, seed=2)
  full, _ = cca.attention(q, k, v, group_size=4, window=12, tile=16)
  tail = attn.attention(q[:, 45:], k, v, method="cca", group_size=4, window=12,
                        prefix_q=q[:, :45])
  assert rel(tail, full[:, 45:]) < 1e-5
  ref, _ = cca.reference(q[:, 45:], k, v, group_size=4, window=12, prefix_q=q[:, :45])
  assert rel(tail, ref) < 1e-5


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_full_window_is_dense(dtype, tol):
  q, k, v = qkv(t=37, s=37, dtype=dtype, seed=3)
  got = attn.attention(q, k, v, method="cca", impl="xla", group_size=4, window=37)
  want = dense.reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32))
  assert got.dtype == dtype
  assert rel(got, want) < tol


@pytest.mark.slow
def test_bf16_matches_fp32_reference():
  q, k, v = (x.astype(jnp.bfloat16) for x in qkv(t=48, s=48, seed=4))
  got = attn.attention(q, k, v, method="cca", group_size=4, window=8)
  want, _ = cca.reference(*[x.astype(jnp.float32) for x in (q, k, v)], group_size=4, window=8)
  assert rel(got, want) < 2e-2


def test_gradients_match_reference():
  q, k, v = qkv(b=2, t=39, s=39, h=4, hkv=2, seed=6)
  got = jax.jit(lambda q, k, v: grads(lambda *a: cca.attention(
      *a, group_size=4, window=8, tile=16)[0], q, k, v))(q, k, v)
  want = grads(lambda *a: cca.reference(*a, group_size=4, window=8)[0], q, k, v)
  for g, w in zip(got, want):
    assert rel(g, w) < 1e-5


def test_defaults_follow_public_code():
  opts = attn.get("cca").fn.__kwdefaults__
  assert (opts["group_size"], opts["window"]) == (16, 1024)


@pytest.mark.parametrize("opts,word", [({"group_size": 0}, "group_size"), ({"window": 2.0}, "window"),
                                       ({"scale": 0.0}, "scale")])
def test_bad_options_raise(opts, word):
  q, k, v = qkv(t=16, s=16)
  with pytest.raises(ValueError, match=word):
    attn.attention(q, k, v, method="cca", **opts)


def test_t_less_than_s_needs_prefix_queries():
  q, k, v = qkv(t=8, s=16)
  with pytest.raises(ValueError, match="prefix_q"):
    attn.attention(q, k, v, method="cca", group_size=4, window=4)
  with pytest.raises(ValueError, match="prefix_q"):
    attn.attention(q, k, v, method="cca", group_size=4, window=4, prefix_q=q[:, :3])
