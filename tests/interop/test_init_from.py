"""Fine-tuning an imported model: ``train.init_from`` starts the loop from a converted checkpoint."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from jaxllm.interop import checkpoint, convert
from jaxllm.models.config import TransformerConfig
from jaxllm.models.transformer import Transformer
from jaxllm.train import loop
from jaxllm.train.metrics import read_metrics
from tests.interop.test_hf import DATA


class NextToken:
  """Next-token loss on one fixed batch, with the converted model's config."""

  def __init__(self, cfg: TransformerConfig):
    self.cfg = cfg
    self.tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, cfg.vocab_size)

  def init_model(self, rngs):
    return Transformer(self.cfg, rngs=rngs)

  def batch(self, step):
    del step
    return {"tokens": self.tokens}

  def loss(self, model, batch):
    logits = model(batch["tokens"][:, :-1]).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tokens"][:, 1:]).mean()
    return loss, {}


def _config(init_from, steps=2):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.optimizer = ml_collections.ConfigDict(dict(name="adamw", learning_rate=1e-3))
  c.train = ml_collections.ConfigDict(dict(steps=steps, batch_size=2, log_every=1,
                                           checkpoint_every=0, init_from=init_from))
  return c


def test_first_loss_is_the_imported_models(tmp_path, capsys):
  ckpt = str(tmp_path / "ckpt")
  convert.main([f"--hf={os.path.join(DATA, 'llama')}", f"--out={ckpt}"])
  capsys.readouterr()
  imported = checkpoint.load(ckpt)
  task = NextToken(imported.cfg)
  want = float(task.loss(imported, task.batch(0))[0])
  run = str(tmp_path / "run")
  loop.train(_config(ckpt), run, task, progress=False)
  first = read_metrics(run)[0]
  assert first["step"] == 1
  np.testing.assert_allclose(first["loss"], want, rtol=1e-6)
  fresh = str(tmp_path / "fresh")
  loop.train(_config(None), fresh, task, progress=False)
  assert abs(read_metrics(fresh)[0]["loss"] - want) > 1e-3  # a random init differs


def test_init_from_a_different_model_names_the_parameter(tmp_path, capsys):
  ckpt = str(tmp_path / "ckpt")
  convert.main([f"--hf={os.path.join(DATA, 'llama')}", f"--out={ckpt}"])
  capsys.readouterr()
  cfg = checkpoint.load(ckpt).cfg
  wider = TransformerConfig.from_config({**{f: getattr(cfg, f) for f in (
      "num_layers", "num_heads", "num_kv_heads", "vocab_size", "max_len", "positions", "norm",
      "mlp", "use_bias")}, "d_model": cfg.d_model * 2})
  with pytest.raises(ValueError, match="init_from.*shape"):
    loop.train(_config(ckpt), str(tmp_path / "run"), NextToken(wider), progress=False)
