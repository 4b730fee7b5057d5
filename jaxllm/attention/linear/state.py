"""O(1)-per-token decoding state for the decayed linear attention methods.

``prefill`` runs a prompt and returns the state; ``step`` consumes one token per call. The state
replaces the KV cache: its size is [B, H, D, D (+1)] whatever the context length.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from jaxllm.attention.linear import apply as apply_lib
from jaxllm.attention.linear import options


@flax.struct.dataclass
class LinearState:
  """Recurrent state of one attention layer.

  Attributes:
    s: [B, H, D, E] float32, S_t (z_t as the last column when normalised).
    log_decay: [H] float32 log lambda_h.
    feature_map, normalize, scale, eps: the method's resolved options (static).
  """
  s: jax.Array
  log_decay: jax.Array
  feature_map: str = flax.struct.field(pytree_node=False)
  normalize: bool = flax.struct.field(pytree_node=False)
  scale: float = flax.struct.field(pytree_node=False)
  eps: float = flax.struct.field(pytree_node=False)

  @property
  def spec(self) -> options.Spec:
    return options.Spec(self.log_decay, self.feature_map, self.normalize, self.scale, self.eps)


def _wrap(s, spec: options.Spec) -> LinearState:
  return LinearState(s, spec.log_decay, spec.feature_map, spec.normalize, spec.scale, spec.eps)


def init_state(method: str, batch: int, num_heads: int, head_dim: int, **opts) -> LinearState:
  """Empty state for ``method`` in {linear, lightning, retention} with that method's options."""
  spec = options.spec_for(method, num_heads, head_dim, **opts)
  e = head_dim + (1 if spec.normalize else 0)
  return _wrap(jnp.zeros((batch, num_heads, head_dim, e), jnp.float32), spec)


def prefill(method: str, q, k, v, *, chunk_size: int = 64, impl: str = "auto", **opts):
  """Runs a prompt in the chunked form; returns (o [B, T, H, D] in q's dtype, state)."""
  spec = options.spec_for(method, q.shape[2], q.shape[3], **opts)
  o, s = apply_lib.apply(q, k, v, spec, causal=True, form="chunked", chunk_size=chunk_size,
                         impl=impl)
  return o.astype(q.dtype), _wrap(s, spec)


def step(state: LinearState, q_t, k_t, v_t):
  """One decoding step: q_t [B, H, D], k_t, v_t [B, Hkv, D] -> (o_t [B, H, D], new state)."""
  h, dtype = q_t.shape[1], q_t.dtype
  spec = state.spec
  k_t = apply_lib.expand_kv(k_t[:, None], h)[:, 0]
  v_t = apply_lib.expand_kv(v_t[:, None], h)[:, 0].astype(jnp.float32)
  q_t, k_t = apply_lib.featurize(q_t, k_t, spec)
  if spec.normalize:
    v_t = jnp.concatenate([v_t, jnp.ones(v_t.shape[:-1] + (1,), jnp.float32)], axis=-1)
  lam = jnp.exp(state.log_decay)[None, :, None, None]
  s = lam * state.s + jnp.einsum("bhd,bhe->bhde", k_t, v_t)
  o = jnp.einsum("bhd,bhde->bhe", q_t, s)
  if spec.normalize:
    o = o[..., :-1] / (o[..., -1:] + spec.eps)
  return o.astype(dtype), state.replace(s=s)
