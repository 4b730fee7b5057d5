"""DuoAttention: gates, the loss, pattern files, and the deployed cache with per-head budgets."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxllm.inference import cost_model as cm
from jaxllm.inference import decode, duo
from jaxllm.inference.policies import Policy
from jaxllm.interop.checkpoint import with_config
from tests.inference import helpers

SINKS, RECENT = 2, 5


@pytest.fixture(scope="module")
def gqa():
  return helpers.model(num_layers=2, num_heads=4, num_kv_heads=2)


def _forced_and_reference(model, policy, prompt, cont):
  logits = decode.teacher_forced(model, prompt, cont, policy)
  seq = jnp.concatenate([prompt, cont[:, :-1]], axis=1)
  t = prompt.shape[1]
  return logits, seq, t


def test_deployed_decode_equals_the_per_head_masked_forward(gqa):
  """Mixed heads (one retrieval, three streaming kv heads over two layers, GQA groups of 2):
  the block-sparse prefill and the per-head-budget decode equal the model's forward under each
  head's visibility, also once the streaming heads evict (23 + 9 tokens >> 2 + 5)."""
  policy = duo.DuoPolicy.from_mask([[True, False], [False, False]], sinks=SINKS, recent=RECENT)
  prompt, cont = helpers.prompt(3, 23), helpers.prompt(3, 9, seed=1)
  logits, seq, t = _forced_and_reference(gqa, policy, prompt, cont)
  ref = decode.forward_with_mask(gqa, seq, policy.visibility(seq.shape[1]))[:, t - 1:]
  np.testing.assert_allclose(logits, ref, atol=1e-5, rtol=0)
  # The streaming rule matters here: full attention's logits are far from these.
  full = gqa(seq)[:, t - 1:]
  assert float(jnp.max(jnp.abs(full - ref))) > 1e-2


def test_all_gates_one_is_full_attention(gqa):
  pattern = {"alpha": np.ones((2, 2))}
  policy = duo.DuoPolicy.from_pattern(pattern, 0.0, sinks=SINKS, recent=RECENT)
  assert policy.streaming_fraction == 0.0
  prompt, cont = helpers.prompt(2, 17, seed=2), helpers.prompt(2, 6, seed=3)
  logits, seq, t = _forced_and_reference(gqa, policy, prompt, cont)
  np.testing.assert_allclose(logits, gqa(seq)[:, t - 1:], atol=1e-5, rtol=0)
  np.testing.assert_allclose(logits, decode.teacher_forced(gqa, prompt, cont, Policy("full")),
                             atol=1e-5, rtol=0)
  # The training mixture at alpha = 1 is the full model: zero distillation loss.
  tokens = helpers.prompt(2, 20, seed=4)
  np.testing.assert_allclose(duo.final_hidden(gqa, tokens, jnp.ones((2, 2)), sinks=SINKS,
                                              recent=RECENT),
                             duo.final_hidden(gqa, tokens), atol=1e-6, rtol=0)


def test_all_gates_zero_is_sink_window_on_every_head(gqa):
  """alpha = 0 everywhere: the deployed decode and the training mixture both equal the same
  weights run with the ``sink_window`` method (window = recent + 1) on every head."""
  band = with_config(gqa, attention="sink_window",
                     attention_options={"sinks": SINKS, "window": RECENT + 1})
  policy = duo.DuoPolicy.from_pattern({"alpha": np.zeros((2, 2))}, 1.0, sinks=SINKS,
                                      recent=RECENT)
  assert policy.streaming_fraction == 1.0
  prompt, cont = helpers.prompt(2, 19, seed=5), helpers.prompt(2, 7, seed=6)
  logits, seq, t = _forced_and_reference(gqa, policy, prompt, cont)
  np.testing.assert_allclose(logits, band(seq)[:, t - 1:], atol=1e-5, rtol=0)
  tokens = helpers.prompt(2, 20, seed=7)
  np.testing.assert_allclose(duo.final_hidden(gqa, tokens, jnp.zeros((2, 2)), sinks=SINKS,
                                              recent=RECENT),
                             band.final_norm(band(tokens, return_hidden=True)[1][-1]),
                             atol=1e-5, rtol=0)


