"""The training loop: jitted step over pure-dict state, one-step-late metrics, NaN guard,
orbax checkpoints, auto-resume from the workdir, and a checkpoint on SIGTERM / SIGINT."""

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxllm import optim, sharding
from jaxllm.results import write_text
from jaxllm.train import workdir as workdir_lib
from jaxllm.train.checkpoint import Checkpointer, ConfigMismatchError
from jaxllm.train.metrics import MetricWriter
from jaxllm.train.validate import check_train_config


class Interrupted(Exception):
  """The run stopped on SIGTERM / SIGINT; ``str(e)`` says which checkpoint it saved."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = signum


@contextlib.contextmanager
def stop_requests():
  """Turns the first SIGTERM or SIGINT into an entry of the yielded list, for the loop to act on
  between steps; a second signal gets the previous handler (Ctrl-C twice still interrupts)."""
  requested = []
  if threading.current_thread() is not threading.main_thread():
    yield requested  # signal handlers can only be set from the main thread
    return
  signums = (signal.SIGTERM, signal.SIGINT)
  previous = {s: signal.getsignal(s) for s in signums}

  def restore():
    for s, h in previous.items():
      signal.signal(s, signal.SIG_DFL if h is None else h)

  def handler(signum, frame):
    del frame
    requested.append(signum)
    restore()

  for s in signums:
    signal.signal(s, handler)
  try:
    yield requested
  finally:
    restore()


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



def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and v:
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _config_changes(workdir: str, config) -> str:
  """The fields that differ from the workdir's ``config.json``, as a message tail."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      before = _flat(json.load(f))
  except (OSError, ValueError):
    return ""
  now = _flat(json.loads(config.to_json_best_effort()))
  changed = [f"{k}: {before.get(k)!r} there, {now.get(k)!r} now"
             for k in sorted(set(before) | set(now))
             if before.get(k) != now.get(k) and not k.startswith(("train.", "eval."))]
  return f"; fields that differ from its config.json: {'; '.join(changed)}" if changed else ""


def _data_hooks(task) -> bool:
  has = [hasattr(task, "data_state"), hasattr(task, "restore_data_state")]
  if any(has) and not all(has):
    raise ValueError(f"task {type(task).__name__} must define both data_state(step) and "
                     "restore_data_state(state), or neither")
  return all(has)


def _data_state(task, step: int) -> dict:
  state = task.data_state(step)
  if not isinstance(state, dict):
    raise ValueError(f"{type(task).__name__}.data_state({step}) must return a dict, got "
                     f"{type(state).__name__}")
  try:
    json.dumps(state)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{type(task).__name__}.data_state({step}) is not JSON-serialisable: "
                     f"{e}") from None
  return {"step": step, "state": state}


def train(config, workdir: str, task, *, total_steps: int | None = None,
          progress: bool = True) -> TrainResult:
  """Trains ``task`` per ``config.train`` / ``config.optimizer``; resumes from ``workdir``.

  Killing the run and starting it again continues from the last checkpoint with the same
  batches, RNG and optimizer state, so the resumed loss sequence equals the uninterrupted one.
  A checkpoint is written only once the saved state's own loss and gradient norm (the metrics of
  the step that starts from it) have come back finite. SIGTERM or SIGINT stops the run after the
  current step with a checkpoint of it and raises :class:`Interrupted`. One process at a time
  may use ``workdir`` (``jaxllm.train.workdir.lock``); the config is written to
  ``workdir/config.json`` once the checkpoint (if any) has been restored with it.

  Optional task hooks are described in :class:`jaxllm.train.task.Task` (``after_update``,
  ``logits``, ``data_state`` / ``restore_data_state``).
  """
  check_train_config(config, total_steps)
  tcfg = config.train
  total = int(tcfg.steps if total_steps is None else total_steps)
  ckpt_every = int(tcfg.get("checkpoint_every", 0) or 0)
  log_every = int(tcfg.get("log_every", 100))
  with_data = _data_hooks(task)
  with workdir_lib.lock(workdir):
    return _train(config, workdir, task, total, ckpt_every, log_every, with_data, progress)


