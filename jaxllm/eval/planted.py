"""Synthetic q/k/v with planted attention structure, one pattern per KV head group.

Each pattern puts most of a query's softmax mass on a known key set, so a sparse method's recall
can be read against the truth:

* ``vertical``: a few key columns (the first key and random ones) every query attends;
* ``slash``: diagonals, query i attending key i - offset for a few offsets;
* ``local``: a band of recent keys (relative-position bump of width ``band``);
* ``clustered``: keys drawn around a few centroids, each query aligned with one centroid, so the
  mass is spread over that cluster's keys wherever they sit (the case centroid methods target);
* ``needle``: a few random keys that only the last queries retrieve, on top of a local band;
* ``vertical_slash``: both at once, the head MInference's vertical-slash pattern describes: every
  query attends a few key columns (half of the head dimensions carry them) and its own diagonal
  set (the local diagonal or one of two far ones, the other half).

Relative patterns (slash, local) use rotary phases: q_i . k_j depends on i - j only, peaked
where the query's rotation is shifted to. Everything is float32 [B, L, H, D] q and [B, L, Hkv, D]
k/v; ``strength`` is the planted scaled logit q.k / sqrt(D) at a pattern's peak. By default it is
``8 + ln(L / 1024)``: the L unplanted keys each carry about exp(0) of softmax weight, so a fixed
peak would let their share grow linearly with L (the vertical head's planted columns would hold
96% of the mass at 1k but 74% at 8k); growing the peak with ln L keeps the planted share of the
mass the same at every length, which is what makes one recall goal comparable across lengths.
"""

import jax
import jax.numpy as jnp
import numpy as np

PATTERNS = ("vertical", "slash", "local", "clustered", "needle", "vertical_slash")
BASE_STRENGTH, BASE_LENGTH = 8.0, 1024


def _rotary(x_LD, pos_L, freqs):
  """Rotate-half rotary embedding with explicit frequencies (float32)."""
  ang = pos_L[:, None].astype(jnp.float32) * freqs[None, :]
  x1, x2 = jnp.split(x_LD, 2, axis=-1)
  return jnp.concatenate([x1 * jnp.cos(ang) - x2 * jnp.sin(ang),
                          x2 * jnp.cos(ang) + x1 * jnp.sin(ang)], axis=-1)


def _relative(key, length, d, offsets, band, strength):
  """q, k [L, D] whose logits peak at i - j in ``offsets`` with width ``band``.

  The D / 2 rotary frequencies are jittered inside [0, pi / band] (one per uniform bin): evenly
  spaced ones are all multiples of one step, so the logit would come back to its peak at every
  multiple of the period 2 pi / step (about 62 band), far diagonals the pattern does not mean.
  """
  half = d // 2
  k_freq, k_which = jax.random.split(key)
  bins = (jnp.arange(half) + jax.random.uniform(k_freq, (half,))) / half
  freqs = bins * (np.pi / band)  # low frequencies: a smooth bump of width ~band
  base = jnp.ones((d,)) * jnp.sqrt(strength * np.sqrt(d) / d)  # peak scaled logit = strength
  pos = jnp.arange(length)
  k = _rotary(jnp.broadcast_to(base, (length, d)), pos, freqs)
  qs = [_rotary(jnp.broadcast_to(base, (length, d)), pos - o, freqs) for o in offsets]
  which = jax.random.randint(k_which, (length,), 0, len(offsets))  # each query picks one diagonal
  q = jnp.stack(qs)[which, pos]
  return q, k


def _direction(key, d, strength):
  u = jax.random.normal(key, (d,))
  return u / jnp.linalg.norm(u) * jnp.sqrt(strength * np.sqrt(d))  # u . u / sqrt(d) = strength


