"""Imported models as orbax checkpoints in jaxllm's own layout.

A converted directory is a jaxllm workdir: ``checkpoints/<step>/`` written by
:class:`jaxllm.train.checkpoint.Checkpointer` (``state`` = ``{"params", "step"}``, ``meta`` with
the model config and ``data_position`` 0), plus ``model.json`` (the model config, readable before
the arrays) and the source's ``tokenizer.json`` when it has one. It holds no optimizer state, so
``jaxllm.train.loop.train`` does not resume from it; :func:`load` restores the model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.interop import hf
from jaxllm.models.config import TransformerConfig
from jaxllm.models.transformer import Transformer
from jaxllm.train.checkpoint import Checkpointer

MODEL_FILE, TOKENIZER = "model.json", "tokenizer.json"


def _replace(path: str, write) -> None:
  """Writes a file through ``write(tmp_path)`` next to ``path``, then renames it into place."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
  os.close(fd)
  try:
    write(tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _write_json(path: str, obj) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
  _replace(path, write)


def save(model: Transformer, workdir: str, *, step: int = 0, extra: dict | None = None,
         tokenizer: str | None = None) -> None:
  """Writes ``model``'s parameters as step ``step`` of an orbax checkpoint under ``workdir``.

  ``extra`` (JSON-ready) is stored in ``model.json`` next to the config, e.g. the source
  checkpoint's token ids; ``tokenizer`` is a ``tokenizer.json`` to copy alongside.
  """
  params = nnx.state(model, nnx.Param).to_pure_dict()
  info = {"model": hf.config_dict(model.cfg), **(extra or {})}
  os.makedirs(workdir, exist_ok=True)
  ckpt = Checkpointer(workdir)
  try:
    ckpt.save(step, {"params": params, "step": jnp.asarray(step, jnp.int32)},
              meta={"step": step, "data_position": step, "model": info["model"]})
  finally:
    ckpt.close()
  if tokenizer is not None:
    _replace(os.path.join(workdir, TOKENIZER), lambda tmp: shutil.copyfile(tokenizer, tmp))
  _write_json(os.path.join(workdir, MODEL_FILE), info)


def info(workdir: str) -> dict:
  """The ``model.json`` of a converted directory (raises ValueError when there is none)."""
  path = os.path.join(workdir, MODEL_FILE)
  if not os.path.exists(path):
    raise ValueError(f"{workdir} is not a converted jaxllm checkpoint (no {MODEL_FILE}); make one "
                     "with python -m jaxllm.interop.convert --hf=DIR --out=DIR")
  with open(path) as f:
    return json.load(f)


def load(workdir: str, *, dtype: str | None = None, **overrides) -> Transformer:
  """Restores the latest step of a converted directory as a Transformer.

  Args:
    workdir: a directory written by :func:`save`.
    dtype: "float32" or "bfloat16" to cast parameters and computation; None keeps the stored one.
    **overrides: TransformerConfig fields to change, e.g. ``attention`` or ``attention_impl``
      (the parameters must keep their shapes).
  """
  stored_dict = info(workdir)["model"]
  d = dict(stored_dict)
  if dtype is not None:
    d.update(dtype=hf.dtype_name(dtype), param_dtype=hf.dtype_name(dtype))
  stored = TransformerConfig.from_config(stored_dict)
  cfg = dataclasses.replace(TransformerConfig.from_config(d), **overrides)
  abstract = nnx.eval_shape(lambda: Transformer(stored, rngs=nnx.Rngs(0)))
  _, params, _ = nnx.split(abstract, nnx.Param, ...)
  target = {"params": params.to_pure_dict(), "step": jax.ShapeDtypeStruct((), jnp.int32)}
  ckpt = Checkpointer(workdir)
  try:
    restored = ckpt.restore_latest(target)
    if restored is None:
      raise ValueError(f"{workdir} has {MODEL_FILE} but no checkpoint step under checkpoints/")
    _, state, _, _, _ = restored
  finally:
    ckpt.close()
  return _build(cfg, state["params"], overrides)


def _build(cfg: TransformerConfig, params: dict, overrides) -> Transformer:
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, new_params, rest = nnx.split(model, nnx.Param, ...)
  shapes = jax.tree_util.tree_map(lambda x: x.shape, new_params.to_pure_dict())
  if shapes != jax.tree_util.tree_map(lambda x: x.shape, params):
    raise ValueError(f"model overrides {sorted(overrides)} change the parameter layout; the "
                     "checkpoint cannot fill that model")
  new_params.replace_by_pure_dict(
      jax.tree_util.tree_map(lambda x: jnp.asarray(x, cfg.weight_dtype), params))
  return nnx.merge(graphdef, new_params, rest)


def with_config(model: Transformer, **overrides) -> Transformer:
  """``model``'s parameters in a model whose config has ``overrides`` (e.g. another attention
  method); the parameters must keep their shapes."""
  if not overrides:
    return model
  cfg = dataclasses.replace(model.cfg, **overrides)
  return _build(cfg, nnx.state(model, nnx.Param).to_pure_dict(), overrides)
