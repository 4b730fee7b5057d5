"""Up-front checks of config values, each error naming the field and what it may be."""

import math
import numbers


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_numbers(config, prefix: str = "") -> None:
  """Every number anywhere in ``config`` must be finite and not negative.

  No field of any jaxllm config takes a negative or non-finite value (tuples such as
  ``sharding.mesh_shape``, where -1 means "the rest", are not single numbers and are not checked).
  """
  for key, value in config.items():
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      check_numbers(value, name + ".")
    elif _is_number(value):
      if not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number")
      if value < 0:
        raise ValueError(f"{name}={value!r} must be >= 0")


def _int_at_least(name: str, value, low: int) -> None:
  if not _is_int(value) or value < low:
    raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_train_config(config, total_steps: int | None = None) -> None:
  """The fields the training loop reads: ``train.*``, ``optimizer.*`` and ``seed``."""
  check_numbers(config)
  tcfg, ocfg = config.train, config.optimizer
  _int_at_least("train.steps", tcfg.steps if total_steps is None else total_steps, 1)
  if "batch_size" in tcfg:
    _int_at_least("train.batch_size", tcfg.batch_size, 1)
  _int_at_least("train.log_every", tcfg.get("log_every", 100), 1)
  ckpt_every = tcfg.get("checkpoint_every", 0)
  if ckpt_every is not None:
    _int_at_least("train.checkpoint_every (0: only at the end)", ckpt_every, 0)
  _int_at_least("seed", config.seed, 0)
  lr = ocfg.get("learning_rate")
  if not _is_number(lr) or not lr > 0:
    raise ValueError(f"optimizer.learning_rate must be a number > 0, got {lr!r}")
  _int_at_least("optimizer.warmup_steps", ocfg.get("warmup_steps", 0), 0)
  clip = ocfg.get("grad_clip")
  if clip is not None and (not _is_number(clip) or not clip > 0):
    raise ValueError(f"optimizer.grad_clip must be None or a number > 0, got {clip!r}")
  frac = ocfg.get("final_fraction", 0.1)
  if not _is_number(frac) or not 0 <= frac <= 1:
    raise ValueError(f"optimizer.final_fraction must be a number in [0, 1], got {frac!r}")
