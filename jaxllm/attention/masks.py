"""The one visibility rule of every attention reference, kernel mask, gather path and decode step.

Queries are the last T of the S key positions (query row t sits at position ``t + S - T``), so
prefill (T == S), chunked prefill onto a cache (T < S) and decode (T == 1) share one convention.
"""

import jax.numpy as jnp


def positions(t: int, s: int):
  """Query and key positions: the T queries are the last T of the S keys (decode-friendly)."""
  q_pos = jnp.arange(t) + (s - t)
  k_pos = jnp.arange(s)
  return q_pos, k_pos


def visible_pairs(q_pos, k_pos, *, causal: bool, window: int | None = None, sinks: int = 0,
                  q_segment=None, k_segment=None):
  """True where the query at ``q_pos`` may attend the key at ``k_pos`` (arrays broadcast).

  ``window`` w keeps keys with q - w < k <= q (causal) or |q - k| < w (bidirectional);
  ``sinks`` n always keeps the first n keys that are not in the future. ``sinks`` only act with
  a window (without one every past key is visible anyway). ``q_segment`` / ``k_segment`` (packed
  rows, both or neither) keep only pairs of the same segment id; sinks are then the first keys of
  the row, as the rule has no notion of where a document starts.

  Written with comparisons and ``&`` / ``|`` only, so Pallas kernels (Triton and Mosaic) can call
  it on iota tiles.
  """
  ok = None
  if causal:
    ok = k_pos <= q_pos
  if window is not None:
    diff = q_pos - k_pos
    near = diff < window if causal else (diff < window) & (-diff < window)
    band = near | (k_pos < sinks)
    ok = band if ok is None else ok & band
  if q_segment is not None:
    same = q_segment == k_segment
    ok = same if ok is None else ok & same
  if ok is None:
    return jnp.ones(jnp.broadcast_shapes(jnp.shape(q_pos), jnp.shape(k_pos)), bool)
  return ok


def visible(q_pos, k_pos, *, causal: bool, window: int | None = None, sinks: int = 0,
            segment_ids=None):
  """Boolean [T, S] mask of 1-D query and key positions: True where query i may attend key j.

  With ``segment_ids`` int [B, S] (the keys' document ids of packed rows; the queries are the
  last T keys) the mask is [B, T, S] and pairs of different segments are hidden.
  """
  if segment_ids is None:
    return visible_pairs(q_pos[:, None], k_pos[None, :], causal=causal, window=window,
                         sinks=sinks)
  q_seg, k_seg = query_segments(segment_ids, q_pos.shape[0]), segment_ids
  return visible_pairs(q_pos[:, None], k_pos[None, :], causal=causal, window=window, sinks=sinks,
                       q_segment=q_seg[:, :, None], k_segment=k_seg[:, None, :])


def query_segments(segment_ids, t: int):
  """The segment ids [B, T] of the queries: the last T of the keys' ids [B, S]."""
  return segment_ids[:, segment_ids.shape[1] - t:]


def span_visible(q_lo, q_hi, k_lo, k_hi, *, causal: bool, window: int | None = None,
                 sinks: int = 0):
  """Whether :func:`visible_pairs` holds for every query in [q_lo, q_hi] and key in [k_lo, k_hi].

  Block-sparse kernels skip the element mask on such (full) blocks. Plain arithmetic, so it runs
  on traced scalars inside kernels and on index arrays alike.
  """
  ok = k_hi <= q_lo if causal else k_hi == k_hi
  if window is not None:
    # Keys below ``sinks`` are always kept; the rest must sit inside the window of every query.
    rest_lo = jnp.maximum(k_lo, sinks)
    near = q_hi - rest_lo < window
    if not causal:
      near &= k_hi - q_lo < window
    ok &= (k_hi < sinks) | near
  return ok