@pytest.mark.parametrize("fraction,prompt_len", [
    pytest.param(0.25, 20, marks=pytest.mark.slow), (0.5, 20),
    pytest.param(0.75, 4, marks=pytest.mark.slow)])
def test_kv_bytes_equal_the_cost_models_duo_prediction(gqa, fraction, prompt_len):
  """After prefill + 5 decode steps the cache allocates exactly the cost model's duo bytes (a
  4-token prompt: shorter than sinks + recent, the streaming part holds the whole context)."""
  alpha = np.asarray([[0.9, 0.1], [0.3, 0.7]])
  policy = duo.DuoPolicy.from_pattern({"alpha": alpha}, fraction, sinks=SINKS, recent=RECENT)
  batch, new = 3, 5
  prefill = nnx.jit(decode.prefill, static_argnums=(2, 3))
  step = nnx.jit(decode.decode_step)
  _, cache = prefill(gqa, helpers.prompt(batch, prompt_len), policy, new)
  for i in range(new):
    _, cache, _ = step(gqa, cache, jnp.full((batch,), i, jnp.int32))
  spec = cm.spec_from_model_config(gqa.cfg, bytes_per_element=4)
  predicted = cm.kv_bytes(spec, prompt_len + new, batch,
                          cm.Policy("duo", fraction=fraction, sink=SINKS, recent=RECENT))
  assert duo.cache_bytes(cache) == predicted
  per_head_token = 2 * gqa.cfg.dim_per_head * 4
  held = sum(int(np.sum(np.asarray(layer.pf) >= 0)) + int(np.sum(np.asarray(layer.ps) >= 0))
             for layer in cache.layers)
  assert held * per_head_token == predicted  # every allocated slot holds a token


def test_select_retrieval_streams_the_lowest_gates_and_matches_the_cost_models_count():
  alpha = np.asarray([[0.9, 0.2, 0.5], [0.2, 0.8, 0.05]])
  ret = duo.select_retrieval(alpha, 0.5)
  np.testing.assert_array_equal(ret, [[True, False, True], [False, True, False]])
  spec = cm.ModelSpec(params=1e6, layers=2, kv_heads=3, head_dim=8, q_heads=6)
  for f in (0.0, 0.2, 0.5, 0.9, 1.0):
    n = int((~duo.select_retrieval(alpha, f)).sum())
    assert n == cm.Policy("duo", fraction=f).streaming_heads(spec)
    assert int((~duo.random_retrieval(2, 3, f, seed=1)).sum()) == n
  # Ties: the lower layer, then the lower head, streams first.
  np.testing.assert_array_equal(duo.select_retrieval(np.full((2, 2), 0.5), 0.5),
                                [[False, False], [True, True]])


def test_gates_train_clamped_and_pattern_round_trip(gqa, tmp_path):
  """A few gate steps at a large learning rate: every gate stays in [0, 1] and the L1 term pulls
  some below 1; the pattern file keeps them (and the sizes) exactly."""
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, helpers.VOCAB, (2, 24)), jnp.int32)
  answer = jnp.zeros((2, 24), bool).at[:, -4:].set(True)
  alpha, history = duo.train_gates(gqa, lambda s: (tokens, answer), steps=4, learning_rate=0.5,
                                   sinks=SINKS, recent=RECENT, reg=1.0, log_every=1,
                                   log=lambda *_: None)
  assert alpha.shape == (2, 2) and np.all(alpha >= 0) and np.all(alpha <= 1)
  assert alpha.min() < 0.9
  assert len(history) == 4 and all(np.isfinite(h[1]) for h in history)
  # The loss sees clamped gates: values outside [0, 1] score as their clamp.
  outside = jnp.asarray([[1.7, -0.4], [0.3, 2.0]])
  inside = jnp.clip(outside, 0, 1)
  kw = dict(sinks=SINKS, recent=RECENT)
  assert float(duo.duo_loss(gqa, outside, tokens, answer, **kw)[0]) == pytest.approx(
      float(duo.duo_loss(gqa, inside, tokens, answer, **kw)[0]), abs=1e-7)
  path = duo.save_pattern(str(tmp_path / "p.json"), alpha, sinks=SINKS, recent=RECENT)
  p = duo.load_pattern(path)
  np.testing.assert_array_equal(p["alpha"], alpha.astype(np.float64))
  assert (p["sinks"], p["recent"], p["num_layers"], p["kv_heads"]) == (SINKS, RECENT, 2, 2)


