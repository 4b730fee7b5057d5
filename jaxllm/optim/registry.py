"""Optimizers by name: ``make(name, learning_rate, **hparams) -> optax.GradientTransformation``.

Where optax computes what the official code computes it is used directly (AdamW, Adam, SGD, Lion,
Adafactor, Sophia-H); GaLore and Muon are written here because optax's versions differ from the
official ones (see their modules). The matrix methods (GaLore, Muon, Fira, FRUGAL, COSMOS) treat
only the hidden linear weights and send embeddings, LM head, norms, biases and every other leaf
to the AdamW branch of the same official class (``labels.partition_hidden``), as their official
runs do. Defaults are the official classes' unless a published training script sets another
value; each factory or module says which. ``other_learning_rate`` sets the learning rate of the
non-hidden leaves (default: the same learning rate; Muon: 3e-4, as ``MuonWithAuxAdam``).

``make`` checks every argument before building: unknown or ill-typed hyperparameters, a negative
learning rate or a non-numeric ``grad_clip`` raise a ValueError naming the field.
"""

import inspect
import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm.optim import adam, labels
from jaxllm.optim.adahessian import adahessian
from jaxllm.optim.cosmos import scale_by_cosmos
from jaxllm.optim.fira import scale_by_fira
from jaxllm.optim.frugal import scale_by_frugal
from jaxllm.optim.galore import scale_by_galore
from jaxllm.optim.muon import scale_by_muon
from jaxllm.optim.soap import scale_by_soap
from jaxllm.optim.sophia_g import sophia_g
from jaxllm.optim.spam import spam
from jaxllm.optim.zeroth_order import METHODS as _ZO_METHODS
from jaxllm.optim.zeroth_order import zeroth_order


def _adamw(learning_rate, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1):
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def _adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8):
  return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def _sgd(learning_rate, momentum=None, nesterov=False):
  return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def _lion(learning_rate, b1=0.9, b2=0.99, weight_decay=0.0):
  """Lion; defaults: both official versions (google/automl, lion-pytorch), wd 0."""
  return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


def _adafactor(learning_rate, **kw):
  return optax.adafactor(learning_rate, **kw)


def _sophia_h(learning_rate, b1=0.965, b2=0.99, eps=1e-8, weight_decay=1e-4, gamma=0.01,
              update_interval=10, seed=0):
  return optax.contrib.sophia(
      learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
      weight_decay_mask=labels.decay_mask, gamma=gamma, update_interval=update_interval,
      hessian_diagonal_fn=optax.contrib.hutchinson_estimator_diag_hessian(
          jax.random.PRNGKey(seed)))


def _matrix(scale_tx, learning_rate, weight_decay, rest, decay_after=False):
  """Hidden kernels: ``scale_tx``, then decoupled weight decay and the learning rate.

  ``decay_after``: decay the stepped weights (official GaLore, Fira) instead of the current ones
  (official Muon, COSMOS, FRUGAL, the optax order).
  """
  if decay_after:
    hidden = optax.chain(scale_tx, adam.scale_by_lr_then_decay(learning_rate, weight_decay))
  else:
    hidden = optax.chain(scale_tx, optax.add_decayed_weights(weight_decay),
                         optax.scale_by_learning_rate(learning_rate))
  return labels.partition_hidden(hidden, rest)


def _other_lr(learning_rate, other_learning_rate):
  return learning_rate if other_learning_rate is None else other_learning_rate


def _galore(learning_rate, rank=128, update_proj_gap=200, scale=0.25, b1=0.9, b2=0.999,
            eps=1e-6, weight_decay=0.0, other_learning_rate=None):
  """GaLore (``galore.py``); the other leaves get the plain AdamW branch of the same official
  ``GaLoreAdamW`` class. Defaults: the README pre-training script and the class."""
  tx = scale_by_galore(rank, update_proj_gap, scale, b1, b2, eps)
  rest = adam.hf_adamw(_other_lr(learning_rate, other_learning_rate), b1, b2, eps, weight_decay)
  return _matrix(tx, learning_rate, weight_decay, rest, decay_after=True)


