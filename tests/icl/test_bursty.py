"""Bursty classification: generator structure, model shapes, and ICL emerging only with burstiness."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.icl import bursty as config_lib
from experiments.icl import bursty
from jaxllm.data import cluster_sequences
from jaxllm.icl.attention_classifier import AttentionOnlyClassifier
from tests.icl import figure_scripts

SHAPE = dict(num_examples=8, eps=0.1, pos_dim=65)


@pytest.fixture(scope="module")
def task():
  return cluster_sequences.make_task(jax.random.key(0), 64, 32, 63, alpha=1.0)


def _nearest_class(task, items):
  return np.argmax(np.asarray(items) @ np.asarray(task.means_KD).T, axis=-1)


def _np(*arrays):
  return [np.asarray(a) for a in arrays]


def test_task_frequencies_and_balanced_labels(task):
  probs = np.asarray(task.class_probs_K)
  np.testing.assert_allclose(probs, (1 / np.arange(1, 65)) / np.sum(1 / np.arange(1, 65)),
                             rtol=1e-5)
  np.testing.assert_array_equal(np.bincount(np.asarray(task.class_labels_K), minlength=32), 2)


def test_bursty_sequences_have_b_copies_and_the_query_class(task):
  tokens, targets = cluster_sequences.sample_train(jax.random.key(1), task, 64, burstiness=4,
                                                   p_bursty=1.0, **SHAPE)
  assert tokens.shape == (64, 17, 128)
  tokens, targets, class_labels, label_vectors = _np(tokens, targets, task.class_labels_K,
                                                     task.label_vectors_LD)
  items, labels, query = tokens[:, 0:16:2, :63], tokens[:, 1:16:2, :63], tokens[:, 16, :63]
  for b in range(64):
    cls = _nearest_class(task, items[b])
    counts = np.bincount(cls, minlength=64)
    assert sorted(counts[counts > 0].tolist()) == [4, 4]
    q = _nearest_class(task, query[b][None])[0]
    assert counts[q] == 4
    assert targets[b] == class_labels[q]
    # Label tokens are the label vectors of the preceding items' classes.
    np.testing.assert_allclose(labels[b], label_vectors[class_labels[cls]], atol=1e-6)
  # Items are (mu + eps eta) / sqrt(1 + eps^2): the residual eps eta / sqrt(1 + eps^2) has squared
  # norm eps^2 / (1 + eps^2) on average.
  cls_all = _nearest_class(task, np.asarray(items).reshape(-1, 63))
  resid = np.asarray(items).reshape(-1, 63) - np.asarray(task.means_KD)[cls_all] / np.sqrt(1.01)
  assert np.mean(np.sum(resid ** 2, -1)) == pytest.approx(0.01 / 1.01, rel=0.1)


def test_positions_are_shifted_one_hots(task):
  tokens, _ = cluster_sequences.sample_train(jax.random.key(2), task, 32, burstiness=0, p_bursty=0.0,
                                             **SHAPE)
  pos = np.asarray(tokens[..., 63:])
  np.testing.assert_array_equal(pos.sum(-1), 1.0)
  starts = pos[:, 0].argmax(-1)
  np.testing.assert_array_equal(pos.argmax(-1), starts[:, None] + np.arange(17))
  assert len(set(starts.tolist())) > 5


def test_icl_and_iwl_test_sets(task):
  tokens, targets = _np(*cluster_sequences.sample_icl(jax.random.key(3), task, 32, burstiness=2,
                                                      **SHAPE))
  labels = tokens[:, 1:16:2, :63]
  lab_vecs = np.asarray(task.label_vectors_LD)
  for b in range(32):
    ids = np.argmax(labels[b] @ lab_vecs.T, -1)
    assert len(set(ids.tolist())) == 4 and int(targets[b]) in ids
  tokens, targets = _np(*cluster_sequences.sample_iwl(jax.random.key(4), task, 64, **SHAPE))
  class_labels = np.asarray(task.class_labels_K)
  for b in range(64):
    cls = _nearest_class(task, tokens[b, 0:16:2, :63])
    q = _nearest_class(task, tokens[b, 16:17, :63])[0]
    assert q not in cls
    assert targets[b] == class_labels[q]


def test_generator_validation(task):
  with pytest.raises(ValueError, match="burstiness"):
    cluster_sequences.sample_train(jax.random.key(0), task, 4, burstiness=3, p_bursty=1.0, **SHAPE)
  with pytest.raises(ValueError, match="pos_dim"):
    cluster_sequences.sample_iwl(jax.random.key(0), task, 4, num_examples=8, eps=0.1, pos_dim=10)


def test_model_is_causal_and_returns_label_logits():
  model = AttentionOnlyClassifier(128, 32, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 17, 128))
  logits, (p1, p2) = model(x, return_attention=True)
  assert logits.shape == (2, 32) and logits.dtype == jnp.float32
  assert p2.shape == (2, 1, 17)
  np.testing.assert_allclose(np.triu(np.asarray(p1[0]), 1), 0.0)
  # Changing a token changes only later positions' first-layer outputs.
  h1, _ = model.attn1(x)
  h2, _ = model.attn1(x.at[:, 9].add(1.0))
  np.testing.assert_allclose(h1[:, :9], h2[:, :9], atol=1e-6)


def test_config_validation():
  with pytest.raises(ValueError, match="smoke"):
    config_lib.get_config("big")
  config = config_lib.get_config("smoke")
  config.optimizer.name = "lamb_v9"
  with pytest.raises(ValueError, match="optimizer.name"):
    bursty.run(config, "/nonexistent")


@pytest.mark.slow
def test_icl_emerges_only_with_bursty_training(tmp_path):
  """The smoke config: a bursty run (B = 4) and an i.i.d. control on K = 4096 classes."""
  results = bursty.run(config_lib.get_config("smoke"), str(tmp_path))
  burst, iid = results["runs"]["bursty_B4"], results["runs"]["iid_B0"]
  # Beyond picking one of the two labels in context (0.5): the query is matched to its class.
  assert burst["final_icl"] > burst["chance_context"] + 0.25
  assert burst["final_icl_flipped"] > burst["chance_context"] + 0.25
  assert burst["icl_transition_step"] is not None
  # Without burstiness the context is useless during training: ICL stays at 1/L chance.
  assert iid["final_icl"] < iid["chance_uniform"] + 0.05
  figure = figure_scripts.load("fig_bursty")
  assert os.path.getsize(figure.plot(results, str(tmp_path / "bursty.png"))) > 10_000


@pytest.mark.slow
def test_more_classes_favour_icl_over_iwl(tmp_path):
  """K sweep at smoke settings (B = 4): few classes are memorised, many are solved in context."""
  config = config_lib.get_config("smoke_sweep")
  config.runs = tuple(r for r in config.runs if r["name"] in ("B4_K128", "B4_K4096"))
  runs = bursty.run(config, str(tmp_path))["runs"]
  few, many = runs["B4_K128"], runs["B4_K4096"]
  # Measured (seed 0) with the study's former loop at 1600 steps: ICL 0.40 vs 0.84, IWL 0.35 vs
  # 0.05; the shared trainer at 2400 steps passes the same bounds.
  assert many["final_icl"] > few["final_icl"] + 0.2
  assert few["final_iwl"] > many["final_iwl"] + 0.15
  # With 128 classes the network memorises: IWL far above the 1/L chance of an unused context.
  assert few["final_iwl"] > 5 * few["chance_uniform"]
