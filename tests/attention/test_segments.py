"""Segment ids (packed rows) in the attention API: a packed row equals each document run alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import attention as attn_api
from jaxllm.attention import masks
from jaxllm.attention.linear import forms
from jaxllm.data import packing
from pallas_kernels.block_sparse import api as bs_api
from pallas_kernels.block_sparse import masks as bs_masks
from pallas_kernels.block_sparse import reference as bs_reference

# Odd document lengths, a document crossing the 8- and 16-token block edges, and a row holding a
# single document whose id is not 1.
DOCS = ((10, 20, 7), (37,))
B, T, H, HKV, D = 2, 37, 4, 2, 8


def _segment_ids():
  rows = [np.repeat(np.arange(1, len(lens) + 1), lens) for lens in DOCS]
  rows[1] = rows[1] + 4
  return jnp.asarray(np.stack(rows), jnp.int32)


def _qkv(dtype=jnp.float32, seed=0):
  key = jax.random.key(seed)
  shapes = ((B, T, H, D), (B, T, HKV, D), (B, T, HKV, D))
  return tuple(jax.random.normal(jax.random.fold_in(key, i), s).astype(dtype)
               for i, s in enumerate(shapes))


def _documents(segment_ids):
  """(row, start, end) of every document."""
  out = []
  for r, row in enumerate(np.asarray(segment_ids)):
    starts = np.flatnonzero(np.diff(row, prepend=row[0] - 1))
    ends = np.append(starts[1:], len(row))
    out += [(r, int(lo), int(hi)) for lo, hi in zip(starts, ends)]
  return out


def _assert_packed_equals_alone(packed, alone_fn, q, k, v, atol, first_only=False):
  """``packed`` [B, T, ...] (or a list of such) equals ``alone_fn(q, k, v)`` run on every
  document by itself (only on the documents that open a row with ``first_only``)."""
  for r, lo, hi in _documents(_segment_ids()):
    if first_only and lo:
      continue
    alone = alone_fn(q[r:r + 1, lo:hi], k[r:r + 1, lo:hi], v[r:r + 1, lo:hi])
    for out in packed if isinstance(packed, list) else [packed]:
      np.testing.assert_allclose(np.asarray(out[r:r + 1, lo:hi], np.float32),
                                 np.asarray(alone, np.float32), atol=atol, rtol=0)


def test_visible_with_segments_matches_the_data_side_visibility():
  seg = _segment_ids()
  ok = masks.visible(*masks.positions(T, T), causal=True, segment_ids=seg)
  np.testing.assert_array_equal(np.asarray(ok), np.asarray(packing.visibility(seg)))
  # T < S: the queries take the last T ids.
  ok = masks.visible(*masks.positions(5, T), causal=True, segment_ids=seg)
  want = packing.visibility(seg[:, -5:], seg)
  np.testing.assert_array_equal(np.asarray(ok), np.asarray(want))


@pytest.mark.parametrize("impl,opts", [
    ("xla", {}), ("auto", {}),
    pytest.param("auto", {"window": 6}, marks=pytest.mark.slow),
    pytest.param("xla", {"window": 6, "sinks": 2}, marks=pytest.mark.slow),
])
def test_dense_packed_row_equals_documents_alone(impl, opts):
  q, k, v = _qkv()
  out = attn_api.attention(q, k, v, impl=impl, segment_ids=_segment_ids(), **opts)
  # Sinks are the row's first keys, so with them only the documents opening a row compare.
  _assert_packed_equals_alone(out, lambda *a: attn_api.attention(*a, impl="xla", **opts),
                              q, k, v, atol=1e-5, first_only="sinks" in opts)


@pytest.mark.slow
def test_dense_bfloat16_and_blocked_tiles():
  q, k, v = _qkv(jnp.bfloat16)
  seg = _segment_ids()
  out = attn_api.attention(q, k, v, impl="auto", segment_ids=seg)
  assert out.dtype == jnp.bfloat16
  _assert_packed_equals_alone(out, lambda *a: attn_api.attention(*a, impl="xla"), q, k, v,
                              atol=2e-2)
  from jaxllm.attention.methods import dense  # pylint: disable=g-import-not-at-top
  q, k, v = _qkv()
  np.testing.assert_allclose(
      np.asarray(dense.blocked(q, k, v, segment_ids=seg, block_q=8, key_chunk=5)),
      np.asarray(dense.reference(q, k, v, segment_ids=seg)), atol=1e-5)


@pytest.mark.parametrize("impl", [pytest.param("xla", marks=pytest.mark.slow), "auto"])
def test_dense_gradients_equal_documents_alone(impl):
  q, k, v = _qkv(seed=1)
  seg = _segment_ids()
  w = jax.random.normal(jax.random.key(7), (B, T, H, D))

  def packed_loss(q, k, v):
    return jnp.sum(attn_api.attention(q, k, v, impl=impl, segment_ids=seg) * w)

  def alone_loss(q, k, v):
    total = 0.0
    for r, lo, hi in _documents(seg):
      o = attn_api.attention(q[r:r + 1, lo:hi], k[r:r + 1, lo:hi], v[r:r + 1, lo:hi], impl=impl)
      total += jnp.sum(o * w[r:r + 1, lo:hi])
    return total

  got = jax.grad(packed_loss, argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(alone_loss, argnums=(0, 1, 2))(q, k, v)
  for g, e in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=1e-5)


@pytest.mark.parametrize("impl", [pytest.param("xla", marks=pytest.mark.slow), "auto"])
def test_sliding_window_packed_row_equals_documents_alone(impl):
  q, k, v = _qkv()
  out = attn_api.attention(q, k, v, method="sliding_window", window=6, block_q=8, block_k=16,
                           impl=impl, segment_ids=_segment_ids())
  _assert_packed_equals_alone(out, lambda *a: attn_api.attention(*a, impl="xla", window=6),
                              q, k, v, atol=1e-5)


def test_block_table_and_columns_gather_path_equal_the_reference():
  q, k, v = _qkv()
  seg = _segment_ids()
  nq, nk = 5, 3
  table = bs_masks.from_block_mask(
      jax.random.bernoulli(jax.random.key(3), 0.6, (1, H, nq, nk)), block_q=8, block_k=16)
  got = attn_api.attention(q, k, v, method="block_sparse", table=table, impl="xla",
                           segment_ids=seg)
  want, _ = bs_reference.attention(q, k, v, table, segment_ids=seg)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  assert np.abs(np.asarray(want - bs_reference.attention(q, k, v, table)[0])).max() > 1e-2
  # Vertical-slash columns outside the listed blocks (block 2 and one block of row 0).
  blocks = jnp.zeros((1, H, nq, nk), bool).at[..., 2].set(True).at[..., 0, 0].set(True)
  table = bs_masks.from_block_mask(blocks, block_q=8, block_k=16)
  cols = jnp.broadcast_to(jnp.array([3, 12, 20], jnp.int32), (1, H, nq, 3))
  vs = bs_masks.VerticalSlash(table, cols, jnp.full((1, H, nq), 3, jnp.int32))
  got = bs_api.block_sparse_attention(q, k, v, vs, impl="xla", segment_ids=seg)
  want, _ = bs_reference.attention(q, k, v, vs, segment_ids=seg)
  np.testing.assert_allclose(np.asarray(got[:, 8:]), np.asarray(want[:, 8:]), atol=1e-5)


LINEAR = [("linear", {}), ("retention", {}),
          pytest.param("linear", {"decay": 0.9}, marks=pytest.mark.slow),
          pytest.param("lightning", {"num_layers": 2}, marks=pytest.mark.slow),
          pytest.param("momentum", {"eta": 0.5}, marks=pytest.mark.slow)]


@pytest.mark.parametrize("method,opts", LINEAR)
def test_linear_methods_packed_row_equals_documents_alone(method, opts):
  q, k, v = _qkv()
  seg = _segment_ids()
  outs = [attn_api.attention(q, k, v, method=method, form=form, chunk_size=8, segment_ids=seg,
                             **opts) for form in forms.FORMS]
  _assert_packed_equals_alone(
      outs, lambda *a: attn_api.attention(*a, method=method, form="parallel", **opts),
      q, k, v, atol=1e-5)


@pytest.mark.slow
def test_linear_bfloat16_packed_row():
  q, k, v = _qkv(jnp.bfloat16)
  out = attn_api.attention(q, k, v, method="retention", segment_ids=_segment_ids(), chunk_size=8)
  _assert_packed_equals_alone(
      out, lambda *a: attn_api.attention(*a, method="retention", form="parallel"), q, k, v,
      atol=2e-2)


def test_linear_forms_reset_the_state_at_segment_starts():
  key = jax.random.key(5)
  q, k, v = (jax.random.normal(jax.random.fold_in(key, i), (B, T, H, D)) for i in range(3))
  s0 = jax.random.normal(jax.random.fold_in(key, 9), (B, H, D, D))
  log_decay = jnp.log(jnp.linspace(0.8, 1.0, H))
  seg = _segment_ids()
  runs = [forms.parallel(q, k, v, log_decay, s0, segment_ids=seg),
          forms.chunked(q, k, v, log_decay, s0, chunk_size=8, segment_ids=seg),
          forms.recurrent(q, k, v, log_decay, s0, segment_ids=seg)]
  # The initial state reaches only the first document; the final state is the last document's.
  o_first, _ = forms.parallel(q[:1, :10], k[:1, :10], v[:1, :10], log_decay, s0[:1])
  o_mid, _ = forms.parallel(q[:1, 10:30], k[:1, 10:30], v[:1, 10:30], log_decay)
  _, s_last = forms.parallel(q[:1, 30:], k[:1, 30:], v[:1, 30:], log_decay)
  o_row1, s_row1 = forms.parallel(q[1:], k[1:], v[1:], log_decay, s0[1:])
  for o, s in runs:
    np.testing.assert_allclose(np.asarray(o[:1, :10]), np.asarray(o_first), atol=1e-4)
    np.testing.assert_allclose(np.asarray(o[:1, 10:30]), np.asarray(o_mid), atol=1e-4)
    np.testing.assert_allclose(np.asarray(s[:1]), np.asarray(s_last), atol=1e-4)
    np.testing.assert_allclose(np.asarray(o[1:]), np.asarray(o_row1), atol=1e-4)
    np.testing.assert_allclose(np.asarray(s[1:]), np.asarray(s_row1), atol=1e-4)


@pytest.mark.slow
def test_non_causal_linear_attention_stays_in_its_document():
  q, k, v = _qkv()
  out = attn_api.attention(q, k, v, method="linear", causal=False, segment_ids=_segment_ids())
  _assert_packed_equals_alone(
      out, lambda *a: attn_api.attention(*a, method="linear", causal=False), q, k, v, atol=1e-5)


def test_methods_that_cannot_honour_segment_ids_refuse_them():
  q, k, v = _qkv()
  seg = _segment_ids()
  able = sorted(n for n, m in attn_api.METHODS.items() if m.segments)
  assert {"dense", "sliding_window", "sink_window", "block_sparse", "linear", "lightning",
          "retention", "momentum"} <= set(able)
  unable = next(n for n in sorted(attn_api.METHODS) if n not in able and n != "streaming")
  with pytest.raises(ValueError, match=r"segment_ids.*'dense'"):
    attn_api.attention(q, k, v, method=unable, segment_ids=seg)
  with pytest.raises(ValueError, match="segment_ids"):  # the block-sparse kernels
    attn_api.attention(q, k, v, method="sliding_window", window=6, block_q=16, block_k=16,
                       impl="pallas", segment_ids=seg)
  with pytest.raises(ValueError, match="segment_ids"):  # the linear chunk kernel
    attn_api.attention(q, k, v, method="retention", impl="pallas", segment_ids=seg)
  with pytest.raises(ValueError, match=r"segment_ids must have shape \[B, S\]"):
    attn_api.attention(q, k, v, segment_ids=seg[:, :-1])
  with pytest.raises(ValueError, match="segment_ids must be an integer array"):
    attn_api.attention(q, k, v, segment_ids=seg.astype(jnp.float32))


def test_splash_takes_segment_ids_interpreted():
  from jaxllm.attention import splash  # pylint: disable=g-import-not-at-top
  from jaxllm.attention.methods import dense  # pylint: disable=g-import-not-at-top
  key = jax.random.key(2)
  q, k, v = (jax.random.normal(jax.random.fold_in(key, i), (1, 256, 2, 128)) for i in range(3))
  seg = jnp.asarray(np.repeat([1, 2, 3], [100, 100, 56])[None], jnp.int32)
  got = splash.splash_dense(q, k, v, causal=True, scale=128 ** -0.5, interpret=True,
                            segment_ids=seg)
  np.testing.assert_allclose(np.asarray(got), np.asarray(dense.reference(q, k, v, segment_ids=seg)),
                             atol=1e-5)
