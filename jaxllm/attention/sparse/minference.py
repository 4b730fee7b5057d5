"""MInference (Jiang et al. 2024): a per-head pattern among vertical-slash, block-sparse, A-shape.

Defaults follow REFERENCE A and the public code (microsoft/MInference,
``minference_forward.py``): 64 x 64 blocks, the last 64 queries score columns and diagonals,
vertical 1000 / slash 6096 when no offline search ran, at least 30 columns (the first 30 forced)
and 50 diagonals (the 100 most local forced, the dynamic path), block-sparse top 100 key blocks by
unscaled mean-pooled q.k (the last partial block averaged over the full 64 rows, zero padding
included, as the public code pads before pooling), A-shape sink 100 / window 800 (the public
search's candidate).

The kernel contract is blocks plus columns: a selected diagonal lists every 64-key block its span
over a query block crosses (MInference's kernel walks the same span unaligned, so the table is a
superset), columns outside those blocks are gathered. The A-shape lists the blocks holding the
first ``sink`` keys and those touched by each query block's last ``window`` keys.

The offline search (:func:`search_patterns`) scores each head's candidates by the dense attention
mass they keep on a calibration prompt (queries from ``skip`` on, 2500 in the public search) and
keeps the best; :func:`write_pattern_file` stores one dict per layer, ``{head: {"pattern": ...,
"vertical"/"slash" | "top_k" | "sink"/"window": ..., "score": ...}}``, the file
``model.attention_options.pattern_file`` names (with ``layer_index`` from the model).
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.attention.sparse import _common as C
from pallas_kernels.block_sparse.masks import dense_mask

METHOD = "minference"
PATTERNS = ("vertical_slash", "block_sparse", "a_shape")
BLOCK = 64
LAST_Q = 64
MIN_VERTICAL, FORCED_VERTICAL = 30, 30
MIN_SLASH, FORCED_SLASH = 50, 100
DEFAULTS = dict(pattern="vertical_slash", vertical=1000, slash=6096, top_k=100, sink=100,
                window=800)
# The public search's candidates: A-shape (100, 800), vertical-slash sizes, block-sparse.
SEARCH_CANDIDATES = (
    dict(pattern="a_shape", sink=100, window=800),
    dict(pattern="vertical_slash", vertical=30, slash=800),
    dict(pattern="vertical_slash", vertical=100, slash=750),
    dict(pattern="vertical_slash", vertical=500, slash=700),
    dict(pattern="vertical_slash", vertical=3500, slash=100),
    dict(pattern="block_sparse", top_k=100),
)
_PARAMS = {"vertical_slash": ("vertical", "slash"), "block_sparse": ("top_k",),
           "a_shape": ("sink", "window")}


def _check_head(cfg: dict, where: str) -> dict:
  if not isinstance(cfg, dict):
    raise ValueError(f"{METHOD}: {where} must be a dict with a 'pattern', got {cfg!r}")
  C.check_choice(METHOD, f"{where} pattern", cfg.get("pattern"), PATTERNS)
  allowed = ("pattern", "score") + _PARAMS[cfg["pattern"]]
  unknown = sorted(set(cfg) - set(allowed))
  if unknown:
    raise ValueError(f"{METHOD}: {where} has unknown keys {unknown}; allowed: {list(allowed)}")
  out = {"pattern": cfg["pattern"]}
  for name in _PARAMS[cfg["pattern"]]:
    value = cfg.get(name, DEFAULTS[name])
    C.check_int(METHOD, f"{where} {name}", value, low=0 if name == "sink" else 1)
    out[name] = int(value)
  return out


@functools.lru_cache(maxsize=16)
def _read_pattern_file(path: str, mtime: float):
  del mtime  # part of the cache key only: an edited file is read again
  with open(path) as f:
    layers = json.load(f)
  if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
    raise ValueError(f"{METHOD}: pattern_file {path} must hold a JSON list of per-layer dicts")
  return layers


def load_pattern_file(path: str, layer_index: int) -> dict[int, dict]:
  """Per-head configs of one layer from a pattern file (missing heads use the call's options)."""
  if not isinstance(path, str) or not os.path.isfile(path):
    raise ValueError(f"{METHOD}: pattern_file must be an existing JSON file, got {path!r}")
  layers = _read_pattern_file(path, os.path.getmtime(path))
  C.check_int(METHOD, "layer_index", layer_index, low=0)
  if layer_index >= len(layers):
    raise ValueError(f"{METHOD}: layer_index must be in [0, {len(layers)}) for pattern_file "
                     f"{path}, got {layer_index}")
  return {int(h): _check_head(cfg, f"pattern_file layer {layer_index} head {h}")
          for h, cfg in layers[layer_index].items()}


def write_pattern_file(path: str, layers) -> None:
  """Writes per-layer head configs atomically as JSON.

  ``layers`` holds one entry per layer: a ``{head: config}`` dict or a per-head list (what
  :func:`search_patterns` returns).
  """
  def entry(cfg, where):
    score = {"score": float(cfg["score"])} if "score" in cfg else {}
    return _check_head(dict(cfg), where) | score

  out = []
  for i, layer in enumerate(layers):
    items = layer.items() if isinstance(layer, dict) else enumerate(layer)
    out.append({str(int(h)): entry(cfg, f"layer {i} head {h}") for h, cfg in items})
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(out, f, indent=1)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def head_configs(h: int, *, pattern, vertical, slash, top_k, sink, window, heads=None,
                 pattern_file=None, layer_index=None) -> list[dict]:
  """One validated config per query head: the file's or ``heads``' entry, else the options."""
  C.check_choice(METHOD, "pattern", pattern, PATTERNS)
  given = dict(vertical=vertical, slash=slash, top_k=top_k, sink=sink, window=window)
  base = _check_head({"pattern": pattern} | {p: given[p] for p in _PARAMS[pattern]}, "options:")
  per_head = {}
  if pattern_file is not None:
    per_head = load_pattern_file(pattern_file, 0 if layer_index is None else layer_index)
  if heads is not None:
    if len(heads) != h:
      raise ValueError(f"{METHOD}: heads must list one config per query head ({h}), got "
                       f"{len(heads)}")
    per_head = {i: _check_head(dict(cfg), f"heads[{i}]") for i, cfg in enumerate(heads)}
  bad = sorted(i for i in per_head if not 0 <= i < h)
  if bad:
    raise ValueError(f"{METHOD}: pattern heads {bad} outside [0, {h})")
  return [per_head.get(i, base) for i in range(h)]


def _ranked(scores, sizes):
  """Bool mask of the ``sizes`` [H] highest ``scores`` [B, H, n] (stable: lower index first)."""
  order = jnp.argsort(-scores, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1)
  return rank < sizes[None, :, None]


def vertical_slash_choice(q, k, vertical, slash, *, scale):
  """Selected columns and diagonals (bool [B, H, S] each) from the last 64 queries."""
  s = k.shape[1]
  p = C.last_query_probs(q, k, LAST_Q, scale=scale)
  col_score = p.sum(axis=2)
  diag_score = C.diagonal_sums(p, s)
  col_score = jnp.where(jnp.arange(s) < FORCED_VERTICAL, jnp.inf, col_score)
  diag_score = jnp.where(jnp.arange(s) < FORCED_SLASH, jnp.inf, diag_score)
  n_col = np.minimum(s, np.maximum(vertical, MIN_VERTICAL))
  n_diag = np.minimum(s, np.maximum(slash, MIN_SLASH))
  return _ranked(col_score, jnp.asarray(n_col)), _ranked(diag_score, jnp.asarray(n_diag))


def diagonal_blocks(diag, t: int, s: int, block_q: int, block_k: int):
  """Bool [B, H, nq, nk]: key blocks the selected diagonals (bool [B, H, S]) cross per query
  block; diagonal d covers keys [first - d, last - d] of a query block."""
  first = C.query_block_first(t, s, block_q)[:, None]
  last = C.query_block_last(t, s, block_q)[:, None]
  j = np.arange(C.num_blocks(s, block_k))[None, :]
  lo = np.clip(first - (j + 1) * block_k + 1, 0, s)
  hi = np.clip(last - j * block_k, -1, s - 1)
  cum = jnp.concatenate([jnp.zeros(diag.shape[:2] + (1,), jnp.int32),
                         jnp.cumsum(diag.astype(jnp.int32), axis=-1)], axis=-1)
  count = cum[..., jnp.asarray(np.maximum(hi + 1, 0))] - cum[..., jnp.asarray(lo)]
  return (count > 0) & jnp.asarray(hi >= lo)


def block_sparse_choice(q, k, top_k, *, block: int = BLOCK):
  """Top ``top_k`` [H] visible key blocks per query block by mean-pooled q.k (unscaled)."""
  t, s, h = q.shape[1], k.shape[1], q.shape[2]
  q_bar = C.block_pool(q, block, divide_by_block=True)
  k_bar = C.block_pool(C.expand_heads(k, h), block, divide_by_block=True)
  scores = jnp.einsum("bhqd,bhkd->bhqk", q_bar, k_bar)
  vis = jnp.asarray(C.visible_blocks(t, s, block, block))
  scores = jnp.where(vis, scores, -jnp.inf)
  order = jnp.argsort(-scores, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1)
  return (rank < jnp.asarray(top_k)[None, :, None, None]) & vis


def a_shape_blocks(t: int, s: int, sink, window, *, block: int = BLOCK):
  """Bool [H, nq, nk]: blocks holding the first ``sink`` keys or each query block's last
  ``window`` keys (per head sizes [H])."""
  first = C.query_block_first(t, s, block)[None, :, None]
  start = np.arange(C.num_blocks(s, block))[None, None, :] * block
  sink = np.asarray(sink)[:, None, None]
  window = np.asarray(window)[:, None, None]
  band = start + block - 1 >= first - window + 1
  vis = C.visible_blocks(t, s, block, block)[None]
  return ((start < sink) | band) & vis


def select(q, k, *, pattern=DEFAULTS["pattern"], vertical=DEFAULTS["vertical"],
           slash=DEFAULTS["slash"], top_k=DEFAULTS["top_k"], sink=DEFAULTS["sink"],
           window=DEFAULTS["window"], heads=None, pattern_file=None, layer_index=None,
           scale=None):
  """MInference's per-head selection.

  Args:
    q, k: [B, T, H, D] and [B, S, Hkv, D].
    pattern: the pattern of every head without a per-head config, one of :data:`PATTERNS`,
      with its sizes: ``vertical`` / ``slash`` (vertical_slash), ``top_k`` key blocks
      (block_sparse), ``sink`` / ``window`` tokens (a_shape).
    heads: one config dict per query head (``{"pattern": ..., sizes}``), overriding the file.
    pattern_file, layer_index: a JSON file from :func:`write_pattern_file` and the layer to read.
    scale: logit scale of the last-query scores (default 1 / sqrt(D)).

  Returns:
    A :class:`VerticalSlash` when some head is vertical-slash (other heads have no columns),
    else a :class:`BlockTable`; blocks are 64 x 64.
  """
  C.check_inputs(METHOD, q, k)
  b, t, h, d = q.shape
  s = k.shape[1]
  cfgs = head_configs(h, pattern=pattern, vertical=vertical, slash=slash, top_k=top_k,
                      sink=sink, window=window, heads=heads, pattern_file=pattern_file,
                      layer_index=layer_index)
  scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
  kind = tuple(PATTERNS.index(c["pattern"]) for c in cfgs)
  sizes = {name: tuple(int(c.get(name, DEFAULTS[name])) for c in cfgs) for name in DEFAULTS
           if name != "pattern"}
  blocks, cols = _masks(q, k, kind=kind, scale=scale, **sizes)
  if cols is None:
    return C.table_from_mask(blocks, block_q=BLOCK, block_k=BLOCK)
  n_col = int(min(s, max(max(v for v, i in zip(sizes["vertical"], kind) if i == 0),
                         MIN_VERTICAL)))
  col_pos, col_cnt = C.compact(cols, jnp.arange(s), width=n_col)  # [B, H, n_col] ascending
  last = jnp.asarray(C.query_block_last(t, s, BLOCK))[:, None]
  col_pos, col_ok = col_pos[:, :, None, :], jnp.arange(n_col) < col_cnt[..., None, None]
  return C.with_columns(blocks, col_pos, col_ok & (col_pos <= last), block_q=BLOCK,
                        block_k=BLOCK)


@functools.partial(jax.jit, static_argnames=("kind", "scale", "vertical", "slash", "top_k",
                                             "sink", "window"))
def _masks(q, k, *, kind, scale, vertical, slash, top_k, sink, window):
  """Blocks [B, H, nq, nk] of every head and the vertical-slash heads' columns [B, H, S]."""
  b, t, h, _ = q.shape
  s = k.shape[1]
  kind = np.asarray(kind)
  blocks = jnp.zeros((b, h, C.num_blocks(t, BLOCK), C.num_blocks(s, BLOCK)), bool)
  head_is = lambda i: jnp.asarray(kind == i)[None, :, None, None]
  if (kind == 1).any():
    blocks |= block_sparse_choice(q, k, np.asarray(top_k)) & head_is(1)
  if (kind == 2).any():
    blocks |= a_shape_blocks(t, s, sink, window)[None] & head_is(2)
  if not (kind == 0).any():
    return blocks, None
  cols, diags = vertical_slash_choice(q, k, np.asarray(vertical), np.asarray(slash), scale=scale)
  vs_head = jnp.asarray(kind == 0)[None, :, None]
  blocks |= diagonal_blocks(diags & vs_head, t, s, BLOCK, BLOCK)
  return blocks, cols & vs_head


def search_patterns(q, k, *, candidates=SEARCH_CANDIDATES, skip: int = 2500, scale=None):
  """Offline per-head pattern search on one calibration prompt (batch 1, T == S).

  Each candidate's positions are scored by the dense causal softmax mass they keep, averaged
  over the queries from ``skip`` on (clipped to the prompt); the best candidate wins per head.

  Returns a list (one per query head) of configs with their ``score``, ready for
  :func:`write_pattern_file` (one such list per layer).
  """
  C.check_inputs(METHOD, q, k)
  b, t, h, d = q.shape
  if b != 1 or t != k.shape[1]:
    raise ValueError(f"{METHOD}: the pattern search takes one full prompt (B = 1, T == S); got "
                     f"q {q.shape}, k {k.shape}")
  C.check_int(METHOD, "skip", skip, low=0)
  cands = [_check_head(dict(c), f"candidates[{i}]") for i, c in enumerate(candidates)]
  if not cands:
    raise ValueError(f"{METHOD}: candidates must list at least one config")
  scale = 1.0 / math.sqrt(d) if scale is None else scale
  logits = jnp.einsum("bthd,bshd->bhts", q.astype(jnp.float32),
                      C.expand_heads(k, h).astype(jnp.float32)) * scale
  causal = jnp.tril(jnp.ones((t, t), bool))
  probs = jax.nn.softmax(jnp.where(causal, logits, -jnp.inf), axis=-1)
  rows = slice(min(skip, t - 1), t)
  scores = []
  for cand in cands:
    sel = select(q, k, heads=[cand] * h, scale=scale)
    seen = dense_mask(sel, t, t, causal=True)
    scores.append(jnp.sum(jnp.where(seen, probs, 0.0)[:, :, rows], -1).mean(-1)[0])
  scores = np.asarray(jnp.stack(scores))  # [n_cand, H]
  best = scores.argmax(axis=0)
  return [cands[c] | {"score": float(scores[c, i])} for i, c in enumerate(best)]
