"""HiP: the hierarchical tree search against a per-query-block NumPy transcription."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.attention import attention
from jaxllm.attention.sparse import hip, select
from pallas_kernels.block_sparse.masks import dense_mask
from tests.attention.sparse import helpers as th

OPTS = dict(mask_k=32, block_q=16, block_k=4, stride=2, sink=4, window=16)


def numpy_hip(q, k, *, mask_k, block_q, block_k, stride, sink, window):
  """Transcribes hip_attn/v1_1/attention2_draft_prefetch.py per query block: the initial groups
  of masking_iteration_draft_cuda_initialize (float32 split of the searched blocks, starts
  rounded down to ceil(2^floor(log2 bsrc) / m)), rounds until the largest group is one block,
  each half scored by its centre block over rows stride - 1, 2 stride - 1, ... and keys at least
  ``window`` before the row, the m best kept, empty halves last."""
  q, k = th.np32(q), th.np32(k)
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  nq, nk = -(-t // block_q), -(-s // block_k)
  m = mask_k // block_k
  first, last = th.query_block_bounds(t, s, block_q)
  out = np.zeros((b, h, nq, nk), bool)
  for bi in range(b):
    for hi in range(h):
      kh = k[bi, :, hi // (h // hkv)]
      for i in range(nq):
        rows = [r for r in range(i * block_q + min(t, stride) - 1, (i + 1) * block_q, stride)
                if r < t]

        def score(lo, up):
          if up <= lo:
            return -np.inf  # empty half
          rep = lo + (up - lo) // 2
          best = -1e300  # a non-empty half outranks every empty one
          for r in rows:
            for key in range(rep * block_k, min((rep + 1) * block_k, s)):
              if key <= r + s - t - window:
                best = max(best, q[bi, r, hi] @ kh[key])
          return best

        n_sink = -(-sink // block_k)
        bsrc = -(-max(last[i] + 1 - window - sink, 0) // block_k)
        if bsrc <= m:
          groups = [(n_sink + j, n_sink + j + 1) for j in range(bsrc)]
          rounds = 0
        else:
          step = -(-2 ** math.floor(math.log2(bsrc)) // m)
          starts = [min(int(np.float32(bsrc) / np.float32(m) * np.float32(j)) // step * step,
                        bsrc) + n_sink for j in range(m + 1)]
          groups = list(zip(starts[:-1], starts[1:]))
          size, rounds = float(max(up - lo for lo, up in groups)), 0
          while size > 1:
            size, rounds = size * 0.5, rounds + 1
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


def causal_pairs(blocks, t, s, block_q, block_k):
  """A NumPy block set [B, H, nq, nk] as the causal (query, key) pairs it attends."""
  visible = np.arange(s)[None, :] <= (np.arange(t) + s - t)[:, None]
  return th.expand(blocks, t, s, block_q, block_k) & visible


def assert_same_pairs(sel, want, t, s, block_q, block_k):
  """The layout's pairs (tiles and columns, under the causal mask) are the selected blocks'."""
  got = np.asarray(dense_mask(sel, t, s, causal=True))
  expected = causal_pairs(want, t, s, block_q, block_k)
  diff = np.argwhere(got != expected)
  assert diff.size == 0, f"{len(diff)} pairs differ, first {diff[:5].tolist()}"


@pytest.mark.parametrize("shape", ["chunk", pytest.param("full", marks=pytest.mark.slow)])
def test_selection_matches_numpy(shape):
  b, t, s, h, hkv = th.SHAPES[shape]
  q, k, _ = th.inputs(th.SHAPES[shape])
  sel = select("hip", q, k, **OPTS)
  want = numpy_hip(q, k, **OPTS)
  assert 0 < want.sum() < np.prod(want.shape)
  assert_same_pairs(sel, want, t, s, OPTS["block_q"], OPTS["block_k"])


def test_selection_without_window_or_sinks():
  b, t, s, h, hkv = th.SHAPES["chunk"]
  q, k, _ = th.inputs(th.SHAPES["chunk"], seed=1)
  opts = OPTS | dict(sink=0, window=0, stride=1)
  want = numpy_hip(q, k, **opts)
  sel = select("hip", q, k, **opts)
  # Exactly m blocks per query block once enough blocks are visible (top-k, no fixed part).
  assert np.all(want.sum(-1)[..., -1] == opts["mask_k"] // opts["block_k"])
  assert_same_pairs(sel, want, t, s, opts["block_q"], opts["block_k"])


def test_group_starts_are_power_of_two_aligned():
  # bsrc = 6 blocks over m = 2 groups: step ceil(4 / 2) = 2 moves the split from 3 down to 2.
  bounds, rounds = hip.initial_groups(6, 2)
  assert bounds.tolist() == [0, 2, 6] and rounds == 2
  # bsrc 1000, m 256: step 2; 1001 leaves its last block past the rounded end unsearched.
  assert hip.initial_groups(1000, 256)[0][-1] == 1000
  assert hip.initial_groups(1001, 256)[0][-1] == 1000
  # The split is float32 as the kernel computes it: 105 / 100 * 100 truncates to 104.
  bounds, _ = hip.initial_groups(105, 100)
  assert bounds[60] == 62 and bounds[-1] == 104
  # Up to m blocks are all selected without a search.
  bounds, rounds = hip.initial_groups(3, 4)
  assert bounds.tolist() == [0, 1, 2, 3, 3] and rounds == 0


def test_rounds_are_logarithmic():
  # ceil(log2(largest initial group)): 16384 blocks over 256 groups of 64 -> 6 rounds.
  assert [hip.initial_groups(nk, 256)[1] for nk in (256, 257, 512, 1024, 16384)] == [0, 1, 1, 2, 6]


def test_alignment_changes_the_chosen_blocks():
  """One query onto 6 keys, m = 2: aligned groups [0, 2), [2, 6) score block 1 in round one and
  keep it; unaligned [0, 3), [3, 6) would score block 2 instead and end with {4, 5}."""
  d = th.D
  q = jnp.zeros((1, 1, 1, d)).at[..., 0].set(1.0)
  k = jnp.zeros((1, 6, 1, d)).at[0, :, 0, 0].set(jnp.array([0.1, 5.0, 0.2, 0.3, 0.4, 0.5]))
  opts = dict(mask_k=2, block_q=1, block_k=1, stride=1, sink=0, window=0)
  want = numpy_hip(q, k, **opts)
  assert np.flatnonzero(want[0, 0, 0]).tolist() == [1, 5]
  assert_same_pairs(select("hip", q, k, **opts), want, 1, 6, 1, 1)


@pytest.mark.parametrize("shape, dtype", [
    ("chunk", jnp.float32), ("full", jnp.bfloat16),
    pytest.param("full", jnp.float32, marks=pytest.mark.slow)])
def test_output_is_attention_over_the_selected_pairs(shape, dtype):
  """Tiles plus gathered columns compute softmax attention over exactly the selected pairs."""
  b, t, s, h, hkv = th.SHAPES[shape]
  q, k, v = th.inputs(th.SHAPES[shape], dtype=dtype)
  opts = OPTS | dict(mask_k=16)  # sparse enough that columns and tiles both carry pairs
  pairs = causal_pairs(numpy_hip(q, k, **opts), t, s, opts["block_q"], opts["block_k"])
  assert 0.1 < pairs.sum() / np.tril(np.ones((t, s)), s - t).sum() / b / h < 0.9
  qf, kf, vf = (np.repeat(th.np32(x), h // x.shape[2], axis=2) for x in (q, k, v))
  logits = np.einsum("bthd,bshd->bhts", qf, kf) / np.sqrt(th.D)
  ref = np.einsum("bhts,bshd->bthd", th.softmax(np.where(pairs, logits, -np.inf)), vf)
  out = attention(q, k, v, method="hip", impl="xla", **opts)
  assert out.dtype == dtype
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(th.np32(out), ref, atol=tol * max(1.0, np.abs(ref).max()))


def test_default_layout_is_wide_tiles_plus_columns():
  """At the v1.1 defaults the window rides on a few 64-key tiles and the searched keys are
  columns: at most mask_k + sink per query block, not hundreds of 2-key tiles."""
  t = s = 1280
  q, k, _ = th.inputs((1, t, s, 2, 1))
  sel = select("hip", q, k)
  assert sel.table.block_k == hip.TILE_K == 64
  assert int(sel.table.kv_cnt.max()) <= 6
  assert int(sel.col_cnt.max()) <= hip.DEFAULTS["mask_k"] + hip.DEFAULTS["sink"]
  # Far enough in, the search returns its m blocks; those within block_q keys of the window
  # are attended by the window part.
  assert int(sel.col_cnt[0, 0, -1]) >= hip.DEFAULTS["mask_k"] - hip.DEFAULTS["block_q"]


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