def _muon(learning_rate, beta=0.95, ns_steps=5, nesterov=True, weight_decay=0.0,
          other_learning_rate=3e-4, adam_b1=0.9, adam_b2=0.95, adam_eps=1e-10,
          adam_weight_decay=0.0):
  """Muon (``muon.py``) with its auxiliary AdamW; defaults: ``MuonWithAuxAdam`` (Muon lr 0.02,
  momentum 0.95; AdamW lr 3e-4, b = (0.9, 0.95), eps 1e-10, no weight decay)."""
  tx = scale_by_muon(beta, ns_steps, nesterov)
  rest = optax.adamw(_other_lr(learning_rate, other_learning_rate), b1=adam_b1, b2=adam_b2,
                     eps=adam_eps, weight_decay=adam_weight_decay)
  return _matrix(tx, learning_rate, weight_decay, rest)


def _spam(learning_rate, density=None, **kw):
  if density is None:
    return spam(learning_rate, **kw)
  # Sparse momentum on the hidden kernels only, as the public training script groups them.
  return labels.partition_hidden(spam(learning_rate, density=density, **kw),
                                 spam(learning_rate, **kw))


def _fira(learning_rate, rank=128, update_proj_gap=200, alpha=0.25, b1=0.9, b2=0.999,
          eps=1e-6, limiter=1.01, weight_decay=0.0, other_learning_rate=None):
  """Fira (``fira.py``); as GaLore, the official ``FiraAdamW`` class runs the other leaves
  through its plain AdamW branch. Defaults: the README pre-training script and the class."""
  tx = scale_by_fira(rank, update_proj_gap, alpha, b1, b2, eps, limiter)
  rest = adam.hf_adamw(_other_lr(learning_rate, other_learning_rate), b1, b2, eps, weight_decay)
  return _matrix(tx, learning_rate, weight_decay, rest, decay_after=True)


def _frugal(learning_rate, variant="block", density=0.25, update_gap=200, residual="signsgd",
            residual_scale=1.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01,
            other_learning_rate=None, seed=0, block_order="random"):
  """FRUGAL (``frugal.py``); defaults: the official ``BlockAdamW`` / ``GaloreAdamW`` classes
  (density 0.25, gap 200, signSGD residual, eps 1e-8, wd 0.01, random block order)."""
  tx = scale_by_frugal(variant, density, update_gap, residual, residual_scale, b1, b2, eps, seed,
                       block_order)
  rest = optax.adamw(_other_lr(learning_rate, other_learning_rate), b1=b1, b2=b2, eps=eps,
                     weight_decay=weight_decay)
  return _matrix(tx, learning_rate, weight_decay, rest)


def _cosmos(learning_rate, rank=64, b1=0.9, b2=0.999, gamma=0.2, lr_ratio=0.1, eps=1e-8,
            nesterov=True, weight_decay=0.0, other_learning_rate=None):
  """COSMOS (``cosmos.py``); the class's branch for the other leaves is Adam with the same
  betas and eps. Defaults: the official ``COSMOS`` class."""
  tx = scale_by_cosmos(rank, b1, b2, gamma, lr_ratio, eps, nesterov)
  rest = optax.adamw(_other_lr(learning_rate, other_learning_rate), b1=b1, b2=b2, eps=eps,
                     weight_decay=weight_decay)
  return _matrix(tx, learning_rate, weight_decay, rest)


def _soap(learning_rate, b1=0.95, b2=0.95, shampoo_b=None, eps=1e-8, weight_decay=0.01,
          precondition_frequency=10, max_precond_dim=10000):
  """SOAP (``soap.py``), decaying the stepped weights; defaults: the official ``SOAP`` class."""
  return optax.chain(
      scale_by_soap(b1, b2, shampoo_b, eps, precondition_frequency, max_precond_dim),
      adam.scale_by_lr_then_decay(learning_rate, weight_decay, skip_first=True))


def _zo(method):
  return lambda learning_rate, **kw: zeroth_order(learning_rate, method, **kw)


_FACTORIES: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adamw": _adamw,
    "adam": _adam,
    "sgd": _sgd,
    "lion": _lion,
    "adafactor": _adafactor,
    "sophia_h": _sophia_h,
    "sophia_g": sophia_g,
    "adahessian": adahessian,
    "galore": _galore,
    "muon": _muon,
    "spam": _spam,
    "fira": _fira,
    "frugal": _frugal,
    "cosmos": _cosmos,
    "soap": _soap,
    **{m: _zo(m) for m in _ZO_METHODS},
}

NAMES = tuple(sorted(_FACTORIES))

# Optimizers whose train step must not backpropagate: they get zero grads plus obj_fn and key.
GRADIENT_FREE = frozenset(_ZO_METHODS)

# Extra keyword arguments each optimizer's update needs from the train step.
EXTRA_ARGS: dict[str, tuple[str, ...]] = {
    "sophia_h": ("obj_fn",),
    "sophia_g": ("logits_fn",),
    "adahessian": ("obj_fn",),
    **{m: ("obj_fn",) for m in _ZO_METHODS},
}


