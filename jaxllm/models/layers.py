"""Building blocks of the decoder: norms, MLPs, rotary positions, grouped-query attention."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm import attention as attn_api
from jaxllm.models.config import TransformerConfig


def dense_init(std: float):
  return nnx.initializers.normal(stddev=std)


def residual_std(cfg: TransformerConfig) -> float:
  """GPT-2's init of the projections into the residual stream: initializer_range / sqrt(2 L)."""
  return cfg.initializer_range / math.sqrt(2 * cfg.num_layers)


def linear(cfg: TransformerConfig, d_in: int, d_out: int, *, rngs, std: float | None = None,
           use_bias: bool | None = None) -> nnx.Linear:
  """A linear layer with normal(std) kernels; std defaults to ``cfg.initializer_range``."""
  std = cfg.initializer_range if std is None else std
  return nnx.Linear(
      d_in, d_out, use_bias=cfg.use_bias if use_bias is None else use_bias,
      dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, kernel_init=dense_init(std),
      rngs=rngs)


def norm(cfg: TransformerConfig, *, rngs) -> nnx.Module:
  if cfg.norm == "rmsnorm":
    return nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, dtype=cfg.compute_dtype,
                       param_dtype=cfg.weight_dtype, rngs=rngs)
  return nnx.LayerNorm(cfg.d_model, epsilon=cfg.norm_eps, use_bias=cfg.use_bias,
                       dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs)


def rope_frequencies(d: int, theta: float, scaling: tuple = ()) -> jax.Array:
  """Float32 [D / 2] rotary frequencies theta^(-2i / D), optionally rescaled.

  ``scaling`` of type ``llama3`` follows Llama 3.1's rule (the ``llama3`` rope type of Meta's
  release and of transformers): wavelengths longer than ``original_max_len / low_freq_factor``
  are stretched by ``factor``, those shorter than ``original_max_len / high_freq_factor`` are
  kept, and the band between interpolates linearly in ``original_max_len / wavelength``.
  """
  freq = 1.0 / theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d)
  if not scaling:
    return freq
  s = dict(scaling)  # validated by TransformerConfig: the only type is "llama3"
  factor, low, high, ctx = (s["factor"], s["low_freq_factor"], s["high_freq_factor"],
                            s["original_max_len"])
  ratio = ctx * freq / (2 * math.pi)  # original context length over the wavelength
  smooth = jnp.clip((ratio - low) / (high - low), 0.0, 1.0)
  return (1 - smooth) * freq / factor + smooth * freq


def rope(x_BTHD: jax.Array, positions_T: jax.Array, theta: float, scaling: tuple = ()) -> jax.Array:
  """Rotary embedding (rotate-half convention) in float32; positions [T] or per row [B, T];
  ``scaling`` as in :func:`rope_frequencies`."""
  freq = rope_frequencies(x_BTHD.shape[-1], theta, scaling)
  angle = positions_T.astype(jnp.float32)[..., None] * freq  # [T, F] or [B, T, F]
  sin = jnp.sin(angle)[..., None, :]
  cos = jnp.cos(angle)[..., None, :]
  x1, x2 = jnp.split(x_BTHD.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTHD.dtype)


def attention_options(cfg: TransformerConfig, layer_index: int) -> dict:
  """The configured attention options, plus the layer position for methods whose math depends
  on depth (e.g. per-layer decay schedules)."""
  options = dict(cfg.attention_options)
  accepted = attn_api.get(cfg.attention).options
  if "layer_index" in accepted:
    options.setdefault("layer_index", layer_index)
  if "num_layers" in accepted:
    options.setdefault("num_layers", cfg.num_layers)
  return options


