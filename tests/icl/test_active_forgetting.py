"""Active forgetting: token generator structure, the embedding reset schedule, and structural ICL on
unseen tokens appearing only with forgetting."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs.icl import active_forgetting as config_lib
from experiments.icl import active_forgetting
from jaxllm.data import token_sequences as data
from jaxllm.train.loop import train
from tests.icl import figure_scripts

L, S, U, N = 8, 64, 16, 8


@pytest.fixture(scope="module")
def task():
  return data.make_task(0, L, S, U, alpha=1.0)


def _split(tokens):
  return tokens[:, 0:2 * N:2], tokens[:, 1:2 * N:2], tokens[:, -1]


def test_labels_balanced_and_zipf_frequencies(task):
  np.testing.assert_array_equal(np.bincount(task.item_labels_S, minlength=L), S // L)
  ranks = np.arange(1, S + 1)
  np.testing.assert_allclose(task.seen_probs_S, (1 / ranks) / np.sum(1 / ranks), rtol=1e-12)
  assert task.vocab_size == L + S + U
  np.testing.assert_array_equal(task.unseen_ids, np.arange(L + S, L + S + U))


def test_training_batches_never_contain_unseen_ids():
  config = config_lib.get_config("smoke")
  t = active_forgetting.ForgettingTask(config)
  tokens = np.concatenate([t.batch(step)["tokens"] for step in range(40)])
  items, labels, query = _split(tokens)
  num_labels, num_seen = config.task.num_labels, config.task.num_seen
  assert items.min() >= num_labels and items.max() < num_labels + num_seen
  assert query.min() >= num_labels and query.max() < num_labels + num_seen
  assert labels.max() < num_labels
  # Batches are a pure function of the step.
  np.testing.assert_array_equal(t.batch(7)["tokens"], t.batch(7)["tokens"])
  assert not np.array_equal(t.batch(7)["tokens"], t.batch(8)["tokens"])


def test_bursty_sequences_have_b_copies_and_fixed_labels(task):
  tokens, targets = data.sample_train(np.random.default_rng(1), task, 200, num_examples=N,
                                      burstiness=2, p_bursty=1.0)
  items, labels, query = _split(tokens)
  fixed = task.item_labels_S
  for b in range(200):
    ids, counts = np.unique(items[b], return_counts=True)
    assert counts.tolist() == [2, 2, 2, 2]
    assert query[b] in ids
  np.testing.assert_array_equal(labels, fixed[items - L])
  np.testing.assert_array_equal(targets, fixed[query - L])
  # Frequent items are drawn more often (rank 1 has 1/H_64 ~ 21% of the mass).
  share = np.mean(items == L)
  assert 0.1 < share < 0.3


def test_iid_and_relabelled_fractions(task):
  rng = np.random.default_rng(2)
  tokens, _ = data.sample_train(rng, task, 2000, num_examples=N, burstiness=2, p_bursty=0.25)
  items, _, _ = _split(tokens)
  bursty = np.array([sorted(np.unique(r, return_counts=True)[1].tolist()) == [2, 2, 2, 2]
                     for r in items])
  # i.i.d. Zipf rows are occasionally bursty-shaped by chance; the fraction stays close to p_B.
  assert 0.22 < bursty.mean() < 0.32
  tokens, targets = data.sample_train(rng, task, 500, num_examples=N, burstiness=2, p_bursty=1.0,
                                      p_relabel=1.0)
  items, labels, query = _split(tokens)
  agree = []
  for b in range(500):
    ids = np.unique(items[b])
    per_item = [set(labels[b][items[b] == i].tolist()) for i in ids]
    assert all(len(s) == 1 for s in per_item)
    assert len({s.pop() for s in per_item}) == len(ids)
    assert targets[b] == labels[b][items[b] == query[b]][0]
    agree.append(targets[b] == task.item_labels_S[query[b] - L])
  assert np.mean(agree) < 0.25  # random labels: agree with the fixed one ~1/L of the time


@pytest.mark.parametrize("unseen", [True, False])
def test_icl_test_sets(task, unseen):
  tokens, targets = data.sample_icl(np.random.default_rng(3), task, 300, num_examples=N,
                                    burstiness=2, unseen=unseen)
  items, labels, query = _split(tokens)
  lo, hi = (L + S, L + S + U) if unseen else (L, L + S)
  assert items.min() >= lo and items.max() < hi and query.min() >= lo and query.max() < hi
  matches_fixed = []
  for b in range(300):
    ids = np.unique(items[b])
    assert len(ids) == 4 and query[b] in ids
    assert len(set(labels[b].tolist())) == 4
    assert targets[b] == labels[b][items[b] == query[b]][0]
    if not unseen:
      matches_fixed.append(targets[b] == task.item_labels_S[query[b] - L])
  if not unseen:
    assert np.mean(matches_fixed) < 0.25


def test_iwl_test_set(task):
  tokens, targets = data.sample_iwl(np.random.default_rng(4), task, 300, num_examples=N)
  items, labels, query = _split(tokens)
  assert all(query[b] not in items[b] for b in range(300))
  np.testing.assert_array_equal(targets, task.item_labels_S[query - L])
  np.testing.assert_array_equal(labels, task.item_labels_S[items - L])
  assert items.max() < L + S


def test_generator_validation(task):
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="burstiness"):
    data.sample_train(rng, task, 4, num_examples=N, burstiness=3, p_bursty=1.0)
  with pytest.raises(ValueError, match="p_relabel"):
    data.sample_train(rng, task, 4, num_examples=N, burstiness=2, p_bursty=1.0, p_relabel=2.0)
  with pytest.raises(ValueError, match="num_labels"):
    data.sample_icl(rng, task, 4, num_examples=16, burstiness=1, unseen=True)
  with pytest.raises(ValueError, match="num_seen"):
    data.make_task(0, 8, 4, 4, alpha=1.0)


def test_reset_schedule():
  config = config_lib.get_config("smoke")
  steps = range(1, config.train.steps + 1)
  task = active_forgetting.ForgettingTask(config, forget_every=100, forget_until=800)
  assert [s for s in steps if task.is_reset(s)] == [101, 201, 301, 401, 501, 601, 701]
  task = active_forgetting.ForgettingTask(config, forget_every=100)
  resets = [s for s in steps if task.is_reset(s)]
  last = (config.train.steps - 1) // 100 * 100 + 1
  assert resets == list(range(101, last + 1, 100))
  assert not any(active_forgetting.ForgettingTask(config).is_reset(s) for s in steps)


def _tiny_config():
  config = config_lib.get_config("smoke")
  config.model.update(d_model=16, num_layers=1, num_heads=1)
  return config


def test_reset_redraws_item_rows_and_zeroes_their_moments():
  config = _tiny_config()
  task = active_forgetting.ForgettingTask(config, forget_every=100)
  std = config.task.embed_std
  params = nnx.state(task.init_model(nnx.Rngs(0)), nnx.Param).to_pure_dict()
  params = jax.tree_util.tree_map(lambda x: x + 3.0, params)  # "trained": far from the init
  opt_state = optax.adam(1e-3).init(params)
  opt_state = jax.tree_util.tree_map(lambda x: x + 1.0 if x.ndim else x, opt_state)
  hook = jax.jit(task.after_update)
  key = jax.random.key(5)

  def call(step, k=key):
    return hook(jnp.int32(step), jax.tree_util.tree_map(jnp.copy, params),
                jax.tree_util.tree_map(jnp.copy, opt_state), k)

  same, same_opt = call(100)
  jax.tree_util.tree_map(np.testing.assert_array_equal, (same, same_opt), (params, opt_state))
  (out, out_opt), (again, _), (other, _) = call(101), call(101), call(101, jax.random.key(6))
  emb = np.asarray(out["tok_embed"]["embedding"])
  old = np.asarray(params["tok_embed"]["embedding"])
  L = config.task.num_labels
  np.testing.assert_array_equal(emb[:L], old[:L])  # forget_rows="items": labels kept
  assert abs(emb[L:].mean()) < 0.1 * std and emb[L:].std() == pytest.approx(std, rel=0.05)
  np.testing.assert_array_equal(emb, again["tok_embed"]["embedding"])
  assert not np.allclose(emb[L:], other["tok_embed"]["embedding"][L:])
  rest = {k: v for k, v in out.items() if k != "tok_embed"}
  jax.tree_util.tree_map(np.testing.assert_array_equal, rest,
                         {k: v for k, v in params.items() if k != "tok_embed"})
  mu, nu = out_opt[0].mu["tok_embed"]["embedding"], out_opt[0].nu["tok_embed"]["embedding"]
  for m in (mu, nu):
    np.testing.assert_array_equal(m[L:], 0.0)
    np.testing.assert_array_equal(m[:L], 1.0)
  np.testing.assert_array_equal(out_opt[0].mu["lm_head"]["kernel"], 1.0)
  # forget_rows="all" re-draws the label rows too.
  config.task.forget_rows = "all"
  task = active_forgetting.ForgettingTask(config, forget_every=100)
  out, _ = jax.jit(task.after_update)(jnp.int32(101), params, opt_state, key)
  assert np.abs(np.asarray(out["tok_embed"]["embedding"][:L]) - old[:L]).min() > 0


def test_init_embedding_scale_and_task_validation():
  config = _tiny_config()
  emb = active_forgetting.ForgettingTask(config).init_model(nnx.Rngs(0)).tok_embed.embedding
  assert float(np.std(emb[...])) == pytest.approx(config.task.embed_std, rel=0.05)
  config.task.forget_rows = "labels"
  with pytest.raises(ValueError, match="forget_rows.*items"):
    active_forgetting.ForgettingTask(config)
  config = _tiny_config()
  config.task.embed_std = 0.0
  with pytest.raises(ValueError, match="embed_std"):
    active_forgetting.ForgettingTask(config)


def test_training_leaves_unseen_embeddings_at_init(tmp_path):
  config = _tiny_config()
  config.train.steps = 3
  task = active_forgetting.ForgettingTask(config)
  init = np.asarray(task.init_model(nnx.Rngs(config.seed)).tok_embed.embedding[...])
  model = train(config, str(tmp_path), task, progress=False).model
  emb = np.asarray(model.tok_embed.embedding[...])
  unseen = task.token_task.unseen_ids
  np.testing.assert_array_equal(emb[unseen], init[unseen])
  assert np.abs(emb[task.token_task.seen_ids[:10]] - init[task.token_task.seen_ids[:10]]).max() > 1e-4


def test_config_validation():
  with pytest.raises(ValueError, match="smoke"):
    config_lib.get_config("big")
  config = config_lib.get_config("smoke")
  config.runs = (dict(name="active", forget_every=300),)
  config.eval.eval_every = 200
  with pytest.raises(ValueError, match="eval_every"):
    active_forgetting.run(config, "/nonexistent")
  config = config_lib.get_config("smoke")
  config.optimizer.schedule = "cosine"
  with pytest.raises(ValueError, match="schedule"):
    active_forgetting.run(config, "/nonexistent")
  config = config_lib.get_config("smoke")
  config.runs = (dict(name="x", forget_every=100, every=3),)
  with pytest.raises(ValueError, match="runs"):
    active_forgetting.run(config, "/nonexistent")


@pytest.mark.slow
def test_forgetting_raises_unseen_token_icl_and_temporary_forgetting_restores_iwl(tmp_path):
  """The smoke config: vanilla, active and temporary forgetting (embed_std 1, k = 100).

  Measured: vanilla 0.992 / 0.612 / 0.978 (ICL seen / ICL unseen / IWL), active 0.994 / 0.926 /
  0.582, temporary (resets until 2400 of 4800 updates) 0.994 / 0.794 / 0.974. Vanilla's
  unseen-token ICL is above context chance at this embedding scale, so the papers' near-chance
  vanilla is not asserted.
  """
  results = active_forgetting.run(config_lib.get_config("smoke"), str(tmp_path))
  runs = results["runs"]
  van, act, tmp = runs["vanilla"], runs["active"], runs["temporary"]
  context_chance = results["chance_context"]
  # Every regime copies labels in context for seen tokens; vanilla also memorises item -> label.
  for r in (van, act, tmp):
    assert r["final_icl_seen"] > context_chance + 0.5
  assert van["final_iwl"] > 0.9
  # Active forgetting: unseen-token ICL far above vanilla's plateau, paid for with in-weights
  # answers.
  assert act["final_icl_unseen"] > 0.85
  assert act["final_icl_unseen"] > van["final_icl_unseen"] + 0.2
  assert act["final_iwl"] < van["final_iwl"] - 0.25
  # Temporary forgetting gets both: vanilla's in-weights answers and unseen-token ICL well above
  # vanilla's.
  assert tmp["final_iwl"] > van["final_iwl"] - 0.05
  assert tmp["final_icl_unseen"] > van["final_icl_unseen"] + 0.1
  figure = figure_scripts.load("fig_active_forgetting")
  assert os.path.getsize(figure.plot(results, str(tmp_path / "af.png"))) > 10_000
