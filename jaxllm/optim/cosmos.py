"""COSMOS: SOAP-style Adam on a tracked top-r eigenbasis of the input side, Muon on the rest.

Written in the layout of the official ``COSMOS`` class: for a hidden Flax kernel (in, out) the
update works on G = kernel gradient transposed, (out, in) = (a, b), so the eigenbasis U (b, r)
lives on the input side, as in every official version. With bc1 = (1 - b1^t) / (1 - b1) and
bc2 = 1 - b2^t at 1-based step t:
  M = b1 M + G                                         (an unnormalised sum; M / bc1 is the EMA)
  first step: U = top-r eigenvectors of W = G^T G,  S = (1 - b2) U^T W U
  later:      U' = QR(b2 U S + (1 - b2) G^T (G U)),  T = U^T U',
              S = b2 T^T S T + (1 - b2) (G U')^T (G U'),  U = U'
  V = b2 V + (1 - b2) (G U)^2                          (second moment in r dims, shape (a, r))
  N = (G + b1 M) / (1 + b1 bc1)  (Nesterov, the default)  or  M / bc1
  A = (N U) / (sqrt(V / bc2) + eps) U^T                 (Adam on the projected direction)
  B = NS5(N - N U U^T);  B = sqrt(a b) B / (||B|| + eps) (Muon on the residual)
  T1 = A + gamma B
  update = lr_ratio * sqrt(a b) * T1 / (||T1|| + eps)  (RMS of the update = lr * lr_ratio)
The eigenbasis EMA shares b2 with the second moment, as in the class. Defaults are the class's
(b = (0.9, 0.999), eps 1e-8, lr_ratio 0.1, rank 64, gamma 0.2, Nesterov). Newton-Schulz runs in
float32 (the class casts to bfloat16). The class's non-Nesterov branch normalises the raw
gradient instead of the momentum; ``nesterov=False`` here uses the momentum M / bc1 (the paper's
rule). The rank is capped at the input width (the class requires rank <= in).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxllm.optim import tree

NS_COEFFS = (3.4445, -4.7750, 2.0315)


class CosmosState(NamedTuple):
  count: jax.Array
  mu: optax.Updates     # M, (in, out) like the kernel
  nu: optax.Updates     # V, (out, r)
  basis: optax.Updates  # U, (in, r)
  gram: optax.Updates   # S, (r, r)


def newton_schulz5(x: jax.Array, steps: int = 5, eps: float = 1e-7) -> jax.Array:
  """Quintic Newton-Schulz orthogonalisation with Muon's coefficients (float32)."""
  a, b, c = NS_COEFFS
  tall = x.shape[0] > x.shape[1]
  y = x.T if tall else x
  y = y / (jnp.linalg.norm(y) + eps)
  for _ in range(steps):
    s = y @ y.T
    y = a * y + (b * s + c * s @ s) @ y
  return y.T if tall else y


def cosmos_rank(shape, rank: int) -> int:
  """The tracked rank of a Flax (in, out) kernel: at most its input width."""
  return min(rank, shape[0])


def scale_by_cosmos(rank: int = 64, b1: float = 0.9, b2: float = 0.999, gamma: float = 0.2,
                    lr_ratio: float = 0.1, eps: float = 1e-8,
                    nesterov: bool = True) -> optax.GradientTransformation:
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
        jax.tree.map(lambda x: jnp.zeros((x.shape[1], r_of(x)), jnp.float32), params),
        jax.tree.map(lambda x: jnp.zeros((x.shape[0], r_of(x)), jnp.float32), params),
        jax.tree.map(lambda x: jnp.zeros((r_of(x), r_of(x)), jnp.float32), params))

  def update_fn(updates, state, params=None):
    del params
    c = (state.count + 1).astype(jnp.float32)
    bc1 = (1.0 - b1 ** c) / (1.0 - b1)
    bc2 = 1.0 - b2 ** c

    def leaf(g_kernel, m, v, u, s):
      g = g_kernel.astype(jnp.float32).T  # (out, in), the official layout
      r = u.shape[1]

      def first():
        w = g.T @ g
        _, vecs = jnp.linalg.eigh(w)
        u1 = vecs[:, ::-1][:, :r]
        gu = g @ u1
        return u1, (1.0 - b2) * (gu.T @ gu)

      def later():
        u1, _ = jnp.linalg.qr(b2 * (u @ s) + (1.0 - b2) * (g.T @ (g @ u)))
        t = u.T @ u1
        gu = g @ u1
        return u1, b2 * (t.T @ s @ t) + (1.0 - b2) * (gu.T @ gu)

      u, s = jax.lax.cond(state.count == 0, first, later)
      mt = b1 * m.T + g
      gu = g @ u
      v = b2 * v + (1.0 - b2) * gu * gu
      n = (g + b1 * mt) / (1.0 + b1 * bc1) if nesterov else mt / bc1
      nu_ = n @ u
      adam = (nu_ / (jnp.sqrt(v) / jnp.sqrt(bc2) + eps)) @ u.T
      scale = (g.shape[0] * g.shape[1]) ** 0.5
      res = newton_schulz5(n - nu_ @ u.T)
      res = scale * res / (jnp.linalg.norm(res) + eps)
      t1 = adam + gamma * res
      out = lr_ratio * scale * t1 / (jnp.linalg.norm(t1) + eps)
      return out.T.astype(g_kernel.dtype), mt.T, v, u, s

    out = jax.tree.map(leaf, updates, state.mu, state.nu, state.basis, state.gram)
    o, mu, nu, basis, gram = tree.unzip(updates, out, 5)
    return o, CosmosState(state.count + 1, mu, nu, basis, gram)

  return optax.GradientTransformation(init_fn, update_fn)