def test_duo_loss_is_the_answer_token_mean_squared_hidden_difference(gqa):
  tokens = helpers.prompt(2, 22, seed=8)
  answer = jnp.zeros((2, 22), bool).at[0, 18:].set(True).at[1, 20:].set(True)
  alpha = jnp.asarray([[0.2, 0.6], [1.0, 0.0]])
  loss, (distill, l1) = duo.duo_loss(gqa, alpha, tokens, answer, sinks=SINKS, recent=RECENT,
                                     reg=0.05)
  full = np.asarray(duo.final_hidden(gqa, tokens))
  mixed = np.asarray(duo.final_hidden(gqa, tokens, alpha, sinks=SINKS, recent=RECENT))
  m = np.asarray(answer)
  want = ((full - mixed) ** 2).mean(-1)[m].mean()
  assert float(distill) == pytest.approx(want, rel=1e-5) and want > 0
  assert float(l1) == pytest.approx(0.45, abs=1e-7)
  assert float(loss) == pytest.approx(want + 0.05 * 0.45, rel=1e-5)


def test_passkey_samples_ask_for_inserted_passkeys():
  class Bytes:
    def encode(self, s):
      return list(s.encode())

  hay = np.frombuffer(b"x = 1\n" * 200, np.uint8).astype(np.int32)
  rng = np.random.default_rng(1)
  tokens, answer = duo.passkey_sample(rng, Bytes(), hay, length=300, num_passkeys=3,
                                      passkey_length=6)
  text = bytes(tokens.astype(np.uint8)).decode()
  assert len(tokens) == 300 and int(answer.sum()) == 18
  tail = text[-3 * len("PASSKEY_A$123456\n"):].split("\n")[1:]
  for line in tail:
    name, value = line.split("$")
    assert f"\n{name}${value}\n" in text[:-len(tail) * 17] and len(value) == 6
  asked = bytes(tokens[answer].astype(np.uint8)).decode()
  assert asked.isdigit()
  with pytest.raises(ValueError, match="length"):
    duo.passkey_sample(rng, Bytes(), hay, length=30, num_passkeys=3, passkey_length=6)
  with pytest.raises(ValueError, match="num_queries"):
    duo.passkey_sample(rng, Bytes(), hay, length=300, num_passkeys=2, num_queries=3)


@pytest.mark.parametrize("make,match", [
    (lambda m: duo.DuoPolicy.from_pattern({"alpha": np.ones((2, 2))}, 1.5), "fraction"),
    (lambda m: duo.DuoPolicy.from_mask([[True, False]] * 2, sinks=0), "sinks"),
    (lambda m: duo.DuoPolicy.from_mask([[True, False]] * 2, recent=-1), "recent"),
    (lambda m: duo.DuoPolicy(((True, 1),)), "retrieval"),
    (lambda m: decode.prefill(m, helpers.prompt(1, 4), duo.DuoPolicy.from_mask(
        [[True, False, True]] * 2), 2), "kv_heads"),
    (lambda m: duo.train_gates(m, None, steps=0), "steps"),
    (lambda m: duo.train_gates(m, None, steps=1, reg=-1.0), "reg"),
    (lambda m: duo.train_gates(m, None, steps=1, learning_rate=0.0), "learning_rate"),
    (lambda m: duo.train_gates(with_config(m, attention="sliding_window",
                                           attention_options={"window": 4}), None),
     "model.attention"),
    (lambda m: duo.load_pattern("/nonexistent/pattern.json"), "pattern file"),
])
def test_bad_options_raise_naming_the_option(gqa, make, match):
  with pytest.raises(ValueError, match=match):
    make(gqa)
