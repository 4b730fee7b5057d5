"""SirLLM: the per-turn kept set (hand example, the public code's ordering), both entropy rules,
memory decay once per turn, positions as slots, bad options, and the cost model's KV bytes."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxllm.inference import cost_model as cm
from jaxllm.inference import decode, sirllm
from jaxllm.inference.policies import Policy
from tests.inference import helpers


def public_keep(entropy, seq_len, start, recent, te, num_coming):
  """A NumPy transcription of the public code's ``evict_for_space_token_entropy`` ordering."""
  cache_size = start + recent + te
  if seq_len + num_coming <= cache_size:
    return list(range(seq_len))
  n = te - num_coming
  top = [] if n < 0 else sorted(range(seq_len), key=lambda i: entropy[i], reverse=True)[:n]
  save = sorted(set(top) | set(range(start)))
  for i in range(seq_len - 1, 0, -1):
    if len(save) >= cache_size - num_coming:
      break
    if i not in save:
      save.append(i)
  return sorted(save)


def kept(policy, entropy, count, n_in, slots=24):
  """The kept slots of one cache; entropies padded to ``slots`` (every call has one shape)."""
  e = np.zeros((1, slots), np.float32)
  e[0, :len(entropy)] = entropy
  keep = sirllm.keep_slots(policy, jnp.asarray(e), count, n_in)
  return np.nonzero(np.asarray(keep[0]))[0].tolist()


def test_kept_set_on_a_hand_example():
  # sinks 2, recent 1, 5 entropy slots: budget 8; a chunk of 2 leaves room for 6, the top 3 by
  # entropy are slots 1 (a sink), 4 and 6, so the recent fill takes 7 and 5 and slot 2 (entropy 5)
  # goes although it outranks 5 and 7.
  p = Policy("sirllm", sinks=2, recent=1, token_entropy_size=5)
  e = [0.1, 9.0, 5.0, 0.2, 7.0, 0.3, 6.0, 0.4]
  assert kept(p, e, 8, 2) == [0, 1, 4, 5, 6, 7]
  assert kept(p, e, 6, 2) == [0, 1, 2, 3, 4, 5]  # 6 + 2 fit: nothing goes
  # A chunk of 6 leaves no entropy part: the sinks and the most recent 0.
  assert kept(p, e, 8, 6) == [0, 1]
  # Ties: the older token first (the public code's stable descending sort).
  assert kept(p, [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], 8, 3) == [0, 1, 2, 3, 7]
  # StreamingLLM by turns (the public evict_for_space): sinks and the most recent.
  s = Policy("streaming", budget=8, sinks=2)
  assert kept(s, e, 8, 3) == [0, 1, 5, 6, 7]


def test_kept_set_matches_the_public_code_ordering_on_random_caches():
  rng = np.random.default_rng(0)
  for _ in range(120):
    start, recent, te = rng.integers(0, 4), rng.integers(0, 6), rng.integers(1, 12)
    p = Policy("sirllm", sinks=int(start), recent=int(recent), token_entropy_size=int(te))
    count = int(rng.integers(1, p.budget + 1))
    n_in = int(rng.integers(1, p.budget - start + 1))
    e = np.round(rng.gamma(2.0, size=count), 1).tolist()  # rounding makes ties
    want = public_keep(e, count, start, recent, te, n_in)
    assert kept(p, e, count, n_in) == want, (start, recent, te, count, n_in, e)


def _np_entropy(rule, tokens, logits, chunks):
  """The rule written out from a whole-dialogue forward's logits [T, V] and the chunk sizes."""
  z = np.asarray(logits, np.float64)
  logp = z - z.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  out, t0 = [], 0
  for c in chunks:
    idx = np.arange(t0, t0 + c)
    if rule == "public":
      own = -logp[idx, tokens[idx]]
      out += [own.max()] + own[:-1].tolist()
    else:
      e = [-logp[t - 1, tokens[t]] if t > 0 else np.nan for t in idx]
      if t0 == 0:
        e[0] = max(e[1:])
      out += e
    t0 += c
  return np.asarray(out)


@pytest.mark.parametrize("rule", ["paper", "public"])
def test_entropy_rules_and_decay_once_per_turn(rule):
  model = helpers.model(num_layers=2, num_kv_heads=2)
  eta = 0.5
  policy = Policy("sirllm", budget=16, sinks=4, eta=eta, entropy_rule=rule)
  tokens = helpers.prompt(2, 15, seed=3)
  chunks = [5, 5, 5]
  state, t0 = sirllm.start(model, policy, 2), 0
  logits = []
  for c in chunks:
    lg, state = sirllm.turn(model, state, tokens[:, t0:t0 + c])
    logits.append(lg)
    t0 += c
  full = model(tokens)  # nothing was evicted: slots are the dialogue positions
  np.testing.assert_allclose(np.concatenate(logits, axis=1), full, atol=1e-5)
  decay = np.repeat([eta ** 2, eta, 1.0], chunks)  # the first chunk saw two later turns
  for b in range(2):
    want = _np_entropy(rule, np.asarray(tokens[b]), np.asarray(full[b]), chunks) * decay
    np.testing.assert_allclose(np.asarray(state.entropy[b, :15]), want, rtol=1e-5, atol=1e-6)
  assert int(state.count) == 15 and np.all(np.asarray(state.entropy[:, 15:]) == 0)
  if rule == "paper":  # the rules differ: the public value is the paper's one position early
    assert not np.allclose(want, _np_entropy("public", np.asarray(tokens[1]),
                                             np.asarray(full[1]), chunks) * decay)


