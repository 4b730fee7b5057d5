"""Small models, prompts and reference pieces shared by the decoding tests."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm.models import layers
from jaxllm.models.transformer import build

VOCAB = 37


def model(style="llama", **kw):
  cfg = dict(style=style, vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4, max_len=64)
  cfg.update(kw)
  return build(cfg, rngs=nnx.Rngs(0))


def prompt(b, t, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (b, t)), jnp.int32)


def full_sequence(prompt_BT, tokens_BN):
  """The sequence whose forward scores every generated token: the prompt and all but the last."""
  return jnp.concatenate([prompt_BT, tokens_BN[:, :-1]], axis=1)


def rotated_qk(block, x_BTD):
  """A block's queries and keys for inputs x, rotary positions 0..T-1 applied."""
  attn, cfg = block.attn, block.attn.cfg
  h = block.attn_norm(x_BTD)
  b, t, _ = h.shape
  q = attn.wq(h).reshape(b, t, cfg.num_heads, cfg.dim_per_head)
  k = attn.wk(h).reshape(b, t, cfg.kv_heads, cfg.dim_per_head)
  positions = jnp.arange(t)
  return layers.rope(q, positions, cfg.rope_theta), layers.rope(k, positions, cfg.rope_theta)
