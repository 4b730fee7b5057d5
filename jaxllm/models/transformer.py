"""Decoder-only transformer (GPT-2 or Llama style) over the pluggable attention API."""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.models import layers
from jaxllm.models.transnormer import TransNormerBlock
from jaxllm.models.config import TransformerConfig

# Block classes by ``model.block``; every class takes (cfg, layer_index, *, rngs) and is called
# as block(x_BTD, positions_T).
BLOCK_CLASSES = {"standard": layers.Block, "transnormer": TransNormerBlock}


class Transformer(nnx.Module):
  """Token LM (``io='tokens'``) or vector-in/vector-out model for ICL prompts (``io='vectors'``)."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d = cfg.d_model
    if cfg.io == "tokens":
      self.tok_embed = nnx.Embed(cfg.vocab_size, d, dtype=cfg.compute_dtype,
                                 param_dtype=cfg.weight_dtype,
                                 embedding_init=layers.dense_init(cfg.initializer_range), rngs=rngs)
    else:
      self.read_in = layers.linear(cfg, cfg.input_dim, d, rngs=rngs, use_bias=True)
    if cfg.positions == "learned":
      self.pos_embed = nnx.Embed(cfg.max_len, d, dtype=cfg.compute_dtype,
                                 param_dtype=cfg.weight_dtype,
                                 embedding_init=layers.dense_init(cfg.initializer_range / 2), rngs=rngs)
    block_cls = BLOCK_CLASSES[cfg.block]
    self.blocks = nnx.List([block_cls(cfg, i, rngs=rngs) for i in range(cfg.num_layers)])
    self.final_norm = layers.norm(cfg, rngs=rngs)
    if cfg.io == "tokens":
      if not cfg.tie_embeddings:
        self.lm_head = layers.linear(cfg, d, cfg.vocab_size, rngs=rngs, use_bias=False)
    else:
      self.read_out = layers.linear(cfg, d, cfg.output_dim, rngs=rngs, use_bias=True)

  def __call__(self, inputs, *, return_hidden: bool = False, positions=None, cache=None,
               output_index=None, segment_ids=None):
    """Runs the model.

    Args:
      inputs: int token ids [B, T] (``io='tokens'``) or real vectors [B, T, input_dim].
      return_hidden: also return the residual stream after the embedding and after every block.
      positions: int positions of the inputs, [T] or per row [B, T]; default 0..T-1.
      cache: one layer cache per block (``jaxllm.inference.cache``): every attention layer then
        attends through its cache (prefill or a decode step) and the caches come back updated.
      output_index: int [B]: compute the outputs only at this column of each row ([B, 1, ...]),
        e.g. a prompt's last token.
      segment_ids: int [B, T] document ids of packed rows (``jaxllm.data.packing``): attention
        stays inside each document; pass the per-document ``positions`` [B, T] with them so
        positions restart at every document. Not with a ``cache``.

    Returns:
      float32 outputs [B, T, vocab_size or output_dim]; with ``return_hidden`` a pair
      (outputs, hidden) where hidden is a list of num_layers + 1 arrays [B, T, d_model]; with a
      ``cache`` the outputs (or that pair) and the updated caches as a tuple.
    """
    cfg = self.cfg
    t = inputs.shape[1]
    if t > cfg.max_len and cfg.positions == "learned":
      raise ValueError(f"sequence length {t} exceeds model.max_len={cfg.max_len}")
    if cfg.io == "tokens":
      x_BTD = self.tok_embed(inputs)
    else:
      if inputs.shape[-1] != cfg.input_dim:
        raise ValueError(
            f"input vectors have dim {inputs.shape[-1]}, model.input_dim={cfg.input_dim}")
      x_BTD = self.read_in(inputs.astype(cfg.compute_dtype))
    positions_T = jnp.arange(t) if positions is None else jnp.asarray(positions)
    if cfg.positions == "learned":
      pos_BTD = self.pos_embed(positions_T)
      x_BTD = x_BTD + (pos_BTD[None] if pos_BTD.ndim == 2 else pos_BTD)
    if cache is not None and len(cache) != len(self.blocks):
      raise ValueError(f"cache holds {len(cache)} layers, the model has {len(self.blocks)}")
    if segment_ids is not None and (cache is not None or cfg.block != "standard"):
      raise ValueError("segment_ids (packed rows) need model.block='standard' and no cache; got "
                       f"block={cfg.block!r}, cache={'given' if cache is not None else None}")
    seg = {} if segment_ids is None else {"segment_ids": jnp.asarray(segment_ids)}
    hidden, new_cache = [x_BTD], []
    for i, block in enumerate(self.blocks):
      if cache is None:
        x_BTD = block(x_BTD, positions_T, **seg)
      else:
        x_BTD, layer_cache = block(x_BTD, positions_T, cache[i])
        new_cache.append(layer_cache)
      hidden.append(x_BTD)
    if output_index is not None:
      x_BTD = jnp.take_along_axis(x_BTD, jnp.asarray(output_index)[:, None, None], axis=1)
    y_BTD = self.final_norm(x_BTD)
    if cfg.io == "tokens":
      if cfg.tie_embeddings:
        out = self.tok_embed.attend(y_BTD)
      else:
        out = self.lm_head(y_BTD)
    else:
      out = self.read_out(y_BTD)
    out = out.astype(jnp.float32)
    out = (out, hidden) if return_hidden else out
    return out if cache is None else (out, tuple(new_cache))


def build(model_cfg, *, rngs: nnx.Rngs) -> Transformer:
  """Builds a Transformer from a config dict / ConfigDict / TransformerConfig."""
  cfg = model_cfg if isinstance(model_cfg, TransformerConfig) else (
      TransformerConfig.from_config(model_cfg))
  return Transformer(cfg, rngs=rngs)


def count_params(model: nnx.Module, *, non_embedding: bool = False) -> int:
  """Number of parameters; ``non_embedding`` drops token/position embeddings (Step-Law N)."""
  state = nnx.state(model, nnx.Param).to_pure_dict()
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    names = [str(getattr(p, "key", p)) for p in path]
    if non_embedding and any(n in ("tok_embed", "pos_embed") for n in names):
      continue
    total += leaf.size
  return total
