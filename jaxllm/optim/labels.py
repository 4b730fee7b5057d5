"""Parameter labelling: which leaves the matrix optimizers treat, and which go to AdamW.

The official GaLore, Fira, Muon, COSMOS and FRUGAL runs apply their matrix rule only to the hidden
linear weights; token/position embeddings, the LM head, vector read-in/out maps, norms and biases
are trained with AdamW. Labels are derived from the parameter paths of the decoder LM (and of any
model that follows the same naming: linear layers hold a 2-D ``kernel`` of shape (in, out)).
"""

from typing import Any

import jax
import optax

HIDDEN = "hidden"
EMBEDDING = "embedding"
HEAD = "head"
NORM = "norm"
BIAS = "bias"
OTHER = "other"
LABELS = (HIDDEN, EMBEDDING, HEAD, NORM, BIAS, OTHER)

_EMBED_MODULES = ("tok_embed", "pos_embed")
_HEAD_MODULES = ("lm_head", "read_in", "read_out")


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_names(path) -> tuple[str, ...]:
  """A jax key path as a tuple of plain strings."""
  return tuple(_key_name(k) for k in path)


def label_of(names: tuple[str, ...], ndim: int) -> str:
  """The label of one leaf from its path names and rank."""
  leaf, modules = names[-1], names[:-1]
  if any(m in _EMBED_MODULES for m in modules) or leaf == "embedding":
    return EMBEDDING
  if any(m in _HEAD_MODULES for m in modules):
    return HEAD
  if any("norm" in m for m in modules):
    return NORM
  if leaf == "bias":
    return BIAS
  if leaf == "kernel" and ndim == 2:
    return HIDDEN
  return OTHER


def label_params(params: Any) -> Any:
  """Tree of labels (one of ``LABELS``) with the structure of ``params``."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: label_of(path_names(p), x.ndim), params)


def hidden_mask(params: Any) -> Any:
  """True on the hidden linear weights (2-D kernels outside embeddings, head and norms)."""
  return jax.tree.map(lambda lab: lab == HIDDEN, label_params(params))


def decay_mask(params: Any) -> Any:
  """Weight-decay mask as nanoGPT/Sophia configure it: decay every leaf of rank >= 2."""
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def partition_hidden(
    hidden_tx: optax.GradientTransformation,
    rest_tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Applies ``hidden_tx`` to the hidden linear weights and ``rest_tx`` to every other leaf."""
  return optax.partition(
      {"hidden": hidden_tx, "rest": rest_tx},
      lambda params: jax.tree.map(lambda m: "hidden" if m else "rest", hidden_mask(params)))
