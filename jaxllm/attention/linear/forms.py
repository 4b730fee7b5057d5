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

Packed rows (``segment_ids`` int [B, T], one id per document): the state is reset to zero wherever
the id changes, S_t = k_t v_t^T at a document's first token, so no token sees another document and
the final state is the last document's. The initial state belongs to the row's first document.
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


def runs(segment_ids):
  """int [B, T] index of the run of equal ids each token is in (0 for the first run): the state
  resets where it steps, whatever the ids' values."""
  step = segment_ids[:, 1:] != segment_ids[:, :-1]
  return jnp.concatenate([jnp.zeros_like(step[:, :1], jnp.int32),
                          jnp.cumsum(step, axis=1, dtype=jnp.int32)], axis=1)


def _masked_decay(a_H, n: int):
  """[H, n, n] lambda^(i - j) for j <= i, else 0."""
  i = jnp.arange(n, dtype=_F32)
  dist = i[:, None] - i[None, :]
  return jnp.exp(jnp.where(dist >= 0, a_H[:, None, None] * dist, -jnp.inf))


def parallel(q, k, v, log_decay, initial_state=None, segment_ids=None):
  """Quadratic form with the masked decay matrix. Returns (o, final state)."""
  q, k, v, a, s0 = _prepare(q, k, v, log_decay, initial_state)
  b, t = q.shape[:2]
  scores = jnp.einsum("bthd,bshd->bhts", q, k) * _masked_decay(a, t)
  # Packed rows: a query sees the keys and the initial state of its own run only.
  r_BT = jnp.zeros((b, t), jnp.int32) if segment_ids is None else runs(segment_ids)
  scores *= (r_BT[:, :, None] == r_BT[:, None, :])[:, None]
  first_BT, last_BT = (r_BT == 0).astype(_F32), (r_BT == r_BT[:, -1:]).astype(_F32)
  o = jnp.einsum("bhts,bshe->bthe", scores, v)
  pos = jnp.arange(t, dtype=_F32)
  o += jnp.einsum("bthd,ht,bt,bhde->bthe", q, jnp.exp(a[:, None] * (pos + 1)), first_BT, s0)
  k_decay = jnp.exp(a[:, None] * (t - 1 - pos))
  s0_decay_BH = jnp.exp(a * t)[None, :] * last_BT[:, :1]
  state = s0_decay_BH[:, :, None, None] * s0 + jnp.einsum("bshd,hs,bs,bshe->bhde", k, k_decay,
                                                          last_BT, v)
  return o, state


def chunked(q, k, v, log_decay, initial_state=None, chunk_size: int = 64, segment_ids=None):
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
  # Run of every token (padding repeats the last), of each chunk's last token and of the state
  # entering each chunk; a run id only grows, so equal ends mean no reset inside the chunk.
  r_BT = jnp.zeros((b, t), jnp.int32) if segment_ids is None else runs(segment_ids)
  r_BNC = jnp.pad(r_BT, ((0, 0), (0, pad)), mode="edge").reshape(b, n, c)
  last_BN = r_BNC[:, :, -1]
  prev_BN = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), last_BN[:, :-1]], axis=1)

  scores = jnp.einsum("bnihd,bnjhd->bnhij", q_BNCHD, k_BNCHD) * _masked_decay(a, c)
  scores *= (r_BNC[:, :, :, None] == r_BNC[:, :, None, :])[:, :, None]
  o_intra = jnp.einsum("bnhij,bnjhe->bnihe", scores, v_BNCHE)

  # The last chunk holds fewer than c real tokens; its state update decays by its true length so
  # the final state is exact (padded keys are zero, their decay factor is masked to 0).
  length_N = jnp.minimum(c, t - c * jnp.arange(n)).astype(_F32)
  j = jnp.arange(c, dtype=_F32)
  dist_NC = length_N[:, None] - 1 - j[None, :]
  k_decay_NHC = jnp.exp(jnp.where(dist_NC[:, None, :] >= 0,
                                  a[None, :, None] * dist_NC[:, None, :], -jnp.inf))
  in_last_BNC = (r_BNC == last_BN[:, :, None]).astype(_F32)
  update_NBHDE = jnp.einsum("bnjhd,nhj,bnj,bnjhe->nbhde", k_BNCHD, k_decay_NHC, in_last_BNC,
                            v_BNCHE)
  kept_NB = jnp.swapaxes(last_BN == prev_BN, 0, 1).astype(_F32)
  chunk_decay_NBH = jnp.exp(a[None, :] * length_N[:, None])[:, None, :] * kept_NB[:, :, None]

  def carry(state, xs):
    update, decay_BH = xs
    return decay_BH[:, :, None, None] * state + update, state

  state, prev_NBHDE = jax.lax.scan(carry, s0, (update_NBHDE, chunk_decay_NBH))
  q_decay_HC = jnp.exp(a[:, None] * (j + 1))
  in_prev_BNC = (r_BNC == prev_BN[:, :, None]).astype(_F32)
  o_inter = jnp.einsum("bnihd,hi,bni,nbhde->bnihe", q_BNCHD, q_decay_HC, in_prev_BNC, prev_NBHDE)
  o = (o_intra + o_inter).reshape(b, n * c, h, e)[:, :t]
  return o, state