class MLP(nnx.Module):
  """GELU MLP (GPT-2) or SwiGLU (Llama)."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.kind = cfg.mlp
    f, d = cfg.hidden_dim, cfg.d_model
    out_std = residual_std(cfg)
    if cfg.mlp == "swiglu":
      self.w_gate = linear(cfg, d, f, rngs=rngs)
      self.w_up = linear(cfg, d, f, rngs=rngs)
      self.w_down = linear(cfg, f, d, rngs=rngs, std=out_std)
    else:
      self.fc_in = linear(cfg, d, f, rngs=rngs)
      self.fc_out = linear(cfg, f, d, rngs=rngs, std=out_std)

  def __call__(self, x_BTD):
    if self.kind == "swiglu":
      return self.w_down(jax.nn.silu(self.w_gate(x_BTD)) * self.w_up(x_BTD))
    return self.fc_out(jax.nn.gelu(self.fc_in(x_BTD), approximate=True))


class Attention(nnx.Module):
  """Multi-head / grouped-query self-attention calling the one attention dispatch site."""

  def __init__(self, cfg: TransformerConfig, layer_index: int, *, rngs: nnx.Rngs):
    self.cfg = cfg
    h, hkv, dh, d = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head, cfg.d_model
    self.wq = linear(cfg, d, h * dh, rngs=rngs, use_bias=cfg.qkv_bias)
    self.wk = linear(cfg, d, hkv * dh, rngs=rngs, use_bias=cfg.qkv_bias)
    self.wv = linear(cfg, d, hkv * dh, rngs=rngs, use_bias=cfg.qkv_bias)
    self.wo = linear(cfg, h * dh, d, rngs=rngs, std=residual_std(cfg))
    self.options = attention_options(cfg, layer_index)

  def qkv(self, x_BTD, positions_T):
    """The attention inputs: q [B, T, H, D], k and v [B, T, Hkv, D] (rotated when rope)."""
    b, t, _ = x_BTD.shape
    cfg = self.cfg
    q = self.wq(x_BTD).reshape(b, t, cfg.num_heads, cfg.dim_per_head)
    k = self.wk(x_BTD).reshape(b, t, cfg.kv_heads, cfg.dim_per_head)
    v = self.wv(x_BTD).reshape(b, t, cfg.kv_heads, cfg.dim_per_head)
    if cfg.positions == "rope":
      q = rope(q, positions_T, cfg.rope_theta, cfg.rope_scaling)
      k = rope(k, positions_T, cfg.rope_theta, cfg.rope_scaling)
    return q, k, v

  def __call__(self, x_BTD, positions_T, cache=None, segment_ids=None):
    """Self-attention of x [B, T, E] at ``positions_T`` ([T] or per row [B, T]).

    With a layer ``cache`` (``jaxllm.inference.cache``) the cache attends, by the method's
    registered decode rule, and the call returns (out, updated cache). ``segment_ids`` int
    [B, T] (packed rows, no cache) keep each token's attention inside its own document.
    """
    b, t, _ = x_BTD.shape
    cfg = self.cfg
    q, k, v = self.qkv(x_BTD, positions_T)
    if cache is not None:
      o, cache = cache.attend(q, k, v, positions_T, method=cfg.attention,
                              impl=cfg.attention_impl, options=self.options)
      return self.wo(o.reshape(b, t, cfg.num_heads * cfg.dim_per_head)), cache
    o = attn_api.attention(q, k, v, method=cfg.attention, impl=cfg.attention_impl, causal=True,
                           segment_ids=segment_ids, **self.options)
    return self.wo(o.reshape(b, t, cfg.num_heads * cfg.dim_per_head))


class Block(nnx.Module):
  """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, cfg: TransformerConfig, layer_index: int, *, rngs: nnx.Rngs):
    self.attn_norm = norm(cfg, rngs=rngs)
    self.attn = Attention(cfg, layer_index, rngs=rngs)
    self.mlp_norm = norm(cfg, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x_BTD, positions_T, cache=None, segment_ids=None):
    """With a layer ``cache`` returns (x, updated cache); see :meth:`Attention.__call__`."""
    if cache is None:
      x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD), positions_T, segment_ids=segment_ids)
      return x_BTD + self.mlp(self.mlp_norm(x_BTD))
    a, cache = self.attn(self.attn_norm(x_BTD), positions_T, cache)
    x_BTD = x_BTD + a
    return x_BTD + self.mlp(self.mlp_norm(x_BTD)), cache
