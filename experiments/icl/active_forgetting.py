"""Active and temporary forgetting: in-context vs in-weights strategies (Anand et al. 2024, after
Chen et al. 2023).

One decoder per training regime on token-level bursty classification
(``jaxllm.data.token_sequences``):
  * vanilla: plain training;
  * active forgetting: the token-embedding matrix is re-drawn from its initial distribution every
    ``forget_every`` updates for the whole run;
  * temporary forgetting: the same for the first ``forget_until`` updates only, then plain training.
Curves over training and final values of
  * ICL accuracy on seen items (labels re-assigned at random in context),
  * structural ICL accuracy on unseen items (ids never sampled in training, embeddings untrained),
  * IWL accuracy on seen items (query item absent from the context),
with chance levels 1 / L (ignoring the context) and B / N (any label present in the context).

Resets come from ``ForgettingTask.after_update`` (a loop hook), a pure function of
the update count and the loop's per-step key, so a resumed run re-draws exactly the embeddings the
uninterrupted one does. A reset is applied after updates k + 1, 2k + 1, ... (k = ``forget_every``),
i.e. at the start of every k-update block but the first (what the block's first update wrote into
the embedding is discarded), so every multiple of k, where curves are evaluated, is the end of a
block. A reset re-draws the rows of ``task.forget_rows`` ("items": all but the L label tokens, the
smoke setting; "all") from N(0, ``task.embed_std``^2), the distribution every regime's embedding is
initialised from, and zeroes those rows' Adam moments. Deviations from Chen et al.: Adam's step
count is shared by all parameters and is not restarted, so the bias correction of the fresh moments
is ~1 and the first updates of a reset row are larger than a fresh Adam's would be; and the label
rows are kept in the smoke config. Input and output embeddings are untied (with tied ones a reset
also wipes the label read-out).

Smoke-scale outcome (4800 updates, k = 100, embed_std = 1, one seed; ICL seen / ICL unseen / IWL):
vanilla 0.992 / 0.612 / 0.978, active forgetting 0.994 / 0.926 / 0.582, temporary forgetting (resets
until update 2400) 0.994 / 0.794 / 0.974. Vanilla's unseen-token ICL plateaus near 0.6 from update
~1200 on while active forgetting keeps raising it; temporary forgetting keeps most of that gain and
recovers vanilla's IWL. Not reproduced: vanilla at the context-chance level on unseen tokens. With
the decoder's default embedding std 0.02 vanilla's unseen-token ICL does stay at the context-chance
level B / N, but then forgetting does not raise it either (Adam moves a re-drawn row far from its
random draw within a few updates, so the copy circuit keys on learned features); with embed_std = 1
vanilla itself learns a partly embedding-agnostic copy.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxllm.data import token_sequences as data
from jaxllm.models import layers
from jaxllm.models.transformer import build
from jaxllm.results import write_json, write_results
from jaxllm.train.loop import train

TESTS = ("icl_seen", "icl_unseen", "iwl")
RUN_FIELDS = ("name", "forget_every", "forget_until")
EMBED_INIT_STD = 0.02  # the decoder's token-embedding initialiser (models.transformer)
FORGET_ROWS = ("all", "items")  # rows re-drawn at a reset: every token, or all but the labels


def _validate(config):
  t = config.task
  for field in ("num_labels", "num_seen", "num_unseen", "num_examples", "burstiness"):
    if int(t[field]) != t[field] or t[field] < 1:
      raise ValueError(f"config.task.{field} must be a positive integer, got {t[field]}")
  data.check_shape(t.num_examples, t.burstiness, t.num_labels)
  for field in ("eval_every", "eval_size"):
    if int(config.eval[field]) != config.eval[field] or config.eval[field] < 1:
      raise ValueError(f"config.eval.{field} must be a positive integer, got {config.eval[field]}")
  if config.train.steps % config.eval.eval_every:
    raise ValueError(f"config.train.steps ({config.train.steps}) must be a multiple of "
                     f"config.eval.eval_every ({config.eval.eval_every})")
  if config.optimizer.get("schedule", "constant") != "constant":
    raise ValueError("config.optimizer.schedule must be 'constant': training runs in segments "
                     f"between evaluations, got {config.optimizer.schedule!r}")
  if not config.runs:
    raise ValueError("config.runs must list at least one regime")
  for run_cfg in config.runs:
    if set(run_cfg) - set(RUN_FIELDS) or "name" not in run_cfg:
      raise ValueError(f"each entry of config.runs needs a name and only fields {RUN_FIELDS}; "
                       f"got {sorted(run_cfg)}")
    every = run_cfg.get("forget_every", 0)
    if int(every) != every or every < 0:
      raise ValueError(f"runs[{run_cfg['name']!r}].forget_every must be 0 (never) or a "
                       f"positive integer, got {every}")
    if every and config.eval.eval_every % every:
      raise ValueError(f"config.eval.eval_every ({config.eval.eval_every}) must be a multiple of "
                       f"runs[{run_cfg['name']!r}].forget_every ({every}) so that evaluations "
                       "fall on block ends")


def make_task(config) -> data.TokenTask:
  t = config.task
  return data.make_task(int(config.seed), t.num_labels, t.num_seen, t.num_unseen, t.alpha)


def _is_embedding_leaf(path) -> bool:
  """Whether a pytree path ends in the token-embedding matrix (params or an optimizer moment)."""
  names = [getattr(k, "key", None) for k in path]
  return names[-2:] == ["tok_embed", "embedding"]


class ForgettingTask:
  """Bursty token classification; embedding rows and their Adam moments are reset on schedule.

  Args:
    config: the experiment config (``task``, ``model``, ``train`` blocks).
    forget_every: k, the block length in updates; 0 means never forget.
    forget_until: last update after which a reset may happen (None: the whole run).
  """

  def __init__(self, config, forget_every: int = 0, forget_until: int | None = None):
    t = config.task
    self.token_task = make_task(config)
    self.num_labels = int(t.num_labels)
    self.sample = dict(num_examples=int(t.num_examples), burstiness=int(t.burstiness),
                       p_bursty=float(t.p_bursty), p_relabel=float(t.p_relabel))
    self.batch_size = int(config.train.batch_size)
    self.seed = int(config.seed)
    self.embed_std = float(t.get("embed_std", EMBED_INIT_STD))
    self.forget_rows = t.get("forget_rows", "all")
    if self.forget_rows not in FORGET_ROWS:
      raise ValueError(f"config.task.forget_rows must be one of {FORGET_ROWS}, "
                       f"got {self.forget_rows!r}")
    if not self.embed_std > 0:
      raise ValueError(f"config.task.embed_std must be positive, got {self.embed_std}")
    self.forget_every = int(forget_every)
    self.forget_until = int(config.train.steps if forget_until is None else forget_until)
    self.model_cfg = dict(config.model.to_dict(), io="tokens",
                          vocab_size=self.token_task.vocab_size)

  def draw_embedding(self, key, shape, dtype):
    """A token-embedding matrix from the init distribution N(0, embed_std^2)."""
    return layers.dense_init(self.embed_std)(key, shape, dtype)

  def init_model(self, rngs):
    """The decoder, its token embedding drawn at ``embed_std`` (the same in every regime)."""
    model = build(self.model_cfg, rngs=rngs)
    emb = model.tok_embed.embedding
    if self.embed_std != EMBED_INIT_STD:
      emb[...] = self.draw_embedding(jax.random.key(self.seed), emb.shape, emb.dtype)
    return model

  def batch(self, step: int):
    rng = np.random.default_rng([self.seed, 1, step])
    tokens, targets = data.sample_train(rng, self.token_task, self.batch_size, **self.sample)
    return {"tokens": tokens, "targets": targets}

  def label_logits(self, model, tokens):
    """Logits over the L label tokens at the query position: [B, L]."""
    return model(tokens)[:, -1, :self.num_labels]

  def loss(self, model, batch):
    logits = self.label_logits(model, batch["tokens"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["targets"])}

  def is_reset(self, step):
    """Whether the embedding is re-drawn after update ``step`` (k + 1, 2k + 1, ...)."""
    k = self.forget_every
    if not k:
      return False
    # Plain operators: a Python bool for an int step, a traced bool inside the jitted update.
    return (step > k) & (step % k == 1 % k) & (step <= self.forget_until)

  def reset_rows(self, step, vocab_size):
    """[V, 1] bool: the embedding rows re-drawn after update ``step``."""
    rows_V = jnp.arange(vocab_size) >= (self.num_labels if self.forget_rows == "items" else 0)
    return (rows_V & self.is_reset(step))[:, None]

  def after_update(self, step, params, opt_state, key):
    """At reset steps re-draws the embedding rows (all, or the items') from the init distribution
    and zeroes their Adam moments; every other parameter and moment is left as it is."""
    if not self.forget_every:
      return params, opt_state
    emb_VD = params["tok_embed"]["embedding"]
    rows_V1 = self.reset_rows(step, emb_VD.shape[0])
    fresh_VD = self.draw_embedding(jax.random.fold_in(key, 0x5EED), emb_VD.shape, emb_VD.dtype)
    params["tok_embed"]["embedding"] = jnp.where(rows_V1, fresh_VD, emb_VD)

    def clear(path, x):
      if _is_embedding_leaf(path) and getattr(x, "shape", None) == emb_VD.shape:
        return jnp.where(rows_V1, jnp.zeros_like(x), x)
      return x

    return params, jax.tree_util.tree_map_with_path(clear, opt_state)


def make_tests(config, token_task):
  """The three fixed test sets, drawn from streams disjoint from training's."""
  t, n = config.task, int(config.eval.eval_size)
  rng = np.random.default_rng([int(config.seed), 2])
  shape = dict(num_examples=int(t.num_examples), burstiness=int(t.burstiness))
  return {
      "icl_seen": data.sample_icl(rng, token_task, n, unseen=False, **shape),
      "icl_unseen": data.sample_icl(rng, token_task, n, unseen=True, **shape),
      "iwl": data.sample_iwl(rng, token_task, n, num_examples=int(t.num_examples)),
  }


def evaluate(task: ForgettingTask, model, tests) -> dict:
  """Accuracy of the argmax label on every test set."""
  fwd = nnx.jit(task.label_logits)
  return {name: float(np.mean(np.argmax(np.asarray(fwd(model, jnp.asarray(tokens))), -1)
                              == targets))
          for name, (tokens, targets) in tests.items()}


def _load_curves(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def train_regime(config, workdir: str, run_cfg: dict, tests) -> dict:
  """Trains one regime in segments of ``eval_every`` updates, evaluating after each.

  The curves so far are kept in ``workdir/curves.json``, so a killed run resumes from its last
  checkpoint without re-evaluating (or losing) earlier points.
  """
  task = ForgettingTask(config, run_cfg.get("forget_every", 0), run_cfg.get("forget_until"))
  path = os.path.join(workdir, "curves.json")
  curves = _load_curves(path)
  if curves is None:
    curves = {"step": [0], "train_loss": [None], "seconds": [0.0]}
    for name, acc in evaluate(task, task.init_model(nnx.Rngs(config.seed)), tests).items():
      curves[name] = [acc]
  every = int(config.eval.eval_every)
  for step in range(curves["step"][-1] + every, int(config.train.steps) + 1, every):
    t0 = time.perf_counter()
    result = train(config, workdir, task, total_steps=step, progress=False)
    curves["seconds"].append(curves["seconds"][-1] + time.perf_counter() - t0)
    curves["step"].append(step)
    curves["train_loss"].append(result.last_metrics.get("loss"))
    for name, acc in evaluate(task, result.model, tests).items():
      curves[name].append(acc)
    write_json(path, curves)
  resets = [s for s in range(1, int(config.train.steps) + 1) if task.is_reset(s)]
  return {
      "forget_every": task.forget_every,
      "forget_until": task.forget_until if task.forget_every else None,
      "num_resets": len(resets),
      "last_reset": resets[-1] if resets else None,
      "curves": curves,
      **{f"final_{name}": curves[name][-1] for name in TESTS},
      "train_seconds": curves["seconds"][-1],
  }


def run(config, workdir: str) -> dict:
  """Trains every regime of ``config.runs`` in its own subdirectory; writes results.json."""
  _validate(config)
  token_task = make_task(config)
  tests = make_tests(config, token_task)
  t = config.task
  header = {
      "study": "active_forgetting",
      "num_labels": int(t.num_labels), "num_seen": int(t.num_seen),
      "num_unseen": int(t.num_unseen), "num_examples": int(t.num_examples),
      "burstiness": int(t.burstiness), "eval_size": int(config.eval.eval_size),
      "chance_uniform": 1.0 / int(t.num_labels),
      "chance_context": int(t.burstiness) / int(t.num_examples),
  }
  runs = {}
  for run_cfg in config.runs:
    run_cfg = dict(run_cfg)
    runs[run_cfg["name"]] = train_regime(config, os.path.join(workdir, run_cfg["name"]),
                                         run_cfg, tests)
    write_results(workdir, {**header, "runs": runs, "complete": False})
  results = {**header, "runs": runs, "complete": True}
  write_results(workdir, results)
  return results