def _far_offsets(key, length, n):
  return tuple(int(o) for o in jax.random.randint(key, (n,), length // 16 + 1, length // 2 + 2))


def _one(pattern, key, length, d, strength):
  kn, kp, kx = jax.random.split(key, 3)
  noise_q = jax.random.normal(kn, (length, d)) * 0.3
  noise_k = jax.random.normal(jax.random.fold_in(kn, 1), (length, d)) * 0.3
  if pattern in ("slash", "local"):
    offsets = (0,) if pattern == "local" else _far_offsets(kp, length, 3)
    q, k = _relative(kx, length, d, offsets, band=8 if pattern == "slash" else 32,
                     strength=strength)
    return q + noise_q, k + noise_k
  if pattern == "vertical_slash":
    # Each half of the dimensions is scaled to the full-head logit: q.k / sqrt(d) = strength.
    half = d // 2
    q_rel, k_rel = _relative(kx, length, half, (0,) + _far_offsets(kp, length, 2), band=8,
                             strength=strength * np.sqrt(2.0))
    u = _direction(jax.random.fold_in(kp, 1), half, strength * np.sqrt(2.0))
    cols = jnp.concatenate([jnp.zeros((1,), jnp.int32),
                            jax.random.randint(jax.random.fold_in(kx, 4), (5,), 1,
                                               max(length, 2))])
    k_col = jnp.zeros((length, half)).at[cols].add(u)
    q_col = jnp.broadcast_to(u, (length, half))
    return (jnp.concatenate([q_rel, q_col], -1) + noise_q,
            jnp.concatenate([k_rel, k_col], -1) + noise_k)
  u = _direction(kp, d, strength)
  if pattern == "vertical":
    cols = jnp.concatenate([jnp.zeros((1,), jnp.int32),
                            jax.random.randint(kx, (7,), 1, max(length, 2))])
    k = noise_k.at[cols].add(u)
    q = noise_q + u
    return q, k
  if pattern == "clustered":
    centers = jax.random.normal(kx, (8, d))
    centers = centers / jnp.linalg.norm(centers, axis=-1, keepdims=True) * jnp.sqrt(
        strength * np.sqrt(d))
    k_id = jax.random.randint(jax.random.fold_in(kx, 1), (length,), 0, 8)
    q_id = jax.random.randint(jax.random.fold_in(kx, 2), (length,), 0, 8)
    return noise_q + centers[q_id], noise_k + centers[k_id]
  if pattern == "needle":
    q, k = _relative(kx, length, d, (0,), band=16, strength=strength / 2)
    spots = jax.random.randint(jax.random.fold_in(kx, 3), (4,), 0, max(length // 2, 1))
    k = k.at[spots].add(u)
    last = jnp.arange(length) >= length - max(length // 8, 1)
    q = q + jnp.where(last[:, None], u, 0.0)
    return q + noise_q, k + noise_k
  raise ValueError(f"planted: unknown pattern {pattern!r}; allowed: {list(PATTERNS)}")


def default_strength(length: int) -> float:
  """Peak scaled logit that keeps the planted share of the mass independent of ``length``."""
  return BASE_STRENGTH + float(np.log(max(length, 1) / BASE_LENGTH))


def planted_qkv(seed: int, *, length: int, batch: int = 1, kv_heads: int = len(PATTERNS),
                group: int = 1, head_dim: int = 64, patterns=PATTERNS, strength=None):
  """q [B, L, Hkv * group, D], k, v [B, L, Hkv, D]; KV head i carries ``patterns[i % n]``.

  ``strength`` None is :func:`default_strength` of ``length``.

  Returns (q, k, v, heads) with ``heads`` the pattern name of every KV head.
  """
  if head_dim % 4 or head_dim < 4:
    raise ValueError(f"planted: head_dim must be a multiple of 4, got {head_dim}")
  strength = default_strength(length) if strength is None else strength
  bad = [p for p in patterns if p not in PATTERNS]
  if bad or not patterns:
    raise ValueError(f"planted: unknown patterns {bad or patterns}; allowed: {list(PATTERNS)}")
  for name, value in (("length", length), ("batch", batch), ("kv_heads", kv_heads),
                      ("group", group)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"planted: {name} must be a positive int, got {value!r}")
  heads = [patterns[i % len(patterns)] for i in range(kv_heads)]
  qs, ks, vs = [], [], []
  root = jax.random.key(seed)
  for bi in range(batch):
    q_b, k_b, v_b = [], [], []
    for hi, pattern in enumerate(heads):
      key = jax.random.fold_in(jax.random.fold_in(root, bi), hi)
      q_h, k_h = _one(pattern, key, length, head_dim, strength)
      q_g = [q_h + 0.1 * jax.random.normal(jax.random.fold_in(key, 100 + g), q_h.shape)
             for g in range(group)]  # group members share the pattern, not the exact query
      q_b.extend(q_g)
      k_b.append(k_h)
      v_b.append(jax.random.normal(jax.random.fold_in(key, 99), (length, head_dim)))
    qs.append(jnp.stack(q_b, 1))
    ks.append(jnp.stack(k_b, 1))
    vs.append(jnp.stack(v_b, 1))
  return jnp.stack(qs), jnp.stack(ks), jnp.stack(vs), heads
