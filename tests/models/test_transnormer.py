"""TransNormerLLM-style block: causality, form agreement, token-by-token decoding, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxllm.models import transformer
from jaxllm.models.config import TransformerConfig
from jaxllm.models.transnormer import TransNormerBlock, srms_norm


def rel_rmse(x, y):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return float(np.sqrt(np.mean((x - y) ** 2)) / (np.sqrt(np.mean(y ** 2)) + 1e-30))


def _cfg(**kw):
  base = dict(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=37, max_len=64,
              positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False,
              attention="lightning", attention_options=(("chunk_size", 8),))
  base.update(kw)
  return TransformerConfig(**base)


def _lm(**kw):
  return transformer.Transformer(_cfg(block="transnormer", **kw), rngs=nnx.Rngs(0))


def test_srms_norm():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8)) * 5, jnp.float32)
  y = srms_norm(x)
  np.testing.assert_allclose(jnp.mean(y * y, axis=-1), 1.0, rtol=1e-4)


def test_block_is_causal_and_forms_agree():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 21, 32)), jnp.float32)
  pos = jnp.arange(21)
  outs = {}
  for form in ("parallel", "chunked", "recurrent"):
    block = TransNormerBlock(_cfg(attention_options=(("chunk_size", 4), ("form", form))), 1,
                             rngs=nnx.Rngs(3))
    outs[form] = block(x, pos)
  for form in ("chunked", "recurrent"):
    assert rel_rmse(outs[form], outs["parallel"]) < 1e-5
  changed = x.at[:, 15:].set(0.0)
  y2 = block(changed, pos)
  np.testing.assert_allclose(y2[:, :15], outs["recurrent"][:, :15], rtol=1e-5, atol=1e-6)
  assert not np.allclose(y2[:, 15:], outs["recurrent"][:, 15:])


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_decoding_reproduces_logits(positions):
  """Recurrent decoding (O(1) state per layer) gives the full forward pass's logits per token."""
  model = _lm(positions=positions)
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 37, size=(2, 19)))
  want = model(tokens)
  states = [blk.init_state(2) for blk in model.blocks]
  got = []
  for t in range(19):
    x = model.tok_embed(tokens[:, t])
    if positions == "learned":
      x = x + model.pos_embed(jnp.asarray(t))
    for i, blk in enumerate(model.blocks):
      x, states[i] = blk.step(x, t, states[i])
    got.append(model.lm_head(model.final_norm(x)))
  assert rel_rmse(jnp.stack(got, axis=1), want) < 1e-4


def test_lm_trains():
  """A few Adam steps on a repeating sequence reduce the loss; every parameter gets a gradient."""
  model = _lm()
  tokens = jnp.tile(jnp.arange(8), (4, 3))
  graphdef, params = nnx.split(model, nnx.Param)
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  def loss_fn(params):
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  @jax.jit
  def train_step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, grads

  losses = []
  for i in range(30):
    params, opt_state, loss, grads = train_step(params, opt_state)
    if i == 0:
      norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
      assert all(np.isfinite(norms)) and min(norms) > 0
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0]


def test_step_needs_a_linear_method():
  block = TransNormerBlock(_cfg(attention="dense", attention_options=()), 0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="model.attention"):
    block.init_state(1)
