"""Decoder transformer: causality, shapes, hidden states, config validation, golden first step."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxllm.models.config import TransformerConfig
from jaxllm.models.transformer import build, count_params

SMALL = dict(d_model=32, num_layers=2, num_heads=4, vocab_size=61, max_len=32)


@pytest.mark.parametrize("style,kv,extra", [
    ("gpt2", None, {}), ("llama", 2, {}), ("llama", 1, {}),
    ("llama", None, dict(block="transnormer", attention="lightning")),
])
def test_future_tokens_do_not_change_past_logits(style, kv, extra):
  model = build(dict(SMALL, style=style, num_kv_heads=kv, **extra), rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, 61)
  changed = tokens.at[:, 9:].set((tokens[:, 9:] + 7) % 61)
  a, b = model(tokens), model(changed)
  np.testing.assert_allclose(np.asarray(a[:, :9]), np.asarray(b[:, :9]), atol=1e-6)
  assert np.abs(np.asarray(a[:, 9:] - b[:, 9:])).max() > 1e-4  # and the future does change


def test_vector_io_and_hidden_states():
  model = build(dict(SMALL, style="gpt2", io="vectors", input_dim=5, output_dim=1, vocab_size=0),
                rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (3, 11, 5))
  out, hidden = model(x, return_hidden=True)
  assert out.shape == (3, 11, 1) and out.dtype == jnp.float32
  assert len(hidden) == 3 and all(h.shape == (3, 11, 32) for h in hidden)
  # the read-out is a linear map of the final normed hidden state
  np.testing.assert_allclose(
      np.asarray(model.read_out(model.final_norm(hidden[-1]))), np.asarray(out), atol=1e-6)


def test_param_counts_match_the_formula():
  cfg = dict(SMALL, style="gpt2")
  model = build(cfg, rngs=nnx.Rngs(0))
  d, f, v, t, L = 32, 128, 61, 32, 2
  per_block = (4 * (d * d + d)) + (d * f + f + f * d + d) + 2 * (2 * d)
  expected = v * d + t * d + L * per_block + 2 * d + d * v
  assert count_params(model) == expected
  assert count_params(model, non_embedding=True) == expected - v * d - t * d


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = build(dict(SMALL, style="llama", dtype="bfloat16"), rngs=nnx.Rngs(0))
  logits = model(jnp.zeros((1, 8), jnp.int32))
  assert logits.dtype == jnp.float32
  assert model.blocks[0].attn.wq.kernel[...].dtype == jnp.float32


@pytest.mark.parametrize("bad,match", [
    (dict(d_model=30, num_heads=4), "not divisible by model.num_heads"),
    (dict(num_kv_heads=3), "multiple of model.num_kv_heads"),
    (dict(norm="batchnorm"), "model.norm='batchnorm' is not valid; allowed"),
    (dict(style="gpt5"), "model.style='gpt5' is not valid"),
    (dict(attention="nope"), "unknown attention method 'nope'; valid methods"),
    (dict(dimension=3), "unknown model fields \\['dimension'\\]"),
    (dict(vocab_size=0), "vocab_size must be >= 1"),
    (dict(initializer_range=0.0), "model.initializer_range must be > 0"),
])
def test_bad_model_configs_raise(bad, match):
  with pytest.raises(ValueError, match=match):
    build(dict(SMALL, **bad), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("init", [0.02, 0.1])
def test_initializer_range_sets_the_weight_scales(init):
  # Wide layers so the sample standard deviations sit within 3% of their targets.
  cfg = dict(SMALL, style="gpt2", d_model=256, num_layers=2, num_heads=4,
             initializer_range=init)
  model = build(cfg, rngs=nnx.Rngs(0))
  attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
  residual = init / math.sqrt(2 * 2)
  for w, want in ((attn.wq.kernel, init), (mlp.fc_in.kernel, init), (attn.wo.kernel, residual),
                  (mlp.fc_out.kernel, residual), (model.tok_embed.embedding, init),
                  (model.pos_embed.embedding, init / 2)):
    np.testing.assert_allclose(float(jnp.std(w[...])), want, rtol=0.03)


def test_sequence_longer_than_max_len_raises():
  model = build(dict(SMALL, style="gpt2"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="exceeds model.max_len=32"):
    model(jnp.zeros((1, 33), jnp.int32))


def _first_two_losses():
  model = build(dict(SMALL, style="gpt2"), rngs=nnx.Rngs(42))
  tokens = jax.random.randint(jax.random.key(0), (4, 16), 0, 61)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = params.to_pure_dict()

  def loss_fn(p):
    logits = nnx.merge(graphdef, nnx.State(p), rest)(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  opt = optax.adam(1e-2)
  loss0, grads = jax.value_and_grad(loss_fn)(params)
  updates, _ = opt.update(grads, opt.init(params), params)
  return float(loss0), float(loss_fn(optax.apply_updates(params, updates)))


def test_golden_one_step_loss():
  loss0, loss1 = _first_two_losses()
  # Small init gives near-uniform predictions: the first loss is ~ln(V).
  assert abs(loss0 - math.log(61)) < 0.05
  # Golden values pinned from this exact setup (seed 42, Adam 1e-2, one step, float32 CPU);
  # a change here means the model's numerics changed.
  np.testing.assert_allclose([loss0, loss1], GOLDEN, rtol=2e-5)


GOLDEN = [4.130603313446045, 3.833383321762085]


def _markov_batch(rng, batch, length, vocab):
  """Sequences from a fresh random chain per row: every token has 2 allowed successors."""
  out = np.zeros((batch, length), np.int32)
  for b in range(batch):
    succ = np.stack([rng.choice(vocab, 2, replace=False) for _ in range(vocab)])
    tok = rng.integers(vocab)
    for i in range(length):
      out[b, i] = tok
      tok = succ[tok, rng.integers(2)]
  return out


@pytest.mark.slow
def test_two_layer_decoder_learns_in_context_bigrams():
  """Induction-head check of the backbone: only in-context bigram statistics predict the next
  token (log 20 = 3.0 nats without them, log 2 = 0.69 with the chain known). Measured in a run
  of the same model with a 1500-step schedule: training loss 3.0 at init, 1.6 after 600 and 1.2
  after 1400 Adam steps; this test's 800-step run passes the 1.8 bound."""
  vocab, length, steps = 20, 128, 800
  model = build(dict(style="gpt2", d_model=64, num_layers=2, num_heads=2, max_len=length,
                     io="tokens", vocab_size=vocab, attention="dense"), rngs=nnx.Rngs(0))
  schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-3, 100, steps)
  opt = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule)),
                      wrt=nnx.Param)

  def loss_fn(m, x):  # scored after 32 tokens of context
    ce = optax.softmax_cross_entropy_with_integer_labels(m(x[:, :-1]), x[:, 1:])
    return ce[:, 32:].mean()

  @nnx.jit
  def step(m, opt, x):
    loss, grads = nnx.value_and_grad(loss_fn)(m, x)
    opt.update(m, grads)
    return loss

  rng = np.random.default_rng(0)
  for _ in range(steps):
    step(model, opt, jnp.asarray(_markov_batch(rng, 32, length, vocab)))
  test = jnp.asarray(_markov_batch(np.random.default_rng(1), 64, length, vocab))
  assert float(loss_fn(model, test)) < 1.8
