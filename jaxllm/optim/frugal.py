"""FRUGAL: Adam on a subspace of each gradient, a state-free rule on the rest.

Variants (``variant``):
  * ``svd``: per hidden kernel, P = top-r singular vectors of G on the shorter side (``lowrank``),
    r = max(1, round(density * shorter side)) (the official class would allow r = 0); Adam on
    R = P^T G (or G P), residual G - P R;
  * ``random``: the same with a random semi-orthogonal P (QR of a Gaussian matrix);
  * ``block``: whole tensors: round(density * n) of the n hidden kernels get Adam (Python's
    round, as the official ``BlockOptimizer``: 0 blocks for 2 kernels at density 0.25), the rest
    only the state-free rule. ``block_order``: ``random`` (the class default: a random subset at
    each refresh), ``ascending`` / ``descending`` (consecutive blocks in leaf order, cycling; the
    published pre-training script passes ``descending``). Leaf order is the flattened parameter
    tree's.
The subspace is re-chosen every ``update_gap`` steps and the Adam statistics (and their bias
correction count) restart then. The residual gets signSGD (``residual="signsgd"``, the default) or
plain SGD (``residual="sgd"``), scaled by ``residual_scale`` relative to the learning rate.
With static shapes the block variant keeps moments for every hidden kernel and masks them; the
projection variants hold only r-dimensional moments.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxllm.optim import lowrank, tree

VARIANTS = ("svd", "random", "block")
RESIDUALS = ("signsgd", "sgd")
BLOCK_ORDERS = ("random", "ascending", "descending")


class FrugalState(NamedTuple):
  count: jax.Array
  key: jax.Array
  proj: optax.Updates  # projector per leaf (projection variants) or active flag (block)
  mu: optax.Updates
  nu: optax.Updates


def frugal_rank(shape, density: float) -> int:
  return max(1, int(round(density * min(shape[0], shape[1]))))


def n_active_blocks(n: int, density: float) -> int:
  return round(n * density)


def _block_flags(key, n: int, density: float) -> jax.Array:
  return jnp.argsort(jax.random.uniform(key, (n,))) < n_active_blocks(n, density)


def _ordered_flags(refresh_index, n: int, density: float, descending: bool) -> jax.Array:
  """Blocks start, start +- 1, ... (mod n) with start advancing by the block count per refresh."""
  k = n_active_blocks(n, density)
  if descending:
    idx = (n - 1 - refresh_index * k - jnp.arange(k)) % n
  else:
    idx = (refresh_index * k + jnp.arange(k)) % n
  return jnp.zeros((n,), jnp.bool_).at[idx].set(True)


def scale_by_frugal(variant: str = "block", density: float = 0.25, update_gap: int = 200,
                    residual: str = "signsgd", residual_scale: float = 1.0, b1: float = 0.9,
                    b2: float = 0.999, eps: float = 1e-8, seed: int = 0,
                    block_order: str = "random") -> optax.GradientTransformation:
  """FRUGAL's update direction for 2-D leaves (before learning rate and weight decay)."""
  if variant not in VARIANTS:
    raise ValueError(f"frugal variant must be one of {list(VARIANTS)}, got {variant!r}")
  if residual not in RESIDUALS:
    raise ValueError(f"frugal residual must be one of {list(RESIDUALS)}, got {residual!r}")
  if block_order not in BLOCK_ORDERS:
    raise ValueError(f"frugal block_order must be one of {list(BLOCK_ORDERS)}, got {block_order!r}")
  if not 0.0 < density <= 1.0:
    raise ValueError(f"frugal density must be in (0, 1], got {density}")
  if update_gap < 1:
    raise ValueError(f"frugal update_gap must be >= 1, got {update_gap}")
  block = variant == "block"

  def state_shape(x):
    return x.shape if block else lowrank.lowrank_shape(x.shape, frugal_rank(x.shape, density))

  def choose(key, like, refresh_index):
    leaves, treedef = jax.tree.flatten(like)
    if block:
      if not leaves:
        flags = []
      elif block_order == "random":
        flags = _block_flags(key, len(leaves), density)
      else:
        flags = _ordered_flags(refresh_index, len(leaves), density, block_order == "descending")
      return jax.tree.unflatten(treedef, [flags[i] for i in range(len(leaves))])
    keys = jax.random.split(key, max(len(leaves), 1))
    if variant == "random":
      projs = [lowrank.random_projector(k, x.shape, frugal_rank(x.shape, density))
               for k, x in zip(keys, leaves)]
    else:
      projs = [lowrank.svd_projector(x, frugal_rank(x.shape, density)) for x in leaves]
    return jax.tree.unflatten(treedef, projs)

  def init_fn(params):
    for x in jax.tree.leaves(params):
      if x.ndim != 2:
        raise ValueError(f"frugal treats 2-D kernels only; got a leaf of shape {x.shape}")
    zeros = lambda: jax.tree.map(lambda x: jnp.zeros(state_shape(x), jnp.float32), params)
    if block:
      proj = jax.tree.map(lambda x: jnp.zeros((), jnp.bool_), params)
    else:
      proj = jax.tree.map(lambda x: jnp.zeros(
          lowrank.projector_shape(x.shape, frugal_rank(x.shape, density)), jnp.float32), params)
    return FrugalState(jnp.zeros([], jnp.int32), jax.random.PRNGKey(seed), proj, zeros(),
                       zeros())

  def free(s):
    return jnp.sign(s) if residual == "signsgd" else s

  def update_fn(updates, state, params=None):
    del params
    refresh = state.count % update_gap == 0
    key, sub = jax.random.split(state.key)
    g32 = jax.tree.map(lambda g: g.astype(jnp.float32), updates)
    proj = jax.lax.cond(refresh, lambda: choose(sub, g32, state.count // update_gap),
                        lambda: state.proj)
    k = (state.count % update_gap + 1).astype(jnp.float32)
    bc1, bc2 = 1.0 - b1 ** k, 1.0 - b2 ** k

    def adam(x, m, v):
      m = jnp.where(refresh, 0.0, m)
      v = jnp.where(refresh, 0.0, v)
      m = b1 * m + (1.0 - b1) * x
      v = b2 * v + (1.0 - b2) * x * x
      return (m / bc1) / (jnp.sqrt(v / bc2) + eps), m, v

    def leaf(g, p, m, v):
      if block:
        a, m2, v2 = adam(g, m, v)
        u = jnp.where(p, a, residual_scale * free(g))
        return u, p, jnp.where(p, m2, 0.0), jnp.where(p, v2, 0.0)
      r = lowrank.project(g, p)
      a, m, v = adam(r, m, v)
      rest = g - lowrank.project_back(r, p, g.shape)
      u = lowrank.project_back(a, p, g.shape) + residual_scale * free(rest)
      return u, p, m, v

    out = jax.tree.map(leaf, g32, proj, state.mu, state.nu)
    u, proj, mu, nu = tree.unzip(updates, out, 4)
    u = jax.tree.map(lambda x, g: x.astype(g.dtype), u, updates)
    return u, FrugalState(state.count + 1, key, proj, mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)
