"""Selections against the public PyTorch code's outputs (fixtures/official.npz, written by
fixtures/make_official_fixtures.py from mit-han-lab/x-attention's xattn/src)."""

import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.attention.sparse import minference, select
from pallas_kernels.block_sparse.masks import dense_mask

FIXTURES = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "official.npz"))


def _blocks(sel, t, s, block):
  """Bool [B, H, nq, nk] of a table's listed blocks (from its positions, no causal)."""
  full = np.asarray(dense_mask(sel, t, s, causal=False))
  return full[:, :, ::block, ::block]


@pytest.mark.parametrize("tau", [0.6, 0.4])
def test_xattention_matches_the_public_estimate(tau):
  q, k = jnp.asarray(FIXTURES["xattn_q"]), jnp.asarray(FIXTURES["xattn_k"])
  want = FIXTURES[f"xattn_mask_{tau}"]
  sel = select("xattention", q, k, block=32, stride=4, threshold=tau, cut="public")
  got = _blocks(sel, 256, 256, 32)
  causal = np.tril(np.ones(want.shape[-2:], bool))
  assert 0 < want.sum() < causal.sum() * want.shape[1]
  np.testing.assert_array_equal(got, want & causal)
  paper = _blocks(select("xattention", q, k, block=32, stride=4, threshold=tau), 256, 256, 32)
  assert paper[..., 0].all() and not np.array_equal(paper, got)  # the variants differ


@pytest.mark.parametrize("tau", [0.1, 0.3])
def test_flexprefill_matches_the_public_get_active_blocks(tau):
  q, k = jnp.asarray(FIXTURES["flex_q"]), jnp.asarray(FIXTURES["flex_k"])
  want = FIXTURES[f"flex_mask_{tau}"]
  sel = select("flexprefill", q, k, block=128, gamma=0.9, tau=tau, min_budget=128)
  np.testing.assert_array_equal(_blocks(sel, 512, 512, 128), want)


def test_minference_indices_match_the_public_dynamic_path():
  q, k = jnp.asarray(FIXTURES["minf_q"]), jnp.asarray(FIXTURES["minf_k"])
  s = k.shape[1]
  cols, diags = minference.vertical_slash_choice(q, k, np.array([40, 40]), np.array([150, 150]),
                                                 scale=1 / math.sqrt(128))
  for hi in range(2):
    assert set(np.flatnonzero(np.asarray(cols[0, hi]))) == set(FIXTURES["minf_columns"][0, hi])
    assert set(np.flatnonzero(np.asarray(diags[0, hi]))) == set(FIXTURES["minf_offsets"][0, hi])
  assert cols.shape[-1] == s
