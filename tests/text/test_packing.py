"""Packed rows: positions, loss mask and the attention visibility a packing-aware model needs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.data import packing

SEG = np.array([[1, 1, 1, 2, 2, 3, 3, 3, 3, 0, 0, 0],
                [1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2]], np.int32)


def test_positions_restart_and_loss_skips_document_starts_and_padding():
  np.testing.assert_array_equal(packing.positions(SEG), [[0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 0, 0],
                                                         [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]])
  np.testing.assert_array_equal(np.asarray(packing.positions(jnp.asarray(SEG))),
                                packing.positions(SEG))
  mask = packing.loss_mask(SEG)
  assert mask.shape == (2, 11)
  np.testing.assert_array_equal(mask[0], [1, 1, 0, 1, 0, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(mask[1], [1] * 7 + [0] + [1] * 3)
  np.testing.assert_array_equal(packing.segment_starts(SEG)[0],
                                [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0])


def _masked_attention(q, k, v, vis):
  s = jnp.einsum("btd,bsd->bts", q, k) / np.sqrt(q.shape[-1])
  s = jnp.where(vis, s, -1e30)
  p = jax.nn.softmax(s, axis=-1) * vis.any(-1, keepdims=True)
  return jnp.einsum("bts,bsd->btd", p, v)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_visibility_makes_a_packed_row_equal_its_documents_run_alone(dtype, tol):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 12, 8)), dtype) for _ in range(3))
  vis = packing.visibility(jnp.asarray(SEG))
  packed = _masked_attention(q, k, v, vis).astype(jnp.float32)
  for b in range(2):
    for seg in (1, 2, 3):
      idx = np.flatnonzero(SEG[b] == seg)
      if not idx.size:
        continue
      causal = jnp.tril(jnp.ones((1, idx.size, idx.size), bool))
      alone = _masked_attention(q[b:b + 1, idx], k[b:b + 1, idx], v[b:b + 1, idx], causal)
      np.testing.assert_allclose(packed[b, idx], alone[0].astype(jnp.float32), atol=tol, rtol=tol)
  np.testing.assert_array_equal(packed[0, 9:], 0.0)  # padding queries see nothing


def test_visibility_for_decode_queries_and_block_tables():
  rng = np.random.default_rng(1)
  seg = np.sort(rng.integers(1, 4, size=(3, 16)), axis=1).astype(np.int32)
  full = packing.visibility(seg)
  tail = packing.visibility(seg[:, -4:], seg)  # last 4 queries against all keys
  np.testing.assert_array_equal(tail, full[:, -4:])
  np.testing.assert_array_equal(packing.visibility(seg, causal=False),
                                seg[:, :, None] == seg[:, None, :])
  tiles = packing.block_visibility(seg, 4, 8)
  brute = full.reshape(3, 4, 4, 2, 8).any(axis=(2, 4))
  np.testing.assert_array_equal(tiles, brute)
  with pytest.raises(ValueError, match="multiple of block_q"):
    packing.block_visibility(seg, 5, 8)
