"""q/k/v captured from a trained jaxllm LM on real text: the byte-level ``lm_efficiency`` model
or the long-context LM of ``configs/lm_long.py`` (``config_arg="long_smoke"``: trained on
512-token rows, against 64 for the ``lm_efficiency`` smoke model).

:func:`load_or_train` restores the softmax text model of the config from a run directory,
training it there first when the directory holds no finished run (the train loop resumes from
its checkpoints, so a finished run is only restored). :func:`capture_qkv` runs the model on a
byte sequence and records every layer's attention inputs through ``Attention.qkv`` (post-RoPE
q and k, v), propagating the residual stream with exact causal attention computed by
the block-sparse gather path over the full causal table: the same math as ``dense``, without
materialising T x T logits, so 4k-16k prompts fit in memory. RoPE lets the model run past its
training length; the patterns beyond it are the model's own, if less trained.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm.attention.sparse import patterns
from jaxllm.models import layers
from pallas_kernels.block_sparse import api as block_sparse

CONFIG_ARGS = (None, "smoke", "tiny", "long_smoke")


def lm_config(config_arg="smoke", steps=None):
  """The config of the captured LM (lm_efficiency's, or lm_long's smoke config for
  ``"long_smoke"``); ``steps`` overrides the training steps."""
  from configs import lm_efficiency, lm_long  # pylint: disable=g-import-not-at-top
  if config_arg not in CONFIG_ARGS:
    raise ValueError(f"capture: config_arg must be one of {list(CONFIG_ARGS)}, got {config_arg!r}")
  c = lm_long.get_config("smoke") if config_arg == "long_smoke" else lm_efficiency.get_config(
      config_arg)
  if steps is not None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
      raise ValueError(f"capture: steps must be a positive int, got {steps!r}")
    c.train.steps = steps
    c.train.checkpoint_every = steps
    c.optimizer.warmup_steps = min(int(c.optimizer.warmup_steps), max(steps // 5, 1))
  return c


def load_or_train(lm_workdir: str, *, config_arg="smoke", steps=None, progress=False):
  """(model, text task): the trained softmax byte LM of ``lm_workdir`` (trained there if new)."""
  from jaxllm.train.lm_task import TextTask  # pylint: disable=g-import-not-at-top
  from jaxllm.train.loop import train  # pylint: disable=g-import-not-at-top
  c = lm_config(config_arg, steps)
  model_cfg = c.model.to_dict()
  if "variants" in c:  # lm_efficiency: the softmax variant of its attention comparison
    model_cfg.update(c.variants.softmax.to_dict())
  if model_cfg.get("style") != "llama":
    raise ValueError("capture: needs the rope (llama style) model to run past its training length")
  task = TextTask(c, model_cfg)
  return train(c, lm_workdir, task, progress=progress).model, task


def text_tokens(task, length: int, *, batch: int = 1, seed: int = 0, max_tokens: int = 1 << 20):
  """int32 [B, length] windows of the task's held-out text (its validation documents)."""
  from jaxllm.data import pipeline  # pylint: disable=g-import-not-at-top
  data = pipeline.held_out_tokens(task.data, max_tokens)
  if len(data) <= length:
    raise ValueError(f"capture: held-out text has {len(data)} tokens, fewer than length={length}")
  start = np.random.default_rng(seed).integers(0, len(data) - length, size=batch)
  return jnp.asarray(np.stack([data[s:s + length] for s in start]).astype(np.int32))


def capture_qkv(model, tokens, *, block: int = 128):
  """Per layer (q [B, T, H, D], k [B, T, Hkv, D], v [B, T, Hkv, D]) of ``tokens`` [B, T]."""
  cfg = model.cfg
  if cfg.block != "standard" or cfg.io != "tokens":
    raise ValueError(f"capture: needs a token model of standard blocks, got block={cfg.block!r}, "
                     f"io={cfg.io!r}")
  t = tokens.shape[1]
  table = patterns.causal_table(t, t, block_q=block, block_k=block)

  @nnx.jit
  def one_layer(blk, x_BTD, positions_T):
    q, k, v = blk.attn.qkv(blk.attn_norm(x_BTD), positions_T)
    o = block_sparse.block_sparse_attention(q, k, v, table, causal=True, impl="xla")
    x_BTD = x_BTD + blk.attn.wo(o.reshape(x_BTD.shape[0], t, -1))
    return x_BTD + blk.mlp(blk.mlp_norm(x_BTD)), (q, k, v)

  x = model.tok_embed(tokens)
  positions = jnp.arange(t)
  if cfg.positions == "learned":
    x = x + model.pos_embed(positions)[None]
  out = []
  for blk in model.blocks:
    if not isinstance(blk, layers.Block):
      raise ValueError(f"capture: unsupported block {type(blk).__name__}")
    x, qkv = one_layer(blk, x, positions)
    out.append(jax.tree.map(lambda a: a.astype(jnp.float32), qkv))
  return out
