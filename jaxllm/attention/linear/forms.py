"""Decayed linear attention in three equivalent forms: parallel, chunked and recurrent.

Per head h with scalar decay lambda_h = exp(a_h), a_h <= 0:

  S_t = lambda_h S_{t-1} + k_t v_t^T,    o_t = S_t^T q_t,    S_{-1} = S_0 (initial state).

Unrolled: o_t = sum_{s <= t} lambda^(t - s) (q_t . k_s) v_s + lambda^(t + 1) S_0^T q_t.

* ``parallel``: the masked decay matrix D[t, s] = lambda^(t - s) [s <= t], O(T^2).
* ``chunked``: chunks of C tokens; quadratic with the masked decay inside a chunk, the state carried
  across chunks (the tiling of Lightning attention), O(T C + T D E / C) per head.
* ``recurrent``: one token at a time, O(D E) state; the form used for decoding.

Shapes: q, k [B, T, H, D], v [B, T, H, E], log_decay [H], state [B, H, D, E]. Every form computes in
float32 and returns (o [B, T, H, E] float32, final state [B, H, D, E] float32). Decay exponents are
formed as a * (non-negative distance) before ``exp`` so that strong decay underflows to 0 instead of
overflowing.

The normalised variant o_t = S_t^T q_t / (z_t . q_t), z_t = lambda z_{t-1} + k_t, is the same
recurrence with a column of ones appended to v (:func:`attend`); z is then the state's last column.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_F32 = jnp.float32


def _check(q, k, v, log_decay, initial_state):
  if q.ndim != 4 or q.shape != k.shape:
    raise ValueError(f"linear attention: q and k must both be [B, T, H, D]; got q {q.shape}, "
                     f"k {k.shape}")
  if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
    raise ValueError(f"linear attention: v must be [B, T, H, E] matching q {q.shape}; got {v.shape}")
  if log_decay.shape != (q.shape[2],):
    raise ValueError(f"linear attention: log_decay must be [H] = ({q.shape[2]},); "
                     f"got {log_decay.shape}")
  want = (q.shape[0], q.shape[2], q.shape[3], v.shape[3])
  if initial_state is not None and initial_state.shape != want:
    raise ValueError(f"linear attention: initial_state must be [B, H, D, E] = {want}; "
                     f"got {initial_state.shape}")


def _prepare(q, k, v, log_decay, initial_state):
  _check(q, k, v, log_decay, initial_state)
  b, _, h, d = q.shape
  if initial_state is None:
    initial_state = jnp.zeros((b, h, d, v.shape[-1]), _F32)
  return (q.astype(_F32), k.astype(_F32), v.astype(_F32), log_decay.astype(_F32),
          initial_state.astype(_F32))


def _masked_decay(a_H, n: int):
  """[H, n, n] lambda^(i - j) for j <= i, else 0."""
  i = jnp.arange(n, dtype=_F32)
  dist = i[:, None] - i[None, :]
  return jnp.exp(jnp.where(dist >= 0, a_H[:, None, None] * dist, -jnp.inf))


def parallel(q, k, v, log_decay, initial_state=None):
  """Quadratic form with the masked decay matrix. Returns (o, final state)."""
  q, k, v, a, s0 = _prepare(q, k, v, log_decay, initial_state)
  t = q.shape[1]
  scores = jnp.einsum("bthd,bshd->bhts", q, k) * _masked_decay(a, t)
  o = jnp.einsum("bhts,bshe->bthe", scores, v)
  pos = jnp.arange(t, dtype=_F32)
  o += jnp.einsum("bthd,ht,bhde->bthe", q, jnp.exp(a[:, None] * (pos + 1)), s0)
  k_decay = jnp.exp(a[:, None] * (t - 1 - pos))
  state = jnp.exp(a * t)[None, :, None, None] * s0 + jnp.einsum("bshd,hs,bshe->bhde", k, k_decay, v)
  return o, state


def chunked(q, k, v, log_decay, initial_state=None, chunk_size: int = 64):
  """Chunked form: masked decay inside chunks, state carried across chunks."""
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"linear attention: chunk_size must be a positive int, got {chunk_size!r}")
  q, k, v, a, s0 = _prepare(q, k, v, log_decay, initial_state)
  b, t, h, d = q.shape
  e = v.shape[-1]
  c = chunk_size
  n = math.ceil(t / c)
  pad = n * c - t
  if pad:
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    q, k, v = (jnp.pad(x, widths) for x in (q, k, v))
  q_BNCHD, k_BNCHD = q.reshape(b, n, c, h, d), k.reshape(b, n, c, h, d)
  v_BNCHE = v.reshape(b, n, c, h, e)

  scores = jnp.einsum("bnihd,bnjhd->bnhij", q_BNCHD, k_BNCHD) * _masked_decay(a, c)
  o_intra = jnp.einsum("bnhij,bnjhe->bnihe", scores, v_BNCHE)

  # The last chunk holds fewer than c real tokens; its state update decays by its true length so
  # the final state is exact (padded keys are zero, their decay factor is masked to 0).
  length_N = jnp.minimum(c, t - c * jnp.arange(n)).astype(_F32)
  j = jnp.arange(c, dtype=_F32)
  dist_NC = length_N[:, None] - 1 - j[None, :]
  k_decay_NHC = jnp.exp(jnp.where(dist_NC[:, None, :] >= 0,
                                  a[None, :, None] * dist_NC[:, None, :], -jnp.inf))
  update_NBHDE = jnp.einsum("bnjhd,nhj,bnjhe->nbhde", k_BNCHD, k_decay_NHC, v_BNCHE)
  chunk_decay_NH = jnp.exp(a[None, :] * length_N[:, None])

  def carry(state, xs):
    update, decay_H = xs
    return decay_H[None, :, None, None] * state + update, state

  state, prev_NBHDE = jax.lax.scan(carry, s0, (update_NBHDE, chunk_decay_NH))
  q_decay_HC = jnp.exp(a[:, None] * (j + 1))
  o_inter = jnp.einsum("bnihd,hi,nbhde->bnihe", q_BNCHD, q_decay_HC, prev_NBHDE)
  o = (o_intra + o_inter).reshape(b, n * c, h, e)[:, :t]
  return o, state


def recurrent(q, k, v, log_decay, initial_state=None):
  """One token at a time with an O(D E) state per head."""
  q, k, v, a, s0 = _prepare(q, k, v, log_decay, initial_state)
  lam = jnp.exp(a)[None, :, None, None]

  def one(state, xs):
    q_BHD, k_BHD, v_BHE = xs
    state = lam * state + jnp.einsum("bhd,bhe->bhde", k_BHD, v_BHE)
    return state, jnp.einsum("bhd,bhde->bhe", q_BHD, state)

  xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v))
  state, o_TBHE = jax.lax.scan(one, s0, xs)
  return jnp.moveaxis(o_TBHE, 0, 1), state


FORMS = {"parallel": parallel, "chunked": chunked, "recurrent": recurrent}


def attend(q, k, v, log_decay, *, form: str = "chunked", chunk_size: int = 64,
           normalize: bool = False, eps: float = 1e-6, initial_state=None, impl: str = "xla"):
  """Decayed linear attention in the chosen ``form``, optionally normalised.

  Args:
    q, k: [B, T, H, D] (feature maps already applied).
    v: [B, T, H, E].
    log_decay: [H] log lambda_h (0 = no decay).
    form: ``parallel``, ``chunked`` or ``recurrent``.
    chunk_size: tokens per chunk for the chunked form.
    normalize: divide by phi(q_t) . z_t (+ ``eps``); the state then has E + 1 columns, z last.
    eps: added to the normaliser so a relu feature map with all-zero keys gives 0, not NaN.
    initial_state: [B, H, D, E (+1 if normalize)] state carried in from earlier tokens.
    impl: ``xla`` (plain jnp) or ``pallas`` (the platform's chunk kernel, interpreted off GPU and
      TPU; chunked form only).

  Returns:
    (o [B, T, H, E] float32, final state float32).
  """
  if form not in FORMS:
    raise ValueError(f"linear attention: form must be one of {sorted(FORMS)}, got {form!r}")
  if normalize:
    v = jnp.concatenate([v.astype(_F32), jnp.ones(v.shape[:-1] + (1,), _F32)], axis=-1)
  if impl == "pallas":
    if form != "chunked":
      raise ValueError(f"linear attention: impl='pallas' runs the chunked form only, got form "
                       f"{form!r}")
    # Imported here: the kernels' reference module imports this one.
    from pallas_kernels.linear_chunk import api  # pylint: disable=g-import-not-at-top
    o, state = api.linear_chunk(q, k, v, log_decay, initial_state, chunk_size=chunk_size,
                                impl="pallas")
  elif form == "chunked":
    o, state = chunked(q, k, v, log_decay, initial_state, chunk_size=chunk_size)
  else:
    o, state = FORMS[form](q, k, v, log_decay, initial_state)
  if normalize:
    o = o[..., :-1] / (o[..., -1:] + eps)
  return o, state
