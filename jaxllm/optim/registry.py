"""Optimizers by name: ``make(name, **hparams) -> optax.GradientTransformation``."""

from typing import Callable

import optax


def _adamw(learning_rate, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1):
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def _adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8):
  return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def _sgd(learning_rate, momentum=None, nesterov=False):
  return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def _lion(learning_rate, b1=0.9, b2=0.99, weight_decay=1e-3):
  return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


def _adafactor(learning_rate, **kw):
  return optax.adafactor(learning_rate, **kw)


_FACTORIES: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adamw": _adamw,
    "adam": _adam,
    "sgd": _sgd,
    "lion": _lion,
    "adafactor": _adafactor,
}

NAMES = tuple(sorted(_FACTORIES))


def make(name: str, learning_rate, *, grad_clip: float | None = None, **hparams):
  """Builds the named optimizer, optionally preceded by global-norm gradient clipping."""
  if name not in _FACTORIES:
    raise ValueError(f"unknown optimizer {name!r}; valid: {list(NAMES)}")
  try:
    opt = _FACTORIES[name](learning_rate, **hparams)
  except TypeError as e:
    raise ValueError(f"optimizer {name!r}: bad hyperparameters {sorted(hparams)}: {e}") from e
  if grad_clip is not None:
    if grad_clip <= 0:
      raise ValueError(f"grad_clip must be positive or None, got {grad_clip}")
    opt = optax.chain(optax.clip_by_global_norm(grad_clip), opt)
  return opt
