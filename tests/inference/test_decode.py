"""KV-cache decoding against the plain full-sequence forward, and the eviction policies by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import attention as attn_api
from jaxllm.attention import registry as attn_registry
from jaxllm.inference import decode, policies
from jaxllm.inference.policies import Policy
from tests.inference import helpers
from tests.inference.helpers import VOCAB
from tests.inference.helpers import full_sequence as _full_sequence
from tests.inference.helpers import prompt as _prompt
from tests.inference.helpers import rotated_qk as _rotated_qk

_model = helpers.model


@pytest.mark.parametrize("style,kv_heads,t,n", [
    ("llama", 4, 5, 7),  # rotary, MHA
    ("llama", 1, 3, 9),  # rotary, GQA (4 query heads share one kv head)
    ("gpt2", 2, 6, 4),  # learned positions, GQA
    ("llama", 2, 1, 6),  # a one-token prompt
])
def test_full_cache_decode_matches_the_full_forward(style, kv_heads, t, n):
  model = _model(style, num_kv_heads=kv_heads)
  prompt = _prompt(2, t)
  out = decode.generate(model, prompt, n)
  assert out["tokens"].shape == (2, n) and out["logits"].shape == (2, n, VOCAB)
  seq = _full_sequence(prompt, out["tokens"])
  ref = model(seq)[:, t - 1:]
  np.testing.assert_allclose(out["logits"], ref, atol=2e-5, rtol=2e-5)
  # Greedy: each token is the argmax of the reference distribution it was chosen from.
  np.testing.assert_array_equal(out["tokens"], jnp.argmax(ref, -1))


def test_forward_with_mask_on_the_causal_mask_is_the_model():
  model = _model("gpt2", num_kv_heads=2, tie_embeddings=True)
  seq = _prompt(3, 11, seed=1)
  ref = model(seq)
  got = decode.forward_with_mask(model, seq, decode.causal_mask(model.cfg, 11))
  np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_bfloat16_decode_tracks_the_bfloat16_forward():
  model = _model("llama", dtype="bfloat16", num_kv_heads=2)
  prompt = _prompt(2, 4)
  out = decode.generate(model, prompt, 6)
  ref = model(_full_sequence(prompt, out["tokens"]))[:, 3:]
  np.testing.assert_allclose(out["logits"], ref, atol=3e-2, rtol=3e-2)
  ref32 = _model("llama", num_kv_heads=2)(_full_sequence(prompt, out["tokens"]))[:, 3:]
  assert float(jnp.max(jnp.abs(out["logits"] - ref32))) < 0.1


def test_window_and_sink_options_of_the_model_are_honoured():
  model = _model("llama", num_kv_heads=2, attention_options={"window": 3, "sinks": 1})
  prompt = _prompt(2, 5)
  out = decode.generate(model, prompt, 6)
  ref = model(_full_sequence(prompt, out["tokens"]))[:, 4:]
  np.testing.assert_allclose(out["logits"], ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("policy", [Policy("streaming", budget=20, sinks=2),
                                    Policy("h2o", budget=20), Policy("full", budget=20)])
def test_a_budget_that_holds_everything_changes_nothing(policy):
  model = _model("llama", num_kv_heads=2)
  prompt = _prompt(2, 6)
  full = decode.generate(model, prompt, 8)
  got = decode.generate(model, prompt, 8, policy)
  np.testing.assert_allclose(got["logits"], full["logits"], atol=1e-6)


@pytest.mark.parametrize("policy,t", [(Policy("streaming", budget=6, sinks=2), 4),
                                      (Policy("streaming", budget=5, sinks=1), 9),
                                      (Policy("h2o", budget=6, recent=2), 4),
                                      (Policy("h2o", budget=5), 10)])
def test_evicting_decode_equals_the_reference_on_the_attended_sets(policy, t):
  """Each step's logits are the reference forward restricted to the tokens that step attended to,
  and the attended sets obey the policy: at most budget + 1 tokens (the newest included)."""
  model = _model("llama", num_kv_heads=2)
  prompt = _prompt(2, t, seed=3)
  n = 9
  out = decode.generate(model, prompt, n, policy, return_trace=True)
  assert len(out["attended"]) == n - 1
  mask = decode.trace_mask(model.cfg, t, out["attended"], 2)
  ref = decode.forward_with_mask(model, _full_sequence(prompt, out["tokens"]), mask)[:, t - 1:]
  np.testing.assert_allclose(out["logits"], ref, atol=2e-5, rtol=2e-5)
  for j, per_layer in enumerate(out["attended"]):
    now = t + j
    for pos in per_layer:
      pos = np.asarray(pos)
      counts = (pos >= 0).sum(-1)
      assert counts.max() == min(policy.budget + 1, now + 1)
      assert (pos == now).any(-1).all()  # the newest token always attends to itself
      if policy.name == "streaming":
        for b in range(2):
          for h in range(2):
            kept = sorted(pos[b, h][pos[b, h] >= 0])
            # The sinks plus the most recent tokens: exactly the StreamingLLM set.
            expect = sorted(set(range(policy.sinks)) | set(
                range(max(now + 1 - (policy.budget + 1 - policy.sinks), 0), now + 1)))
            assert kept == expect
      else:
        recent = policy.num_recent
        assert all((pos == p).any(-1).all() for p in range(max(now - recent + 1, 0), now + 1))
  # The evicting run really differs from full attention once tokens are dropped.
  full = decode.forward_with_mask(model, _full_sequence(prompt, out["tokens"]),
                                  decode.causal_mask(model.cfg, t + n - 1))[:, t - 1:]
  assert float(jnp.max(jnp.abs(full[:, -1] - ref[:, -1]))) > 1e-4


def test_h2o_evicts_the_lowest_accumulated_attention_outside_the_recent_window():
  policy = Policy("h2o", budget=4, recent=2)
  pos = jnp.array([[0, 1, 2, 3, 4, -1]])
  score = jnp.array([[0.9, 0.1, 0.5, 0.0, 0.0, 0.0]])
  keep = policies.keep_mask(policy, pos, score, now=4)
  # 5 tokens for a budget of 4: tokens 3 and 4 are recent; of 0, 1, 2 the lowest score (1) goes.
  np.testing.assert_array_equal(keep, [[True, False, True, True, True, False]])
  # Two over budget: 1 and then 2 (0.5 < 0.9) go, even though 3 has a lower score (it is recent).
  keep = policies.keep_mask(Policy("h2o", budget=3, recent=2), pos, score, now=4)
  np.testing.assert_array_equal(keep, [[True, False, False, True, True, False]])


def test_streaming_evicts_the_oldest_non_sink_token():
  pos = jnp.array([[5, 0, 3, 1, 4, 2]])  # slot order need not be position order
  keep = policies.keep_mask(Policy("streaming", budget=4, sinks=1), pos, jnp.zeros((1, 6)), now=5)
  kept = sorted(np.asarray(pos)[np.asarray(keep)].tolist())
  assert kept == [0, 3, 4, 5]


def test_h2o_scores_accumulate_the_attention_each_cached_token_received():
  """After prefill plus one step without eviction, a token's score is the sum over every query
  (and the query heads of its group) of its softmax weight: the reference's attention columns."""
  model = _model("llama", num_kv_heads=2, num_layers=1)
  prompt = _prompt(1, 5)
  policy = Policy("h2o", budget=8)  # holds everything: nothing is evicted
  _, cache = decode.prefill(model, prompt, policy, 2)
  _, cache, _ = decode.decode_step(model, cache, jnp.array([7], jnp.int32))
  seq = jnp.concatenate([prompt, jnp.array([[7]], jnp.int32)], axis=1)
  q, k = _rotated_qk(model.blocks[0], model.tok_embed(seq))
  g = q.reshape(1, 6, 2, 2, -1)
  logits = jnp.einsum("btkgd,bskd->bkgts", g, k) / np.sqrt(q.shape[-1])
  logits = jnp.where(jnp.tril(jnp.ones((6, 6), bool)), logits, -jnp.inf)
  expect = jax.nn.softmax(logits, -1).sum(axis=(2, 3))  # [1, Hkv, S]
  lc = cache.layers[0]
  order = np.argsort(np.asarray(lc.pos[0, 0]))
  got = np.asarray(lc.score)[..., order][..., -6:]
  np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(expect.sum(-1), 2 * 6, rtol=1e-5)  # each query's weights sum to 1