def test_positions_are_slots_after_eviction():
  """After an eviction a turn's logits equal the model's forward over exactly the kept tokens and
  the chunk, at positions 0..n-1 (one layer: a cached key depends on its token only)."""
  model = helpers.model(num_layers=1, num_kv_heads=2)
  policy = Policy("sirllm", budget=12, sinks=2, recent=3, eta=0.9)
  forward = nnx.jit(lambda m, t: m(t)[:, -4:])
  state = sirllm.start(model, policy, 2)
  history = np.zeros((2, 0), np.int32)
  evictions = 0
  for i in range(5):
    chunk = helpers.prompt(2, 4, seed=10 + i)
    before = int(state.count)
    logits, state = sirllm.turn(model, state, chunk)
    n = int(state.count)
    history = np.concatenate([history, np.asarray(chunk)], axis=1)
    pos = np.asarray(state.pos[:, :n])
    # The slots hold the dialogue's tokens at their original positions, in order.
    assert np.all(np.diff(pos, axis=1) > 0)
    np.testing.assert_array_equal(np.asarray(state.tokens[:, :n]),
                                  np.take_along_axis(history, pos, axis=1))
    if before + 4 > n:
      evictions += 1
      np.testing.assert_allclose(logits, forward(model, state.tokens[:, :n]), atol=1e-5)
  assert evictions == 2 and int(state.count) == 12 and int(state.length) == 20


def test_generate_and_respond_cache_the_reply():
  model = helpers.model(num_layers=1, num_kv_heads=2)
  prompt = helpers.prompt(2, 4, seed=5)
  policy = Policy("sirllm", budget=12, sinks=2, recent=3)
  out = decode.generate(model, prompt, 4, policy)
  full = decode.generate(model, prompt, 4)  # nothing evicted in one turn: the full cache
  np.testing.assert_array_equal(out["tokens"], full["tokens"])
  np.testing.assert_allclose(out["logits"], full["logits"], atol=1e-5)
  state = sirllm.start(model, policy, 2)
  reply, logits, state = sirllm.respond(model, state, prompt, 4)
  np.testing.assert_array_equal(reply, full["tokens"])
  assert int(state.count) == 8 and int(state.length) == 8  # the reply's 4 tokens are cached
  np.testing.assert_array_equal(state.tokens[:, 4:8], reply)


@pytest.mark.parametrize("kw, word", [
    (dict(), "token_entropy_size"),
    (dict(token_entropy_size=8, entropy_rule="exact"), "entropy_rule.*paper.*public"),
    (dict(token_entropy_size=8, eta=1.5), "eta"),
    (dict(token_entropy_size=8, budget=10), "budget"),
    (dict(token_entropy_size=8, sinks=-1), "sinks"),
    (dict(token_entropy_size=8, recent=2.5), "recent"),
])
def test_bad_options_are_value_errors(kw, word):
  with pytest.raises(ValueError, match=word):
    Policy("sirllm", **kw)


def test_bad_use_is_a_value_error():
  model = helpers.model(num_layers=1)
  policy = Policy("sirllm", sinks=4, token_entropy_size=6)
  assert policy.budget == 10 and Policy("sirllm", budget=1024).token_entropy_size == 1020
  state = sirllm.start(model, policy, 1)
  with pytest.raises(ValueError, match="n_in"):
    sirllm.turn(model, state, helpers.prompt(1, 7))
  with pytest.raises(ValueError, match="B = 1"):
    sirllm.turn(model, state, helpers.prompt(2, 3))
  with pytest.raises(ValueError, match="positions"):
    sirllm.start(helpers.model("gpt2", num_layers=1), policy)
  with pytest.raises(ValueError, match="sirllm"):
    decode.prefill(model, helpers.prompt(1, 3), policy, 1)
  with pytest.raises(ValueError, match="Policy named"):
    sirllm.start(model, Policy("h2o", budget=8))


def test_cost_model_kv_bytes_equal_the_sirllm_cache():
  """Predicted KV bytes equal the tokens a sirllm cache holds after turns past its budget, and
  the cache allocates exactly its budget."""
  model = helpers.model(num_layers=2, num_kv_heads=2)
  policy = Policy("sirllm", budget=16, sinks=4, recent=2)
  state = sirllm.start(model, policy, 2)
  for i in range(5):
    _, state = sirllm.turn(model, state, helpers.prompt(2, 5, seed=i))
  spec = cm.spec_from_model_config(model.cfg, bytes_per_element=4)
  context = int(state.length)
  predicted = cm.kv_bytes(spec, context, 2, cm.Policy("sirllm", budget=policy.budget))
  per_token = 2 * model.cfg.dim_per_head * 4 * model.cfg.kv_heads
  held = sum(int(lc.count) for lc in state.layers) * 2 * per_token
  assert context == 25 and int(state.count) == 16 and held == predicted
  assert sum(lc.k.nbytes + lc.v.nbytes for lc in state.layers) == predicted
