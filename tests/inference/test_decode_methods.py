"""Prefill then cached decoding for every attention method, ragged batches, the sparse-decode kernel
under TokenSelect and sliding windows, TokenSelect's selection cache, sampling arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxllm import attention as attn_api
from jaxllm.attention import registry
from jaxllm.attention.sparse import patterns
from jaxllm.inference import decode
from jaxllm.inference.policies import Policy
from tests.inference import helpers
from tests.inference.helpers import VOCAB
from tests.inference.helpers import full_sequence as _full_sequence
from tests.inference.helpers import prompt as _prompt
from pallas_kernels.block_sparse import masks as bs_masks



_decode_step = nnx.jit(decode.decode_step)


def _model(style="llama", **kw):
  return helpers.model(style, **{"num_layers": 1, **kw})


@pytest.mark.parametrize("attention,options,tol", [
    pytest.param("sliding_window", {"window": 3}, 2e-5, marks=pytest.mark.slow),  # as streaming
    ("streaming", {"window": 3, "sinks": 2}, 2e-5),
    ("linear", {"chunk_size": 4}, 1e-4),  # normalised elu+1 features: a ratio of float32 sums
    ("lightning", {"chunk_size": 4}, 2e-5),  # per-layer decay: layer_index reaches the state
    ("momentum", {"eta": 0.7, "chunk_size": 4}, 2e-5),  # KV cache + decayed value sum
])
def test_each_method_prefill_then_decode_equals_its_full_forward(attention, options, tol):
  """Windowed softmax decodes exactly over the cache, the linear family exactly by its recurrent
  state: every step's logits are the method's own full forward over the sequence so far."""
  model = _model("llama", num_kv_heads=2, num_layers=2, attention=attention,
                 attention_options=options)
  prompt = _prompt(2, 6, seed=1)
  out = decode.generate(model, prompt, 7)
  ref = model(_full_sequence(prompt, out["tokens"]))[:, 5:]
  np.testing.assert_allclose(out["logits"], ref, atol=tol, rtol=tol)
  np.testing.assert_array_equal(out["tokens"], jnp.argmax(ref, -1))


def test_decode_rules_are_registered_per_method():
  get = lambda n: attn_api.get(n).decode
  assert [get(n) for n in ("dense", "block_sparse", "sliding_window", "linear", "retention",
                           "momentum")] == [
      "sparse", "dense", "sparse", "recurrent", "recurrent", "momentum"]
  with pytest.raises(ValueError, match="decode='paged' unknown"):
    attn_api.register("bad_decode", attn_api.get("dense").fn, decode="paged")


def _block_band(q, k, v, *, impl="auto", causal=True, window=None):
  """A sparse prefill pattern: each query block (of 8) sees its ``window`` latest causal key
  blocks (all of them for None). ``window`` counts blocks of the pattern, not a decoding mask:
  registered with the default, dense-over-the-whole-cache decoding."""
  t, s = q.shape[1], k.shape[1]
  mask = patterns.visible_blocks(t, s, block_q=8, block_k=8, causal=causal)
  if window is not None:
    qb, kb = np.arange(mask.shape[0])[:, None], np.arange(mask.shape[1])[None]
    mask = mask & jnp.asarray(qb - kb < window)
  table = bs_masks.from_block_mask(mask[None, None], block_q=8, block_k=8)
  return attn_api.attention(q, k, v, method="block_sparse", impl=impl, causal=causal, table=table)


@pytest.fixture
def sparse_prefill_method():
  attn_api.register("test_block_band", _block_band)
  yield "test_block_band"
  registry._REGISTRY.pop("test_block_band")


def test_a_sparse_prefill_method_then_dense_decoding(sparse_prefill_method):
  """A sparse prefill method runs its own kernel on the prompt, then decodes densely over the
  whole cache. One layer: the cached keys and values do not depend on the prefill's attention,
  so every decode step equals the dense model's while the prompt's last logits are exactly the
  sparse forward's; the pattern's ``window`` option is not applied to decoding."""
  prompt, cont = _prompt(2, 20, seed=2), _prompt(2, 5, seed=3)
  dense_model = _model("llama", num_kv_heads=2)
  ref = decode.teacher_forced(dense_model, prompt, cont)
  assert attn_api.get(sparse_prefill_method).decode == "dense"
  sparse = _model("llama", num_kv_heads=2, attention=sparse_prefill_method,
                  attention_options={"window": 2})
  got = decode.teacher_forced(sparse, prompt, cont)
  np.testing.assert_allclose(got[:, 0], sparse(prompt)[:, -1], atol=2e-5, rtol=2e-5)
  assert float(jnp.max(jnp.abs(got[:, 0] - ref[:, 0]))) > 1e-4  # the pattern dropped a block
  np.testing.assert_allclose(got[:, 1:], ref[:, 1:], atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("style,kv_heads,attention,options", [
    ("gpt2", 2, "dense", {}),  # a KV cache, learned positions per row, GQA
    ("llama", 4, "retention", {}),  # a recurrent state at each row's own length, rotary, MHA
    ("llama", 2, "momentum", {"eta": 0.6}),  # the value sum stops at each row's own length
])
def test_a_ragged_batch_decodes_each_row_as_if_alone(style, kv_heads, attention, options):
  model = _model(style, num_kv_heads=kv_heads, attention=attention, attention_options=options)
  rows = [_prompt(1, n, seed=10 + n)[0] for n in (7, 3, 5)]
  lengths = np.array([len(r) for r in rows])
  right = jnp.stack([jnp.pad(r, (0, 7 - len(r)), constant_values=VOCAB - 1) for r in rows])
  left = jnp.stack([jnp.pad(r, (7 - len(r), 0), constant_values=VOCAB - 1) for r in rows])
  got = decode.generate(model, right, 4, lengths=lengths)
  got_left = decode.generate(model, left, 4, lengths=lengths, padding="left")
  np.testing.assert_array_equal(got_left["tokens"], got["tokens"])
  np.testing.assert_allclose(got_left["logits"], got["logits"], atol=1e-6)
  for i, r in enumerate(rows):  # each row's own full forward, without any padding
    ref = model(_full_sequence(r[None], got["tokens"][i:i + 1]))[0, len(r) - 1:]
    np.testing.assert_allclose(got["logits"][i], ref, atol=2e-5, rtol=2e-5)
    np.testing.assert_array_equal(got["tokens"][i], jnp.argmax(ref, -1))


def _run(model, prompt, policy, n):
  """Greedy prefill + decode steps: (logits [B, n, V], attended sets per step, reuse counts)."""
  logits, cache = decode.prefill(model, prompt, policy, n)
  out, attended = [logits], []
  for _ in range(n - 1):
    logits, cache, pos = _decode_step(model, cache, jnp.argmax(logits, -1).astype(jnp.int32))
    out.append(logits)
    attended.append(pos)
  return jnp.stack(out, 1), attended, np.asarray(cache.layers[0].reused)


def test_tokenselect_through_the_sparse_decode_kernel_matches_the_masked_softmax():
  model = _model("llama", num_kv_heads=2, attention_options={"scale": 8.0})
  prompt = _prompt(2, 9, seed=6)
  # At this threshold both rows mix fresh and reused selections.
  kw = dict(budget=6, sinks=1, recent=2, threshold=0.2)
  a, att_a, reused_a = _run(model, prompt, Policy("tokenselect", impl="xla", **kw), 5)
  b, att_b, reused_b = _run(model, prompt, Policy("tokenselect", impl="pallas", **kw), 5)
  np.testing.assert_allclose(b, a, atol=2e-5, rtol=2e-5)
  np.testing.assert_array_equal(reused_b, reused_a)
  assert reused_a.min() > 0 and reused_a.max() < 3
  for pa, pb in zip(att_a, att_b):
    for la, lb in zip(pa, pb):
      np.testing.assert_array_equal(np.sort(la, -1), np.sort(lb, -1))
  full = decode.generate(model, prompt, 5)
  assert float(jnp.max(jnp.abs(a - full["logits"]))) > 1e-3  # tokens were left out


def test_a_sliding_window_decodes_through_the_sparse_decode_kernel():
  opts = {"window": 4, "sinks": 1}
  xla = _model("llama", num_kv_heads=2, attention="streaming", attention_options=opts)
  pallas = _model("llama", num_kv_heads=2, attention="streaming", attention_options=opts,
                  attention_impl="pallas")
  prompt = _prompt(1, 6, seed=7)
  a, b = decode.generate(xla, prompt, 5), decode.generate(pallas, prompt, 5)
  np.testing.assert_allclose(b["logits"], a["logits"], atol=2e-5, rtol=2e-5)


def _queries(model, seq):
  """The one-layer model's rotated queries [T, H * D] and its per-head soft vote [T, T]."""
  cfg = model.cfg
  t = seq.shape[1]
  q, k = helpers.rotated_qk(model.blocks[0], model.tok_embed(seq))
  logits = jnp.einsum("bthd,bshd->bhts", q, jnp.repeat(k, cfg.num_heads // cfg.kv_heads, 2)) * 8.0
  logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -jnp.inf)
  vote = np.asarray(jax.nn.softmax(logits, -1).sum(axis=1))[0]
  return np.asarray(q[0].reshape(t, -1), np.float64), vote


@pytest.mark.parametrize("threshold", [1.0, -1.0, "median"])
def test_tokenselect_selection_cache_reuses_while_queries_stay_similar(threshold):
  """Replays the selection cache by hand on a one-layer model: a step reuses the last vote-chosen
  tokens when its query's cosine similarity to the query that chose them exceeds the threshold,
  else votes afresh; the attended sets and the reuse count match, and the logits are the masked
  forward over those sets."""
  model = _model("llama", num_kv_heads=2, num_layers=1, attention_options={"scale": 8.0})
  prompt, n, budget = _prompt(1, 8, seed=6), 8, 6
  greedy = decode.generate(model, prompt, n)["tokens"]
  seq = _full_sequence(prompt, greedy)
  q, vote = _queries(model, seq)
  cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
  if threshold == "median":
    threshold = float(np.median([cos(q[i], q[i - 1]) for i in range(9, 7 + n)]))
  policy = Policy("tokenselect", budget=budget, sinks=1, recent=2, threshold=threshold)
  logits, cache = decode.prefill(model, prompt, policy, n)
  attended, ref_q, chosen, reused, got = [], None, None, 0, [logits]
  for j in range(n - 1):
    logits, cache, (pos,) = _decode_step(model, cache, greedy[:, j])
    got.append(logits)
    now = 8 + j
    fixed = {0, now - 1, now}
    if ref_q is not None and cos(q[now], ref_q) > threshold:
      reused += 1
    else:
      rest = sorted((p for p in range(now + 1) if p not in fixed), key=lambda p: -vote[now, p])
      ref_q, chosen = q[now], set(rest[:budget - len(fixed)])
    for h in range(2):
      assert sorted(np.asarray(pos)[0, h][np.asarray(pos)[0, h] >= 0].tolist()) == sorted(
          fixed | chosen)
    attended.append((pos,))
  assert int(cache.layers[0].reused[0]) == reused
  assert reused == {1.0: 0, -1.0: n - 2}.get(threshold, reused)
  if threshold not in (1.0, -1.0):
    assert 0 < reused < n - 2
  mask = decode.trace_mask(model.cfg, 8, attended, 1)
  ref = decode.forward_with_mask(model, seq, mask)[:, 7:]
  np.testing.assert_allclose(jnp.stack(got, 1), ref, atol=2e-5, rtol=2e-5)


def test_top_p_keeps_the_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
  keys = jax.random.key(3)
  draws = np.asarray(decode.sample(logits, keys, temperature=1.0, top_p=0.7))
  # 0.5 < 0.7 so the second token completes the nucleus; the others are never drawn.
  assert set(draws.tolist()) == {0, 1}
  assert abs((draws == 0).mean() - 0.5 / 0.8) < 0.03
  draws = np.asarray(decode.sample(logits, keys, temperature=1.0))
  assert set(draws.tolist()) == {0, 1, 2, 3}
  model = _model("llama", num_kv_heads=2)
  prompt = _prompt(3, 4)
  tight = decode.generate(model, prompt, 4, temperature=1.0, top_p=1e-6, rng=jax.random.key(0))
  np.testing.assert_array_equal(tight["tokens"], decode.generate(model, prompt, 4)["tokens"])


def test_policy_names_and_sampling_arguments_are_validated():
  model = _model("llama")
  prompt = _prompt(1, 3)
  np.testing.assert_array_equal(decode.generate(model, prompt, 2, "full")["tokens"],
                                decode.generate(model, prompt, 2)["tokens"])
  with pytest.raises(ValueError, match=r"policy='h2o'.*needs a budget.*allowed names"):
    decode.generate(model, prompt, 2, policy="h2o")
  with pytest.raises(ValueError, match=r"policy='lru'.*allowed"):
    decode.generate(model, prompt, 2, policy="lru")
  with pytest.raises(ValueError, match="policy must be a Policy"):
    decode.generate(model, prompt, 2, policy=4)
  for kw, match in [({"temperature": -1.0}, "temperature must be"),
                    ({"temperature": "hot"}, "temperature must be"),
                    ({"temperature": True}, "temperature must be"),
                    ({"temperature": float("nan")}, "temperature must be"),
                    ({"temperature": 1.0, "top_p": 0.0, "rng": jax.random.key(0)}, "top_p must"),
                    ({"temperature": 1.0, "top_p": 1.5, "rng": jax.random.key(0)}, "top_p must"),
                    ({"top_p": 0.9}, "top_p=0.9 needs temperature > 0"),
                    ({"lengths": [4]}, "lengths must be"),
                    ({"lengths": [0]}, "lengths must be"),
                    ({"padding": "middle"}, "padding='middle' unknown")]:
    with pytest.raises(ValueError, match=match):
      decode.generate(model, prompt, 2, **kw)
  with pytest.raises(ValueError, match="threshold must be"):
    Policy("tokenselect", budget=4, sinks=1, recent=1, threshold=2.0)
  with pytest.raises(ValueError, match="impl='cuda' unknown"):
    Policy("tokenselect", budget=4, sinks=1, recent=1, impl="cuda")