def _place_batch(batch, plan, host_local: bool):
  """The batch on the mesh. A task whose ``batch(step)`` returns only this host's rows
  (``host_local_batches = True``, e.g. the text pipeline's per-host slice) gets global arrays
  assembled from every process's rows; otherwise every process holds the whole batch."""
  procs = jax.process_count()
  if not host_local or procs == 1:
    return jax.device_put(batch, plan.batch_sharding(batch))
  global_shapes = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((np.shape(x)[0] * procs,) + np.shape(x)[1:], np.asarray(x).dtype)
      if np.ndim(x) else x, batch)
  return jax.tree.map(lambda x, sh: jax.make_array_from_process_local_data(sh, np.asarray(x)),
                      batch, plan.batch_sharding(global_shapes))


def initial_params(params: dict, init_from: str) -> dict:
  """``params`` replaced by those of a converted checkpoint (``python -m jaxllm.interop.convert``).

  Fine-tuning an imported model: every parameter must exist there with the same shape; the
  stored dtype is cast to the model's.
  """
  from jaxllm.interop import checkpoint as converted  # pylint: disable=g-import-not-at-top
  loaded = nnx.state(converted.load(init_from), nnx.Param).to_pure_dict()
  flat_new = dict(jax.tree_util.tree_flatten_with_path(loaded)[0])
  out = []
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  for path, x in leaves:
    name = jax.tree_util.keystr(path)
    if path not in flat_new:
      raise ValueError(f"train.init_from={init_from}: no parameter {name} there")
    y = flat_new[path]
    if y.shape != x.shape:
      raise ValueError(f"train.init_from={init_from}: parameter {name} has shape {y.shape}, the "
                       f"model's is {x.shape}")
    out.append(jnp.asarray(y, x.dtype))
  if len(flat_new) != len(leaves):
    raise ValueError(f"train.init_from={init_from}: it holds {len(flat_new)} parameters, the "
                     f"model {len(leaves)}")
  return jax.tree_util.tree_unflatten(treedef, out)


def initial_state(params: dict, opt: optax.GradientTransformation, seed: int) -> dict:
  """The state ``train`` starts from: parameters, optimizer state, the run's RNG key (from
  ``seed + 1``; ``seed`` itself initialises the model) and the update count."""
  return {
      "params": params,
      "opt_state": opt.init(params),
      "rng": jax.random.key_data(jax.random.key(seed + 1)),
      "step": jnp.zeros((), jnp.int32),
  }


def make_train_step(task, opt: optax.GradientTransformation, merge, *,
                    gradient_free: bool = False):
  """The update ``train`` jits (with the state donated): ``(state, batch) -> (state, metrics)``.

  ``merge(params)`` rebuilds the model from a pure parameter dict; ``task.loss(model, batch)``
  returns ``(loss, metrics)``. A ``gradient_free`` optimizer gets zero gradients and its own
  objective (``obj_fn``) instead. Metrics: the loss, the task's metrics and the gradient norm.
  """

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

  return train_step


def _train(config, workdir, task, total, ckpt_every, log_every, with_data, progress):
  model = task.init_model(nnx.Rngs(config.seed))
  graphdef, params_state, rest = nnx.split(model, nnx.Param, ...)
  params = params_state.to_pure_dict()
  if config.train.get("init_from"):  # a run resuming from its own checkpoint overrides this below
    params = initial_params(params, config.train.init_from)
  opt = make_optimizer(config.optimizer, total)
  gradient_free = config.optimizer.name in getattr(optim, "GRADIENT_FREE", frozenset())

  def merge(p):
    return nnx.merge(graphdef, nnx.State(p), rest)

  state = initial_state(params, opt, config.seed)
  train_step = make_train_step(task, opt, merge, gradient_free=gradient_free)

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
  try:
    return _run(config, workdir, task, total, ckpt_every, log_every, with_data, progress, ckpt,
                state, step_fn, plan, merge)
  finally:
    ckpt.close()


