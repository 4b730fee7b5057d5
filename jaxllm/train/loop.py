"""The training loop: jitted step over pure-dict state, one-step-late metrics, NaN guard,
orbax checkpoints and auto-resume from the workdir."""

import dataclasses
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxllm import optim, sharding
from jaxllm.train.checkpoint import Checkpointer
from jaxllm.train.metrics import MetricWriter


@dataclasses.dataclass
class TrainResult:
  model: nnx.Module
  final_step: int
  resumed_from: int | None
  last_metrics: dict
  steps_per_second: float


def make_optimizer(opt_cfg, total_steps: int) -> optax.GradientTransformation:
  """Schedule + optimizer from ``config.optimizer``."""
  schedule = optim.make_schedule(
      opt_cfg.get("schedule", "constant"), peak=opt_cfg.learning_rate, total_steps=total_steps,
      warmup_steps=opt_cfg.get("warmup_steps", 0),
      final_fraction=opt_cfg.get("final_fraction", 0.1))
  hparams = dict(opt_cfg.get("hparams", {}) or {})
  return optim.make(opt_cfg.name, schedule, grad_clip=opt_cfg.get("grad_clip", None), **hparams)


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _Progress:
  """A progress line with step rate and ETA, printed every ``every`` steps."""

  def __init__(self, total: int, start: int, every: int, enabled: bool):
    self.total, self.start, self.every, self.enabled = total, start, every, enabled
    self.t0 = time.perf_counter()

  def rate(self, step: int) -> float:
    return (step - self.start) / max(time.perf_counter() - self.t0, 1e-9)

  def show(self, step: int, metrics: dict):
    if not self.enabled or (step % self.every and step != self.total):
      return
    r = self.rate(step)
    shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    print(f"step {step}/{self.total} {shown} | {r:.1f} steps/s | ETA "
          f"{_format_eta((self.total - step) / max(r, 1e-9))}", file=sys.stderr, flush=True)


def train(config, workdir: str, task, *, total_steps: int | None = None,
          progress: bool = True) -> TrainResult:
  """Trains ``task`` per ``config.train`` / ``config.optimizer``; resumes from ``workdir``.

  Killing the run and starting it again continues from the last checkpoint with the same
  batches, RNG and optimizer state, so the resumed loss sequence equals the uninterrupted one.

  Optional task hook, traced inside the jitted step after the optimizer update (``step`` is the
  number of updates done, ``key`` the step's key):
  ``after_update(step, params, opt_state, key) -> (params, opt_state)``.
  """
  tcfg = config.train
  total = int(tcfg.steps if total_steps is None else total_steps)
  if total < 1:
    raise ValueError(f"train.steps must be >= 1, got {total}")
  ckpt_every = int(tcfg.get("checkpoint_every", 0) or 0)
  log_every = max(int(tcfg.get("log_every", 100)), 1)

  model = task.init_model(nnx.Rngs(config.seed))
  graphdef, params_state, rest = nnx.split(model, nnx.Param, ...)
  params = params_state.to_pure_dict()
  opt = make_optimizer(config.optimizer, total)
  gradient_free = config.optimizer.name in getattr(optim, "GRADIENT_FREE", frozenset())

  def merge(p):
    return nnx.merge(graphdef, nnx.State(p), rest)

  state = {
      "params": params,
      "opt_state": opt.init(params),
      "rng": jax.random.key_data(jax.random.key(config.seed + 1)),
      "step": jnp.zeros((), jnp.int32),
  }

  def train_step(state, batch):
    def loss_fn(p):
      return task.loss(merge(p), batch)

    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    if gradient_free:
      loss, metrics = loss_fn(state["params"])
      grads = jax.tree_util.tree_map(jnp.zeros_like, state["params"])
    else:
      (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    extra = {"obj_fn": lambda p: loss_fn(p)[0], "key": key}
    if hasattr(task, "logits"):
      extra["logits_fn"] = lambda p: task.logits(merge(p), batch)
    updates, opt_state = opt.update(grads, state["opt_state"], state["params"], **extra)
    params = optax.apply_updates(state["params"], updates)
    if hasattr(task, "after_update"):  # e.g. embedding resets with their moments (active forgetting)
      params, opt_state = task.after_update(state["step"] + 1, params, opt_state, key)
    new = {
        "params": params,
        "opt_state": opt_state,
        "rng": state["rng"],
        "step": state["step"] + 1,
    }
    metrics = {"loss": loss, **metrics, "grad_norm": optax.global_norm(grads)}
    return new, metrics

  plan = None
  if config.get("sharding") is not None:
    plan = sharding.plan_from_config(config.sharding)
    state_sh = plan.state_shardings(state)
    state = jax.device_put(state, state_sh)
    step_fn = jax.jit(train_step, donate_argnums=0,
                      out_shardings=(state_sh, plan.replicated()))
  else:
    step_fn = jax.jit(train_step, donate_argnums=0)

  ckpt = Checkpointer(workdir)
  start = 0
  resumed_from = ckpt.latest_step()
  if resumed_from is not None:
    if resumed_from > total:
      raise ValueError(
          f"workdir {workdir} holds a checkpoint at step {resumed_from}, past train.steps={total}; "
          "use a fresh --workdir or raise train.steps")
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        state)
    state, meta = ckpt.restore(resumed_from, abstract)
    start = int(meta["data_position"])
    if progress:
      print(f"resumed from checkpoint at step {start} in {workdir}", file=sys.stderr, flush=True)

  writer = MetricWriter(workdir, resume_step=start)
  prog = _Progress(total, start, log_every, progress)
  pending = None  # (step, device metrics): read one step late so the host never stalls the device
  last = {}

  def drain():
    nonlocal pending, last
    if pending is None:
      return
    s, dev_metrics = pending
    pending = None
    host = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
    if not all(math.isfinite(v) for v in host.values()):
      bad = {k: v for k, v in host.items() if not math.isfinite(v)}
      raise FloatingPointError(
          f"non-finite metrics {bad} at step {s}; training stopped. Lower "
          f"optimizer.learning_rate (now {config.optimizer.learning_rate}) or set "
          f"optimizer.grad_clip. Last checkpoint: step {ckpt.latest_step()}.")
    last = host
    if s % log_every == 0 or s == total:
      writer.write(s, host)
    prog.show(s, host)

  try:
    for step in range(start, total):
      batch = task.batch(step)
      if plan is not None:
        batch = jax.device_put(batch, plan.batch_sharding(batch))
      state, dev_metrics = step_fn(state, batch)
      drain()
      pending = (step + 1, dev_metrics)
      done = step + 1
      if (ckpt_every and done % ckpt_every == 0) or done == total:
        drain()  # never checkpoint a state whose loss was not checked
        ckpt.save(done, state, {"data_position": done, "step": done})
    drain()
  finally:
    writer.close()
    ckpt.close()

  params = jax.device_get(state["params"])
  return TrainResult(model=merge(params), final_step=total, resumed_from=resumed_from,
                     last_metrics=last, steps_per_second=prog.rate(total))
