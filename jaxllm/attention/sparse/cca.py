"""CCA (Core Context Aware) attention: pooled core tokens of distant groups + a local window.

Tokens are split into groups of ``group_size`` g. Each complete group becomes one core token: its
keys and values are averaged with weights softmax(q_last . k_m / sqrt(D)) over the group's keys,
q_last being the query of the group's last token. A query at position p sees

* the core token of group j iff (j + 1) g <= n(p), with n(p) = g floor(max(p + 1 - w, 0) / g);
* every key in [n(p), p] exactly (the local window: at least ``window`` w keys, reaching back to
  the first group boundary not covered by a visible core token),

and one softmax runs over the concatenated core and local logits, so every past key counts once,
either pooled or exactly. This is the rule of the public code (``generate_mask`` and
``fast_calculate_fusion_weights``), with its defaults g = 16 and w = 1024.

Pooling variant: like the public code, this pools the already projected, post-RoPE keys and
values of each query head (KV heads repeated for GQA, one core token per query head), not the
hidden states before projection as the paper describes; the attention function sees only
projected q/k/v, so pooling hidden states would need the model's projections. ``window >= S``
leaves no core token and equals dense causal attention.

Queries are the last T of S positions. Core tokens need the queries of every group's last
token, so when T < S the queries of the S - T earlier positions are passed as ``prefix_q``.
"""

import functools
import math

import jax
import jax.numpy as jnp

GROUP_SIZE = 16  # public code defaults
WINDOW = 1024
TILE = 128  # queries per local-window step


def check_options(group_size, window, tile=TILE) -> None:
  for name, value in (("group_size", group_size), ("window", window), ("tile", tile)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"cca attention: {name} must be a positive int, got {value!r}")


def all_queries(q, k, prefix_q):
  """Queries of all S positions [B, S, H, D]: q itself, or ``prefix_q`` followed by q."""
  t, s = q.shape[1], k.shape[1]
  if t == s:
    if prefix_q is not None:
      raise ValueError("cca attention: prefix_q is only for T < S (queries after a cache); "
                       f"got T = S = {s}")
    return q
  want = (q.shape[0], s - t) + q.shape[2:]
  if prefix_q is None or tuple(prefix_q.shape) != want:
    got = None if prefix_q is None else tuple(prefix_q.shape)
    raise ValueError(f"cca attention: T={t} < S={s} needs prefix_q, the queries of the first "
                     f"S - T positions, shape {want}; got {got}")
  return jnp.concatenate([prefix_q.astype(q.dtype), q], axis=1)


