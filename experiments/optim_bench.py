"""Optimizer benchmark: a small Llama-style text LM, one data stream and budget, each optimizer.

The AdamW learning rate and batch size come from Step Law for the model's non-embedding parameter
count N and the token budget D; every optimizer runs at its published hyperparameters, with its
learning rate either a published absolute value or a published multiple of the AdamW one
(``config.optimizers``). Reported per optimizer: final train loss, held-out loss, the loss curve,
the compiled step time relative to AdamW measured in this run (Hessian-based ones timed over more
than one Hessian-refresh period, so the number is their amortised cost), and the optimizer-state
bytes (closed form, checked against the actual state). A run that diverges is recorded as such.
``scripts/figures/fig_optim_bench.py`` draws the results.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxllm.train.lm_task import TextTask
from jaxllm import optim
from jaxllm.results import write_results
from jaxllm.train.loop import make_optimizer, train
from jaxllm.train.metrics import read_metrics


class ByteLMTask(TextTask):
  """The text LM (bytes by default) exposing its logits, so Sophia-G can sample model labels."""

  def logits(self, model, batch):
    logits = model(batch["tokens"][:, :-1]).astype(jnp.float32)
    return logits, batch["mask"].astype(jnp.float32)


def _run_config(config, name: str, lr: float, hparams: dict, steps: int, batch_size: int):
  c = config.copy_and_resolve_references()
  c.train.steps = steps
  c.train.batch_size = batch_size
  c.optimizer.name = name
  c.optimizer.learning_rate = lr
  c.optimizer.warmup_steps = int(float(config.warmup_fraction) * steps)
  c.optimizer.hparams = hparams
  return c


def learning_rate(spec: dict, adamw_lr: float) -> float:
  """``spec`` holds either ``lr`` (published absolute) or ``lr_factor`` (x the Step-Law lr)."""
  if "lr" in spec:
    return float(spec["lr"])
  return float(spec.get("lr_factor", 1.0)) * adamw_lr


def _resolve_hparams(hparams: dict, adamw_lr: float) -> dict:
  # "step_law" as a value stands for the Step-Law AdamW lr (e.g. Muon's AdamW branch).
  return {k: (adamw_lr if v == "step_law" else v) for k, v in hparams.items()}


def step_seconds(task, opt_cfg, total_steps: int, seed: int, repeats: int,
                 rounds: int = 3) -> float:
  """Seconds per compiled train step (grad + update + apply): the best of ``rounds`` averages
  over ``repeats`` consecutive steps (consecutive, so periodic work such as a Hessian refresh
  every k steps is amortised when repeats >= k)."""
  model = task.init_model(nnx.Rngs(seed))
  graphdef, params_state, rest = nnx.split(model, nnx.Param, ...)
  params = params_state.to_pure_dict()
  opt = make_optimizer(opt_cfg, total_steps)
  gradient_free = opt_cfg.name in optim.GRADIENT_FREE
  batch = task.batch(0)

  def merge(p):
    return nnx.merge(graphdef, nnx.State(p), rest)

  def step(params, opt_state):
    loss_fn = lambda p: task.loss(merge(p), batch)[0]
    if gradient_free:
      grads = jax.tree.map(jnp.zeros_like, params)
    else:
      grads = jax.grad(loss_fn)(params)
    extra = {"obj_fn": loss_fn, "key": jax.random.PRNGKey(0),
             "logits_fn": lambda p: task.logits(merge(p), batch)}
    updates, opt_state = opt.update(grads, opt_state, params, **extra)
    return optax.apply_updates(params, updates), opt_state

  step = jax.jit(step, donate_argnums=(0, 1))
  state = (params, opt.init(params))
  for _ in range(2):
    state = step(*state)
  jax.block_until_ready(state)
  best = float("inf")
  for _ in range(rounds):
    t0 = time.perf_counter()
    for _ in range(repeats):
      state = step(*state)
    jax.block_until_ready(state)
    best = min(best, (time.perf_counter() - t0) / repeats)
  return best


def _eval_loss(model, task, num_sequences: int) -> float:
  loss_fn = nnx.jit(task.loss)
  return float(np.mean([float(loss_fn(model, b)[0]) for b in task.eval_batches(num_sequences)]))


def _schedule_of(c, total_steps: int):
  return optim.make_schedule(c.optimizer.get("schedule", "constant"),
                             peak=c.optimizer.learning_rate, total_steps=total_steps,
                             warmup_steps=c.optimizer.get("warmup_steps", 0),
                             final_fraction=c.optimizer.get("final_fraction", 0.1))


def plan(config) -> dict:
  """Step-Law AdamW learning rate, batch size (sequences) and steps for the token budget."""
  task = ByteLMTask(config, config.model.to_dict())
  model = nnx.eval_shape(lambda: task.init_model(nnx.Rngs(0)))
  n = optim.non_embedding_params(nnx.state(model, nnx.Param).to_pure_dict())
  d = float(config.token_budget)
  lr, batch_tokens = optim.step_law(n, d)
  batch = int(config.train.batch_size) or max(4, int(round(batch_tokens / task.seq_len)))
  steps = max(int(d // (batch * task.seq_len)), 1)
  return {"non_embedding_params": n, "tokens": d, "step_law_lr": lr,
          "step_law_batch_tokens": batch_tokens, "batch_size": batch, "steps": steps}


def run(config, workdir: str) -> dict:
  p = plan(config)
  unknown = sorted(set(config.optimizers) - set(optim.NAMES))
  if unknown:
    raise ValueError(f"config.optimizers has unknown names {unknown}; valid: {list(optim.NAMES)}")
  results = {"experiment": "optim_bench", "plan": p, "runs": {}}
  timing = {}
  for label, spec in config.optimizers.items():
    spec = spec.to_dict()
    name = spec.get("name", label)
    lr = learning_rate(spec, p["step_law_lr"])
    hparams = _resolve_hparams(spec.get("hparams", {}), p["step_law_lr"])
    c = _run_config(config, name, lr, hparams, p["steps"], p["batch_size"])
    task = ByteLMTask(c, c.model.to_dict())
    run_dir = os.path.join(workdir, label)
    entry = {"optimizer": name, "learning_rate": lr, "hparams": hparams}
    try:
      result = train(c, run_dir, task, progress=bool(config.progress))
      entry.update(diverged=False,
                   eval_loss=_eval_loss(result.model, task, int(config.eval.num_sequences)))
      params = nnx.state(result.model, nnx.Param).to_pure_dict()
    except FloatingPointError as e:
      entry.update(eval_loss=None, diverged=True, error=str(e))
      params = nnx.state(task.init_model(nnx.Rngs(c.seed)), nnx.Param).to_pure_dict()
    entry["loss_curve"] = [(m["step"], m["loss"]) for m in read_metrics(run_dir)]
    # From the log rather than the loop's last metrics, so a finished run that is resumed (and
    # so takes no step) still reports its loss.
    entry["final_train_loss"] = (None if entry["diverged"] or not entry["loss_curve"]
                                 else entry["loss_curve"][-1][1])
    opt = make_optimizer(c.optimizer, p["steps"])
    entry["state_bytes"] = optim.state_bytes(name, params, _schedule_of(c, p["steps"]),
                                             **hparams)
    entry["state_bytes_measured"] = optim.measured_state_bytes(opt, params)
    entry["param_bytes"] = int(sum(x.nbytes for x in jax.tree.leaves(params)))
    timing[label] = (task, c.optimizer)
    results["runs"][label] = entry
  # Step times in one pass at the end, so every optimizer is timed under the same conditions.
  for label, (task, opt_cfg) in timing.items():
    results["runs"][label]["step_seconds"] = step_seconds(
        task, opt_cfg, p["steps"], int(config.seed), int(config.eval.timing_repeats))
  base = results["runs"].get(config.reference, {}).get("step_seconds")
  for entry in results["runs"].values():
    entry["step_time_vs_reference"] = entry["step_seconds"] / base if base else None
  results["reference"] = config.reference
  write_results(workdir, results)
  return results

