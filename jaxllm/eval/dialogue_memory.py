"""Long-memory dialogue in the style of SirLLM's Grocery task: an item to remember early in the
dialogue, many distractor turns, then the question whose answer is the item.

Every turn is ``turn_len`` tokens. The vocabulary has structure tokens (BOS, the user marker U,
the turn end E, the remember cue R, the question cue Q), ``num_items`` item tokens (the answers;
a uniform draw, so an item costs log(num_items) nats to predict) and ``num_fillers`` filler tokens
(the distractor chat, uniform, log(num_fillers) nats each):

* greeting: [BOS, U, fillers..., E]; the first four tokens are the sinks;
* memory turn: [U, fillers, R, item, fillers, E], the cue at a random place;
* ``distractors`` turns: [U, fillers..., E];
* question: [U, Q]; the answer is the next token (in training followed by [item, E]).

A small LM is trained on these dialogues (:func:`train`, a few minutes on CPU) and then read by
turns (``jaxllm.inference.sirllm``) under SirLLM and StreamingLLM at the same cache size, with a
full-cache forward as the ceiling. ``recall`` is the share of dialogues whose argmax after the
question is the item; ``item_in_cache`` the share whose cache still holds the item token.

    python -m jaxllm.eval.dialogue_memory --workdir=/tmp/dm --budget=32 \\
        --distractors=0,2,5,10,20,30
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

BOS, U, E, R, Q = range(5)
METHODS = ("full", "sirllm", "sirllm_public", "streaming")


@dataclasses.dataclass(frozen=True)
class Task:
  """Sizes of the synthetic dialogue (defaults: turns of 8 tokens, 24 items, 6 fillers)."""
  num_items: int = 24
  num_fillers: int = 6
  turn_len: int = 8

  def __post_init__(self):
    for f, low in (("num_items", 2), ("num_fillers", 2), ("turn_len", 4)):
      v = getattr(self, f)
      if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"task.{f} must be an int >= {low}, got {v!r}")

  @property
  def vocab_size(self) -> int:
    return 5 + self.num_items + self.num_fillers

  def items(self):
    return np.arange(5, 5 + self.num_items)

  def fillers(self):
    return np.arange(5 + self.num_items, self.vocab_size)


def dialogues(task: Task, rng: np.random.Generator, batch: int, distractors: int):
  """``batch`` dialogues with the same number of distractor turns.

  Returns (turns: a list of int32 [B, C] chunks, the last the question [U, Q]; items int32 [B]).
  """
  n, f = task.turn_len, task.fillers()
  chat = lambda: rng.choice(f, (batch, n - 2))
  col = lambda x: np.full((batch, 1), x)
  greeting = np.concatenate([col(BOS), col(U), rng.choice(f, (batch, n - 3)), col(E)], axis=1)
  items = rng.choice(task.items(), batch)
  memory = np.concatenate([col(U), chat(), col(E)], axis=1)
  cue = rng.integers(1, n - 2, batch)  # R at [1, n - 3], the item right after it
  rows = np.arange(batch)
  memory[rows, cue], memory[rows, cue + 1] = R, items
  turns = [greeting, memory]
  turns += [np.concatenate([col(U), chat(), col(E)], axis=1) for _ in range(distractors)]
  turns.append(np.concatenate([col(U), col(Q)], axis=1))
  return [t.astype(np.int32) for t in turns], items.astype(np.int32)


def training_batch(task: Task, rng: np.random.Generator, batch: int, max_distractors: int,
                   compressed: float = 0.5):
  """Right-padded dialogues with 0..max_distractors distractor turns, answered.

  A ``compressed`` share of them is seen as a bounded cache leaves it: before the last two turns
  each token other than the four sinks and the item is dropped with a probability drawn from
  [0.1, 0.95], the rest closing up (positions as slots); those rows are scored on their intact
  tail only. Without this the LM meets compressed contexts only at evaluation and its entropies
  there are noise.

  Returns (inputs [B, T], targets [B, T], weights [B, T]): next-token targets on every scored
  token, the answer weighted as much as the rest of its dialogue together.
  """
  n = task.turn_len
  t = n * (max_distractors + 2) + 4
  x = np.full((batch, t + 1), E, np.int32)
  w = np.zeros((batch, t), np.float32)
  for b, d in enumerate(rng.integers(0, max_distractors + 1, batch)):
    turns, items = dialogues(task, rng, 1, int(d))
    seq = np.concatenate(turns + [np.asarray([[items[0], E]])], axis=1)[0]
    first = 0
    if d > 0 and rng.random() < compressed:
      cut = len(seq) - 2 * n - 4  # the last two turns, the question and the answer stay
      keep = rng.random(cut) > rng.uniform(0.1, 0.95)
      keep[:4] = True
      keep[seq[:cut] == items[0]] = True
      seq = np.concatenate([seq[:cut][keep], seq[cut:]])
      first = int(keep.sum())
    x[b, :len(seq)] = seq
    w[b, first:len(seq) - 1] = 1.0
    w[b, len(seq) - 3] = len(seq) - 1 - first  # the prediction of the item after Q
  return x[:, :-1], x[:, 1:], w


def model_config(task: Task, d_model: int = 64, num_layers: int = 2, num_heads: int = 4) -> dict:
  return dict(style="llama", vocab_size=task.vocab_size, d_model=d_model, num_layers=num_layers,
              num_heads=num_heads, max_len=4096)


def train(task: Task, *, steps: int, batch: int = 16, learning_rate: float = 5e-3,
          max_distractors: int = 10, seed: int = 0, model_kw: dict | None = None):
  """Trains a small llama-style LM on the dialogues (AdamW, cosine decay, clip 1).

  Returns (model, final loss: the mean over the last 10 steps).
  """
  import jax
  import optax
  from flax import nnx
  from jaxllm import optim
  from jaxllm.models.transformer import build
  model = build(model_config(task, **(model_kw or {})), rngs=nnx.Rngs(seed))
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(50, steps), steps)
  opt = nnx.Optimizer(model, optim.make("adamw", schedule, grad_clip=1.0), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, x, y, w):
    def loss_fn(m):
      ce = optax.softmax_cross_entropy_with_integer_labels(m(x), y)
      return (ce * w).sum() / w.sum()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  rng = np.random.default_rng(seed)
  losses = []
  for _ in range(steps):
    x, y, w = training_batch(task, rng, batch, max_distractors)
    losses.append(float(step(model, opt, x, y, w)))
  jax.block_until_ready(nnx.state(model))
  return model, float(np.mean(losses[-10:]))


def evaluate(model, task: Task, policies: dict, distractors, *, num_dialogues: int = 64,
             seed: int = 1) -> list[dict]:
  """Recall of the item after each number of distractor turns, per method.

  ``policies`` maps a method name to a turn ``Policy`` (``jaxllm.inference.sirllm``), or to None
  for the full-cache forward over the whole dialogue.
  """
  from flax import nnx
  from jaxllm.inference import sirllm
  forward = nnx.jit(lambda m, t: m(t)[:, -1])
  rows = []
  for d in distractors:
    turns, items = dialogues(task, np.random.default_rng([seed, d]), num_dialogues, d)
    whole = np.concatenate(turns, axis=1)
    for name, policy in policies.items():
      if policy is None:
        answer = np.asarray(forward(model, whole)).argmax(-1)
        in_cache = np.ones(num_dialogues, bool)
      else:
        state = sirllm.start(model, policy, num_dialogues)
        for chunk in turns[:-1]:
          _, state = sirllm.turn(model, state, chunk)
        held = np.asarray(state.tokens[:, :int(state.count)])
        in_cache = np.any(held == items[:, None], axis=1)
        logits, state = sirllm.turn(model, state, turns[-1])
        answer = np.asarray(logits[:, -1]).argmax(-1)
      rows.append(dict(method=name, distractors=int(d), dialogue_tokens=int(whole.shape[1]),
                       recall=float(np.mean(answer == items)),
                       item_in_cache=float(np.mean(in_cache))))
  return rows


def methods(budget: int, sinks: int = 4, recent: int = 0, eta: float = 1.0) -> dict:
  """Full cache, SirLLM (both entropy rules) and StreamingLLM, all bounded ones at ``budget``."""
  from jaxllm.inference.policies import Policy
  sir = dict(budget=budget, sinks=sinks, recent=recent, eta=eta)
  return {"full": None, "sirllm": Policy("sirllm", **sir),
          "sirllm_public": Policy("sirllm", entropy_rule="public", **sir),
          "streaming": Policy("streaming", budget=budget, sinks=sinks)}


def load_or_train(workdir: str, task: Task, *, steps: int, seed: int, log=print):
  """The LM saved under ``workdir/model`` (a Hugging Face layout directory) if it was trained for
  this task and step count, else a freshly trained one, saved there."""
  from jaxllm import results
  from jaxllm.interop import hf
  path = os.path.join(workdir, "model")
  meta_path = os.path.join(path, "training.json")
  want = dict(task=dataclasses.asdict(task), steps=steps, seed=seed)
  if os.path.isfile(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
    if {k: meta.get(k) for k in want} == want:
      return hf.load_hf(path), meta
  t0 = time.time()
  model, loss = train(task, steps=steps, seed=seed)
  meta = dict(want, final_loss=loss, train_seconds=round(time.time() - t0, 1))
  log(f"trained {steps} steps in {meta['train_seconds']} s, final loss {loss:.4f}")
  hf.save_hf(model, path)
  results.write_json(meta_path, meta)
  return model, meta


def table(rows: list[dict]) -> str:
  names = list(dict.fromkeys(r["method"] for r in rows))
  lines = [f"{'distractors':>11} {'tokens':>6} " + " ".join(f"{n:>13}" for n in names)]
  for d in dict.fromkeys(r["distractors"] for r in rows):
    by = {r["method"]: r for r in rows if r["distractors"] == d}
    lines.append(f"{d:>11} {by[names[0]]['dialogue_tokens']:>6} " + " ".join(
        f"{by[n]['recall']:>6.3f}/{by[n]['item_in_cache']:<6.2f}" for n in names))
  return "\n".join(lines)


def main():
  from absl import flags
  from jaxllm import cli, results

  flags.DEFINE_string("workdir", None, "Output directory: model/ and results.json.")
  flags.DEFINE_list("distractors", ["0", "2", "5", "10", "20", "30"], "Distractor turn counts.")
  flags.DEFINE_integer("budget", 32, "Cache size of SirLLM and StreamingLLM (tokens).",
                       lower_bound=2)
  flags.DEFINE_integer("sinks", 4, "start_size: sink tokens.", lower_bound=0)
  flags.DEFINE_integer("recent", 0, "SirLLM's recent part.", lower_bound=0)
  flags.DEFINE_float("eta", 1.0, "SirLLM memory decay per turn (Grocery: 1).")
  flags.DEFINE_integer("num_dialogues", 64, "Dialogues per distractor count.", lower_bound=1)
  flags.DEFINE_integer("train_steps", 800, "Training steps of the LM.", lower_bound=1)
  flags.DEFINE_integer("seed", 0, "Training seed (evaluation dialogues use seed + 1).",
                       lower_bound=0)
  FLAGS = flags.FLAGS

  def run(argv):
    cli.expect_no_arguments(argv)
    try:
      if not FLAGS.workdir:
        raise ValueError("--workdir is required")
      try:
        counts = [int(d) for d in FLAGS.distractors]
      except ValueError:
        raise ValueError(f"--distractors must be a list of ints, got {FLAGS.distractors}") from None
      if not counts or min(counts) < 0:
        raise ValueError(f"--distractors must be ints >= 0, got {counts}")
      task = Task()
      policies = methods(FLAGS.budget, FLAGS.sinks, FLAGS.recent, FLAGS.eta)
      if task.turn_len > FLAGS.budget - FLAGS.sinks:
        raise ValueError(f"--budget={FLAGS.budget} leaves no room for a turn of {task.turn_len} "
                         f"tokens after {FLAGS.sinks} sinks")
    except ValueError as e:
      cli.fail(e)
    os.makedirs(FLAGS.workdir, exist_ok=True)
    model, meta = load_or_train(FLAGS.workdir, task, steps=FLAGS.train_steps, seed=FLAGS.seed)
    rows = evaluate(model, task, policies, counts, num_dialogues=FLAGS.num_dialogues,
                    seed=FLAGS.seed + 1)
    print(f"recall / item in cache, cache budget {FLAGS.budget} (sinks {FLAGS.sinks})")
    print(table(rows))
    results.write_results(FLAGS.workdir, dict(
        task=dataclasses.asdict(task), training=meta, budget=FLAGS.budget, sinks=FLAGS.sinks,
        recent=FLAGS.recent, eta=FLAGS.eta, num_dialogues=FLAGS.num_dialogues, rows=rows))
    return 0

  cli.run(run)


if __name__ == "__main__":
  main()
