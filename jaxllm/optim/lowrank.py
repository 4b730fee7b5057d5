"""Shorter-side low-rank projection of a Flax kernel gradient, as GaLore/Fira/FRUGAL define it.

PyTorch weights are (out, in) and the public code projects the column (in) side when rows >= cols.
A Flax kernel G is (in, out) = the PyTorch weight transposed, so the same rule reads: when
out >= in, project the `in` axis with P = top-r left singular vectors (R = P^T G, shape (r, out));
otherwise project the `out` axis with P = top-r right singular vectors (R = G P, shape (in, r)).
"""

import jax
import jax.numpy as jnp


def projects_left(shape: tuple[int, ...]) -> bool:
  """True when the `in` axis (axis 0) is the projected one."""
  return shape[1] >= shape[0]


def effective_rank(shape: tuple[int, ...], rank: int) -> int:
  return min(rank, shape[0], shape[1])


def projector_shape(shape: tuple[int, ...], rank: int) -> tuple[int, int]:
  r = effective_rank(shape, rank)
  return (shape[0], r) if projects_left(shape) else (shape[1], r)


def lowrank_shape(shape: tuple[int, ...], rank: int) -> tuple[int, int]:
  r = effective_rank(shape, rank)
  return (r, shape[1]) if projects_left(shape) else (shape[0], r)


def svd_projector(g: jax.Array, rank: int) -> jax.Array:
  """Top-r singular vectors of ``g`` on the projected side, float32, shape ``projector_shape``."""
  r = effective_rank(g.shape, rank)
  u, _, vh = jnp.linalg.svd(g.astype(jnp.float32), full_matrices=False)
  return u[:, :r] if projects_left(g.shape) else vh[:r, :].T


def random_projector(key: jax.Array, shape: tuple[int, ...], rank: int) -> jax.Array:
  """A random semi-orthogonal projector (QR of a Gaussian matrix), shape ``projector_shape``."""
  q, _ = jnp.linalg.qr(jax.random.normal(key, projector_shape(shape, rank), jnp.float32))
  return q


def project(g: jax.Array, p: jax.Array) -> jax.Array:
  """R = P^T G (left) or G P (right)."""
  return p.T @ g if projects_left(g.shape) else g @ p


def project_back(r: jax.Array, p: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """P R (left) or R P^T (right): back to the kernel's shape."""
  return p @ r if projects_left(shape) else r @ p.T


def rank_axis(shape: tuple[int, ...]) -> int:
  """The axis of the low-rank matrix that has size r."""
  return 0 if projects_left(shape) else 1
