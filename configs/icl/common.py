"""Blocks the ICL study configs share, in the style of big_vision's ``configs/common.py``.

Every study config is a ConfigDict with the nested schema ``task``, ``model``, ``optimizer``,
``train`` (and ``eval`` where the study measures something after training). Regression prompts
use ``task.n_dims`` (input dimension d) and ``task.n_points`` (points in a prompt, the predicted
query included); ``train.steps`` counts optimizer updates. The backbone and optimizer follow
Garg et al. (2022): a GPT-2 decoder of 12 layers, 8 heads and width 256 trained with Adam at
1e-4 on batches of 64, the d and k curriculum growing every 2000 steps.
"""

import ml_collections


def check_arg(path: str, arg, allowed) -> None:
  """Raises ValueError naming the config file and the allowed variants."""
  if arg not in allowed:
    raise ValueError(f"{path}: unknown arg {arg!r}; allowed: {list(allowed)}")


def backbone(**overrides) -> ml_collections.ConfigDict:
  """The decoder (``jaxllm.models.transformer.build`` fields) at Garg et al.'s scale."""
  model = dict(style="gpt2", d_model=256, num_layers=12, num_heads=8, num_kv_heads=None,
               max_len=128, attention="dense", attention_impl="auto", attention_options={},
               dtype="float32", initializer_range=0.02)
  model.update(overrides)
  return ml_collections.ConfigDict(model)


def optimizer(name: str = "adam", learning_rate: float = 1e-4, **overrides):
  """An ``optimizer`` block as ``jaxllm.train.loop.make_optimizer`` reads it."""
  block = dict(name=name, learning_rate=learning_rate, schedule="constant", warmup_steps=0,
               grad_clip=None, hparams={})
  block.update(overrides)
  return ml_collections.ConfigDict(block)


def train(steps: int = 500_000, batch_size: int = 64, log_every: int = 500,
          checkpoint_every: int = 10_000) -> ml_collections.ConfigDict:
  """A ``train`` block as ``jaxllm.train.loop.train`` reads it."""
  return ml_collections.ConfigDict(dict(steps=steps, batch_size=batch_size, log_every=log_every,
                                        checkpoint_every=checkpoint_every))


def curriculum(dims_start: int = 5, dims_inc: int = 1, points_start: int = 11,
               points_inc: int = 2, interval: int = 2000) -> ml_collections.ConfigDict:
  """Garg et al.'s curriculum: d and k grow by the increments every ``interval`` steps."""
  return ml_collections.ConfigDict(dict(dims_start=dims_start, dims_inc=dims_inc,
                                        points_start=points_start, points_inc=points_inc,
                                        interval=interval))


# The smoke scale of the regression studies: a 3-layer width-64 decoder that trains in minutes on
# 2 CPU cores, narrower and shallower than the paper's small model (width 128, 4+ layers); a higher
# learning rate with warmup and a cosine decay makes up for fewer steps.
SMOKE_MODEL = dict(d_model=64, num_layers=3, num_heads=2, max_len=64, initializer_range=0.02)
SMOKE_OPTIMIZER = dict(learning_rate=1e-3, schedule="cosine", warmup_steps=200, grad_clip=1.0)


def shrink_to_smoke(c: ml_collections.ConfigDict, *, steps: int,
                    checkpoint_every: int = 1000) -> ml_collections.ConfigDict:
  """``c`` at the smoke scale: SMOKE_MODEL, SMOKE_OPTIMIZER and ``steps`` updates of 64 prompts."""
  c.model.update(**SMOKE_MODEL)
  c.optimizer.update(**SMOKE_OPTIMIZER)
  c.train.update(steps=steps, batch_size=64, log_every=100, checkpoint_every=checkpoint_every)
  return c
