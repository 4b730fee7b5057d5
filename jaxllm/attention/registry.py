"""The single attention dispatch site: method name -> implementation.

Every attention method is a pure function ``fn(q, k, v, *, impl, causal, **kw)`` with
q [B, T, H, D] and k, v [B, S, Hkv, D]. Methods register themselves here; models only ever call
:func:`attention`, so a config string is all it takes to swap the method.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

IMPLS = ("xla", "pallas", "auto")
# How a method decodes one token at a time after its prefill (``jaxllm.inference``):
#   dense: causal softmax over the whole KV cache (only ``scale`` / ``softcap`` are read from the
#     options: a sparse prefill method's pattern options do not apply to decoding);
#   recurrent: the O(1) state of the decayed linear recurrence (``jaxllm.attention.linear.state``);
#   sparse: softmax over the subset of the cache that the method's ``window`` / ``sinks`` options
#     leave visible (the whole cache without a window), read through the sparse-decode kernel with
#     ``impl='pallas'``.
#   momentum: ``dense`` plus the decayed sum of past values (momentum attention), carried as a
#     [B, Hkv, D] state next to the KV cache.
# None: the method has no cached decoding.
DECODES = ("dense", "recurrent", "sparse", "momentum", None)


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  fn: Callable
  impls: tuple[str, ...]
  options: tuple[str, ...]
  decode: str | None = "dense"
  segments: bool = False  # takes ``segment_ids`` (packed rows)


_REGISTRY: dict[str, Method] = {}
# Read-only live view: `sorted(METHODS)`, `name in METHODS`.
METHODS = types.MappingProxyType(_REGISTRY)


def register(name: str, fn: Callable, impls: tuple[str, ...] = ("xla", "auto"),
             decode: str | None = "dense") -> Callable:
  """Registers ``fn`` under ``name``; ``impls`` lists the implementations it accepts and
  ``decode`` (one of :data:`DECODES`) how it decodes after a prefill."""
  bad = [i for i in impls if i not in IMPLS]
  if bad:
    raise ValueError(f"attention method {name!r}: unknown impls {bad}; allowed: {list(IMPLS)}")
  if decode not in DECODES:
    raise ValueError(f"attention method {name!r}: decode={decode!r} unknown; allowed: "
                     f"{list(DECODES)}")
  params = inspect.signature(fn).parameters
  options = tuple(
      p for p, spec in params.items()
      if spec.kind is inspect.Parameter.KEYWORD_ONLY
      and p not in ("impl", "causal", "segment_ids"))
  _REGISTRY[name] = Method(name, fn, tuple(impls), options, decode, "segment_ids" in params)
  return fn


def get(name: str) -> Method:
  if name not in _REGISTRY:
    raise ValueError(f"unknown attention method {name!r}; valid methods: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def check_shapes(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False) -> None:
  """Validates floating q [B, T, H, D], k/v [B, S, Hkv, D] with Hkv dividing H and S >= 1; causal
  attention also needs T <= S (its queries are the last T of the S positions)."""
  for name, x in (("q", q), ("k", k), ("v", v)):
    if not hasattr(x, "dtype") or not hasattr(x, "ndim"):
      raise ValueError(f"attention: {name} must be an array, got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"attention: {name} must be a floating-point array (float32, bfloat16, "
                       f"float16), got {x.dtype}")
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(
        "attention expects q [B, T, H, D] and k, v [B, S, Hkv, D]; got ranks "
        f"q {q.ndim}, k {k.ndim}, v {v.ndim}")
  if k.shape != v.shape:
    raise ValueError(f"attention: k and v shapes differ: k {k.shape}, v {v.shape}")
  if q.shape[0] != k.shape[0]:
    raise ValueError(f"attention: batch differs: q {q.shape[0]}, k/v {k.shape[0]}")
  if q.shape[-1] != k.shape[-1]:
    raise ValueError(f"attention: head dim differs: q {q.shape[-1]}, k/v {k.shape[-1]}")
  h, hkv = q.shape[2], k.shape[2]
  if hkv == 0 or h % hkv:
    raise ValueError(
        f"attention: query heads H={h} must be a multiple of key/value heads Hkv={hkv} (GQA)")
  t, s = q.shape[1], k.shape[1]
  if s == 0:
    raise ValueError("attention: k and v have no positions (S=0); at least one key is needed")
  if causal and t > s:
    raise ValueError(f"attention: causal queries are the last T of the S key positions, so T <= S "
                     f"is needed; got T={t} > S={s}")


def check_segment_ids(segment_ids, batch: int, s: int) -> jax.Array:
  """Validates packed-row document ids: an integer array [B, S] over the key positions."""
  if not hasattr(segment_ids, "dtype") or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
    raise ValueError("attention: segment_ids must be an integer array [B, S], got "
                     f"{getattr(segment_ids, 'dtype', type(segment_ids).__name__)}")
  if tuple(segment_ids.shape) != (batch, s):
    raise ValueError(f"attention: segment_ids must have shape [B, S] = {(batch, s)}, got "
                     f"{tuple(segment_ids.shape)}")
  return jnp.asarray(segment_ids, jnp.int32)


def attention(q, k, v, *, method: str = "dense", impl: str = "auto", causal: bool = True,
              segment_ids=None, **kw):
  """Computes attention with the named method.

  Args:
    q: [B, T, H, D] queries.
    k, v: [B, S, Hkv, D] keys and values; H must be a multiple of Hkv (grouped-query attention).
    method: a name in :data:`METHODS`.
    impl: ``xla`` (plain-jnp reference), ``pallas`` (kernel) or ``auto`` (the fastest that fits
      the backend and shapes, falling back to the reference).
    causal: queries are the last T positions of the S keys and see only keys at or before them.
    segment_ids: optional int [B, S] document ids of packed rows: a query (the last T of the S
      keys, so its id is ``segment_ids[:, S - T:]``) sees only keys of its own segment, on top of
      the causal / window / sinks rule; linear methods reset their state where the id changes.
      Only methods registered with a ``segment_ids`` argument accept it.
    **kw: method options (e.g. ``window``, ``sinks``, ``softcap`` for ``dense``).

  Returns:
    [B, T, H, D] outputs in q's dtype.
  """
  m = get(method)
  if impl not in m.impls:
    raise ValueError(
        f"attention method {method!r} has no impl {impl!r}; available: {list(m.impls)}")
  unknown = sorted(set(kw) - set(m.options))
  if unknown:
    raise ValueError(
        f"attention method {method!r} got unknown options {unknown}; allowed: {list(m.options)}")
  if not isinstance(causal, (bool, np.bool_)):
    raise ValueError(f"attention: causal must be True or False, got {causal!r}")
  check_shapes(q, k, v, causal=causal)
  if segment_ids is not None:
    if not m.segments:
      raise ValueError(
          f"attention method {method!r} does not take segment_ids; methods that do: "
          f"{sorted(n for n, x in _REGISTRY.items() if x.segments)}")
    kw["segment_ids"] = check_segment_ids(segment_ids, q.shape[0], k.shape[1])
  return m.fn(q, k, v, impl=impl, causal=causal, **kw)