def test_sampling_is_reproducible_and_follows_the_temperature():
  model = _model("llama", num_kv_heads=2)
  prompt = _prompt(4, 3)
  a = decode.generate(model, prompt, 5, temperature=1.0, rng=jax.random.key(1))
  b = decode.generate(model, prompt, 5, temperature=1.0, rng=jax.random.key(1))
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  ref = model(_full_sequence(prompt, a["tokens"]))[:, 2:]
  np.testing.assert_allclose(a["logits"], ref, atol=2e-5, rtol=2e-5)
  greedy = decode.generate(model, prompt, 5)["tokens"]
  assert not np.array_equal(a["tokens"], greedy)  # an untrained model's softmax is near uniform


def test_bad_input_is_refused_with_the_field_name():
  model = _model("llama")
  with pytest.raises(ValueError, match="unknown; allowed"):
    Policy("lru", budget=4)
  with pytest.raises(ValueError, match="needs a budget"):
    Policy("h2o")
  with pytest.raises(ValueError, match="sinks must be in"):
    Policy("streaming", budget=4, sinks=4)
  with pytest.raises(ValueError, match="recent must be in"):
    Policy("h2o", budget=4, recent=5)
  with pytest.raises(ValueError, match="full policy: budget=4"):
    decode.generate(model, _prompt(1, 3), 5, Policy("full", budget=4))
  with pytest.raises(ValueError, match="max_new_tokens"):
    decode.generate(model, _prompt(1, 3), 0)
  with pytest.raises(ValueError, match="needs rng"):
    decode.generate(model, _prompt(1, 3), 2, temperature=0.5)
  with pytest.raises(ValueError, match="vocab_size"):
    decode.generate(model, jnp.array([[VOCAB]]), 2)
  with pytest.raises(ValueError, match=r"\[B, T\]"):
    decode.generate(model, jnp.array([1, 2]), 2)
  with pytest.raises(ValueError, match="max_len=64"):
    decode.generate(_model("gpt2"), _prompt(1, 60), 10)
  attn_api.register("test_undecodable", attn_api.get("dense").fn, decode=None)
  try:
    with pytest.raises(ValueError, match="model.attention='test_undecodable' has no cached"):
      decode.generate(_model("llama", attention="test_undecodable"), _prompt(1, 3), 2)
  finally:
    attn_registry._REGISTRY.pop("test_undecodable")


