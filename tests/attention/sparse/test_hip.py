"""HiP: the hierarchical tree search against a per-query-block NumPy transcription."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.attention import attention
from jaxllm.attention.sparse import hip, select
from tests.attention.sparse import helpers as th

OPTS = dict(mask_k=32, block_q=16, block_k=4, stride=2, sink=4, window=16)


def numpy_hip(q, k, *, mask_k, block_q, block_k, stride, sink, window):
  """Groups tile the key blocks between the sink and the window; each round halves them, scores
  each half by its centre block lo + size // 2 (max over strided queries and the block's keys,
  causal) and keeps the m best."""
  q, k = th.np32(q), th.np32(k)
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  nq, nk = -(-t // block_q), -(-s // block_k)
  m = mask_k // block_k
  size = -(-nk // m)
  rounds = math.ceil(math.log2(size)) if size > 1 else 0
  first, last = th.query_block_bounds(t, s, block_q)
  out = np.zeros((b, h, nq, nk), bool)
  for bi in range(b):
    for hi in range(h):
      kh = k[bi, :, hi // (h // hkv)]
      for i in range(nq):
        rows = [r for r in range(i * block_q, (i + 1) * block_q, stride) if r < t]

        def score(lo, up):
          if up <= lo:
            return -np.inf
          rep = lo + (up - lo) // 2
          best = -np.inf
          for r in rows:
            for key in range(rep * block_k, min((rep + 1) * block_k, s)):
              if key <= r + s - t:
                best = max(best, q[bi, r, hi] @ kh[key])
          return best

        lo0 = -(-sink // block_k)
        n_search = -(-max(last[i] + 1 - window - sink, 0) // block_k)
        groups = [(lo0 + j * n_search // m, lo0 + (j + 1) * n_search // m) for j in range(m)]
        for _ in range(rounds):
          cands = [(lo, lo + (up - lo) // 2) for lo, up in groups]
          cands += [(lo + (up - lo) // 2, up) for lo, up in groups]
          scores = np.array([score(lo, up) for lo, up in cands])
          groups = [cands[c] for c in np.argsort(-scores, kind="stable")[:m]]
        for lo, up in groups:
          if up > lo:
            assert up == lo + 1
            out[bi, hi, i, lo] = True
        for j in range(nk):
          start = j * block_k
          near = window > 0 and start + block_k - 1 >= first[i] - window + 1
          if (start < sink or near) and start <= last[i]:
            out[bi, hi, i, j] = True
  return out


@pytest.mark.parametrize("shape", ["chunk", pytest.param("full", marks=pytest.mark.slow)])
def test_selection_matches_numpy(shape):
  b, t, s, h, hkv = th.SHAPES[shape]
  q, k, _ = th.inputs(th.SHAPES[shape])
  sel = select("hip", q, k, **OPTS)
  want = numpy_hip(q, k, **OPTS)
  assert 0 < want.sum() < np.prod(want.shape)
  th.assert_same_positions(sel, th.expand(want, t, s, OPTS["block_q"], OPTS["block_k"]), t, s)


def test_selection_without_window_or_sinks():
  b, t, s, h, hkv = th.SHAPES["chunk"]
  q, k, _ = th.inputs(th.SHAPES["chunk"], seed=1)
  opts = OPTS | dict(sink=0, window=0, stride=1)
  want = numpy_hip(q, k, **opts)
  sel = select("hip", q, k, **opts)
  # Exactly m blocks per query block once enough blocks are visible (top-k, no fixed part).
  assert np.all(want.sum(-1)[..., -1] == opts["mask_k"] // opts["block_k"])
  th.assert_same_positions(sel, th.expand(want, t, s, opts["block_q"], opts["block_k"]), t, s)


def test_rounds_are_logarithmic():
  assert [hip.rounds_needed(nk, 256) for nk in (256, 257, 512, 1024, 16384)] == [0, 1, 1, 2, 6]


@pytest.mark.parametrize("shape, dtype", [
    ("chunk", jnp.float32), ("full", jnp.bfloat16),
    pytest.param("full", jnp.float32, marks=pytest.mark.slow),
    pytest.param("chunk", jnp.bfloat16, marks=pytest.mark.slow)])
def test_full_budget_equals_dense(shape, dtype):
  q, k, v = th.inputs(th.SHAPES[shape], dtype=dtype)
  s = th.SHAPES[shape][2]
  out = attention(q, k, v, method="hip", impl="xla", **(OPTS | dict(mask_k=4 * (s // 4 + 1))))
  assert out.dtype == dtype
  th.assert_close_dense(out, q, k, v)


def test_defaults_are_v1_1():
  assert hip.DEFAULTS == dict(mask_k=512, block_q=64, block_k=2, stride=2, sink=16, window=256)


@pytest.mark.parametrize("options, word", [
    (dict(mask_k=0), "mask_k"), (dict(mask_k=33, block_k=4), "multiple of block_k"),
    (dict(block_q=0), "block_q"), (dict(stride=0), "stride"), (dict(sink=-1), "sink"),
    (dict(window=-1), "window")])
def test_bad_options(options, word):
  q, k, _ = th.inputs(th.SHAPES["full"])
  with pytest.raises(ValueError, match=word):
    select("hip", q, k, **(OPTS | options))


@pytest.mark.slow
def test_pallas_interpret_equals_xla():
  q, k, v = th.inputs(th.SHAPES["chunk"])
  opts = OPTS | dict(block_k=16, mask_k=64)
  ref = attention(q, k, v, method="hip", impl="xla", **opts)
  out = attention(q, k, v, method="hip", impl="pallas", **opts)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
