"""The long-memory dialogue: its structure, the evaluation's wiring at exact numbers, the command
line's bad input, and (slow) SirLLM against StreamingLLM on a model trained on the task."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxllm.eval import dialogue_memory as dm
from tests.inference import helpers

TASK = dm.Task()


def test_dialogue_structure_and_training_targets():
  rng = np.random.default_rng(0)
  turns, items = dm.dialogues(TASK, rng, 5, 3)
  assert [t.shape for t in turns] == [(5, 8)] * 5 + [(5, 2)]
  greeting, memory, *chat, question = turns
  assert np.all(greeting[:, :2] == [dm.BOS, dm.U]) and np.all(question == [dm.U, dm.Q])
  fillers, all_items = set(TASK.fillers()), set(TASK.items())
  for b in range(5):
    cue = int(np.nonzero(memory[b] == dm.R)[0][0])
    assert memory[b, cue + 1] == items[b] and items[b] in all_items
    rest = np.delete(memory[b, 1:-1], [cue - 1, cue])
    assert set(rest.tolist()) <= fillers
    for t in chat:  # distractor turns hold no item
      assert t[b, 0] == dm.U and t[b, -1] == dm.E and set(t[b, 1:-1].tolist()) <= fillers
  x, y, w = dm.training_batch(TASK, rng, 4, 2, compressed=0.0)
  assert x.shape == y.shape == w.shape == (4, 8 * 4 + 4)
  for b in range(4):
    n = int(np.sum(w[b] > 0))
    q = int(np.argmax(w[b]))  # the answer position carries the dialogue's weight
    assert x[b, q] == dm.Q and y[b, q] in all_items and w[b, q] == n
    assert np.all(w[b, n:] == 0) and n % 8 == 3
  # Compressed rows: sinks, item and the intact last two turns stay; only the tail is scored.
  x, y, w = dm.training_batch(TASK, np.random.default_rng(1), 16, 6, compressed=1.0)
  for b in range(16):
    scored = np.nonzero(w[b])[0]
    first, q = int(scored[0]), int(np.argmax(w[b]))
    assert np.all(np.diff(scored) == 1) and q == scored[-1] - 1 and w[b, q] == len(scored)
    assert x[b, q] == dm.Q and y[b, q] in x[b, :q] and x[b, 0] == dm.BOS
    if first:  # a compressed row: the tail is two whole turns, the question and the answer
      assert x[b, first] == dm.U and x[b, first + 8] == dm.U and q == first + 17


def test_evaluation_wiring_with_exact_cache_numbers():
  """Untrained model, 24-token caches: without distractors nothing is evicted (every method's
  recall equals the full forward's), and StreamingLLM has lost the item after 3 distractors."""
  model = helpers.model(vocab_size=TASK.vocab_size, num_layers=1, d_model=16, num_heads=2)
  policies = {k: v for k, v in dm.methods(24).items() if k != "sirllm_public"}
  rows = dm.evaluate(model, TASK, policies, [0, 3], num_dialogues=8)
  at = {(r["method"], r["distractors"]): r for r in rows}
  assert at["full", 0]["dialogue_tokens"] == 18 and at["full", 3]["dialogue_tokens"] == 42
  assert len({at[m, 0]["recall"] for m in policies}) == 1
  assert all(at[m, 0]["item_in_cache"] == 1 for m in policies)
  assert at["streaming", 3]["item_in_cache"] == 0 and at["full", 3]["item_in_cache"] == 1


@pytest.mark.parametrize("argv, word", [
    (["--budget=abc"], "--budget"),
    (["--workdir=/tmp/x", "--distractors=1,a"], "--distractors"),
    (["--workdir=/tmp/x", "--budget=10"], "--budget=10"),
    (["--distractors=1"], "--workdir"),
])
def test_cli_bad_input_exits_2_with_one_line(argv, word):
  proc = subprocess.run([sys.executable, "-m", "jaxllm.eval.dialogue_memory", *argv],
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and word in lines[0], proc.stderr


@pytest.mark.slow
def test_sirllm_beats_streaming_llm_at_equal_cache(tmp_path):
  """The command line trains the LM (minutes on CPU), then reads dialogues by turns."""
  proc = subprocess.run([sys.executable, "-m", "jaxllm.eval.dialogue_memory",
                         f"--workdir={tmp_path}", "--distractors=0,10,20", "--num_dialogues=32"],
                        capture_output=True, text=True, timeout=1800,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.loads((tmp_path / "results.json").read_text())["rows"]
  at = {(r["method"], r["distractors"]): r for r in rows}
  assert at["full", 0]["recall"] >= 0.75
  for d in (10, 20):
    assert at["streaming", d]["item_in_cache"] == 0
    assert at["sirllm", d]["item_in_cache"] >= 0.9
    assert at["sirllm", d]["recall"] >= at["streaming", d]["recall"] + 0.5
