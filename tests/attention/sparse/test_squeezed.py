"""Squeezed Attention: k-means index, calibrated thresholds and the centroid lookup vs NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.attention import attention
from jaxllm.attention.sparse import select, squeezed
from pallas_kernels.block_sparse.masks import dense_mask
from tests.attention.sparse import helpers as th

BLOCK = 16


def clustered_inputs(shape, *, seed=0, n_dirs=6):
  """Keys around a few directions (with random norms) so k-means has structure to find."""
  q, k, v = th.inputs(shape, seed=seed, planted=False)
  b, t, s, h, hkv = shape
  rng = np.random.default_rng(seed)
  dirs = rng.normal(size=(n_dirs, th.D))
  which = rng.integers(0, n_dirs, size=(b, s, hkv))
  scale = rng.uniform(0.5, 2.0, size=(b, s, hkv, 1))
  k = jnp.asarray(dirs[which] * scale + 0.1 * rng.normal(size=(b, s, hkv, th.D)), jnp.float32)
  return q, k, v


def numpy_estimates(index, q):
  """Per level [B, H, T, C]: exp(q.c / sqrt(D)) / sum_l N_l exp(q.c_l / sqrt(D)); the fine level
  of two uses the coarse denominator."""
  q = th.np32(q)
  h, d = q.shape[2], q.shape[3]

  def level(cents, counts):
    g = h // cents.shape[1]
    c, n = np.repeat(th.np32(cents), g, 1), np.repeat(th.np32(counts), g, 1)
    logits = np.einsum("bthd,bhcd->bhtc", q, c) / np.sqrt(d)
    return np.exp(logits), np.sum(n[:, :, None, :] * np.exp(logits), -1, keepdims=True)

  fine, fine_den = level(index.centroids, index.counts)
  if index.coarse_centroids is None:
    return [fine / fine_den]
  coarse, coarse_den = level(index.coarse_centroids, index.coarse_counts)
  return [fine / coarse_den, coarse / coarse_den]


def numpy_positions(index, q, k, thresholds, lookup="query_block"):
  """Kept fixed keys (union over each query block, or from the estimate averaged over the
  queries after the fixed context for ``lookup="call"``) + everything after the fixed context."""
  b, t, h, _ = q.shape
  s = k.shape[1]
  f = index.fixed_len
  est = numpy_estimates(index, q)
  if lookup == "call":
    after = np.arange(t) + s - t >= f
    est = [np.broadcast_to(e[:, :, after].mean(2, keepdims=True), e.shape) for e in est]
  keep = est[0] >= thresholds[0]
  g = h // index.labels.shape[1]
  if len(est) == 2:
    parent = np.repeat(np.asarray(index.parent), g, 1)
    coarse_keep = est[1] >= thresholds[1]
    for bi in range(b):
      for hi in range(h):
        keep[bi, hi] &= coarse_keep[bi, hi][:, parent[bi, hi]]
  labels = np.repeat(np.asarray(index.labels), g, 1)
  first, last = th.query_block_bounds(t, s, BLOCK)
  out = np.zeros((b, h, t, s), bool)
  for i in range(len(first)):
    rows = slice(i * BLOCK, min((i + 1) * BLOCK, t))
    if first[i] < f:
      out[:, :, rows, :] = True
      continue
    block_keep = keep[:, :, rows].any(axis=2)  # [B, H, C]
    for bi in range(b):
      for hi in range(h):
        out[bi, hi, rows, :f] = block_keep[bi, hi][labels[bi, hi]]
    out[:, :, rows, f:] = True
  return out


def visible(t, s):
  return np.arange(s)[None, :] <= (np.arange(t) + s - t)[:, None]


def test_index_is_a_kmeans_fixed_point_with_raw_key_means():
  shape = (2, 40, 160, 4, 2)
  _, k, _ = clustered_inputs(shape)
  index = squeezed.prepare(k[:, :120], ratio=0.05, iters=30, levels=2, coarse_ratio=0.5)
  raw = np.swapaxes(th.np32(k[:, :120]), 1, 2)  # [B, Hkv, F, D]
  unit = raw / np.linalg.norm(raw, axis=-1, keepdims=True)
  labels = np.asarray(index.labels)
  n_c = index.centroids.shape[2]
  assert n_c == 6
  for bi in range(2):
    for hk in range(2):
      lab = labels[bi, hk]
      counts = np.bincount(lab, minlength=n_c)
      np.testing.assert_array_equal(np.asarray(index.counts[bi, hk]), counts)
      for c in np.flatnonzero(counts):
        np.testing.assert_allclose(np.asarray(index.centroids[bi, hk, c]),
                                   raw[bi, hk, lab == c].mean(0), atol=1e-5)
      used = np.flatnonzero(counts)
      centres = np.stack([unit[bi, hk, lab == c].mean(0) for c in used])
      dist = ((unit[bi, hk, :, None] - centres[None]) ** 2).sum(-1)
      np.testing.assert_array_equal(used[dist.argmin(-1)], lab)  # Lloyd's fixed point
      parent = np.asarray(index.parent[bi, hk])
      for p in np.unique(parent):
        under = np.isin(lab, np.flatnonzero(parent == p))
        np.testing.assert_allclose(np.asarray(index.coarse_centroids[bi, hk, p]),
                                   raw[bi, hk, under].mean(0), atol=1e-5)
        assert float(index.coarse_counts[bi, hk, p]) == under.sum()


@pytest.mark.parametrize("levels", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_threshold_is_the_pooled_quantile_over_layers(levels):
  shape = th.SHAPES["chunk"]  # T = 77 < 100: every query calibrates
  q1, k1, _ = clustered_inputs(shape, seed=0)
  q2, k2, _ = clustered_inputs(shape, seed=1)
  idx = squeezed.prepare([k1[:, :126], k2[:, :126]], [q1, q2], levels=levels, quantile=0.8,
                         ratio=0.1, coarse_ratio=0.5)
  def per_key(i, q):  # each fixed key carries its cluster's (fine / coarse) mean estimate
    est = [e.mean(axis=2) for e in numpy_estimates(i, q)]
    lab = np.repeat(np.asarray(i.labels), 2, 1)
    out = [np.take_along_axis(est[0], lab, -1)]
    if levels == 2:
      coarse = np.take_along_axis(np.repeat(np.asarray(i.parent), 2, 1), lab, -1)
      out.append(np.take_along_axis(est[1], coarse, -1))
    return [o.reshape(-1) for o in out]

  assert shape[3] // shape[4] == 2
  pooled = [np.concatenate(pair) for pair in zip(*(per_key(i, q) for i, q in zip(idx, (q1, q2))))]
  want = [np.quantile(p, 0.8) for p in pooled]
  for i in idx:
    np.testing.assert_allclose(np.asarray(i.thresholds), want, rtol=1e-4)


@pytest.mark.parametrize("levels, shape, fixed", [
    (1, "chunk", 126), (2, "full", 64), pytest.param(2, "chunk", 126, marks=pytest.mark.slow),
    pytest.param(1, "full", 64, marks=pytest.mark.slow)])
@pytest.mark.parametrize("lookup", ["call", "query_block"])
def test_selection_matches_numpy(levels, shape, fixed, lookup):
  b, t, s, h, hkv = th.SHAPES[shape]
  q, k, _ = clustered_inputs(th.SHAPES[shape])
  index = squeezed.prepare(k[:, :fixed], levels=levels, ratio=0.1, coarse_ratio=0.5)
  # Thresholds high enough that a block's union of its queries' clusters stays sparse (a lower
  # quantile for the averaged estimate, which is smoother).
  quant = 0.99 if lookup == "query_block" else 0.7
  thr = [float(np.quantile(e, quant)) for e in numpy_estimates(index, q)]
  sel = select("squeezed", q, k, index=index, threshold=thr, block=BLOCK, lookup=lookup)
  want = numpy_positions(index, q, k, thr, lookup)
  vis = visible(t, s)
  assert 0 < (want & vis).sum() < vis.sum() * b * h
  got = np.asarray(dense_mask(sel, t, s, causal=True))
  np.testing.assert_array_equal(got, want & vis)


@pytest.mark.slow
def test_default_path_clusters_the_cache_and_calibrates_on_the_call():
  b, t, s, h, hkv = th.SHAPES["chunk"]
  q, k, v = clustered_inputs(th.SHAPES["chunk"])
  index = squeezed.prepare(k[:, :s - t], q)
  explicit = attention(q, k, v, method="squeezed", impl="xla", index=index, block=BLOCK)
  implicit = attention(q, k, v, method="squeezed", impl="xla", block=BLOCK)
  np.testing.assert_array_equal(np.asarray(explicit), np.asarray(implicit))


@pytest.mark.parametrize("shape, dtype", [
    ("chunk", jnp.float32), pytest.param("full", jnp.bfloat16, marks=pytest.mark.slow),
    pytest.param("full", jnp.float32, marks=pytest.mark.slow),
    pytest.param("chunk", jnp.bfloat16, marks=pytest.mark.slow)])
def test_full_budget_equals_dense(shape, dtype):
  q, k, v = clustered_inputs(th.SHAPES[shape])
  q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
  fixed = th.SHAPES[shape][2] // 2
  out = attention(q, k, v, method="squeezed", impl="xla", fixed_len=fixed, threshold=0.0,
                  block=BLOCK)
  assert out.dtype == dtype
  th.assert_close_dense(out, q, k, v)


@pytest.mark.parametrize("options, word", [
    (dict(ratio=0.0), "ratio"), (dict(levels=3), "levels"), (dict(quantile=1.5), "quantile"),
    (dict(lookup="token"), "lookup"),
    (dict(threshold=-1.0), "threshold"), (dict(threshold=[0.1, 0.1, 0.1]), "threshold"),
    (dict(index="centroids"), "index"), (dict(fixed_len=10_000), "fixed_len"),
    (dict(block=0), "block")])
def test_bad_options(options, word):
  q, k, _ = th.inputs(th.SHAPES["chunk"])
  with pytest.raises(ValueError, match=word):
    select("squeezed", q, k, **options)


def test_index_without_thresholds_needs_one():
  q, k, _ = th.inputs(th.SHAPES["chunk"])
  index = squeezed.prepare(k[:, :100])
  with pytest.raises(ValueError, match="threshold"):
    select("squeezed", q, k, index=index)
  assert jax.tree_util.tree_leaves(index)  # a pytree: passes through jit