def _run(config, workdir, task, total, ckpt_every, log_every, with_data, progress, ckpt, state,
         step_fn, plan, merge):
  start, resumed_from, last, rate = 0, None, {}, 0.0
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      state)
  try:
    restored = ckpt.restore_latest(abstract, with_data=with_data)
  except ConfigMismatchError as e:
    raise ConfigMismatchError(f"{e}{_config_changes(workdir, config)}") from None
  if restored is not None:
    resumed_from, state, meta, data, set_aside = restored
    for step, why, path in set_aside:
      print(f"warning: checkpoint step {step} is corrupt ({why}); moved to {path}; resuming from "
            f"step {resumed_from}", file=sys.stderr, flush=True)
    if resumed_from > total:
      raise ValueError(
          f"workdir {workdir} holds a checkpoint at step {resumed_from}, past train.steps={total}; "
          "use a fresh --workdir or raise train.steps")
    start = resumed_from
    if with_data:
      task.restore_data_state(data)
    if start == total:  # a finished run: report what it reported
      last, rate = dict(meta.get("metrics") or {}), float(meta.get("steps_per_second") or 0.0)
    if progress:
      print(f"resumed from checkpoint at step {start} in {workdir}", file=sys.stderr, flush=True)
  write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=1))

  writer = MetricWriter(workdir, resume_step=start)
  prog = _Progress(total, start, log_every, progress and jax.process_index() == 0)
  pending = None  # (step, device metrics): read one step late so the host never stalls the device
  clip = config.optimizer.get("grad_clip")
  advice = (f"Lower optimizer.learning_rate (now {config.optimizer.learning_rate})" +
            (" or set optimizer.grad_clip" if clip is None else
             f" or optimizer.grad_clip (now {clip})"))

  def check_finite(s, host, what=""):
    bad = {k: v for k, v in host.items() if not math.isfinite(v)}
    if bad:
      latest = ckpt.latest_step()
      raise FloatingPointError(
          f"non-finite metrics {bad} at step {s}{what}; training stopped. {advice}. Last "
          f"checkpoint: {'none' if latest is None else f'step {latest}'}.")

  def drain():
    nonlocal pending, last
    if pending is None:
      return
    s, dev_metrics = pending
    pending = None
    host = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
    check_finite(s, host)
    last = host
    if s % log_every == 0 or s == total:
      writer.write(s, host)
    prog.show(s, host)

  def copy(tree):
    return jax.tree_util.tree_map(jnp.copy, tree)

  def save(s, st, metrics, data, steps_per_second=None):
    meta = {"step": s, "data_position": s, "metrics": metrics}
    if steps_per_second is not None:
      meta["steps_per_second"] = steps_per_second
    ckpt.save(s, st, meta, data)

  to_save = None  # (step, state copy, data state): saved once the next step's metrics are finite
  batch, done = None, start
  try:
    with stop_requests() as requested:
      for step in range(start, total):
        batch = task.batch(step)
        if plan is not None:
          batch = _place_batch(batch, plan, getattr(task, "host_local_batches", False))
        state, dev_metrics = step_fn(state, batch)
        drain()
        pending = (step + 1, dev_metrics)
        done = step + 1
        if to_save is not None:
          own = last  # the metrics of the update that produced the state to save
          drain()  # this step started from that state: its loss and gradient norm are checked
          save(to_save[0], to_save[1], own, to_save[2])
          to_save = None
        if requested or done == total:
          break
        if ckpt_every and done % ckpt_every == 0:
          to_save = (done, copy(state), _data_state(task, done) if with_data else None)
      drain()
      if done > start:
        # The final (or interrupted) state has no next step: run one on a copy and discard it.
        own = last
        _, probe = step_fn(copy(state), batch)
        check_finite(done + 1, {k: float(v) for k, v in jax.device_get(probe).items()},
                     f" (the check of the state at step {done}, which was not saved)")
        if done == total:
          rate = prog.rate(total)
        save(done, state, own, _data_state(task, done) if with_data else None,
             rate if done == total else None)
      if requested:
        name = signal.Signals(requested[0]).name
        raise Interrupted(requested[0], (
            f"stopped by {name} at step {done}/{total}; checkpoint saved at step "
            f"{ckpt.latest_step()} in {workdir}; run the same command again to resume"))
  finally:
    writer.close()

  params = jax.device_get(state["params"])
  return TrainResult(model=merge(params), final_step=total, resumed_from=resumed_from,
                     last_metrics=last, steps_per_second=rate)
