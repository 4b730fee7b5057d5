"""Packed rows through the Transformer: each document's logits (and gradients) equal the document
run alone, positions restart per document, and the text loss passes the packing through."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxllm.data import packing
from jaxllm.models.transformer import build

SMALL = dict(d_model=32, num_layers=1, num_heads=4, vocab_size=61, max_len=40)
LENGTHS = ((9, 17, 6), (32,))  # row 1 is one document


def _packed_batch(seed=0):
  seg = np.stack([np.repeat(np.arange(1, len(lens) + 1), lens) for lens in LENGTHS])
  seg = jnp.asarray(seg, jnp.int32)
  tokens = jax.random.randint(jax.random.key(seed), seg.shape, 0, SMALL["vocab_size"])
  return tokens, seg, packing.positions(seg)


def _documents(seg):
  out = []
  for r, row in enumerate(np.asarray(seg)):
    for sid in np.unique(row):
      idx = np.flatnonzero(row == sid)
      out.append((r, int(idx[0]), int(idx[-1]) + 1))
  return out


def _check_documents_alone(model, atol):
  tokens, seg, pos = _packed_batch()
  packed = model(tokens, segment_ids=seg, positions=pos)
  for r, lo, hi in _documents(seg):
    alone = model(tokens[r:r + 1, lo:hi])
    np.testing.assert_allclose(np.asarray(packed[r:r + 1, lo:hi]), np.asarray(alone), atol=atol,
                               rtol=0)
  return tokens, seg, pos, packed


@pytest.mark.parametrize("extra", [
    pytest.param(dict(style="llama", num_kv_heads=2, attention_impl="xla"),
                 marks=pytest.mark.slow),
    dict(style="llama", num_kv_heads=2),  # impl auto: the blocked path on CPU
    pytest.param(dict(style="gpt2"), marks=pytest.mark.slow),  # as in the positions test
    dict(style="llama", attention="sliding_window",
         attention_options=dict(window=8, block_q=8, block_k=8)),
    dict(style="llama", attention="lightning", attention_options=dict(chunk_size=8)),
    dict(style="llama", attention="retention", attention_options=dict(chunk_size=8)),
    pytest.param(dict(style="llama", attention="linear", attention_options=dict(chunk_size=8)),
                 marks=pytest.mark.slow),
], ids=["dense-xla", "dense-auto", "dense-learned-positions", "sliding_window", "lightning",
        "retention", "linear"])
def test_packed_row_logits_equal_documents_alone(extra):
  model = build(dict(SMALL, **extra), rngs=nnx.Rngs(0))
  _check_documents_alone(model, atol=1e-5)


@pytest.mark.slow
def test_packed_row_logits_bfloat16():
  model = build(dict(SMALL, style="llama", dtype="bfloat16"), rngs=nnx.Rngs(0))
  _check_documents_alone(model, atol=2e-2)


def test_positions_restart_per_document():
  # Learned position embeddings see absolute positions (RoPE inside one segment sees only
  # offsets, so it cannot tell).
  model = build(dict(SMALL, style="gpt2"), rngs=nnx.Rngs(0))
  tokens, seg, pos, packed = _check_documents_alone(model, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(pos[0]), np.concatenate([np.arange(n)
                                                                     for n in LENGTHS[0]]))
  # Row positions (no restart) give the later documents other embeddings than alone.
  unrestarted = model(tokens, segment_ids=seg)
  assert np.abs(np.asarray(unrestarted[0, 9:] - packed[0, 9:])).max() > 1e-3
  np.testing.assert_allclose(np.asarray(unrestarted[0, :9]), np.asarray(packed[0, :9]), atol=1e-6)


@pytest.mark.slow  # the attention-level gradients run in tests/attention/test_segments.py
def test_gradients_equal_documents_alone():
  model = build(dict(SMALL, style="llama", num_kv_heads=2, num_layers=2), rngs=nnx.Rngs(0))
  tokens, seg, pos = _packed_batch(seed=1)
  targets = jnp.roll(tokens, -1, axis=1)
  mask = jnp.pad(packing.loss_mask(seg), ((0, 0), (0, 1))).astype(jnp.float32)

  def summed_ce(logits, targets, mask):
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * mask)

  def packed_loss(m):
    return summed_ce(m(tokens, segment_ids=seg, positions=pos), targets, mask)

  def alone_loss(m):
    return sum(summed_ce(m(tokens[r:r + 1, lo:hi]), targets[r:r + 1, lo:hi],
                         mask[r:r + 1, lo:hi]) for r, lo, hi in _documents(seg))

  got, want = nnx.grad(packed_loss)(model), nnx.grad(alone_loss)(model)
  got, want = jax.tree.leaves(nnx.to_pure_dict(got)), jax.tree.leaves(nnx.to_pure_dict(want))
  assert len(got) == len(want) > 0
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)


def test_text_loss_passes_segment_ids_and_positions():
  from jaxllm.train.lm_task import masked_lm_loss  # pylint: disable=g-import-not-at-top
  model = build(dict(SMALL, style="llama"), rngs=nnx.Rngs(0))
  tokens, seg, pos = _packed_batch()
  batch = {"tokens": tokens, "segment_ids": seg, "positions": pos,
           "mask": packing.loss_mask(seg)}
  loss, _ = masked_lm_loss(model, batch)
  logits = model(tokens[:, :-1], segment_ids=seg[:, :-1], positions=pos[:, :-1])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
  mask = batch["mask"].astype(jnp.float32)
  np.testing.assert_allclose(float(loss), float(jnp.sum(ce * mask) / mask.sum()), rtol=1e-6)
  unpacked, _ = masked_lm_loss(model, {"tokens": tokens, "mask": batch["mask"]})
  assert abs(float(unpacked) - float(loss)) > 1e-4  # the packing changes the loss


def test_segment_ids_refused_where_the_model_cannot_honour_them():
  tokens, seg, _ = _packed_batch()
  lrpe = build(dict(SMALL, style="llama", block="transnormer", attention="lightning"),
               rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="segment_ids"):
    lrpe(tokens, segment_ids=seg)
  model = build(dict(SMALL, style="llama", attention="streaming",
                     attention_options=dict(window=8, sinks=2)), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="segment_ids"):
    model(tokens, segment_ids=seg)
