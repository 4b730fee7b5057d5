"""Per-method option resolution shared by the registered methods and the decode state."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from jaxllm.attention.linear import decay as decay_lib
from jaxllm.attention.linear import feature_maps


@dataclasses.dataclass(frozen=True)
class Spec:
  """Everything a decayed linear attention needs besides q, k, v.

  Attributes:
    log_decay: [H] float32 log lambda_h per query head.
    feature_map: name in :data:`feature_maps.FEATURE_MAPS`, applied to q and k.
    normalize: divide by phi(q) . z.
    scale: multiplies phi(q).
    eps: added to the normaliser.
  """
  log_decay: jnp.ndarray
  feature_map: str
  normalize: bool
  scale: float
  eps: float


def _scale(scale, head_dim, method):
  if scale is None:
    return 1.0 / math.sqrt(head_dim)
  if not isinstance(scale, (int, float)) or scale <= 0:
    raise ValueError(f"{method} attention: scale must be a positive float or None, got {scale!r}")
  return float(scale)


def _bool(value, name, method):
  if not isinstance(value, bool):
    raise ValueError(f"{method} attention: {name} must be True or False, got {value!r}")
  return value


def linear_spec(num_heads, head_dim, *, feature_map="elu1", normalize=True, decay=None,
                scale=None, eps=1e-6):
  """Kernelized linear attention (Katharopoulos et al.); no decay unless ``decay`` is given."""
  feature_maps.feature_map(feature_map)
  log_decay = (jnp.zeros((num_heads,), jnp.float32) if decay is None
               else decay_lib.log_decay_from(decay, num_heads, "linear"))
  return Spec(log_decay, feature_map, _bool(normalize, "normalize", "linear"),
              _scale(scale, head_dim, "linear"), float(eps))


def lightning_spec(num_heads, head_dim, *, layer_index=0, num_layers=1, decay=None,
                   feature_map="identity", scale=None):
  """Lightning attention (TransNormerLLM): no normaliser, the documented per-head decay."""
  feature_maps.feature_map(feature_map)
  log_decay = (decay_lib.lightning_log_decay(num_heads, layer_index, num_layers) if decay is None
               else decay_lib.log_decay_from(decay, num_heads, "lightning"))
  return Spec(log_decay, feature_map, False, _scale(scale, head_dim, "lightning"), 0.0)


def retention_spec(num_heads, head_dim, *, decay=None, feature_map="identity", scale=None):
  """RetNet retention: gamma_h = 1 - 2^(-5 - h), no normaliser."""
  feature_maps.feature_map(feature_map)
  log_decay = (decay_lib.retnet_log_decay(num_heads) if decay is None
               else decay_lib.log_decay_from(decay, num_heads, "retention"))
  return Spec(log_decay, feature_map, False, _scale(scale, head_dim, "retention"), 0.0)


SPECS = {"linear": linear_spec, "lightning": lightning_spec, "retention": retention_spec}


def spec_for(method: str, num_heads: int, head_dim: int, **options) -> Spec:
  if method not in SPECS:
    raise ValueError(f"linear attention state: method must be one of {sorted(SPECS)}, "
                     f"got {method!r}")
  return SPECS[method](num_heads, head_dim, **options)
