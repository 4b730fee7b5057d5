"""Language-modelling tasks for ``jaxllm.train.loop``: next-token loss on masked targets and a
``TextTask`` that reads a text corpus through ``jaxllm.data.pipeline``."""

import jax.numpy as jnp
import optax

from jaxllm.data.pipeline import TextData
from jaxllm.models.transformer import build


def masked_lm_loss(model, batch):
  """Mean next-token cross-entropy over ``batch["mask"]`` (targets ``tokens[:, 1:]``).

  ``segment_ids`` / ``positions`` of a packed batch reach the model, so no target is predicted
  across a document boundary. Returns ``(loss, {"accuracy": ...})``.
  """
  packed = {name: batch[name][:, :-1] for name in ("segment_ids", "positions") if name in batch}
  logits = model(batch["tokens"][:, :-1], **packed)
  targets = batch["tokens"][:, 1:]
  mask = batch["mask"].astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  denom = jnp.maximum(mask.sum(), 1.0)
  return jnp.sum(ce * mask) / denom, {"accuracy": jnp.sum(correct * mask) / denom}


class TextTask:
  """Language modelling on a text corpus through ``jaxllm.data.pipeline`` (``config.text``).

  Packed rows score only targets inside their own document (``mask``); ``data_state`` /
  ``restore_data_state`` carry the grain iterator's state through checkpoints. Each process reads
  its own slice of the global batch (``host_local_batches``).
  """

  host_local_batches = True

  def __init__(self, config, model_cfg: dict):
    self.batch_size, self.seed = int(config.train.batch_size), int(config.seed)
    self.data = TextData(config.text, batch_size=self.batch_size, seed=self.seed)
    self.seq_len = int(config.text.seq_len)
    self.model_cfg = dict(model_cfg, vocab_size=self.data.tokenizer.vocab_size,
                          max_len=self.seq_len)

  def init_model(self, rngs):
    return build(self.model_cfg, rngs=rngs)

  def batch(self, step: int):
    return self.data.train(step)

  def data_state(self, step: int) -> dict:
    return self.data.train.state(step)

  def restore_data_state(self, state: dict):
    self.data.train.restore(state)

  def loss(self, model, batch):
    return masked_lm_loss(model, batch)

  def eval_batches(self, num):
    return self.data.eval_batches(num)
