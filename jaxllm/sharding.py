"""Device mesh and sharding by logical axis names.

Every parameter dimension carries a logical name ("embed", "heads", "mlp", "vocab", ...) read off
the parameter's path; ``config.sharding.rules`` maps each logical name to zero, one or several mesh
axes, so changing the parallelism (data, fully-sharded data, tensor) is a config edit and never a
model edit. The mesh shape may hold one ``-1``, which takes up the devices left over.

Config block (absent = everything on one device, as before)::

  c.sharding = ml_collections.ConfigDict(dict(
      mesh_axes=("data", "fsdp", "tensor"), mesh_shape=(-1, 1, 1), rules=DEFAULT_RULES))

A parameter dimension that its mesh axes do not divide is replicated (the GPT-2 vocabulary of
50257 over 2 tensor shards, say); a batch that the batch axes do not divide is an error.
"""

import dataclasses
import math
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DEFAULT_AXES = ("data", "fsdp", "tensor")
# Logical name -> mesh axis (or tuple of axes, or None for replicated).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("length", None),
)

_IN_PROJ = ("embed", "heads")
_UP_PROJ = ("embed", "mlp")
# (module name, parameter name) -> logical axes of that parameter, for the models in jaxllm.models;
# None marks a dimension that is always replicated (norm scales, biases of the residual stream).
PARAM_AXES = {
    ("tok_embed", "embedding"): ("vocab", "embed"),
    ("pos_embed", "embedding"): ("length", "embed"),
    ("lm_head", "kernel"): ("embed", "vocab"),
    ("read_in", "kernel"): (None, "embed"),
    ("read_out", "kernel"): ("embed", None),
    **{(name, "kernel"): _IN_PROJ for name in ("wq", "wk", "wv")},
    **{(name, "bias"): ("heads",) for name in ("wq", "wk", "wv")},
    ("wo", "kernel"): ("heads", "embed"),
    **{(name, "kernel"): _UP_PROJ for name in ("fc_in", "w_gate", "w_up")},
    **{(name, "bias"): ("mlp",) for name in ("fc_in", "w_gate", "w_up")},
    **{(name, "kernel"): ("mlp", "embed") for name in ("fc_out", "w_down")},
}


def make_mesh(axes, shape, devices=None) -> Mesh:
  """A mesh over ``devices`` (default: all) with named ``axes``; one entry of ``shape`` may be -1."""
  axes, shape = tuple(axes), tuple(int(s) for s in shape)
  devices = jax.devices() if devices is None else list(devices)
  if len(axes) != len(shape) or len(set(axes)) != len(axes):
    raise ValueError(f"sharding.mesh_axes={axes} and sharding.mesh_shape={shape} need the same "
                     "length and distinct axis names")
  if shape.count(-1) > 1 or any(s < 1 and s != -1 for s in shape):
    raise ValueError(f"sharding.mesh_shape={shape}: sizes must be positive, with at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if len(devices) % known:
    raise ValueError(f"sharding.mesh_shape={shape} does not divide the {len(devices)} devices")
  shape = tuple(len(devices) // known if s == -1 else s for s in shape)
  if math.prod(shape) != len(devices):
    raise ValueError(f"sharding.mesh_shape={shape} uses {math.prod(shape)} devices but "
                     f"{len(devices)} are present; put -1 on one axis to use them all")
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), axes)


def _rules_dict(rules, mesh: Mesh) -> dict:
  out = {}
  for name, target in rules:
    targets = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    unknown = [t for t in targets if t not in mesh.axis_names]
    if unknown:
      raise ValueError(f"sharding.rules maps {name!r} to mesh axes {unknown} that the mesh lacks; "
                       f"mesh axes: {list(mesh.axis_names)}")
    out[name] = targets
  return out


def _key_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _path(path) -> tuple:
  return tuple(_key_name(e) for e in path)


def logical_axes(path: tuple, ndim: int) -> tuple:
  """Logical names of a parameter's dimensions from its path; unknown parameters replicate."""
  axes = PARAM_AXES.get(tuple(path[-2:]))
  return axes if axes is not None and len(axes) == ndim else (None,) * ndim


