"""TransNormerLLM-style decoder block: gated linear attention + simple GLU, SRMSNorm throughout.

  x = x + GLA(SRMSNorm(x)),   GLA(x) = (SRMSNorm(attn(silu(x W_q), silu(x W_k), x W_v)) * x W_u) W_o
  x = x + SGLU(SRMSNorm(x)),  SGLU(x) = ((x W_v) * (x W_u)) W_o

``attn`` is the configured attention method (``lightning`` in TransNormerLLM, with the per-layer
decay schedule of :mod:`jaxllm.attention.linear.decay`). Relative positions: with
``model.positions='rope'`` the block rotates q and k by learnable per-head frequencies initialised
at the rotary ones (LRPE's unitary relative encoding realised as 2x2 rotations, so the head dim is
unchanged); ``'learned'`` positions are added at the embedding and ``'none'`` relies on the decay.

The block keeps the decoder-block interface (``Block(cfg, layer_index, *, rngs)``, called as
``block(x_BTD, positions_T)``) and adds ``init_state``/``step`` for O(1)-per-token decoding.
"""


import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm import attention as attn_api
from jaxllm.attention import linear as linear_attn
from jaxllm.models import layers
from jaxllm.models.config import TransformerConfig

_FORM_OPTIONS = ("form", "chunk_size")


def srms_norm(x, eps: float = 1e-6):
  """Simple RMSNorm: x / rms(x), no learned scale, computed in float32."""
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


class LRPE(nnx.Module):
  """Learnable relative rotation: q_t, k_s rotated by theta * t, theta * s.

  theta is per key/value head; query heads share their group's theta so that q_t . k_s depends on
  t - s only.
  """

  def __init__(self, cfg: TransformerConfig):
    d = cfg.dim_per_head
    freq = cfg.rope_theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    self.theta = nnx.Param(jnp.tile(freq[None, :], (cfg.kv_heads, 1)))

  def __call__(self, x_BTHD, positions_T):
    theta_KF = self.theta.value
    theta_HF = jnp.repeat(theta_KF, x_BTHD.shape[2] // theta_KF.shape[0], axis=0)
    angle = positions_T.astype(jnp.float32)[None, :, None, None] * theta_HF[None, None]
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    x1, x2 = jnp.split(x_BTHD.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTHD.dtype)


class TransNormerBlock(nnx.Module):
  """Pre-SRMSNorm block with gated (linear) attention and a simple GLU channel mixer."""

  def __init__(self, cfg: TransformerConfig, layer_index: int, *, rngs: nnx.Rngs):
    self.cfg = cfg
    h, hkv, dh, d = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head, cfg.d_model
    out_std = layers.residual_std(cfg)
    self.wq = layers.linear(cfg, d, h * dh, rngs=rngs)
    self.wk = layers.linear(cfg, d, hkv * dh, rngs=rngs)
    self.wv = layers.linear(cfg, d, hkv * dh, rngs=rngs)
    self.wu = layers.linear(cfg, d, h * dh, rngs=rngs)
    self.wo = layers.linear(cfg, h * dh, d, rngs=rngs, std=out_std)
    self.glu_v = layers.linear(cfg, d, cfg.hidden_dim, rngs=rngs)
    self.glu_u = layers.linear(cfg, d, cfg.hidden_dim, rngs=rngs)
    self.glu_o = layers.linear(cfg, cfg.hidden_dim, d, rngs=rngs, std=out_std)
    self.lrpe = LRPE(cfg) if cfg.positions == "rope" else None
    self.options = layers.attention_options(cfg, layer_index)

  def _qkvu(self, x_BTD, positions_T):
    cfg = self.cfg
    b, t, _ = x_BTD.shape
    y = srms_norm(x_BTD, cfg.norm_eps)
    q = jax.nn.silu(self.wq(y)).reshape(b, t, cfg.num_heads, cfg.dim_per_head)
    k = jax.nn.silu(self.wk(y)).reshape(b, t, cfg.kv_heads, cfg.dim_per_head)
    v = self.wv(y).reshape(b, t, cfg.kv_heads, cfg.dim_per_head)
    if self.lrpe is not None:
      q, k = self.lrpe(q, positions_T), self.lrpe(k, positions_T)
    return q, k, v, self.wu(y)

  def _finish(self, x_BTD, o_BTHD, u_BTF):
    b, t = o_BTHD.shape[:2]
    o = srms_norm(o_BTHD.reshape(b, t, -1), self.cfg.norm_eps) * u_BTF
    x_BTD = x_BTD + self.wo(o)
    y = srms_norm(x_BTD, self.cfg.norm_eps)
    return x_BTD + self.glu_o(self.glu_v(y) * self.glu_u(y))

  def __call__(self, x_BTD, positions_T):
    q, k, v, u = self._qkvu(x_BTD, positions_T)
    o = attn_api.attention(q, k, v, method=self.cfg.attention, impl=self.cfg.attention_impl,
                           causal=True, **self.options)
    return self._finish(x_BTD, o, u)

  def _state_options(self):
    if self.cfg.attention not in ("linear", "lightning", "retention"):
      raise ValueError(f"recurrent decoding needs model.attention in ['linear', 'lightning', "
                       f"'retention'], got {self.cfg.attention!r}")
    return {k: v for k, v in self.options.items() if k not in _FORM_OPTIONS}

  def init_state(self, batch: int) -> linear_attn.LinearState:
    """Empty O(1) decoding state of this block's attention."""
    cfg = self.cfg
    return linear_attn.init_state(cfg.attention, batch, cfg.num_heads, cfg.dim_per_head,
                                  **self._state_options())

  def step(self, x_BD, position, state: linear_attn.LinearState):
    """One token: x_BD at integer ``position`` -> (output [B, D], next state)."""
    self._state_options()
    q, k, v, u = self._qkvu(x_BD[:, None], jnp.reshape(position, (1,)))
    o_BHD, state = linear_attn.step(state, q[:, 0], k[:, 0], v[:, 0])
    return self._finish(x_BD[:, None], o_BHD[:, None], u)[:, 0], state
