"""MInference: the three head patterns and the offline search against NumPy transcriptions."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.attention import attention
from jaxllm.attention.sparse import minference, select
from tests.attention.sparse import helpers as th

B = 64  # MInference's block
SHAPES = {"full": (2, 320, 320, 4, 2), "chunk": (2, 135, 453, 4, 2)}
VS = dict(pattern="vertical_slash", vertical=40, slash=120)
BS = dict(pattern="block_sparse", top_k=2)
A = dict(pattern="a_shape", sink=10, window=70)


def numpy_vertical_slash(q, k, bi, hi, *, vertical, slash):
  """Blocks [nq, nk] and columns [nq, S] of one head: last 64 queries, column and diagonal
  sums, first 30 columns and 100 most local diagonals forced, at least 30 / 50 kept."""
  t, h, d = q.shape[1], q.shape[2], q.shape[3]
  s, hkv = k.shape[1], k.shape[2]
  kh = k[bi, :, hi // (h // hkv)]
  n = min(64, t)
  pos = np.arange(s - n, s)
  logits = q[bi, t - n:, hi] @ kh.T / np.sqrt(d)
  p = th.softmax(np.where(np.arange(s)[None, :] <= pos[:, None], logits, -np.inf))
  col = p.sum(0)
  diag = np.zeros(s)
  for r in range(n):
    for key in range(pos[r] + 1):
      diag[pos[r] - key] += p[r, key]
  col[:30] = np.inf
  diag[:100] = np.inf
  cols = np.argsort(-col, kind="stable")[:min(s, max(vertical, 30))]
  diags = np.argsort(-diag, kind="stable")[:min(s, max(slash, 50))]
  first, last = th.query_block_bounds(t, s, B)
  nq, nk = len(first), -(-s // B)
  blocks = np.zeros((nq, nk), bool)
  columns = np.zeros((nq, s), bool)
  for i in range(nq):
    for dg in diags:
      if last[i] - dg >= 0:
        blocks[i, max(first[i] - dg, 0) // B:(last[i] - dg) // B + 1] = True
    for c in cols:
      columns[i, c] = c <= last[i] and not blocks[i, c // B]
  return blocks, columns


def numpy_block_sparse(q, k, bi, hi, *, top_k):
  t, h = q.shape[1], q.shape[2]
  s, hkv = k.shape[1], k.shape[2]
  nq, nk = -(-t // B), -(-s // B)
  qp = np.zeros((nq * B, q.shape[3]))
  qp[:t] = q[bi, :, hi]
  kp = np.zeros((nk * B, q.shape[3]))
  kp[:s] = k[bi, :, hi // (h // hkv)]
  scores = qp.reshape(nq, B, -1).sum(1) / B @ (kp.reshape(nk, B, -1).sum(1) / B).T
  _, last = th.query_block_bounds(t, s, B)
  blocks = np.zeros((nq, nk), bool)
  for i in range(nq):
    visible = [j for j in np.argsort(-scores[i], kind="stable") if j * B <= last[i]]
    blocks[i, visible[:top_k]] = True
  return blocks


def numpy_a_shape(t, s, *, sink, window):
  first, last = th.query_block_bounds(t, s, B)
  start = np.arange(-(-s // B)) * B
  return (((start < sink)[None, :] | (start[None, :] + B - 1 >= first[:, None] - window + 1))
          & (start[None, :] <= last[:, None]))


def numpy_positions(q, k, heads):
  q, k = th.np32(q), th.np32(k)
  b, t, h, _ = q.shape
  s = k.shape[1]
  out = np.zeros((b, h, t, s), bool)
  for bi in range(b):
    for hi, cfg in enumerate(heads):
      columns = None
      if cfg["pattern"] == "vertical_slash":
        blocks, columns = numpy_vertical_slash(q, k, bi, hi, vertical=cfg["vertical"],
                                               slash=cfg["slash"])
        columns = columns[None, None]
      elif cfg["pattern"] == "block_sparse":
        blocks = numpy_block_sparse(q, k, bi, hi, top_k=cfg["top_k"])
      else:
        blocks = numpy_a_shape(t, s, sink=cfg["sink"], window=cfg["window"])
      out[bi, hi] = th.expand(blocks[None, None], t, s, B, B, columns)[0, 0]
  return out


@pytest.mark.parametrize("shape", ["chunk", pytest.param("full", marks=pytest.mark.slow)])
def test_mixed_head_patterns_match_numpy(shape):
  b, t, s, h, hkv = SHAPES[shape]
  q, k, _ = th.inputs(SHAPES[shape])
  heads = [VS, BS, A, VS | dict(vertical=90, slash=150)]
  sel = select("minference", q, k, heads=heads)
  assert type(sel).__name__ == "VerticalSlash"
  want = numpy_positions(q, k, heads)
  causal = np.arange(s)[None, :] <= (np.arange(t) + s - t)[:, None]
  assert 0 < (want & causal).sum() < causal.sum() * b * h
  th.assert_same_positions(sel, want, t, s)


def test_block_only_heads_give_a_block_table():
  b, t, s, h, hkv = SHAPES["chunk"]
  q, k, _ = th.inputs(SHAPES["chunk"])
  sel = select("minference", q, k, heads=[BS, A, BS, A])
  assert type(sel).__name__ == "BlockTable"
  th.assert_same_positions(sel, numpy_positions(q, k, [BS, A, BS, A]), t, s)


def test_search_picks_the_best_recall_and_the_file_drives_attention(tmp_path):
  shape = (1, 320, 320, 4, 2)
  q, k, v = th.inputs(shape, seed=2)
  cands = [A, VS, BS]
  found = minference.search_patterns(q, k, candidates=cands, skip=200)
  p = th.dense_ref_probs(q, k)  # [1, H, T, S]
  for hi, cfg in enumerate(found):
    recall = [np.sum((p * numpy_positions(q, k, [c] * 4))[0, hi, 200:], -1).mean()
              for c in cands]
    assert np.ptp(recall) > 0.05  # the candidates really differ
    assert cfg["pattern"] == cands[int(np.argmax(recall))]["pattern"]
    np.testing.assert_allclose(cfg["score"], max(recall), rtol=1e-5)
  path = str(tmp_path / "patterns.json")
  minference.write_pattern_file(path, [found, found[::-1]])
  assert len(json.load(open(path))) == 2
  for layer, heads in ((0, found), (1, found[::-1])):
    from_file = attention(q, k, v, method="minference", impl="xla", pattern_file=path,
                          layer_index=layer)
    given = attention(q, k, v, method="minference", impl="xla", heads=heads)
    np.testing.assert_array_equal(np.asarray(from_file), np.asarray(given))
  with pytest.raises(ValueError, match="layer_index"):
    select("minference", q, k, pattern_file=path, layer_index=2)


@pytest.mark.parametrize("shape, dtype", [
    ("chunk", jnp.float32), ("full", jnp.bfloat16),
    pytest.param("full", jnp.float32, marks=pytest.mark.slow),
    pytest.param("chunk", jnp.bfloat16, marks=pytest.mark.slow)])
def test_full_budget_equals_dense(shape, dtype):
  q, k, v = th.inputs(SHAPES[shape], dtype=dtype)
  out = attention(q, k, v, method="minference", impl="xla", vertical=SHAPES[shape][2])
  assert out.dtype == dtype
  th.assert_close_dense(out, q, k, v)


def test_defaults_are_the_published_ones():
  assert minference.DEFAULTS == dict(pattern="vertical_slash", vertical=1000, slash=6096,
                                     top_k=100, sink=100, window=800)


@pytest.mark.parametrize("options, word", [
    (dict(pattern="dilated"), "pattern"), (dict(vertical=0), "vertical"),
    (dict(slash=-3), "slash"), (dict(pattern="block_sparse", top_k=0), "top_k"),
    (dict(pattern="a_shape", window=0), "window"), (dict(heads=[VS]), "heads"),
    (dict(pattern_file="/nonexistent.json"), "pattern_file"),
    (dict(heads=[VS | dict(top_k=3)] * 4), "unknown keys")])
def test_bad_options(options, word):
  q, k, _ = th.inputs(th.SHAPES["full"])
  with pytest.raises(ValueError, match=word):
    select("minference", q, k, **options)


@pytest.mark.slow
def test_pallas_interpret_equals_xla():
  q, k, v = th.inputs(SHAPES["chunk"])
  ref = attention(q, k, v, method="minference", impl="xla", heads=[VS, BS, A, VS])
  out = attention(q, k, v, method="minference", impl="pallas", heads=[VS, BS, A, VS])
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
