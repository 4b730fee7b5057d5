"""Bursty in-context classification and the abrupt emergence of ICL (Reddy 2023).

For each run in `config.runs` (overrides of burstiness B, number of classes K, Zipf exponent alpha and
the bursty fraction p_B), trains the two-attention-layer network on the bursty generator and records
over training:
  * ICL accuracy on novel classes labelled in context (chance: 1/L without using the context,
    B_test / N by picking any label present in the context);
  * flipped-label ICL accuracy (existing classes, labels re-assigned in context);
  * IWL accuracy (query class absent from the context: only memorised class -> label maps help).
The ICL transition step is the first evaluation where ICL accuracy passes halfway between the
context-chance level and its final value.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxllm import optim
from jaxllm.data import cluster_sequences
from jaxllm.icl.attention_classifier import AttentionOnlyClassifier
from jaxllm.results import write_results
from jaxllm.train.loop import train

RUN_FIELDS = ("name", "burstiness", "num_classes", "alpha", "p_bursty")


def _validate(config):
  t, e = config.task, config.eval
  for name, value in (("task.n_dims", t.n_dims), ("task.pos_dim", t.pos_dim),
                      ("task.num_labels", t.num_labels), ("task.num_examples", t.num_examples),
                      ("model.hidden", config.model.hidden),
                      ("train.batch_size", config.train.batch_size),
                      ("train.steps", config.train.steps), ("eval.eval_every", e.eval_every),
                      ("eval.eval_size", e.eval_size),
                      ("eval.icl_test_burstiness", e.icl_test_burstiness)):
    if int(value) != value or value < 1:
      raise ValueError(f"config.{name} must be a positive integer, got {value}")
  if config.optimizer.name not in optim.NAMES:
    raise ValueError(f"config.optimizer.name must be one of {list(optim.NAMES)}, got "
                     f"{config.optimizer.name!r}")
  if config.train.steps % e.eval_every:
    raise ValueError(f"config.train.steps ({config.train.steps}) must be a multiple of "
                     f"config.eval.eval_every ({e.eval_every})")
  if not config.runs:
    raise ValueError("config.runs must list at least one run")
  for run_cfg in config.runs:
    unknown = set(run_cfg) - set(RUN_FIELDS)
    if unknown or "name" not in run_cfg:
      raise ValueError(f"each entry of config.runs needs a name and only fields {RUN_FIELDS}; "
                       f"got {sorted(run_cfg)}")


def _settings(config, run_cfg):
  s = {f: config.task[f] for f in RUN_FIELDS if f != "name"}
  s.update({k: v for k, v in run_cfg.items() if k != "name"})
  return s


class BurstyTask:
  """Training batches of one run's class set; a pure function of (key, step)."""

  def __init__(self, config, settings, key):
    t = config.task
    k_task, self.k_data = jax.random.split(key)
    self.classes = cluster_sequences.make_task(k_task, settings["num_classes"], t.num_labels,
                                               t.n_dims, settings["alpha"])
    self.shape = dict(num_examples=t.num_examples, eps=t.eps, pos_dim=t.pos_dim)
    self.sample = functools.partial(
        cluster_sequences.sample_train, task=self.classes, batch_size=config.train.batch_size,
        burstiness=settings["burstiness"], p_bursty=settings["p_bursty"], **self.shape)
    self.model_args = (t.n_dims + t.pos_dim, t.num_labels, config.model.hidden)

  def init_model(self, rngs):
    return AttentionOnlyClassifier(*self.model_args, rngs=rngs)

  def batch(self, step: int):
    tokens, targets = self.sample(jax.random.fold_in(self.k_data, step))
    return {"tokens": tokens, "targets": targets}

  def loss(self, model, batch):
    logits = model(batch["tokens"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean(), {}


def train_run(config, settings, key, workdir):
  """Trains one network in segments of ``eval.eval_every`` updates; returns its curves and final
  accuracies."""
  k_task, k_eval = jax.random.split(key)
  task = BurstyTask(config, settings, k_task)
  e = config.eval
  k_icl, k_flip, k_iwl = jax.random.split(k_eval, 3)
  tests = {
      "icl": cluster_sequences.sample_icl(k_icl, task.classes, e.eval_size,
                                          burstiness=e.icl_test_burstiness, **task.shape),
      "icl_flipped": cluster_sequences.sample_icl(k_flip, task.classes, e.eval_size,
                                                  burstiness=e.icl_test_burstiness,
                                                  novel=False, **task.shape),
      "iwl": cluster_sequences.sample_iwl(k_iwl, task.classes, e.eval_size, **task.shape),
  }

  @nnx.jit
  def evaluate(model):
    return {name: jnp.mean(jnp.argmax(model(tok), -1) == tgt) for name, (tok, tgt) in tests.items()}

  curves = {"step": [0], "loss": [None]}
  for name, value in evaluate(task.init_model(nnx.Rngs(config.seed))).items():
    curves[name] = [float(value)]
  for step in range(int(e.eval_every), int(config.train.steps) + 1, int(e.eval_every)):
    result = train(config, workdir, task, total_steps=step, progress=False)
    curves["step"].append(step)
    curves["loss"].append(result.last_metrics["loss"])
    for name, value in evaluate(result.model).items():
      curves[name].append(float(value))

  context_chance = e.icl_test_burstiness / config.task.num_examples
  icl = np.asarray(curves["icl"])
  halfway = context_chance + 0.5 * (icl[-1] - context_chance)
  crossed = np.nonzero(icl > halfway)[0] if icl[-1] > context_chance + 0.1 else []
  return {
      **settings,
      "curves": curves,
      "final_icl": curves["icl"][-1],
      "final_icl_flipped": curves["icl_flipped"][-1],
      "final_iwl": curves["iwl"][-1],
      "icl_transition_step": int(curves["step"][crossed[0]]) if len(crossed) else None,
      "chance_uniform": 1.0 / config.task.num_labels,
      "chance_context": context_chance,
  }


def run(config, workdir):
  """Trains every run of the sweep; writes workdir/results.json."""
  _validate(config)
  key = jax.random.key(config.seed)
  runs = {}
  for run_cfg in config.runs:
    key, sub = jax.random.split(key)
    runs[run_cfg["name"]] = train_run(config, _settings(config, run_cfg), sub,
                                      os.path.join(workdir, run_cfg["name"]))
    write_results(workdir, {"study": "bursty", "runs": runs, "complete": False})
  results = {
      "study": "bursty",
      "num_examples": config.task.num_examples,
      "num_labels": config.task.num_labels,
      "eps": config.task.eps,
      "icl_test_burstiness": config.eval.icl_test_burstiness,
      "runs": runs,
      "complete": True,
  }
  write_results(workdir, results)
  return results
