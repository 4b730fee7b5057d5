"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner factors.

Per leaf of rank >= 2, every axis i of size <= ``max_precond_dim`` gets a factor
GG_i = EMA_{shampoo_b}(G contracted with itself over all other axes) (for a matrix: L = G G^T and
R = G^T G) and an orthonormal basis Q_i. With rotate(X) = X multiplied by Q_i^T along every axis:
  first call: only GG = (1 - shampoo_b) G G^T ..., Q = eigenvectors of GG (descending); no update,
              so the current gradient is never used in its own projection;
  then:       m = EMA_b1(G) (original space), v = EMA_b2(rotate(G)^2) (rotated space),
              update = sqrt(bc2) / bc1 * rotate^-1(rotate(m) / (sqrt(v) + eps)),
              GG updated with G after the step; every ``precondition_frequency`` steps Q is
              refreshed by one power iteration + QR, with Q's columns and v re-sorted by the
              estimated eigenvalues diag(Q^T GG Q).
Leaves of rank < 2 (and axes above ``max_precond_dim``) are not rotated, so they get plain Adam.
Defaults are the official ``SOAP`` class's: lr 3e-3, b = (0.95, 0.95), shampoo_b = b2, eps 1e-8,
wd 0.01, f = 10. As there, the registry decays the weights after the step and not at all on the
set-up call (``adam.scale_by_lr_then_decay``).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxllm.optim import tree


class SoapState(NamedTuple):
  count: jax.Array  # calls so far (the first one only sets up the preconditioner)
  mu: optax.Updates
  nu: optax.Updates
  gg: optax.Updates  # per leaf: tuple of (d_i, d_i) factors, None for an unrotated axis
  q: optax.Updates   # per leaf: tuple of (d_i, d_i) bases, None for an unrotated axis


def rotated_axes(shape, max_precond_dim: int) -> tuple[bool, ...]:
  if len(shape) < 2:
    return (False,) * len(shape)
  return tuple(d <= max_precond_dim for d in shape)


def rotate(x: jax.Array, qs, back: bool = False) -> jax.Array:
  """Multiplies ``x`` by Q_i^T (or Q_i when ``back``) along every rotated axis i."""
  for i, q in enumerate(qs):
    if q is not None:
      x = jnp.moveaxis(jnp.tensordot(x, q.T if back else q, axes=([i], [0])), -1, i)
  return x


def _outer(g, i):
  others = [j for j in range(g.ndim) if j != i]
  return jnp.tensordot(g, g, axes=(others, others))


def _eig_desc(gg):
  _, vecs = jnp.linalg.eigh(gg + 1e-30 * jnp.eye(gg.shape[0], dtype=gg.dtype))
  return vecs[:, ::-1]


def _qr_refresh(gg, q, v, axis):
  order = jnp.argsort(-jnp.diag(q.T @ gg @ q))
  q = q[:, order]
  v = jnp.take(v, order, axis=axis)
  q, _ = jnp.linalg.qr(gg @ q)
  return q, v


def scale_by_soap(b1: float = 0.95, b2: float = 0.95, shampoo_b: float | None = None,
                  eps: float = 1e-8, precondition_frequency: int = 10,
                  max_precond_dim: int = 10000) -> optax.GradientTransformation:
  """SOAP's update direction (before learning rate and weight decay)."""
  sb = b2 if shampoo_b is None else shampoo_b

  def factors(x):
    return tuple(jnp.zeros((d, d), jnp.float32) if rot else None
                 for d, rot in zip(x.shape, rotated_axes(x.shape, max_precond_dim)))

  def init_fn(params):
    zeros = lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params)
    fac = lambda: jax.tree.map(factors, params)
    return SoapState(jnp.zeros([], jnp.int32), zeros(), zeros(), fac(), fac())

  def update_fn(updates, state, params=None):
    del params
    n = state.count
    k = jnp.maximum(n, 1).astype(jnp.float32)
    bc = jnp.sqrt(1.0 - b2 ** k) / (1.0 - b1 ** k)
    refresh = n % precondition_frequency == 0

    def leaf(g, m, v, ggs, qs):
      g = g.astype(jnp.float32)

      def setup():
        ggs2 = tuple(None if gg is None else (1.0 - sb) * _outer(g, i) for i, gg in enumerate(ggs))
        qs2 = tuple(None if gg is None else _eig_desc(gg) for gg in ggs2)
        return jnp.zeros_like(g), m, v, ggs2, qs2

      def step():
        m2 = b1 * m + (1.0 - b1) * g
        v2 = b2 * v + (1.0 - b2) * jnp.square(rotate(g, qs))
        u = bc * rotate(rotate(m2, qs) / (jnp.sqrt(v2) + eps), qs, back=True)
        ggs2 = tuple(None if gg is None else sb * gg + (1.0 - sb) * _outer(g, i)
                     for i, gg in enumerate(ggs))
        def refreshed(v2):
          qs2 = list(qs)
          for i, gg in enumerate(ggs2):
            if gg is not None:
              qs2[i], v2 = _qr_refresh(gg, qs[i], v2, i)
          return tuple(qs2), v2

        qs2, v2 = jax.lax.cond(refresh, refreshed, lambda v2: (qs, v2), v2)
        return u, m2, v2, ggs2, qs2

      return jax.lax.cond(n == 0, setup, step)

    out = jax.tree.map(leaf, updates, state.mu, state.nu, state.gg, state.q)
    u, mu, nu, gg, q = tree.unzip(updates, out, 5)
    u = jax.tree.map(lambda x, g: x.astype(g.dtype), u, updates)
    return u, SoapState(n + 1, mu, nu, gg, q)

  return optax.GradientTransformation(init_fn, update_fn)