@dataclasses.dataclass(frozen=True)
class Plan:
  """A mesh plus the rules that place every array of the train state on it."""

  mesh: Mesh
  rules: dict

  def spec(self, logical: tuple, shape: tuple) -> P:
    """Partition spec of an array with the given logical axes; non-divisible dims replicate."""
    used, parts = set(), []
    for name, size in zip(logical, shape):
      if name is None:
        parts.append(None)
        continue
      if name not in self.rules:
        raise ValueError(f"logical axis {name!r} has no entry in sharding.rules; "
                         f"names with rules: {sorted(self.rules)}")
      targets = tuple(t for t in self.rules[name] if t not in used)
      n = math.prod(self.mesh.shape[t] for t in targets)
      if not targets or size % n:
        parts.append(None)
        continue
      used.update(targets)
      parts.append(targets[0] if len(targets) == 1 else targets)
    return P(*parts)

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def param_shardings(self, params):
    return jax.tree_util.tree_map_with_path(
        lambda p, x: NamedSharding(self.mesh, self.spec(logical_axes(_path(p), x.ndim), x.shape)),
        params)

  def state_shardings(self, state):
    """Shardings of {"params", "opt_state", ...}: optimizer leaves that mirror a parameter (same
    path suffix and shape, as Adam's moments do) follow that parameter; the rest replicate."""
    param_sh = self.param_shardings(state["params"])
    by_path = {_path(p): (x.shape, s) for (p, x), s in zip(
        jax.tree_util.tree_leaves_with_path(state["params"]), jax.tree_util.tree_leaves(param_sh))}

    def opt_leaf(path, x):
      path = _path(path)
      for start in range(len(path)):
        hit = by_path.get(path[start:])
        if hit is not None and hit[0] == np.shape(x):
          return hit[1]
      return self.replicated()

    out = {k: jax.tree_util.tree_map(lambda _: self.replicated(), v) for k, v in state.items()}
    out["params"] = param_sh
    if "opt_state" in state:
      out["opt_state"] = jax.tree_util.tree_map_with_path(opt_leaf, state["opt_state"])
    return out

  def batch_sharding(self, batch):
    """Leading (batch) dimension over the "batch" rule's axes; scalars replicate."""
    axes = self.rules.get("batch", ())
    n = math.prod(self.mesh.shape[a] for a in axes)

    def leaf(x):
      if np.ndim(x) == 0:
        return self.replicated()
      if np.shape(x)[0] % n:
        raise ValueError(f"train.batch_size={np.shape(x)[0]} is not divisible by the {n} "
                         f"devices of the batch mesh axes {list(axes)}")
      return NamedSharding(self.mesh, P(axes if len(axes) != 1 else axes[0]))

    return jax.tree_util.tree_map(leaf, batch)


def plan_from_config(cfg, devices=None) -> Plan:
  """The Plan for a ``config.sharding`` block (fields mesh_axes, mesh_shape, rules)."""
  mesh = make_mesh(cfg.get("mesh_axes", DEFAULT_AXES), cfg.get("mesh_shape", (-1, 1, 1)), devices)
  return Plan(mesh, _rules_dict(cfg.get("rules", DEFAULT_RULES), mesh))


# --- multi-host ------------------------------------------------------------------------------

DISTRIBUTED_ENV = "JAXLLM_DISTRIBUTED"


def distributed_requested() -> bool:
  """Whether the environment asks for a multi-process run (``JAXLLM_DISTRIBUTED=1``)."""
  return os.environ.get(DISTRIBUTED_ENV, "").lower() in ("1", "true", "yes")


def initialize_distributed() -> None:
  """``jax.distributed.initialize()`` before any computation.

  On a TPU VM (and SLURM / Kubernetes clusters jax knows) every argument is detected. Elsewhere
  ``JAXLLM_COORDINATOR`` (host:port of process 0), ``JAXLLM_NUM_PROCESSES`` and
  ``JAXLLM_PROCESS_ID`` give them; on CPU the collectives run over gloo.
  """
  kw = {}
  if os.environ.get("JAXLLM_COORDINATOR"):
    try:
      kw = dict(coordinator_address=os.environ["JAXLLM_COORDINATOR"],
                num_processes=int(os.environ["JAXLLM_NUM_PROCESSES"]),
                process_id=int(os.environ["JAXLLM_PROCESS_ID"]))
    except (KeyError, ValueError) as e:
      raise ValueError("JAXLLM_COORDINATOR needs JAXLLM_NUM_PROCESSES and JAXLLM_PROCESS_ID as "
                       f"integers ({e})") from None
  if jax.config.jax_platforms in ("cpu",) or os.environ.get("JAX_PLATFORMS") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kw)


def is_primary() -> bool:
  """Process 0 writes the run's files (config, results, metrics, progress); others only compute."""
  return jax.process_index() == 0