def recurrent(q, k, v, log_decay, initial_state=None, segment_ids=None):
  """One token at a time with an O(D E) state per head."""
  q, k, v, a, s0 = _prepare(q, k, v, log_decay, initial_state)
  lam = jnp.exp(a)[None, :, None, None]
  b, t = q.shape[:2]
  r_BT = jnp.zeros((b, t), jnp.int32) if segment_ids is None else runs(segment_ids)
  keep_BT = jnp.concatenate([jnp.ones((b, 1), _F32),
                             (r_BT[:, 1:] == r_BT[:, :-1]).astype(_F32)], axis=1)

  def one(state, xs):
    q_BHD, k_BHD, v_BHE, keep_B = xs
    state = keep_B[:, None, None, None] * lam * state + jnp.einsum("bhd,bhe->bhde", k_BHD, v_BHE)
    return state, jnp.einsum("bhd,bhde->bhe", q_BHD, state)

  xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, keep_BT))
  state, o_TBHE = jax.lax.scan(one, s0, xs)
  return jnp.moveaxis(o_TBHE, 0, 1), state


FORMS = {"parallel": parallel, "chunked": chunked, "recurrent": recurrent}


def attend(q, k, v, log_decay, *, form: str = "chunked", chunk_size: int = 64,
           normalize: bool = False, eps: float = 1e-6, initial_state=None, impl: str = "xla",
           segment_ids=None):
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
    segment_ids: optional int [B, T] document ids of packed rows: the state resets where the id
      changes (``xla`` only).

  Returns:
    (o [B, T, H, E] float32, final state float32).
  """
  if form not in FORMS:
    raise ValueError(f"linear attention: form must be one of {sorted(FORMS)}, got {form!r}")
  if normalize:
    v = jnp.concatenate([v.astype(_F32), jnp.ones(v.shape[:-1] + (1,), _F32)], axis=-1)
  if impl == "pallas" and segment_ids is not None:
    raise ValueError("linear attention: impl='pallas' (the chunk kernel) takes no segment_ids; "
                     "use impl='xla' or 'auto' for packed rows")
  if impl == "pallas":
    if form != "chunked":
      raise ValueError(f"linear attention: impl='pallas' runs the chunked form only, got form "
                       f"{form!r}")
    # Imported here: the kernels' reference module imports this one.
    from pallas_kernels.linear_chunk import api  # pylint: disable=g-import-not-at-top
    o, state = api.linear_chunk(q, k, v, log_decay, initial_state, chunk_size=chunk_size,
                                impl="pallas")
  elif form == "chunked":
    o, state = chunked(q, k, v, log_decay, initial_state, chunk_size=chunk_size,
                       segment_ids=segment_ids)
  else:
    o, state = FORMS[form](q, k, v, log_decay, initial_state, segment_ids=segment_ids)
  if normalize:
    o = o[..., :-1] / (o[..., -1:] + eps)
  return o, state
