"""Runs a resolved :class:`Spec` on attention-API tensors (GQA, feature map, scale, prefixes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxllm.attention.linear import feature_maps, forms
from jaxllm.attention.linear.options import Spec

IMPLS = ("xla", "pallas", "auto")


def resolve_impl(impl: str, form: str) -> str:
  """The impl to run: ``auto`` takes the GPU chunk kernel for the chunked form on GPU and the jnp
  forms elsewhere; ``pallas`` runs the platform's kernel (``pallas_kernels.linear_chunk``)."""
  if impl not in IMPLS:
    raise ValueError(f"linear attention: impl must be one of {list(IMPLS)}, got {impl!r}")
  if impl == "auto":
    return "pallas" if jax.default_backend() == "gpu" and form == "chunked" else "xla"
  return impl


def expand_kv(x_BSKD, num_heads):
  """Repeats key/value heads for grouped-query attention: the decay is per query head."""
  g = num_heads // x_BSKD.shape[2]
  return x_BSKD if g == 1 else jnp.repeat(x_BSKD, g, axis=2)


def featurize(q, k, spec: Spec):
  phi = feature_maps.feature_map(spec.feature_map)
  q = phi(q.astype(jnp.float32)) * spec.scale
  return q, phi(k.astype(jnp.float32))


def apply(q, k, v, spec: Spec, *, causal=True, form="chunked", chunk_size=64, impl="auto",
          initial_state=None, segment_ids=None):
  """Decayed linear attention of q [B, T, H, D] over k, v [B, S, Hkv, D].

  Causal queries are the last T of the S positions (as in the dense reference); the first S - T
  keys only feed the state. Non-causal attention (every query sees every key) ignores the decay;
  the registered methods allow it only where there is none. ``segment_ids`` int [B, S] (packed
  rows) keep every token to its own document (:mod:`forms`); ``auto`` then runs the jnp forms.

  Returns:
    (o [B, T, H, D] float32, final state [B, H, D, D (+1 if normalised)] float32).
  """
  b, t, h, _ = q.shape
  s = k.shape[1]
  if t > s:
    raise ValueError(f"linear attention: more queries than keys (T={t} > S={s})")
  k, v = expand_kv(k, h), expand_kv(v, h)
  q, k = featurize(q, k, spec)
  if not causal:
    return _global(q, k, v, spec, initial_state, segment_ids)
  if t < s:
    q = jnp.pad(q, ((0, 0), (s - t, 0), (0, 0), (0, 0)))
  impl = "xla" if segment_ids is not None and impl == "auto" else resolve_impl(impl, form)
  o, state = forms.attend(q, k, v, spec.log_decay, form=form, chunk_size=chunk_size,
                          normalize=spec.normalize, eps=spec.eps, initial_state=initial_state,
                          impl=impl, segment_ids=segment_ids)
  return o[:, s - t:], state


def _global(q, k, v, spec, initial_state, segment_ids=None):
  """Non-causal linear attention: o_t = phi(q_t)^T S_S for every t (S of t's own document, and
  the returned state the last document's, for packed rows)."""
  if spec.normalize:
    v = jnp.concatenate([v.astype(jnp.float32), jnp.ones(v.shape[:-1] + (1,), jnp.float32)], -1)
  if segment_ids is not None:
    if initial_state is not None:
      raise ValueError("linear attention: causal=False takes segment_ids or initial_state, "
                       "not both")
    r_BS = forms.runs(segment_ids)
    same_BTS = (r_BS[:, :, None] == r_BS[:, None, :]).astype(jnp.float32)
    o = jnp.einsum("bthd,bshd,bts,bshe->bthe", q, k, same_BTS, v.astype(jnp.float32))
    state = jnp.einsum("bshd,bs,bshe->bhde", k, same_BTS[:, -1], v.astype(jnp.float32))
    if spec.normalize:
      o = o[..., :-1] / (o[..., -1:] + spec.eps)
    return o, state
  state = jnp.einsum("bshd,bshe->bhde", k, v.astype(jnp.float32))
  if initial_state is not None:
    state += initial_state
  o = jnp.einsum("bthd,bhde->bthe", q, state)
  if spec.normalize:
    o = o[..., :-1] / (o[..., -1:] + spec.eps)
  return o, state
