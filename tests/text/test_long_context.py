"""Long-context evaluation: exact scoring of retrieval answers and of loss by position."""

import math
import re

import numpy as np
import pytest

from jaxllm.data import tokenizer
from jaxllm.eval import long_context

BYTES = tokenizer.get("bytes")
HAYSTACK = BYTES.encode(("import os\nfor line in data:\n    total += len(line)  # counting\n"
                         "print('the sky is blue')\n") * 200)


def _oracle(style, pick="asked"):
  """Logits that read the answer out of the text: the asked key's value (or the first other one)."""
  def logits_fn(tokens):
    out = np.zeros(tokens.shape + (256,), np.float32)
    for b, row in enumerate(tokens):
      s = bytes(row.astype(np.uint8).tolist()).decode()
      if style == "code":
        asked = re.findall(r"assert (\w+) == ", s)
        pairs = dict(re.findall(r"\n(\w+) = (\d+)", s))
      else:
        asked = re.findall(r"magic number for (\w+) mentioned in the provided text is ", s) or ["pk"]
        pairs = dict(re.findall(r"magic numbers for (\w+) is: (\d+)", s))
        pairs.update({"pk": v for v in re.findall(r"The pass key is (\d+)\.", s)})
      key = asked[-1]
      value = pairs[key] if pick == "asked" else next(v for k, v in pairs.items() if k != key)
      # The input ends with the question and all but the last answer token.
      first = len(s) - len(value)
      for i, ch in enumerate(value):
        out[b, first + i, ord(ch)] = 10.0
    return out
  return logits_fn


@pytest.mark.parametrize("task,style", [("passkey", "prose"), ("needle", "prose"),
                                        ("multikey", "code"), ("passkey", "code")])
def test_a_model_that_reads_the_needle_scores_one_everywhere(task, style):
  r = long_context.retrieval(_oracle(style), BYTES, HAYSTACK, task=task, lengths=(300, 433),
                             depths=(0.0, 0.5, 1.0), num_samples=2, num_keys=3, style=style)
  np.testing.assert_allclose(r["accuracy"], 1.0)
  np.testing.assert_allclose(r["token_accuracy"], 1.0)
  digits = 5 if task == "passkey" else 7
  np.testing.assert_allclose(r["answer_logprob"], -digits * math.log1p(255 * math.exp(-10)),
                             rtol=1e-9)
  assert r["lengths"] == [300, 433] and np.asarray(r["accuracy"]).shape == (2, 3)


def test_multikey_answers_from_a_distractor_are_wrong():
  r = long_context.retrieval(_oracle("code", pick="other"), BYTES, HAYSTACK, task="multikey",
                             lengths=(256,), depths=(0.0, 0.5, 1.0), num_samples=3, num_keys=4,
                             style="code")
  assert np.asarray(r["accuracy"]).max() == 0.0


def test_needle_sits_at_its_depth_and_sequences_have_the_exact_length():
  rng = np.random.default_rng(0)
  for depth in (0.0, 0.3, 1.0):
    tokens, a0, n = long_context._sample(BYTES, HAYSTACK, 500, depth, "passkey", "code", 1, rng)
    s = BYTES.decode(tokens)
    assert len(tokens) == 500 and s.endswith(BYTES.decode(tokens[a0:])) and n == 5
    needle = len("\nPASSKEY = 12345  # remember it\n")
    context = 500 - needle - len("\nassert PASSKEY == ") - 5
    assert s.index("\nPASSKEY = ") == round(depth * context)
  with pytest.raises(ValueError, match="too short"):
    long_context._sample(BYTES, HAYSTACK, 20, 0.5, "needle", "prose", 1, rng)
  with pytest.raises(ValueError, match="task="):
    long_context.retrieval(_oracle("code"), BYTES, HAYSTACK, task="haystack", lengths=(64,),
                           depths=(0.5,), num_samples=1)


def test_position_loss_is_exact_for_known_predictors():
  seq = np.tile(np.arange(10, dtype=np.int32), 100)
  uniform = long_context.position_perplexity(lambda t: np.zeros(t.shape + (256,)), seq, (64, 100),
                                             num_sequences=3, bucket=32)
  assert list(uniform["lengths"]) == [64, 100]
  assert uniform["lengths"][100]["start"] == [0, 32, 64, 96]
  np.testing.assert_allclose(uniform["lengths"][100]["loss"], math.log(256), rtol=1e-9)

  def next_digit(t):
    out = np.zeros(t.shape + (256,))
    np.put_along_axis(out, ((t + 1) % 10)[..., None], 10.0, axis=-1)
    return out

  sharp = long_context.position_perplexity(next_digit, seq, (64,), num_sequences=2, bucket=16)
  np.testing.assert_allclose(sharp["lengths"][64]["loss"], math.log1p(255 * math.exp(-10)), rtol=1e-9)
  table = long_context.tables({"position_perplexity": uniform})
  assert "| 96 |  | 5.545 |" in table


def test_draw_writes_a_figure(tmp_path):
  r = long_context.retrieval(_oracle("code"), BYTES, HAYSTACK, task="needle", lengths=(128,),
                             depths=(0.0, 1.0), num_samples=1, style="code")
  pp = long_context.position_perplexity(lambda t: np.zeros(t.shape + (256,)), HAYSTACK, (64,),
                                        num_sequences=1, bucket=32)
  path = long_context.draw({"position_perplexity": pp, "retrieval": {"needle": r},
                            "train_seq_len": 64}, str(tmp_path / "f.png"))
  assert (tmp_path / "f.png").stat().st_size > 1000 and path.endswith("f.png")
