"""Optimizer-state memory: closed-form bytes per optimizer, and the bytes of an actual state.

``state_bytes(name, params, **hparams)`` adds up, leaf by leaf, the per-matrix formulas below
(plus the few counters and PRNG keys each chain keeps), from shapes and labels alone. For a
hidden kernel of shape (a, b) = (in, out) with rank r, bytes per float32 entry = 4:

  adam, adamw, sophia_g, adahessian        2 a b
  spam                                      2 a b (+ a 4-byte scalar marking the leaf dense)
  lion, muon, sgd with momentum             a b
  soap's decay step                         + one step counter (set-up call, schedule)
  sophia_h                                  2 a b (+ one PRNG key)
  adafactor                                 a + b when both >= 128, else a b
  spam, sparse momentum                     3 k, k = int(density a b) (m, v, int32 indices)
  galore                                    short * r + 2 r * long + 4 (one step counter)
  fira                                      short * r + 2 r * long + 1 (limiter norm)
  frugal svd / random                       short * r + 2 r * long, r = round(density * short)
  frugal block                              2 a b + 1 (active flag, 1 byte)
  cosmos                                    a b + a r + b r + r^2
  soap                                      2 a b + 2 (a^2 + b^2) (axes > max_precond_dim: 0)
  zo_sgd, zo_sign, forward_grad / zo_sgd_momentum / zo_adam     0 / a b / 2 a b
Everything outside the hidden kernels of the matrix methods (galore, muon, fira, frugal, cosmos)
is AdamW: 2 x its size.

``measured_state_bytes(opt, params)`` is the ground truth: the bytes of ``jax.eval_shape(opt.init,
params)``. Tests check the two agree for every optimizer.
"""

import math

import jax
import numpy as np

from jaxllm.optim import labels, lowrank, registry
from jaxllm.optim.cosmos import cosmos_rank
from jaxllm.optim.frugal import frugal_rank
from jaxllm.optim.soap import rotated_axes

_F32 = 4
_COUNT = 4
_KEY = 8


def measured_state_bytes(opt, params) -> int:
  """Bytes of every array in ``opt.init(params)``, computed from shapes only."""
  state = jax.eval_shape(opt.init, params)
  return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state)))


def _leaves(params):
  """(label, shape, bytes per element) for every leaf."""
  labs = jax.tree.leaves(labels.label_params(params))
  return [(lab, tuple(x.shape), np.dtype(x.dtype).itemsize)
          for lab, x in zip(labs, jax.tree.leaves(params))]


def _numel(shape):
  return math.prod(shape)


def _adam_bytes(leaves):
  return _COUNT + sum(2 * _numel(s) * b for _, s, b in leaves)


def _split(leaves):
  hidden = [x for x in leaves if x[0] == labels.HIDDEN]
  rest = [x for x in leaves if x[0] != labels.HIDDEN]
  return hidden, rest


