"""Squeezed Attention (Hooper et al. 2024): centroid lookup over a fixed context's clustered keys.

Offline (:func:`prepare`, once per fixed context): k-means over the L2-normalised keys of the
fixed context, per batch row and KV head, with ``ratio`` (5%, REFERENCE A) as many clusters as
keys; each centroid is the mean of its cluster's raw keys. Two levels: coarse centroids are a
k-means of the fine ones (``coarse_ratio`` of them, 25% by default), a coarse centroid being the
mean of all raw keys under it.

Online, for query q and cluster j with N_j keys: p_j = exp(q.c_j / sqrt(D)) / sum_l N_l
exp(q.c_l / sqrt(D)). One level keeps the clusters with p_j >= threshold. Two levels keep the
coarse clusters above the coarse threshold, then the fine clusters under them whose p_j (with the
coarse sum as the denominator, so the lookup never touches discarded branches) is above the fine
threshold. Kept clusters' keys are attended exactly, together with every key after the fixed
context (causal); queries inside the fixed context attend densely (its own prefill is offline).
``lookup`` says which queries share a key set: ``"call"`` (default, the public code,
SqueezeAILab/SqueezedAttention ``centroid_lookup``): p_j averaged over all the call's queries
after the fixed context, one set per head; ``"query_block"``: per query block, the union of its
queries' own sets (a finer, per-query reading at the kernel's granularity).

Thresholds are calibrated as the ``quantile`` (0.9, the paper's evaluations) of the estimated
probabilities averaged over the last 100 calibration queries, taken per fixed key (each key
carries its cluster's estimate, as the public ``run_global_threshold`` does, so a cluster counts
N_j times), pooled over all heads (and all layers when :func:`prepare` gets one key tensor per
layer). Without a prepared index the method clusters ``k[:, :fixed_len]`` and calibrates on the
call's own last 100 queries. ``threshold=0`` keeps every cluster (exact).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.attention.sparse import _common as C

METHOD = "squeezed"
DEFAULTS = dict(ratio=0.05, levels=1, coarse_ratio=0.25, quantile=0.9, calib_queries=100,
                iters=20, seed=0, block=64, lookup="call")
LOOKUPS = ("call", "query_block")


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["centroids", "counts", "labels", "coarse_centroids",
                                "coarse_counts", "parent", "thresholds"],
                   meta_fields=["fixed_len"])
@dataclasses.dataclass(frozen=True)
class SqueezedIndex:
  """Clustered keys of one fixed context (one layer)."""
  centroids: jax.Array  # float32 [B, Hkv, C, D], mean raw key per cluster
  counts: jax.Array  # float32 [B, Hkv, C]
  labels: jax.Array  # int32 [B, Hkv, F], cluster of each fixed key
  coarse_centroids: jax.Array | None  # float32 [B, Hkv, C2, D] (two levels)
  coarse_counts: jax.Array | None  # float32 [B, Hkv, C2]
  parent: jax.Array | None  # int32 [B, Hkv, C], coarse cluster of each fine one
  thresholds: jax.Array | None  # float32 [levels]: (fine,) or (fine, coarse)
  fixed_len: int

  @property
  def levels(self) -> int:
    return 1 if self.coarse_centroids is None else 2


def kmeans(x, n_clusters: int, *, iters: int, seed: int):
  """Lloyd's k-means on x [..., N, D] (float32): returns (centres [..., C, D], labels [..., N]).

  Starts from k-means++ seeding drawn with ``seed``; an empty cluster keeps its centre.
  """
  centres = _kmeans_pp(x, n_clusters, jax.random.key(seed))

  def assign(c):
    dist = jnp.sum(c * c, -1)[..., None, :] - 2 * jnp.einsum("...nd,...cd->...nc", x, c)
    return jnp.argmin(dist, axis=-1)

  def step(c, _):
    onehot = jax.nn.one_hot(assign(c), n_clusters, dtype=x.dtype)
    size = onehot.sum(-2)
    mean = jnp.einsum("...nc,...nd->...cd", onehot, x) / jnp.maximum(size, 1)[..., None]
    return jnp.where(size[..., None] > 0, mean, c), None

  centres, _ = jax.lax.scan(step, centres, None, length=iters)
  return centres, assign(centres)


def _kmeans_pp(x, n_clusters: int, key):
  """k-means++ seeding: each next centre drawn with probability proportional to the squared
  distance to the nearest centre so far."""
  gather = lambda idx: jnp.take_along_axis(x, idx[..., None, None], axis=-2)[..., 0, :]
  first = gather(jax.random.randint(key, x.shape[:-2], 0, x.shape[-2]))
  centres = jnp.zeros(x.shape[:-2] + (n_clusters, x.shape[-1]), x.dtype).at[..., 0, :].set(first)
  dist = jnp.sum((x - first[..., None, :]) ** 2, -1)

  def body(i, carry):
    centres, dist = carry
    logits = jnp.where(dist > 0, jnp.log(jnp.where(dist > 0, dist, 1.0)), -jnp.inf)
    c = gather(jax.random.categorical(jax.random.fold_in(key, i), logits))
    dist = jnp.minimum(dist, jnp.sum((x - c[..., None, :]) ** 2, -1))
    return centres.at[..., i, :].set(c), dist

  return jax.lax.fori_loop(1, n_clusters, body, (centres, dist))[0]


def _group_mean(values, weights, labels, n: int):
  """Weighted mean of values [..., N, D] per label [..., N] in [0, n), and the weight sums."""
  onehot = jax.nn.one_hot(labels, n, dtype=jnp.float32) * weights[..., None]
  size = onehot.sum(-2)
  mean = jnp.einsum("...nc,...nd->...cd", onehot, values) / jnp.maximum(size, 1e-30)[..., None]
  return mean, size


def _log_estimates(q, centroids, counts, *, scale):
  """log p_j for q [B, T, H, D] against [B, Hkv, C, D]: (logits - log sum N e^logits) [B, H, T, C]
  and the log denominator [B, H, T]."""
  h = q.shape[2]
  g = h // centroids.shape[1]
  c = jnp.repeat(centroids, g, axis=1)
  logits = jnp.einsum("bthd,bhcd->bhtc", q.astype(jnp.float32), c) * scale
  log_den = jax.nn.logsumexp(logits + jnp.log(jnp.repeat(counts, g, axis=1))[:, :, None], -1)
  return logits, log_den


def estimates(index: SqueezedIndex, q, *, scale):
  """Estimated probabilities per level: fine [B, H, T, C] (and coarse [B, H, T, C2])."""
  fine_logits, fine_den = _log_estimates(q, index.centroids, index.counts, scale=scale)
  if index.levels == 1:
    return (jnp.exp(fine_logits - fine_den[..., None]),)
  coarse_logits, coarse_den = _log_estimates(q, index.coarse_centroids, index.coarse_counts,
                                             scale=scale)
  return (jnp.exp(fine_logits - coarse_den[..., None]),
          jnp.exp(coarse_logits - coarse_den[..., None]))


@functools.partial(jax.jit, static_argnames=("ratio", "levels", "coarse_ratio", "iters", "seed"))
def _cluster(k_fixed, *, ratio, levels, coarse_ratio, iters, seed):
  b, f, hkv, d = k_fixed.shape
  raw = jnp.swapaxes(k_fixed.astype(jnp.float32), 1, 2)  # [B, Hkv, F, D]
  unit = raw / jnp.maximum(jnp.linalg.norm(raw, axis=-1, keepdims=True), 1e-12)
  n_fine = max(1, min(f, round(ratio * f)))
  centres, labels = kmeans(unit, n_fine, iters=iters, seed=seed)
  centroids, counts = _group_mean(raw, jnp.ones(raw.shape[:-1]), labels, n_fine)
  coarse_c = coarse_n = parent = None
  if levels == 2:
    n_coarse = max(1, min(n_fine, round(coarse_ratio * n_fine)))
    _, parent = kmeans(centres, n_coarse, iters=iters, seed=seed + 1)
    coarse_c, coarse_n = _group_mean(centroids, counts, parent, n_coarse)
    parent = parent.astype(jnp.int32)
  return SqueezedIndex(centroids, counts, labels.astype(jnp.int32), coarse_c, coarse_n, parent,
                       None, int(f))


def check_options(*, ratio, levels, coarse_ratio, quantile, calib_queries, iters, seed):
  C.check_float(METHOD, "ratio", ratio, low=0.0, high=1.0, low_open=True)
  C.check_choice(METHOD, "levels", levels, (1, 2))
  C.check_float(METHOD, "coarse_ratio", coarse_ratio, low=0.0, high=1.0, low_open=True)
  C.check_float(METHOD, "quantile", quantile, low=0.0, high=1.0)
  C.check_int(METHOD, "calib_queries", calib_queries)
  C.check_int(METHOD, "iters", iters)
  C.check_int(METHOD, "seed", seed, low=0)


def calibrate(indexes, queries, *, quantile, calib_queries, scale=None):
  """Per-level thresholds: the ``quantile`` of the estimates averaged over the last
  ``calib_queries`` queries, one value per fixed key (its cluster's), pooled over heads and over
  the (index, queries) pairs (layers)."""
  pooled = None
  for index, q in zip(indexes, queries):
    sc = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q_last = q[:, max(0, q.shape[1] - calib_queries):]
    g = q.shape[2] // index.labels.shape[1]
    labels = jnp.repeat(index.labels, g, axis=1)  # [B, H, F]
    key_of = [labels] if index.levels == 1 else [
        labels, jnp.take_along_axis(jnp.repeat(index.parent, g, axis=1), labels, axis=-1)]
    est = [jnp.take_along_axis(e.mean(axis=2), lab, axis=-1).reshape(-1)
           for e, lab in zip(estimates(index, q_last, scale=sc), key_of)]
    pooled = est if pooled is None else [jnp.concatenate([a, e]) for a, e in zip(pooled, est)]
  return jnp.stack([jnp.quantile(p, quantile) for p in pooled]).astype(jnp.float32)


def prepare(k_fixed, q_calib=None, *, ratio=DEFAULTS["ratio"], levels=DEFAULTS["levels"],
            coarse_ratio=DEFAULTS["coarse_ratio"], quantile=DEFAULTS["quantile"],
            calib_queries=DEFAULTS["calib_queries"], iters=DEFAULTS["iters"],
            seed=DEFAULTS["seed"], scale=None):
  """Clusters a fixed context's keys once (and calibrates the thresholds when queries are given).

  Args:
    k_fixed: [B, F, Hkv, D] keys of the fixed context, or a list of them (one per layer).
    q_calib: calibration queries [B, T, H, D] (a list matching ``k_fixed``), or None to leave
      the thresholds to the call.
    ratio, levels, coarse_ratio: clusters per key, 1 or 2 levels, coarse per fine cluster.
    quantile, calib_queries: the calibrated threshold (pooled over every given layer).
    iters, seed: k-means iterations and initial-centre draw.

  Returns:
    A :class:`SqueezedIndex` (a list of them for a list input).
  """
  check_options(ratio=ratio, levels=levels, coarse_ratio=coarse_ratio, quantile=quantile,
                calib_queries=calib_queries, iters=iters, seed=seed)
  many = isinstance(k_fixed, (list, tuple))
  keys = list(k_fixed) if many else [k_fixed]
  for kf in keys:
    if kf.ndim != 4 or kf.shape[1] < 1:
      raise ValueError(f"{METHOD}: k_fixed must be [B, F, Hkv, D] with F >= 1, got {kf.shape}")
  indexes = [_cluster(kf, ratio=float(ratio), levels=levels, coarse_ratio=float(coarse_ratio),
                      iters=iters, seed=seed) for kf in keys]
  if q_calib is not None:
    queries = list(q_calib) if many else [q_calib]
    if len(queries) != len(keys):
      raise ValueError(f"{METHOD}: q_calib needs one query tensor per layer ({len(keys)}), got "
                       f"{len(queries)}")
    thr = calibrate(indexes, queries, quantile=quantile, calib_queries=calib_queries,
                    scale=scale)
    indexes = [dataclasses.replace(i, thresholds=thr) for i in indexes]
  return indexes if many else indexes[0]


@functools.partial(jax.jit, static_argnames=("scale",))
def kept_clusters(index: SqueezedIndex, q, thresholds, *, scale, average=None):
  """Bool [B, H, T, C]: the fine clusters each query keeps; with ``average`` (bool [T]) every
  query keeps those whose estimate averaged over the ``average`` queries passes."""
  est = estimates(index, q, scale=scale)
  if average is not None:
    w = jnp.where(average, 1.0, 0.0) / jnp.maximum(jnp.sum(average), 1)
    est = [jnp.broadcast_to(jnp.einsum("bhtc,t->bhc", e, w)[:, :, None], e.shape) for e in est]
  keep = est[0] >= thresholds[0]
  if index.levels == 2:
    h = q.shape[2]
    coarse_keep = est[1] >= thresholds[1]  # [B, H, T, C2]
    parent = jnp.repeat(index.parent, h // index.parent.shape[1], axis=1)[:, :, None, :]
    keep &= jnp.take_along_axis(coarse_keep, jnp.broadcast_to(parent, keep.shape), axis=-1)
  return keep


def select(q, k, *, index=None, fixed_len=None, threshold=None, block=DEFAULTS["block"],
           ratio=DEFAULTS["ratio"], levels=DEFAULTS["levels"],
           coarse_ratio=DEFAULTS["coarse_ratio"], quantile=DEFAULTS["quantile"],
           calib_queries=DEFAULTS["calib_queries"], iters=DEFAULTS["iters"],
           seed=DEFAULTS["seed"], lookup=DEFAULTS["lookup"], scale=None):
  """Squeezed Attention's keys: a :class:`VerticalSlash` (blocks after the fixed context, the
  kept fixed keys as columns), or a dense :class:`BlockTable` when there is no fixed context.
  ``lookup`` is one of :data:`LOOKUPS` (see the module doc).

  ``threshold`` (a number, or one per level: fine, coarse) overrides the index's calibration.
  """
  C.check_inputs(METHOD, q, k)
  C.check_int(METHOD, "block", block)
  C.check_choice(METHOD, "lookup", lookup, LOOKUPS)
  b, t, h, d = q.shape
  s = k.shape[1]
  scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
  if index is None:
    fixed_len = s - t if fixed_len is None else fixed_len
    C.check_int(METHOD, "fixed_len", fixed_len, low=0)
    if fixed_len > s:
      raise ValueError(f"{METHOD}: fixed_len must be in [0, S={s}], got {fixed_len}")
    if fixed_len == 0:
      return C.dense_table(q, k, block_q=block, block_k=block)
    index = prepare(k[:, :fixed_len], ratio=ratio, levels=levels, coarse_ratio=coarse_ratio,
                    quantile=quantile, calib_queries=calib_queries, iters=iters, seed=seed)
    if threshold is None:
      index = dataclasses.replace(index, thresholds=calibrate(
          [index], [q], quantile=quantile, calib_queries=calib_queries, scale=scale))
  elif not isinstance(index, SqueezedIndex):
    raise ValueError(f"{METHOD}: index must be a SqueezedIndex from prepare(), got "
                     f"{type(index).__name__}")
  elif fixed_len is not None and fixed_len != index.fixed_len:
    raise ValueError(f"{METHOD}: fixed_len must be None or the index's {index.fixed_len}, got "
                     f"{fixed_len!r}")
  if index.labels.shape[:2] != (b, k.shape[2]) or index.fixed_len > s:
    raise ValueError(f"{METHOD}: index built for [B, Hkv] = {index.labels.shape[:2]} and "
                     f"F = {index.fixed_len}; got k {k.shape}")
  if threshold is not None:
    values = np.atleast_1d(np.asarray(threshold, dtype=object))
    if len(values) not in (1, index.levels):
      raise ValueError(f"{METHOD}: threshold must be a number or one per level "
                       f"({index.levels}), got {threshold!r}")
    for value in values:
      C.check_float(METHOD, "threshold", value, low=0.0, high=1.0)
    thresholds = jnp.broadcast_to(jnp.asarray(values.astype(np.float32)), (index.levels,))
  elif index.thresholds is None:
    raise ValueError(f"{METHOD}: the index has no calibrated thresholds; pass q_calib to "
                     "prepare() or a threshold")
  else:
    thresholds = index.thresholds
  f = index.fixed_len
  nq, nk = C.num_blocks(t, block), C.num_blocks(s, block)
  after = None
  if lookup == "call":  # the queries after the fixed context share one set per head
    pos = np.arange(t) + (s - t)
    after = jnp.asarray(pos >= f if (pos >= f).any() else np.ones(t, bool))
  keep = kept_clusters(index, q, thresholds, scale=scale, average=after)  # [B, H, T, C]
  keep = jnp.pad(keep, ((0, 0), (0, 0), (0, nq * block - t), (0, 0)))
  keep = keep.reshape(b, h, nq, block, -1).any(axis=3)  # union over the block's queries
  labels = jnp.repeat(index.labels, h // index.labels.shape[1], axis=1)[:, :, None, :]
  fixed_keep = jnp.take_along_axis(keep, jnp.broadcast_to(labels, (b, h, nq, f)), axis=-1)
  # Columns: kept fixed keys, plus the non-fixed keys sharing the block that holds key f.
  width = min(C.num_blocks(f, block) * block, s)
  tail = jnp.broadcast_to(jnp.arange(f, width) >= 0, (b, h, nq, width - f))
  cols_ok = jnp.concatenate([fixed_keep, tail], axis=-1)
  cols = jnp.broadcast_to(jnp.arange(width), cols_ok.shape)
  first = C.query_block_first(t, s, block)
  vis = C.visible_blocks(t, s, block, block)
  blocks = (np.arange(nk)[None, :] * block >= width) & vis
  in_context = first < f  # queries inside the fixed context attend densely
  blocks = jnp.asarray(blocks | (vis & in_context[:, None]))
  blocks = jnp.broadcast_to(blocks, (b, h, nq, nk))
  last = jnp.asarray(C.query_block_last(t, s, block))[:, None]
  return C.with_columns(blocks, cols, cols_ok & (cols <= last), block_q=block, block_k=block)