def core_tokens(q_all, k, v, *, group_size=GROUP_SIZE):
  """Core keys and values float32 [B, H, S // g, D] of the complete groups, per query head."""
  b, s, h, d = q_all.shape
  hkv = k.shape[2]
  n = s // group_size
  grp = lambda x: x[:, :n * group_size].astype(jnp.float32).reshape(
      b, n, group_size, x.shape[2], d)
  q_last = grp(q_all)[:, :, -1].reshape(b, n, hkv, h // hkv, d)  # [B, n, Hkv, G, D]
  k_g, v_g = grp(k), grp(v)  # [B, n, g, Hkv, D]
  w = jax.nn.softmax(jnp.einsum("bnkgd,bnmkd->bkgnm", q_last, k_g) / math.sqrt(d), axis=-1)
  k_core = jnp.einsum("bkgnm,bnmkd->bkgnd", w, k_g).reshape(b, h, n, d)
  v_core = jnp.einsum("bkgnm,bnmkd->bkgnd", w, v_g).reshape(b, h, n, d)
  return k_core, v_core


def local_start(pos, *, group_size, window):
  """n(p): the first key the local window of position p covers exactly."""
  return group_size * (jnp.maximum(pos + 1 - window, 0) // group_size)


@functools.partial(jax.jit, static_argnames=("group_size", "window", "scale", "tile"))
def attention(q, k, v, *, group_size=GROUP_SIZE, window=WINDOW, scale=None, prefix_q=None,
              tile=TILE):
  """CCA attention (causal). Returns (o [B, T, H, D] in q's dtype, lse float32 [B, H, T])."""
  check_options(group_size, window, tile)
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  g = h // hkv
  scale = 1.0 / math.sqrt(d) if scale is None else scale
  k_core, v_core = core_tokens(all_queries(q, k, prefix_q), k, v, group_size=group_size)
  n = k_core.shape[2]
  span = min(s, tile + window + group_size - 2)  # keys one tile's windows can reach
  nt = -(-t // tile)
  q_t = jnp.pad(q, ((0, 0), (0, nt * tile - t), (0, 0), (0, 0)))
  q_t = jnp.moveaxis(q_t.reshape(b, nt, tile, hkv, g, d), 1, 0)

  @jax.checkpoint
  def one_tile(xs):
    i, q_i = xs  # q_i [B, tile, Hkv, G, D]
    pos = i * tile + jnp.arange(tile) + s - t
    start = local_start(pos, group_size=group_size, window=window)
    lo = jnp.clip(start[0], 0, s - span)
    k_i = jax.lax.dynamic_slice_in_dim(k, lo, span, axis=1)
    v_i = jax.lax.dynamic_slice_in_dim(v, lo, span, axis=1)
    k_pos = lo + jnp.arange(span)
    local = jnp.einsum("btkgd,bskd->bkgts", q_i, k_i, preferred_element_type=jnp.float32)
    local = jnp.where((k_pos >= start[:, None]) & (k_pos <= pos[:, None]), local * scale,
                      -jnp.inf)
    core = jnp.einsum("btkgd,bkgnd->bkgtn", q_i.astype(jnp.float32),
                      k_core.reshape(b, hkv, g, n, d)) * scale
    core = jnp.where((jnp.arange(n) + 1) * group_size <= start[:, None], core, -jnp.inf)
    logits = jnp.concatenate([core, local], axis=-1)  # one softmax over both branches
    m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(logits - m)
    denom = jnp.sum(p, axis=-1)
    o = jnp.einsum("bkgtn,bkgnd->btkgd", p[..., :n], v_core.reshape(b, hkv, g, n, d))
    o += jnp.einsum("bkgts,bskd->btkgd", p[..., n:].astype(v.dtype), v_i,
                    preferred_element_type=jnp.float32)
    safe = jnp.where(denom > 0, denom, 1.0)  # padding rows of the last tile may see nothing
    o = o / jnp.moveaxis(safe, -1, 1)[..., None]
    return o, jnp.where(denom > 0, m[..., 0] + jnp.log(safe), -jnp.inf)

  o, lse = jax.lax.map(one_tile, (jnp.arange(nt), q_t))  # [nt, B, tile, Hkv, G, D]
  o = jnp.moveaxis(o, 0, 1).reshape(b, nt * tile, h, d)[:, :t]
  lse = jnp.moveaxis(lse, 0, 3).reshape(b, h, nt * tile)[:, :, :t]
  return o.astype(q.dtype), lse


def reference(q, k, v, *, group_size=GROUP_SIZE, window=WINDOW, scale=None, prefix_q=None):
  """Dense masked formulation: pooling as a [n, S] weight matrix, one softmax over [n + S].

  Written independently of :func:`attention`'s grouping and tiling (group weights from a masked
  dense softmax, visibility from the public code's 1-based mask rule) to serve as the oracle.
  """
  check_options(group_size, window)
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  scale = 1.0 / math.sqrt(d) if scale is None else scale
  q_all = all_queries(q, k, prefix_q).astype(jnp.float32)
  kf = jnp.repeat(k.astype(jnp.float32), h // hkv, axis=2)
  vf = jnp.repeat(v.astype(jnp.float32), h // hkv, axis=2)
  n = s // group_size
  last = (jnp.arange(n) + 1) * group_size - 1
  member = (jnp.arange(s)[None, :] // group_size) == jnp.arange(n)[:, None]  # [n, S]
  pool_logits = jnp.einsum("bnhd,bshd->bhns", q_all[:, last], kf) / math.sqrt(d)
  w = jax.nn.softmax(jnp.where(member, pool_logits, -jnp.inf), axis=-1)
  k_core = jnp.einsum("bhns,bshd->bhnd", w, kf)
  v_core = jnp.einsum("bhns,bshd->bhnd", w, vf)
  row = jnp.arange(t)[:, None] + s - t + 1  # 1-based positions, as the public mask
  col = jnp.arange(s)[None, :] + 1
  pool_id = jnp.arange(n)[None, :] + 1
  see_core = (row > window) & ((row - window) // group_size >= pool_id)
  pooled = jnp.maximum((row - window) // group_size * group_size, 0)
  see_local = (col <= row) & (col > pooled)
  logits = jnp.concatenate([
      jnp.where(see_core, jnp.einsum("bthd,bhnd->bhtn", q.astype(jnp.float32), k_core), -jnp.inf),
      jnp.where(see_local, jnp.einsum("bthd,bshd->bhts", q.astype(jnp.float32), kf), -jnp.inf),
  ], axis=-1)
  logits = jnp.where(jnp.isfinite(logits), logits * scale, -jnp.inf)
  p = jax.nn.softmax(logits, axis=-1)
  o = jnp.einsum("bhtn,bhnd->bthd", p[..., :n], v_core) + jnp.einsum(
      "bhts,bshd->bthd", p[..., n:], vf)
  return o.astype(q.dtype), jax.nn.logsumexp(logits, axis=-1)


def pair_mask(q, k, *, group_size=GROUP_SIZE, window=WINDOW):
  """(local bool [T, S], core bool [T, S // g]): keys attended exactly and core tokens seen."""
  t, s = q.shape[1], k.shape[1]
  pos = jnp.arange(t) + s - t
  start = local_start(pos, group_size=group_size, window=window)[:, None]
  local = (jnp.arange(s)[None, :] >= start) & (jnp.arange(s)[None, :] <= pos[:, None])
  core = (jnp.arange(s // group_size)[None, :] + 1) * group_size <= start
  return local, core
