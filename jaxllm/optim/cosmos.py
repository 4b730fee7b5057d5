"""COSMOS: SOAP-style Adam on a tracked top-r eigenspace, Muon on the rest (hidden kernels).

For a hidden kernel G (in, out) = (a, b) (the PyTorch weight transposed; the tracked eigenvectors
are those of G^T G, i.e. of G_torch G_torch^T in the reference code):
  M = EMA_b1(G)
  first step: U = top-r eigenvectors of W = G^T G, S = (1 - b3) U^T W U
  later:      U' = QR(b3 U S + (1 - b3) G^T (G U)),  T = U^T U',
              S = b3 T^T S T + (1 - b3) (G U')^T (G U'),  U = U'
  V = EMA_b2((G U)^2)                                  (second moment in r dims, shape (a, r))
  A = (M U / bc1) / (sqrt(V / bc2) + eps) U^T          (Adam on the projected momentum)
  B = NS5(M - M U U^T);  B = B / ||B||                 (Muon on the residual)
  T1 = A + gamma sqrt(a b) B
  update = lr * lr_ratio * sqrt(a b) * T1 / ||T1||     (RMS of the update = lr * lr_ratio)
The reference code ties gamma to lr_ratio; both are exposed. Newton-Schulz runs in float32 (the
reference casts to bfloat16).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxllm.optim import tree

NS_COEFFS = (3.4445, -4.7750, 2.0315)


class CosmosState(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  basis: optax.Updates  # U, (b, r)
  gram: optax.Updates   # S, (r, r)


def newton_schulz5(x: jax.Array, steps: int = 5, eps: float = 1e-7) -> jax.Array:
  """Quintic Newton-Schulz orthogonalisation with Muon's coefficients."""
  a, b, c = NS_COEFFS
  tall = x.shape[0] > x.shape[1]
  y = x.T if tall else x
  y = y / (jnp.linalg.norm(y) + eps)
  for _ in range(steps):
    s = y @ y.T
    t = s @ y
    y = a * y + b * t + c * s @ t
  return y.T if tall else y


def cosmos_rank(shape, rank: int) -> int:
  return min(rank, shape[1])


def scale_by_cosmos(rank: int = 64, b1: float = 0.9, b2: float = 0.96, b3: float = 0.96,
                    gamma: float = 0.2, lr_ratio: float = 0.1,
                    eps: float = 1e-8) -> optax.GradientTransformation:
  """COSMOS's update direction for 2-D leaves (multiply by the learning rate afterwards)."""

  def init_fn(params):
    def zeros(x):
      if x.ndim != 2:
        raise ValueError(f"cosmos treats 2-D kernels only; got a leaf of shape {x.shape}")
      return jnp.zeros(x.shape, jnp.float32)
    r_of = lambda x: cosmos_rank(x.shape, rank)
    return CosmosState(
        jnp.zeros([], jnp.int32),
        jax.tree.map(zeros, params),
        jax.tree.map(lambda x: jnp.zeros((x.shape[0], r_of(x)), jnp.float32), params),
        jax.tree.map(lambda x: jnp.zeros((x.shape[1], r_of(x)), jnp.float32), params),
        jax.tree.map(lambda x: jnp.zeros((r_of(x), r_of(x)), jnp.float32), params))

  def update_fn(updates, state, params=None):
    del params
    c = state.count + 1
    bc1 = 1.0 - b1 ** c.astype(jnp.float32)
    bc2 = 1.0 - b2 ** c.astype(jnp.float32)

    def leaf(g, m, v, u, s):
      g = g.astype(jnp.float32)
      r = u.shape[1]

      def first():
        w = g.T @ g
        _, vecs = jnp.linalg.eigh(w)
        u1 = vecs[:, ::-1][:, :r]
        return u1, (1.0 - b3) * (u1.T @ w @ u1)

      def later():
        u1, _ = jnp.linalg.qr(b3 * (u @ s) + (1.0 - b3) * (g.T @ (g @ u)))
        t = u.T @ u1
        gu = g @ u1
        return u1, b3 * (t.T @ s @ t) + (1.0 - b3) * (gu.T @ gu)

      u, s = jax.lax.cond(state.count == 0, first, later)
      m = b1 * m + (1.0 - b1) * g
      gu = g @ u
      v = b2 * v + (1.0 - b2) * gu * gu
      mu_p = m @ u
      adam = ((mu_p / bc1) / (jnp.sqrt(v / bc2) + eps)) @ u.T
      res = newton_schulz5(m - mu_p @ u.T)
      res = res / (jnp.linalg.norm(res) + eps)
      scale = (g.shape[0] * g.shape[1]) ** 0.5
      t1 = adam + gamma * scale * res
      out = lr_ratio * scale * t1 / (jnp.linalg.norm(t1) + eps)
      return out, m, v, u, s

    out = jax.tree.map(leaf, updates, state.mu, state.nu, state.basis, state.gram)
    o, mu, nu, basis, gram = tree.unzip(updates, out, 5)
    o = jax.tree.map(lambda x, g: x.astype(g.dtype), o, updates)
    return o, CosmosState(c, mu, nu, basis, gram)

  return optax.GradientTransformation(init_fn, update_fn)
