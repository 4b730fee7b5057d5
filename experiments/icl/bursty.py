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

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxllm.data import cluster_sequences
from jaxllm.icl.attention_classifier import AttentionOnlyClassifier
from jaxllm.results import write_results

RUN_FIELDS = ("name", "burstiness", "num_classes", "alpha", "p_bursty")
OPTIMIZERS = ("sgd", "adam")


def _validate(config):
  for field in ("dim", "pos_dim", "num_labels", "num_examples", "hidden", "batch_size",
                "num_steps", "eval_every", "eval_size", "icl_test_burstiness"):
    value = config[field]
    if int(value) != value or value < 1:
      raise ValueError(f"config.{field} must be a positive integer, got {value}")
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(f"config.optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")
  if config.num_steps % config.eval_every:
    raise ValueError(f"config.num_steps ({config.num_steps}) must be a multiple of "
                     f"config.eval_every ({config.eval_every})")
  if not config.runs:
    raise ValueError("config.runs must list at least one run")
  for run_cfg in config.runs:
    unknown = set(run_cfg) - set(RUN_FIELDS)
    if unknown or "name" not in run_cfg:
      raise ValueError(f"each entry of config.runs needs a name and only fields {RUN_FIELDS}; "
                       f"got {sorted(run_cfg)}")


def _settings(config, run_cfg):
  s = {f: config[f] for f in RUN_FIELDS if f != "name"}
  s.update({k: v for k, v in run_cfg.items() if k != "name"})
  return s


def train_run(config, settings, key):
  """Trains one network; returns its curves and final accuracies."""
  k_task, k_init, k_data, k_eval = jax.random.split(key, 4)
  task = cluster_sequences.make_task(k_task, settings["num_classes"], config.num_labels, config.dim,
                                     settings["alpha"])
  shape = dict(num_examples=config.num_examples, eps=config.eps, pos_dim=config.pos_dim)
  sample = functools.partial(cluster_sequences.sample_train, task=task, batch_size=config.batch_size,
                             burstiness=settings["burstiness"], p_bursty=settings["p_bursty"],
                             **shape)
  k_icl, k_flip, k_iwl = jax.random.split(k_eval, 3)
  tests = {
      "icl": cluster_sequences.sample_icl(k_icl, task, config.eval_size,
                                          burstiness=config.icl_test_burstiness, **shape),
      "icl_flipped": cluster_sequences.sample_icl(k_flip, task, config.eval_size,
                                                  burstiness=config.icl_test_burstiness,
                                                  novel=False, **shape),
      "iwl": cluster_sequences.sample_iwl(k_iwl, task, config.eval_size, **shape),
  }

  model = AttentionOnlyClassifier(config.dim + config.pos_dim, config.num_labels, config.hidden,
                           rngs=nnx.Rngs(params=k_init))
  tx = (optax.sgd(config.learning_rate) if config.optimizer == "sgd"
        else optax.adam(config.learning_rate))
  graphdef, params = nnx.split(model, nnx.Param)
  opt_state = tx.init(params)

  def step(carry, key):
    params, opt_state = carry
    tokens, targets = sample(key)

    def loss_fn(p):
      logits = nnx.merge(graphdef, p)(tokens)
      return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  @jax.jit
  def run_chunk(params, opt_state, key):
    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state),
                                               jax.random.split(key, config.eval_every))
    return params, opt_state, losses.mean()

  @jax.jit
  def evaluate(params):
    m = nnx.merge(graphdef, params)
    return {name: jnp.mean(jnp.argmax(m(tok), -1) == tgt) for name, (tok, tgt) in tests.items()}

  curves = {"step": [0], "loss": [None]}
  for name, value in evaluate(params).items():
    curves[name] = [float(value)]
  for chunk in range(config.num_steps // config.eval_every):
    k_data, sub = jax.random.split(k_data)
    params, opt_state, loss = run_chunk(params, opt_state, sub)
    loss = float(loss)
    if not np.isfinite(loss):
      raise FloatingPointError(f"training loss became {loss} by step "
                               f"{(chunk + 1) * config.eval_every}; lower config.learning_rate")
    curves["step"].append((chunk + 1) * config.eval_every)
    curves["loss"].append(loss)
    for name, value in evaluate(params).items():
      curves[name].append(float(value))

  context_chance = config.icl_test_burstiness / config.num_examples
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
      "chance_uniform": 1.0 / config.num_labels,
      "chance_context": context_chance,
  }


def run(config, workdir):
  """Trains every run of the sweep; writes workdir/results.json."""
  _validate(config)
  key = jax.random.key(config.seed)
  runs = {}
  for run_cfg in config.runs:
    key, sub = jax.random.split(key)
    runs[run_cfg["name"]] = train_run(config, _settings(config, run_cfg), sub)
    write_results(workdir, {"study": "bursty", "runs": runs, "complete": False})
  results = {
      "study": "bursty",
      "num_examples": config.num_examples,
      "num_labels": config.num_labels,
      "eps": config.eps,
      "icl_test_burstiness": config.icl_test_burstiness,
      "runs": runs,
      "complete": True,
  }
  write_results(workdir, results)
  return results
