"""FlexPrefill: budgets, the JS pattern test and both query-aware cuts against NumPy."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.attention import attention
from jaxllm.attention.sparse import select
from tests.attention.sparse import helpers as th

BLOCK, MIN_BUDGET = 16, 32


def numpy_flexprefill(q, k, *, block, gamma, tau, min_budget, max_budget=None, cut="global"):
  """Loop transcription of the public get_active_blocks (block units, last query block)."""
  q, k = th.np32(q), th.np32(k)
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  nq, nk = -(-t // block), -(-s // block)
  _, last = th.query_block_bounds(t, s, block)
  diag = last // block
  vis = np.arange(nk)[None, :] <= diag[:, None]
  if s <= max(2 * block, math.ceil(min_budget / block) * block):
    return np.broadcast_to(vis, (b, h, nq, nk)), None
  min_b = math.ceil(min_budget / block)
  max_b = nk if max_budget is None else min(math.ceil(max_budget / block), nk)
  out = np.zeros((b, h, nq, nk), bool)
  js_heads = np.zeros((b, h))

  def cover(x):
    return int(np.sum(np.cumsum(np.sort(x)[::-1]) <= gamma)) + 1

  for bi in range(b):
    for hi in range(h):
      kh = k[bi, :, hi // (h // hkv)]
      n = min(block, t)
      ql = q[bi, t - n:, hi] / np.sqrt(d)
      pos = np.arange(s - n, s)
      p = th.softmax(np.where(np.arange(s)[None, :] <= pos[:, None], ql @ kh.T, -np.inf))
      vertical = p.mean(0)
      slash = np.zeros(s)
      for r in range(n):
        for key in range(pos[r] + 1):
          slash[pos[r] - key] += p[r, key] / n
      nv = min(max(cover(vertical) // block + 1, min_b), max_b)
      ns = min(max(cover(slash) // block + 1, min_b), max_b)
      vb = np.array([vertical[j * block:(j + 1) * block].sum() for j in range(nk)])
      sb = np.array([slash[o * block:(o + 1) * block].sum() for o in range(nk)])
      kbar = np.stack([kh[j * block:(j + 1) * block].mean(0) for j in range(nk)])
      est = th.softmax(kbar @ ql.mean(0))
      m = (est + vb) / 2
      js = np.sqrt(0.5 * np.sum(est * np.log(est / m)) + 0.5 * np.sum(vb * np.log(vb / m)))
      aware = js < tau
      js_heads[bi, hi] = js
      if aware:
        nv = ns = min(min_b, max_b)
      vb[0] = sb[0] = np.inf
      verticals = np.argsort(-vb, kind="stable")[:nv]
      slashes = np.argsort(-sb, kind="stable")[:ns]
      for i in range(nq):
        for j in verticals:
          out[bi, hi, i, j] |= j <= diag[i]
        for o in slashes:
          if diag[i] - o >= 0:
            out[bi, hi, i, diag[i] - o] = True
      if aware:
        qbar = np.stack([q[bi, i * block:(i + 1) * block, hi].mean(0) for i in range(nq)])
        a = th.softmax(np.where(vis, qbar / np.sqrt(d) @ kbar.T, -np.inf))
        if cut == "global":
          flat = a.reshape(-1)
          order = np.argsort(-flat, kind="stable")
          kept = order[np.cumsum(flat[order]) <= gamma * nq]
          out[bi, hi].reshape(-1)[kept] = True
        else:
          for i in range(nq):
            mass = 0.0
            for j in np.argsort(-a[i], kind="stable"):
              if mass >= gamma:
                break
              out[bi, hi, i, j] = True
              mass += a[i, j]
  return out & vis, js_heads


@pytest.mark.parametrize("shape, tau, cut", [
    ("chunk", "mixed", "global"), ("full", "mixed", "row"),
    pytest.param("full", 0.1, "global", marks=pytest.mark.slow),
    pytest.param("chunk", "mixed", "row", marks=pytest.mark.slow),
    pytest.param("full", "mixed", "global", marks=pytest.mark.slow),
    pytest.param("chunk", 0.0, "global", marks=pytest.mark.slow)])
def test_selection_matches_numpy(shape, tau, cut):
  b, t, s, h, hkv = th.SHAPES[shape]
  q, k, _ = th.inputs(th.SHAPES[shape])
  opts = dict(block=BLOCK, gamma=0.9, min_budget=MIN_BUDGET, cut=cut)
  if tau == "mixed":  # between the heads' JS distances: some heads query-aware, some not
    _, js = numpy_flexprefill(q, k, tau=0.0, **opts)
    tau = float(np.sort(js.reshape(-1))[js.size // 2 - 1:js.size // 2 + 1].mean())
    assert 0 < np.sum(js < tau) < js.size
  sel = select("flexprefill", q, k, tau=tau, **opts)
  want, _ = numpy_flexprefill(q, k, tau=tau, **opts)
  assert 0 < want.sum() < np.prod(want.shape)
  th.assert_same_positions(sel, th.expand(want, t, s, BLOCK, BLOCK), t, s)


@pytest.mark.slow
def test_max_budget_caps_the_vertical_and_slash_blocks():
  b, t, s, h, hkv = th.SHAPES["full"]
  q, k, _ = th.inputs(th.SHAPES["full"])
  opts = dict(block=BLOCK, gamma=0.99, tau=0.0, min_budget=MIN_BUDGET, max_budget=48)
  want, _ = numpy_flexprefill(q, k, **opts)
  th.assert_same_positions(select("flexprefill", q, k, **opts),
                           th.expand(want, t, s, BLOCK, BLOCK), t, s)


def test_short_input_falls_back_to_dense():
  b, t, s, h, hkv = th.SHAPES["chunk"]
  q, k, _ = th.inputs(th.SHAPES["chunk"])
  sel = select("flexprefill", q, k, block=BLOCK, min_budget=s)  # S <= ceil(min / block) block
  want, _ = numpy_flexprefill(q, k, block=BLOCK, gamma=0.9, tau=0.1, min_budget=s)
  th.assert_same_positions(sel, th.expand(want, t, s, BLOCK, BLOCK), t, s)


@pytest.mark.parametrize("shape, dtype", [
    ("chunk", jnp.float32), ("full", jnp.bfloat16),
    pytest.param("full", jnp.float32, marks=pytest.mark.slow),
    pytest.param("chunk", jnp.bfloat16, marks=pytest.mark.slow)])
def test_full_budget_equals_dense(shape, dtype):
  q, k, v = th.inputs(th.SHAPES[shape], dtype=dtype)
  out = attention(q, k, v, method="flexprefill", impl="xla", block=BLOCK,
                  min_budget=th.SHAPES[shape][2])
  assert out.dtype == dtype
  th.assert_close_dense(out, q, k, v)


def test_defaults_are_the_published_ones():
  from jaxllm.attention.sparse import flexprefill
  assert flexprefill.DEFAULTS == dict(block=128, gamma=0.9, tau=0.1, min_budget=512,
                                      max_budget=None, cut="global")


@pytest.mark.parametrize("options, word", [
    (dict(gamma=0.0), "gamma"), (dict(gamma=1.2), "gamma"), (dict(tau=-0.1), "tau"),
    (dict(min_budget=0), "min_budget"), (dict(max_budget=0), "max_budget"),
    (dict(cut="rows"), "cut"), (dict(block=1.5), "block")])
def test_bad_options(options, word):
  q, k, _ = th.inputs(th.SHAPES["full"])
  with pytest.raises(ValueError, match=word):
    select("flexprefill", q, k, **options)
