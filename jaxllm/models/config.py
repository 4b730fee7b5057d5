"""Validated transformer configuration (built from the ``model`` block of an experiment config)."""

import dataclasses

import jax.numpy as jnp

POSITIONS = ("learned", "rope", "none")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
IO = ("tokens", "vectors")
BLOCKS = ("standard", "transnormer")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Rotary frequency rescalings and the keys each needs (Llama 3.1's ``rope_scaling``).
ROPE_SCALINGS = {"llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_len")}

# Preset block styles; any field can still be overridden.
STYLES = {
    "gpt2": dict(positions="learned", norm="layernorm", mlp="gelu", use_bias=True),
    "llama": dict(positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False),
}


def _choice(field, value, allowed):
  if value not in allowed:
    raise ValueError(f"model.{field}={value!r} is not valid; allowed: {list(allowed)}")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Decoder-only transformer hyperparameters.

  ``io='tokens'`` embeds token ids and returns vocabulary logits; ``io='vectors'`` reads real
  vectors in through a linear layer and returns ``output_dim`` reals per position (ICL prompts).
  """
  d_model: int = 128
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int | None = None  # None -> num_heads (MHA); fewer -> GQA
  head_dim: int | None = None  # None -> d_model // num_heads
  mlp_dim: int | None = None  # None -> 4 d_model (gelu) or 8/3 d_model rounded to 64 (swiglu)
  max_len: int = 1024
  io: str = "tokens"
  vocab_size: int = 0
  input_dim: int = 0
  output_dim: int = 0
  positions: str = "learned"
  norm: str = "layernorm"
  mlp: str = "gelu"
  use_bias: bool = True
  qkv_bias: bool | None = None  # None -> use_bias; True with use_bias=False is Qwen2's layout
  block: str = "standard"
  tie_embeddings: bool = False
  rope_theta: float = 10000.0
  rope_scaling: tuple = ()  # sorted (name, value) pairs with a "type" in ROPE_SCALINGS; () none
  norm_eps: float = 1e-5
  # Standard deviation of the normal weight init (transformers' GPT2Config.initializer_range);
  # residual output projections use it / sqrt(2 num_layers), position embeddings half of it.
  initializer_range: float = 0.02
  attention: str = "dense"
  attention_impl: str = "auto"
  attention_options: tuple = ()  # sorted (name, value) pairs, hashable
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if not self.initializer_range > 0:
      raise ValueError(f"model.initializer_range must be > 0, got {self.initializer_range}")
    for f in ("d_model", "num_layers", "num_heads", "max_len"):
      if getattr(self, f) < 1:
        raise ValueError(f"model.{f} must be >= 1, got {getattr(self, f)}")
    _choice("positions", self.positions, POSITIONS)
    _choice("norm", self.norm, NORMS)
    _choice("mlp", self.mlp, MLPS)
    _choice("io", self.io, IO)
    _choice("block", self.block, BLOCKS)
    _choice("dtype", self.dtype, DTYPES)
    _choice("param_dtype", self.param_dtype, DTYPES)
    if self.head_dim is None and self.d_model % self.num_heads:
      raise ValueError(
          f"model.d_model={self.d_model} is not divisible by model.num_heads={self.num_heads}; "
          "change one of them or set model.head_dim")
    if self.kv_heads < 1 or self.num_heads % self.kv_heads:
      raise ValueError(
          f"model.num_heads={self.num_heads} must be a multiple of "
          f"model.num_kv_heads={self.num_kv_heads}")
    if self.positions == "rope" and self.dim_per_head % 2:
      raise ValueError(f"rotary positions need an even head dim, got {self.dim_per_head}")
    if self.rope_scaling:
      self._check_rope_scaling()
    if self.io == "tokens" and self.vocab_size < 1:
      raise ValueError("model.vocab_size must be >= 1 when model.io='tokens'")
    if self.io == "vectors" and (self.input_dim < 1 or self.output_dim < 1):
      raise ValueError("model.input_dim and model.output_dim must be >= 1 when model.io='vectors'")
    if self.tie_embeddings and self.io != "tokens":
      raise ValueError("model.tie_embeddings needs model.io='tokens'")

  def _check_rope_scaling(self):
    scaling = dict(self.rope_scaling)
    kind = scaling.pop("type", None)
    _choice("rope_scaling.type", kind, ROPE_SCALINGS)
    if self.positions != "rope":
      raise ValueError(f"model.rope_scaling needs model.positions='rope', got {self.positions!r}")
    need = set(ROPE_SCALINGS[kind])
    if set(scaling) != need:
      raise ValueError(f"model.rope_scaling of type {kind!r} needs exactly the keys "
                       f"{sorted(need)}, got {sorted(scaling)}")
    if not scaling["factor"] > 0 or not scaling["high_freq_factor"] > scaling["low_freq_factor"] > 0:
      raise ValueError("model.rope_scaling needs factor > 0 and high_freq_factor > "
                       f"low_freq_factor > 0, got {scaling}")

  @property
  def kv_heads(self) -> int:
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def hidden_dim(self) -> int:
    if self.mlp_dim:
      return self.mlp_dim
    if self.mlp == "swiglu":
      return 64 * -(-int(8 * self.d_model / 3) // 64)
    return 4 * self.d_model

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def weight_dtype(self):
    return DTYPES[self.param_dtype]

  @classmethod
  def from_config(cls, cfg) -> "TransformerConfig":
    """Builds from a dict/ConfigDict; ``style`` fills block defaults, unknown keys are errors."""
    d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    style = d.pop("style", None)
    if style is not None:
      _choice("style", style, STYLES)
      d = {**STYLES[style], **{k: v for k, v in d.items() if k not in STYLES[style] or v is not None}}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"unknown model fields {unknown}; allowed: {sorted(known | {'style'})}")
    for f in ("attention_options", "rope_scaling"):
      opts = d.get(f) or {}
      if isinstance(opts, dict):
        d[f] = tuple(sorted(opts.items()))
    return cls(**d)