def test_teacher_forced_scoring_matches_the_forward_and_the_generation_path():
  model = _model("gpt2", num_kv_heads=2)
  prompt, cont = _prompt(2, 5, seed=4), _prompt(2, 7, seed=5)
  got = decode.teacher_forced(model, prompt, cont)
  ref = model(jnp.concatenate([prompt, cont[:, :-1]], 1))[:, 4:]
  np.testing.assert_allclose(got, ref, atol=2e-5, rtol=2e-5)
  # Under eviction, scoring the tokens a generation chose reproduces that generation's logits.
  policy = Policy("h2o", budget=4, recent=2)
  gen = decode.generate(model, prompt, 6, policy)
  np.testing.assert_allclose(decode.teacher_forced(model, prompt, gen["tokens"], policy),
                             gen["logits"], atol=2e-5, rtol=2e-5)
  with pytest.raises(ValueError, match="same B"):
    decode.teacher_forced(model, prompt, cont[:1])


def test_tokenselect_attends_to_sinks_recent_and_the_best_soft_vote():
  """Each step's attended set is the sinks, the recent tokens and the top soft-vote tokens, with
  the vote recomputed here from the layer's queries and keys; logits match the masked reference."""
  # A large logit scale makes the untrained model's attention peaked, so the vote has no near-ties.
  model = _model("llama", num_kv_heads=2, num_layers=1, attention_options={"scale": 8.0})
  policy = Policy("tokenselect", budget=6, sinks=1, recent=2)
  prompt = _prompt(1, 8, seed=6)
  n = 5
  out = decode.generate(model, prompt, n, policy, return_trace=True)
  seq = _full_sequence(prompt, out["tokens"])
  mask = decode.trace_mask(model.cfg, 8, out["attended"], 1)
  ref = decode.forward_with_mask(model, seq, mask)[:, 7:]
  np.testing.assert_allclose(out["logits"], ref, atol=2e-5, rtol=2e-5)
  t = seq.shape[1]
  q, k = _rotated_qk(model.blocks[0], model.tok_embed(seq))
  logits = jnp.einsum("bthd,bshd->bhts", q, jnp.repeat(k, 2, axis=2)) * 8.0
  logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -jnp.inf)
  vote = np.asarray(jax.nn.softmax(logits, -1).sum(axis=1))[0]  # [T, T], summed over 4 heads
  for j, (pos,) in enumerate(out["attended"]):
    now = 8 + j
    fixed = {0, now - 1, now}
    rest = sorted((p for p in range(now + 1) if p not in fixed), key=lambda p: -vote[now, p])
    assert vote[now, rest[2]] - vote[now, rest[3]] > 1e-3  # the cut is not a near-tie
    expect = sorted(fixed | set(rest[:6 - len(fixed)]))
    for h in range(2):  # one selection shared by both kv heads
      assert sorted(np.asarray(pos)[0, h][np.asarray(pos)[0, h] >= 0].tolist()) == expect
  assert any(len(set(range(8 + j + 1)) - set(np.asarray(pos).ravel())) for j, (pos,) in
             enumerate(out["attended"]))  # tokens really were left out
  full = decode.generate(model, prompt, n)
  np.testing.assert_allclose(  # a budget covering everything changes nothing
      decode.generate(model, prompt, n, Policy("tokenselect", budget=13, sinks=1, recent=2))[
          "logits"], full["logits"], atol=1e-6)
  with pytest.raises(ValueError, match="sinks \\+ recent <= budget=4"):
    Policy("tokenselect", budget=4, sinks=3, recent=2)
