"""Linear attention family: ``linear``, ``lightning``, ``retention`` and ``momentum``.

All four share the decayed linear recurrence of :mod:`jaxllm.attention.linear.forms` and accept
``form`` (``parallel`` | ``chunked`` | ``recurrent``) and ``chunk_size``. ``impl='pallas'`` runs the
chunk kernel (interpret mode on CPU); ``auto`` takes it on GPU/TPU for the chunked form. The
default ``chunk_size`` (None) is :func:`chunk_size_for` the method and length.
"""

import math

import jax

import jax.numpy as jnp

from jaxllm.attention.linear import apply as apply_lib
from jaxllm.attention.linear import forms, options
from jaxllm.attention.methods import dense as dense_lib
from jaxllm.attention.registry import register


DEFAULT_CHUNK = 64  # the kernels' tile off CPU, and the chunk before it was chosen by length
# The fastest chunk of the chunked form on CPU, as (largest T, chunk) per method. Measured on the
# 2-core CPU (B 1, H 2, K 1, D 64, float32, T 1k / 4k / 16k, chunks 16 / 32 / 64 alternating in
# one run on a loaded machine; numbers in ``scripts/benchmarks/notes/cpu_attention.md``,
# ``bench_cpu_attention.py --linear_chunks`` repeats it). With a decay
# (lightning, retention) chunk 64 was 8-100x slower than 32 at 1k-16k, and 32 the fastest but
# once (retention at 4k, where 16 ran 3x faster in that run); without one (linear)
# 16 / 32 / 64 were within 1.1-1.4x of each other with no consistent winner, so it keeps 64.
CPU_CHUNKS = {
    "linear": ((None, 64),),
    "decayed": ((None, 32),),
}


def chunk_size_for(t, method="linear"):
  """The chunk :data:`CPU_CHUNKS` measured fastest for ``t`` tokens on CPU (else 64)."""
  if jax.default_backend() != "cpu":
    return DEFAULT_CHUNK
  table = CPU_CHUNKS["linear" if method == "linear" else "decayed"]
  return next(c for top, c in table if top is None or t <= top)


def _check_form(method, form, chunk_size):
  if form not in forms.FORMS:
    raise ValueError(f"{method} attention: form must be one of {sorted(forms.FORMS)}, got {form!r}")
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"{method} attention: chunk_size must be a positive int, got {chunk_size!r}")


def _run(method, q, k, v, spec, *, impl, causal, form, chunk_size, segment_ids=None):
  chunk_size = chunk_size_for(q.shape[1], method) if chunk_size is None else chunk_size
  _check_form(method, form, chunk_size)
  o, _ = apply_lib.apply(q, k, v, spec, causal=causal, form=form, chunk_size=chunk_size,
                         impl=impl, segment_ids=segment_ids)
  return o.astype(q.dtype)


def _require_causal(method, causal):
  if not causal:
    raise ValueError(f"{method} attention: causal must be True (the decay orders the tokens)")


def linear(q, k, v, *, impl="auto", causal=True, feature_map="elu1", normalize=True, decay=None,
           form="chunked", chunk_size=None, scale=None, eps=1e-6, segment_ids=None):
  """Kernelized linear attention phi(q)^T S_t / phi(q)^T z_t (normaliser optional).

  ``feature_map`` in {elu1, relu, identity}; ``decay`` (float or [H] in (0, 1]) adds a per-head
  decay to the state; causal=False is plain global linear attention and allows no decay.
  """
  if not causal and decay is not None:
    raise ValueError("linear attention: causal=False needs decay=None (a decay orders the tokens)")
  spec = options.linear_spec(q.shape[2], q.shape[3], feature_map=feature_map,
                             normalize=normalize, decay=decay, scale=scale, eps=eps)
  return _run("linear", q, k, v, spec, impl=impl, causal=causal, form=form, chunk_size=chunk_size,
              segment_ids=segment_ids)


def lightning(q, k, v, *, impl="auto", causal=True, layer_index=0, num_layers=1, decay=None,
              feature_map="identity", form="chunked", chunk_size=None, scale=None,
              segment_ids=None):
  """Lightning attention: no normaliser, decay exp(-(8/H) h (1 - l/L)) unless ``decay`` is given."""
  _require_causal("lightning", causal)
  spec = options.lightning_spec(q.shape[2], q.shape[3], layer_index=layer_index,
                                num_layers=num_layers, decay=decay, feature_map=feature_map,
                                scale=scale)
  return _run("lightning", q, k, v, spec, impl=impl, causal=causal, form=form,
              chunk_size=chunk_size, segment_ids=segment_ids)


def retention(q, k, v, *, impl="auto", causal=True, decay=None, feature_map="identity",
              form="chunked", chunk_size=None, scale=None, segment_ids=None):
  """RetNet retention: decay gamma_h = 1 - 2^(-5-h) unless ``decay`` is given, no normaliser."""
  _require_causal("retention", causal)
  spec = options.retention_spec(q.shape[2], q.shape[3], decay=decay, feature_map=feature_map,
                                scale=scale)
  return _run("retention", q, k, v, spec, impl=impl, causal=causal, form=form,
              chunk_size=chunk_size, segment_ids=segment_ids)


def momentum(q, k, v, *, impl="auto", causal=True, eta=None, form="chunked", chunk_size=None,
             scale=None, segment_ids=None):
  """Momentum attention: softmax attention + sum_{i<t} eta^(t-i) v_i (Dai et al.).

  The momentum term is a decayed linear attention with phi(q) = phi(k) = 1 and decay ``eta`` over
  the values; ``form`` selects how it is computed. ``eta`` in (0, 1) is required.
  """
  _require_causal("momentum", causal)
  if not isinstance(eta, (int, float)) or not 0 < eta < 1:
    raise ValueError(f"momentum attention: eta must be a float in (0, 1), got {eta!r}")
  chunk_size = chunk_size_for(q.shape[1], "momentum") if chunk_size is None else chunk_size
  _check_form("momentum", form, chunk_size)
  b, t, h, _ = q.shape
  s, hkv = v.shape[1], v.shape[2]
  attn = dense_lib.dense(q, k, v, impl=impl, causal=True, scale=scale, segment_ids=segment_ids)
  ones = jnp.ones((b, s, hkv, 1), jnp.float32)
  log_eta = jnp.full((hkv,), math.log(eta), jnp.float32)
  # M_t = sum_{i<=t} eta^(t-i) v_i; the momentum term excludes i = t.
  m, _ = forms.attend(ones, ones, v, log_eta, form=form, chunk_size=chunk_size,
                      segment_ids=segment_ids)
  mom = apply_lib.expand_kv((m - v.astype(jnp.float32))[:, s - t:], h)
  return (attn.astype(jnp.float32) + mom).astype(q.dtype)


register("linear", linear, impls=("xla", "pallas", "auto"), decode="recurrent")
register("lightning", lightning, impls=("xla", "pallas", "auto"), decode="recurrent")
register("retention", retention, impls=("xla", "pallas", "auto"), decode="recurrent")
register("momentum", momentum, impls=("xla", "auto"), decode="momentum")