def _adafactor(leaves, hp):
  min_dim = hp.get("min_dim_size_to_factor", 128)
  total = _COUNT
  for _, s, _ in leaves:
    top = sorted(s)[-2:] if len(s) >= 2 else []
    if hp.get("factored", True) and len(top) == 2 and top[0] >= min_dim:
      total += _F32 * (_numel(s) // top[1] + _numel(s) // top[0]) + _F32
    else:
      total += _F32 * _numel(s) + 2 * _F32
  if hp.get("momentum") is not None:
    total += sum(_numel(s) * b for _, s, b in leaves)
  return total


def _galore_leaf(shape, rank):
  return _F32 * (_numel(lowrank.projector_shape(shape, rank))
                 + 2 * _numel(lowrank.lowrank_shape(shape, rank)))


def _fira_leaf(shape, rank):
  return _galore_leaf(shape, rank) + _F32


def _frugal_leaf(shape, hp):
  if hp.get("variant", "block") == "block":
    return 2 * _F32 * _numel(shape) + 1
  r = frugal_rank(shape, hp.get("density", 0.25))
  return _F32 * (_numel(lowrank.projector_shape(shape, r))
                 + 2 * _numel(lowrank.lowrank_shape(shape, r)))


def _cosmos_leaf(shape, rank):
  a, b = shape
  r = cosmos_rank(shape, rank)
  return _F32 * (a * b + a * r + b * r + r * r)


def _soap_leaf(shape, max_dim):
  rot = rotated_axes(shape, max_dim)
  return _F32 * (2 * _numel(shape) + 2 * sum(d * d for d, on in zip(shape, rot) if on))


def _spam_bytes(leaves, density):
  total = _COUNT + _KEY
  for _, s, _ in leaves:
    if density is not None and len(s) == 2:
      total += 3 * _F32 * max(int(density * _numel(s)), 1)
    else:
      total += 2 * _F32 * _numel(s) + 4  # + the scalar "dense" marker
  return total


def _matrix_bytes(leaves, hidden_state, per_leaf):
  """Hidden kernels through a matrix method, the rest through AdamW."""
  hidden, rest = _split(leaves)
  return hidden_state + sum(per_leaf(s, b) for _, s, b in hidden) + _adam_bytes(rest)


def _formula(name, leaves, hp):
  p_bytes = sum(_numel(s) * b for _, s, b in leaves)
  f32 = _F32 * sum(_numel(s) for _, s, _ in leaves)
  if name in ("adam", "adamw"):
    return _adam_bytes(leaves), 1
  if name == "sgd":
    return (p_bytes if hp.get("momentum") is not None else 0), 1
  if name == "lion":
    return _COUNT + p_bytes, 1
  if name == "adafactor":
    return _adafactor(leaves, hp), 1
  if name == "sophia_h":
    return _COUNT + 2 * p_bytes + _KEY, 1
  if name == "sophia_g":
    return _COUNT + _KEY + 2 * f32 + _F32, 1
  if name == "adahessian":
    return _COUNT + _KEY + 2 * f32, 1
  if name == "spam":
    density = hp.get("density")
    if density is None:
      return _spam_bytes(leaves, None), 1
    hidden, rest = _split(leaves)
    return _spam_bytes(hidden, density) + _spam_bytes(rest, None), 2
  if name == "galore":
    rank = hp.get("rank", 128)
    return _matrix_bytes(leaves, _COUNT, lambda s, b: _galore_leaf(s, rank)), 2
  if name == "muon":
    return _matrix_bytes(leaves, 0, lambda s, b: _F32 * _numel(s)), 2
  if name == "fira":
    rank = hp.get("rank", 128)
    return _matrix_bytes(leaves, _COUNT, lambda s, b: _fira_leaf(s, rank)), 2
  if name == "frugal":
    return _matrix_bytes(leaves, _COUNT + _KEY, lambda s, b: _frugal_leaf(s, hp)), 2
  if name == "cosmos":
    rank = hp.get("rank", 64)
    return _matrix_bytes(leaves, _COUNT, lambda s, b: _cosmos_leaf(s, rank)), 2
  if name == "soap":
    max_dim = hp.get("max_precond_dim", 10000)
    # Its decay step keeps a counter (no decay on the set-up call), shared with a schedule.
    return 2 * _COUNT + sum(_soap_leaf(s, max_dim) for _, s, _ in leaves), 0
  if name in ("zo_sgd", "zo_sign", "forward_grad"):
    return _KEY, 1
  if name == "zo_sgd_momentum":
    return _KEY + p_bytes, 1
  if name == "zo_adam":
    return _KEY + _COUNT + 2 * p_bytes, 1
  raise ValueError(f"no memory formula for optimizer {name!r}; valid: {list(registry.NAMES)}")


def state_bytes(name: str, params, learning_rate=1e-3, **hparams) -> int:
  """Closed-form optimizer-state bytes of ``make(name, learning_rate, **hparams)`` for ``params``.

  A schedule (callable learning rate) adds one int32 step counter per learning-rate scaling.
  """
  hparams.pop("grad_clip", None)
  total, n_lr = _formula(name, _leaves(params), hparams)
  other = hparams.get("other_learning_rate", 3e-4 if name == "muon" else None)
  lrs = ([], [learning_rate], [learning_rate, learning_rate if other is None else other])[n_lr]
  return total + sum(_COUNT for lr in lrs if callable(lr))


def state_table(names, params, hparams_by_name=None) -> dict[str, int]:
  """``{name: state bytes}`` for several optimizers on one parameter tree."""
  hparams_by_name = hparams_by_name or {}
  return {n: state_bytes(n, params, **hparams_by_name.get(n, {})) for n in names}
