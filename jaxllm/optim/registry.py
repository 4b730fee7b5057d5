"""Optimizers by name: ``make(name, learning_rate, **hparams) -> optax.GradientTransformation``.

Where optax has the method it is used directly (Lion, Adafactor, Sophia-H, GaLore, Muon); the
matrix methods (GaLore, Muon, Fira, FRUGAL, COSMOS) treat only the hidden linear weights and send
embeddings, LM head, norms and biases to AdamW/Adam (``labels.partition_hidden``), as their
official runs do. Defaults are the published ones. ``other_learning_rate`` (default: the same
learning rate) sets the AdamW learning rate of the non-hidden leaves.
"""

from typing import Callable

import jax
import optax

from jaxllm.optim import labels
from jaxllm.optim.adahessian import adahessian
from jaxllm.optim.cosmos import scale_by_cosmos
from jaxllm.optim.fira import scale_by_fira
from jaxllm.optim.frugal import scale_by_frugal
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


def _lion(learning_rate, b1=0.9, b2=0.99, weight_decay=1e-3):
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


def _matrix(scale_tx, learning_rate, weight_decay, rest):
  """Hidden kernels: ``scale_tx`` then decoupled weight decay and the learning rate."""
  hidden = optax.chain(scale_tx, optax.add_decayed_weights(weight_decay),
                       optax.scale_by_learning_rate(learning_rate))
  return labels.partition_hidden(hidden, rest)


def _rest_adamw(learning_rate, other_learning_rate, b1, b2, eps, weight_decay):
  lr = learning_rate if other_learning_rate is None else other_learning_rate
  return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def _galore(learning_rate, rank=128, update_proj_gap=200, scale=0.25, b1=0.9, b2=0.999,
            eps=1e-6, weight_decay=0.0, other_learning_rate=None):
  tx = optax.contrib.scale_by_galore(
      rank=rank, update_proj_gap=update_proj_gap, scale=scale,
      base_optimizer=optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
  return _matrix(tx, learning_rate, weight_decay,
                 _rest_adamw(learning_rate, other_learning_rate, b1, b2, eps, weight_decay))


def _muon_shape_scale(u):
  # Muon's width rule sqrt(max(1, fan_out / fan_in)); a Flax kernel is (fan_in, fan_out).
  return u * max(1.0, u.shape[1] / u.shape[0]) ** 0.5


def _muon(learning_rate, beta=0.95, ns_steps=5, nesterov=True, weight_decay=0.0,
          other_learning_rate=None, adam_b1=0.9, adam_b2=0.95, adam_eps=1e-8,
          adam_weight_decay=0.0):
  # Every leaf that reaches the hidden branch is a 2-D (in, out) kernel.
  dims = lambda tree: jax.tree.map(lambda _: optax.contrib.MuonDimensionNumbers(), tree)
  tx = optax.chain(
      optax.contrib.scale_by_muon(ns_steps=ns_steps, beta=beta, nesterov=nesterov,
                                  weight_dimension_numbers=dims),
      optax.stateless(lambda u, _: jax.tree.map(_muon_shape_scale, u)))
  return _matrix(tx, learning_rate, weight_decay,
                 _rest_adamw(learning_rate, other_learning_rate, adam_b1, adam_b2, adam_eps,
                             adam_weight_decay))


def _spam(learning_rate, density=None, **kw):
  if density is None:
    return spam(learning_rate, **kw)
  # Sparse momentum on the hidden kernels only, as the public training script groups them.
  return labels.partition_hidden(spam(learning_rate, density=density, **kw),
                                 spam(learning_rate, **kw))


def _fira(learning_rate, rank=128, update_proj_gap=200, alpha=0.25, b1=0.9, b2=0.999,
          eps=1e-6, limiter=1.01, weight_decay=0.0, other_learning_rate=None):
  tx = scale_by_fira(rank, update_proj_gap, alpha, b1, b2, eps, limiter)
  return _matrix(tx, learning_rate, weight_decay,
                 _rest_adamw(learning_rate, other_learning_rate, b1, b2, eps, weight_decay))


def _frugal(learning_rate, variant="block", density=0.25, update_gap=200, residual="signsgd",
            residual_scale=1.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
            other_learning_rate=None, seed=0):
  tx = scale_by_frugal(variant, density, update_gap, residual, residual_scale, b1, b2, eps, seed)
  return _matrix(tx, learning_rate, weight_decay,
                 _rest_adamw(learning_rate, other_learning_rate, b1, b2, eps, weight_decay))


def _cosmos(learning_rate, rank=64, b1=0.9, b2=0.96, b3=0.96, gamma=0.2, lr_ratio=0.1, eps=1e-8,
            weight_decay=0.0, other_learning_rate=None):
  tx = scale_by_cosmos(rank, b1, b2, b3, gamma, lr_ratio, eps)
  return _matrix(tx, learning_rate, weight_decay,
                 _rest_adamw(learning_rate, other_learning_rate, b1, b2, eps, weight_decay))


def _soap(learning_rate, b1=0.95, b2=0.95, shampoo_b=None, eps=1e-8, weight_decay=0.01,
          precondition_frequency=10, max_precond_dim=10000):
  return optax.chain(
      scale_by_soap(b1, b2, shampoo_b, eps, precondition_frequency, max_precond_dim),
      optax.add_decayed_weights(weight_decay), optax.scale_by_learning_rate(learning_rate))


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