_UNIT_INTERVAL = ("b1", "b2", "beta", "adam_b1", "adam_b2", "shampoo_b")
_POSITIVE_INTS = ("rank", "update_proj_gap", "update_gap", "ns_steps", "update_interval",
                  "precondition_frequency", "max_precond_dim", "reset_interval")


def _signature(name):
  """{hyperparameter: default} that the named factory accepts."""
  sig = {}
  funcs = {"spam": (_spam, spam), "adafactor": (optax.adafactor,),
           **{m: (zeroth_order,) for m in _ZO_METHODS}}.get(name, (_FACTORIES[name],))
  for f in funcs:
    for p in inspect.signature(f).parameters.values():
      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty:
        sig[p.name] = p.default
  sig.pop("method", None)
  return sig


def _is_real(x) -> bool:
  if isinstance(x, (bool, np.bool_)):
    return False
  if isinstance(x, numbers.Real):
    return True
  return (isinstance(x, (np.ndarray, jax.Array)) and x.ndim == 0
          and (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)))


def _check_rate(field: str, value, optimizer: str):
  if callable(value) or isinstance(value, jax.core.Tracer):
    return
  if not _is_real(value) or not math.isfinite(float(value)) or float(value) < 0:
    raise ValueError(f"optimizer {optimizer!r}: {field} must be a finite number >= 0 or a "
                     f"schedule (step -> rate), got {value!r}")


def _check_hparam(optimizer: str, field: str, value, default):
  where = f"optimizer {optimizer!r}: hyperparameter {field}"
  if field.endswith("learning_rate"):
    if value is not None:
      _check_rate(field, value, optimizer)
    return
  if field.endswith("_mask") or not (
      default is None or isinstance(default, (bool, int, float, str))):
    return
  if isinstance(default, bool):
    if not isinstance(value, (bool, np.bool_)):
      raise ValueError(f"{where} must be True or False, got {value!r}")
    return
  if isinstance(default, str):
    if not isinstance(value, str):
      raise ValueError(f"{where} must be a string, got {value!r}")
    return
  if value is None:
    if default is None:
      return
    raise ValueError(f"{where} must be a number, got None")
  if not _is_real(value) or not math.isfinite(float(value)):
    raise ValueError(f"{where} must be a finite number, got {value!r}")
  if isinstance(default, int) and float(value) != int(value):
    raise ValueError(f"{where} must be an integer, got {value!r}")
  if field in _UNIT_INTERVAL and not 0.0 <= float(value) < 1.0:
    raise ValueError(f"{where} must be in [0, 1), got {value!r}")
  if field in _POSITIVE_INTS and value < 1:
    raise ValueError(f"{where} must be >= 1, got {value!r}")
  if (field.endswith("eps") or field.endswith("weight_decay")) and value < 0:
    raise ValueError(f"{where} must be >= 0, got {value!r}")


def make(name: str, learning_rate, *, grad_clip: float | None = None, **hparams):
  """Builds the named optimizer, optionally preceded by global-norm gradient clipping.

  Every argument is checked first (a ValueError naming the field): ``learning_rate`` is a
  finite number >= 0 or a schedule, ``grad_clip`` None or a number > 0, and each hyperparameter
  one the optimizer accepts, of the type of its default.
  """
  if not isinstance(name, str) or name not in _FACTORIES:
    raise ValueError(f"unknown optimizer {name!r}; valid: {list(NAMES)}")
  _check_rate("learning_rate", learning_rate, name)
  if grad_clip is not None and (not _is_real(grad_clip) or not math.isfinite(float(grad_clip))
                                or float(grad_clip) <= 0):
    raise ValueError(f"grad_clip must be a number > 0 or None, got {grad_clip!r}")
  accepted = _signature(name)
  for field, value in hparams.items():
    if field not in accepted:
      raise ValueError(f"optimizer {name!r}: unknown hyperparameter {field!r}; "
                       f"valid: {sorted(accepted)}")
    _check_hparam(name, field, value, accepted[field])
  try:
    opt = _FACTORIES[name](learning_rate, **hparams)
  except TypeError as e:
    raise ValueError(f"optimizer {name!r}: bad hyperparameters {sorted(hparams)}: {e}") from e
  if grad_clip is not None:
    opt = optax.chain(optax.clip_by_global_norm(grad_clip), opt)
  return opt
