"""HyperAttention: angular-LSH sorted block-diagonal attention plus a sampled residual.

Non-causal routine (queries ``n_q``, keys ``n_k``), as in the public ``HyperAttention``:

1. Hash queries and keys with ``lsh_num_projs`` r shared Gaussian projections: the sign bits form
   an r-bit code, mapped to its rank in the reflected Gray-code sequence so that consecutive ranks
   differ in one bit (``lsh_order='gray'``; ``'public'`` indexes the Gray sequence by the code,
   which the public ``AngularLSH.hash`` does). Sort queries and keys by rank (stable).
2. Exact attention inside diagonal blocks of the sorted order: nb = ceil(n_k / block_size) key
   blocks of ``block_size``, query blocks of ceil(n_q / nb); sorted query block i sees sorted key
   block i (padding keys are masked, where the public code lets zero keys into the softmax).
3. ``sample_size`` keys drawn uniformly with replacement (per batch and head); each query attends
   to those outside its own block, their log-sum-exp shifted by log(n_k / sample_size).
4. Merge 2 and 3 by log-sum-exp, un-sort. Below ``min_seq_len`` queries the routine is exact.

Causal (T == S): exact when S <= ``min_seq_len``; otherwise pad to even length, run the causal
routine on both halves recursively and the non-causal routine on (second-half queries, first-half
keys), merged by log-sum-exp. T < S (queries are the last T of S positions): the cached prefix
[0, S - T) goes through the non-causal routine and the last T keys through the causal one, merged
by log-sum-exp (the public code assumes T == S).

Defaults follow the paper and public code: r = 7, block 256, sample 256, min_seq_len 4096;
``min_seq_len >= S`` makes the method exact. Randomness comes from ``seed`` (projections shared
by all heads and calls, fresh samples per routine call). GQA: KV heads are repeated to the query
heads. HyperAttention's selection is not a block table: :func:`select` returns the top-level LSH
ranks, the sort keys the block-diagonal part is built from, and :func:`pair_mask` lists the
(query, key) pairs the whole recursion computes.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.block_sparse import api as block_sparse, masks, mosaic_tpu, triton

LSH_NUM_PROJS = 7
BLOCK_SIZE = 256
SAMPLE_SIZE = 256
MIN_SEQ_LEN = 4096
LSH_ORDERS = ("gray", "public")


def check_options(lsh_num_projs, block_size, sample_size, min_seq_len, seed, lsh_order) -> None:
  for name, value, low in (("lsh_num_projs", lsh_num_projs, 1), ("block_size", block_size, 1),
                           ("sample_size", sample_size, 0), ("min_seq_len", min_seq_len, 1),
                           ("seed", seed, 0)):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f"hyper attention: {name} must be an int >= {low}, got {value!r}")
  if lsh_num_projs > 16:
    raise ValueError(f"hyper attention: lsh_num_projs must be in [1, 16], got {lsh_num_projs}")
  if lsh_order not in LSH_ORDERS:
    raise ValueError(f"hyper attention: lsh_order must be one of {list(LSH_ORDERS)}, "
                     f"got {lsh_order!r}")


def gray_rank_table(r: int, order: str) -> np.ndarray:
  """Rank of every r-bit code: its position in the Gray sequence ('gray') or gray(code)."""
  codes = np.arange(2 ** r)
  gray = codes ^ (codes >> 1)
  return gray if order == "public" else np.argsort(gray)


def _projections(seed, d, r):
  return jax.random.normal(jax.random.fold_in(jax.random.key(seed), 0), (d, r), jnp.float32)


def lsh_rank(x, proj, table):
  """int32 LSH rank [..., n] of x [..., n, D]."""
  bits = jnp.einsum("...nd,dr->...nr", x.astype(jnp.float32), proj) > 0
  code = jnp.sum(bits.astype(jnp.int32) << jnp.arange(proj.shape[1]), axis=-1)
  return jnp.asarray(table, jnp.int32)[code]


def _softmax_parts(logits, v):
  """(o, lse) of masked float32 logits [..., n, m] and values [..., m, D]."""
  lse = jax.nn.logsumexp(logits, axis=-1)
  p = jnp.exp(logits - jnp.where(jnp.isfinite(lse), lse, 0.0)[..., None])
  return jnp.einsum("...nm,...md->...nd", p, v.astype(jnp.float32)), lse


def _exact(q, k, v, scale, causal):
  logits = jnp.einsum("...nd,...md->...nm", q, k, preferred_element_type=jnp.float32) * scale
  if causal:
    n = q.shape[-2]
    logits = jnp.where(jnp.tri(n, k.shape[-2], k.shape[-2] - n, dtype=bool), logits, -jnp.inf)
  return _softmax_parts(logits, v)


def merge(o1, lse1, o2, lse2):
  """Attention over the union of two disjoint key sets from their outputs and log-sum-exps."""
  lse = jnp.logaddexp(lse1, lse2)
  safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
  w1, w2 = jnp.exp(lse1 - safe)[..., None], jnp.exp(lse2 - safe)[..., None]
  return w1 * o1 + w2 * o2, lse


def _gather(x, idx):
  return jnp.take_along_axis(x, idx[..., None], axis=-2)


def _pad_rows(x, n):
  return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, n - x.shape[-2]), (0, 0)])


def _kernel_fits(block_q: int, block_k: int) -> bool:
  """Whether this platform's block-sparse kernel (Mosaic on TPU, else Triton) takes the blocks."""
  kernel = mosaic_tpu if jax.default_backend() == "tpu" else triton
  return kernel.blocks_fit(block_q, block_k)


