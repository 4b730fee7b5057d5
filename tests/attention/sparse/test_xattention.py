"""XAttention: antidiagonal block scores and the per-row tau cut against a NumPy transcription."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.attention import attention
from jaxllm.attention.sparse import select
from tests.attention.sparse import helpers as th

BLOCK, STRIDE = 32, 4


def numpy_xattention(q, k, *, block, stride, tau):
  """Per (b, h, query block): antidiagonal group softmax summed into blocks, forced block 0 and
  the diagonal block, then others by descending score while the mass before is < tau x total."""
  q, k = th.np32(q), th.np32(k)
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  nqg, nkg = -(-t // stride), -(-s // stride)
  nq, nk = -(-t // block), -(-s // block)
  per = block // stride
  out = np.zeros((b, h, nq, nk), bool)
  for bi in range(b):
    for hi in range(h):
      kh = k[bi, :, hi // (h // hkv)]
      qp = np.zeros((nqg * stride, d))
      qp[:t] = q[bi, :, hi]
      kp = np.zeros((nkg * stride, d))
      kp[:s] = kh
      logits = sum(qp[stride - 1 - j::stride] @ kp[j::stride].T for j in range(stride))
      logits = logits / np.sqrt(d) / stride
      group_last = np.minimum((np.arange(nqg) + 1) * stride, t) - 1 + s - t
      ok = np.arange(nkg)[None, :] * stride <= group_last[:, None]
      p = th.softmax(np.where(ok, logits, -np.inf))
      for i in range(nq):
        last = min((i + 1) * block, t) - 1 + s - t
        score = np.array([p[i * per:(i + 1) * per, c * per:(c + 1) * per].sum()
                          for c in range(nk)])
        diag = last // block
        keep = {0, diag}
        mass = sum(score[j] for j in keep)
        others = [j for j in np.argsort(-score, kind="stable") if j not in keep and j <= diag]
        for j in others:
          if mass < tau * score.sum() or tau >= 1.0:
            keep.add(j)
            mass += score[j]
          else:
            break
        out[bi, hi, i, sorted(keep)] = True
  return out


@pytest.mark.parametrize("shape, tau", [
    ("chunk", 0.9), ("full", 0.5), pytest.param("full", 0.9, marks=pytest.mark.slow),
    pytest.param("chunk", 0.5, marks=pytest.mark.slow)])
def test_selection_matches_numpy(shape, tau):
  b, t, s, h, hkv = th.SHAPES[shape]
  q, k, _ = th.inputs(th.SHAPES[shape])
  sel = select("xattention", q, k, block=BLOCK, stride=STRIDE, threshold=tau)
  want = numpy_xattention(q, k, block=BLOCK, stride=STRIDE, tau=tau)
  assert 0 < want.sum() < np.prod(want.shape)  # a real cut
  th.assert_same_positions(sel, th.expand(want, t, s, BLOCK, BLOCK), t, s)


def test_per_head_thresholds():
  b, t, s, h, hkv = th.SHAPES["full"]
  q, k, _ = th.inputs(th.SHAPES["full"])
  taus = [0.3, 0.6, 0.9, 0.99]
  sel = select("xattention", q, k, block=BLOCK, stride=STRIDE, threshold=taus)
  for i, tau in enumerate(taus):
    want = numpy_xattention(q[:, :, i:i + 1], k[:, :, i // 2:i // 2 + 1], block=BLOCK,
                            stride=STRIDE, tau=tau)
    got = sel.kv_cnt[:, i:i + 1]
    assert np.array_equal(np.asarray(got), want.sum(-1))


@pytest.mark.parametrize("shape, dtype", [
    ("chunk", jnp.float32), ("full", jnp.bfloat16),
    pytest.param("full", jnp.float32, marks=pytest.mark.slow),
    pytest.param("chunk", jnp.bfloat16, marks=pytest.mark.slow)])
def test_full_budget_equals_dense(shape, dtype):
  q, k, v = th.inputs(th.SHAPES[shape], dtype=dtype)
  out = attention(q, k, v, method="xattention", impl="xla", block=BLOCK, stride=STRIDE,
                  threshold=1.0)
  assert out.dtype == dtype
  th.assert_close_dense(out, q, k, v)


def test_pallas_interpret_equals_xla():
  q, k, v = th.inputs(th.SHAPES["chunk"])
  opts = dict(block=BLOCK, stride=STRIDE, threshold=0.8)
  ref = attention(q, k, v, method="xattention", impl="xla", **opts)
  out = attention(q, k, v, method="xattention", impl="pallas", **opts)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


@pytest.mark.parametrize("options, word", [
    (dict(threshold=0.0), "threshold"), (dict(threshold=1.5), "threshold"),
    (dict(threshold=[0.9, 0.9]), "threshold"), (dict(stride=3), "stride"),
    (dict(block=0), "block"), (dict(block=30, stride=4), "multiple of stride"),
    (dict(cut="official"), "cut")])
def test_bad_options(options, word):
  q, k, _ = th.inputs(th.SHAPES["full"])
  with pytest.raises(ValueError, match=word):
    select("xattention", q, k, **options)


def test_bad_impl_and_causal():
  q, k, v = th.inputs(th.SHAPES["full"])
  with pytest.raises(ValueError, match="impl"):
    attention(q, k, v, method="xattention", impl="triton")
  with pytest.raises(ValueError, match="causal"):
    attention(q, k, v, method="xattention", impl="xla", causal=False)