class _Routines:
  """The two routines on flattened problems x [N, n, D]; ``key`` is split per call."""

  def __init__(self, *, scale, block_size, sample_size, min_seq_len, proj, table, impl,
               pairs):
    self.scale, self.block, self.samples, self.min_len = scale, block_size, sample_size, min_seq_len
    self.proj, self.table, self.impl, self.pairs = proj, table, impl, pairs

  def _diagonal(self, q_s, k_s, v_s, nb, qbs, nk):
    """Exact attention of sorted query block i to sorted key block i (padded keys masked)."""
    n = q_s.shape[0]
    if self.impl != "xla" and _kernel_fits(qbs, self.block):
      nqb = masks.num_blocks(q_s.shape[1], qbs)
      table = masks.BlockTable(jnp.arange(nqb, dtype=jnp.int32)[None, None, :, None],
                               jnp.ones((1, 1, nqb), jnp.int32), qbs, self.block)
      o, lse = block_sparse.block_sparse_attention(
          q_s[:, :, None], k_s[:, :nk, None], v_s[:, :nk, None], table, causal=False,
          scale=self.scale, impl="pallas", return_lse=True)
      return o[:, :, 0].astype(jnp.float32), lse[:, 0]
    q_b = _pad_rows(q_s, nb * qbs).reshape(n, nb, qbs, -1)
    k_b = k_s.reshape(n, nb, self.block, -1)
    v_b = v_s.reshape(n, nb, self.block, -1)
    logits = jnp.einsum("nbqd,nbkd->nbqk", q_b, k_b, preferred_element_type=jnp.float32)
    real = (jnp.arange(nb * self.block) < nk).reshape(nb, 1, self.block)
    o, lse = _softmax_parts(jnp.where(real, logits * self.scale, -jnp.inf), v_b)
    nq = q_s.shape[1]
    return o.reshape(n, nb * qbs, -1)[:, :nq], lse.reshape(n, nb * qbs)[:, :nq]

  def noncausal(self, q, k, v, key):
    n, nq, _ = q.shape
    nk = k.shape[1]
    if nq < self.min_len:
      o, lse = _exact(q, k, v, self.scale, causal=False)
      return o, lse, (jnp.ones((n, nq, nk), bool) if self.pairs else None)
    q_order = jnp.argsort(lsh_rank(q, self.proj, self.table), axis=-1, stable=True)
    k_order = jnp.argsort(lsh_rank(k, self.proj, self.table), axis=-1, stable=True)
    nb = -(-nk // self.block)
    qbs = -(-nq // nb)
    q_s = _gather(q, q_order)
    k_s = _pad_rows(_gather(k, k_order), nb * self.block)
    v_s = _pad_rows(_gather(v, k_order), nb * self.block)
    o, lse = self._diagonal(q_s, k_s, v_s, nb, qbs, nk)
    q_blk = jnp.arange(nq) // qbs  # sorted query position -> its block
    sampled = None
    if self.samples > 0 and nq > qbs and nk > self.block:
      idx = jax.random.randint(key, (n, self.samples), 0, nk)  # sorted-key positions
      logits = jnp.einsum("nqd,nsd->nqs", q_s, _gather(k_s, idx),
                          preferred_element_type=jnp.float32) * self.scale
      own = q_blk[None, :, None] == (idx // self.block)[:, None, :]
      o_res, lse_res = _softmax_parts(jnp.where(own, -jnp.inf, logits), _gather(v_s, idx))
      o, lse = merge(o, lse, o_res, lse_res + math.log(nk / self.samples))
      sampled = idx
    inv = jnp.argsort(q_order, axis=-1)
    o, lse = _gather(o, inv), jnp.take_along_axis(lse, inv, axis=-1)
    if not self.pairs:
      return o, lse, None
    k_pos = jnp.argsort(k_order, axis=-1)  # original key -> sorted position
    same = q_blk[None, :, None] == (k_pos // self.block)[:, None, :]  # [n, sorted q, key]
    if sampled is not None:
      hit = jnp.zeros((n, nk), bool).at[jnp.arange(n)[:, None], sampled].set(True)
      same |= jnp.take_along_axis(hit, k_pos, axis=-1)[:, None, :]
    return o, lse, jnp.take_along_axis(same, inv[..., None], axis=1)

  def causal(self, q, k, v, key):
    n, length, d = q.shape
    if length <= self.min_len:
      o, lse = _exact(q, k, v, self.scale, causal=True)
      tri = jnp.tri(length, dtype=bool)
      return o, lse, (jnp.broadcast_to(tri, (n, length, length)) if self.pairs else None)
    even = length + length % 2
    q, k, v = (_pad_rows(x, even) for x in (q, k, v))
    half = even // 2
    halves = lambda x: jnp.concatenate([x[:, :half], x[:, half:]], axis=0)
    key_bd, key_off = jax.random.split(key)
    o_bd, lse_bd, pairs_bd = self.causal(halves(q), halves(k), halves(v), key_bd)
    o_off, lse_off, pairs_off = self.noncausal(q[:, half:], k[:, :half], v[:, :half], key_off)
    o_low, lse_low = merge(o_bd[n:], lse_bd[n:], o_off, lse_off)
    o = jnp.concatenate([o_bd[:n], o_low], axis=1)[:, :length]
    lse = jnp.concatenate([lse_bd[:n], lse_low], axis=1)[:, :length]
    pairs = None
    if self.pairs:
      zeros = jnp.zeros((n, half, half), bool)
      pairs = jnp.concatenate([jnp.concatenate([pairs_bd[:n], zeros], axis=2),
                               jnp.concatenate([pairs_off, pairs_bd[n:]], axis=2)],
                              axis=1)[:, :length, :length]
    return o, lse, pairs


def _run(q, k, v, *, lsh_num_projs, block_size, sample_size, min_seq_len, seed, lsh_order,
         scale, impl, pairs):
  check_options(lsh_num_projs, block_size, sample_size, min_seq_len, seed, lsh_order)
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  scale = 1.0 / math.sqrt(d) if scale is None else scale
  flat = lambda x: jnp.swapaxes(jnp.repeat(x, h // x.shape[2], axis=2), 1, 2).reshape(
      b * h, x.shape[1], d)
  qf, kf, vf = flat(q), flat(k), flat(v)
  r = _Routines(scale=scale, block_size=block_size, sample_size=sample_size,
                min_seq_len=min_seq_len, proj=_projections(seed, d, lsh_num_projs),
                table=gray_rank_table(lsh_num_projs, lsh_order), impl=impl, pairs=pairs)
  key_c, key_p = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1))
  o, lse, mask = r.causal(qf, kf[:, s - t:], vf[:, s - t:], key_c)
  if s > t:
    o_p, lse_p, mask_p = r.noncausal(qf, kf[:, :s - t], vf[:, :s - t], key_p)
    o, lse = merge(o_p, lse_p, o, lse)
    mask = None if mask is None else jnp.concatenate([mask_p, mask], axis=-1)
  o = jnp.swapaxes(o.reshape(b, h, t, d), 1, 2).astype(q.dtype)
  mask = None if mask is None else mask.reshape(b, h, t, s)
  return o, lse.reshape(b, h, t), mask


_STATIC = ("lsh_num_projs", "block_size", "sample_size", "min_seq_len", "seed", "lsh_order",
           "scale", "impl")


@functools.partial(jax.jit, static_argnames=_STATIC)
def attention(q, k, v, *, lsh_num_projs=LSH_NUM_PROJS, block_size=BLOCK_SIZE,
              sample_size=SAMPLE_SIZE, min_seq_len=MIN_SEQ_LEN, seed=0, lsh_order="gray",
              scale=None, impl="xla"):
  """Causal HyperAttention. Returns (o [B, T, H, D] in q's dtype, lse float32 [B, H, T]).

  ``impl`` runs the sorted block-diagonal part: ``xla`` as batched dense blocks; ``pallas`` /
  ``auto`` through ``pallas_kernels.block_sparse``'s kernel (interpreted off its hardware) with a
  diagonal table wherever the block sizes fit that kernel (dense blocks elsewhere).
  """
  o, lse, _ = _run(q, k, v, lsh_num_projs=lsh_num_projs, block_size=block_size,
                   sample_size=sample_size, min_seq_len=min_seq_len, seed=seed,
                   lsh_order=lsh_order, scale=scale, impl=impl, pairs=False)
  return o, lse


@functools.partial(jax.jit, static_argnames=_STATIC[:-2])
def pair_mask(q, k, *, lsh_num_projs=LSH_NUM_PROJS, block_size=BLOCK_SIZE,
              sample_size=SAMPLE_SIZE, min_seq_len=MIN_SEQ_LEN, seed=0, lsh_order="gray"):
  """Bool [B, H, T, S]: the (query, key) pairs the recursion computes (sampled keys included).

  Same seed, same pairs as :func:`attention`; materialises T x S per head (measurement only).
  """
  _, _, mask = _run(q, k, k, lsh_num_projs=lsh_num_projs, block_size=block_size,
                    sample_size=sample_size, min_seq_len=min_seq_len, seed=seed,
                    lsh_order=lsh_order, scale=None, impl="xla", pairs=True)
  return mask


@functools.partial(jax.jit, static_argnames=("lsh_num_projs", "seed", "lsh_order"))
def select(q, k, *, lsh_num_projs=LSH_NUM_PROJS, seed=0, lsh_order="gray"):
  """Top-level LSH ranks (int32 q [B, H, T], k [B, Hkv, S]): HyperAttention's selection."""
  proj = _projections(seed, q.shape[-1], lsh_num_projs)
  table = gray_rank_table(lsh_num_projs, lsh_order)
  return (lsh_rank(jnp.swapaxes(q, 1, 2), proj, table),
          lsh_rank(jnp.swapaxes(k, 1, 2), proj, table))


def reference(q, k, v, *, scale=None):
  """The exact limit (``min_seq_len >= S``): dense causal softmax in float32, with lse."""
  b, t, h, d = q.shape
  scale = 1.0 / math.sqrt(d) if scale is None else scale
  kf = jnp.repeat(k, h // k.shape[2], axis=2).astype(jnp.float32)
  vf = jnp.repeat(v, h // v.shape[2], axis=2).astype(jnp.float32)
  logits = jnp.einsum("bthd,bshd->bhts", q.astype(jnp.float32), kf) * scale
  s = k.shape[1]
  logits = jnp.where(jnp.tri(t, s, s - t, dtype=bool), logits, -jnp.inf)
  p = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("bhts,bshd->bthd", p, vf).astype(q.dtype), jax.nn.logsumexp(logits, -1)
