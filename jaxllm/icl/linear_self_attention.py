"""Linear self-attention (LSA) models for in-context linear regression, the models of the LSA studies
(experiments/icl/lsa_gd.py after von Oswald et al. 2023, experiments/icl/lsa_closed_form.py after
Zhang, Frei and Bartlett 2023).

Tokens are e_i = (x_i, y_i) in R^(d+1) for the N context examples and (x_q, 0) for the query, laid out
token-major as e_BTD with the query last (T = N + 1, D = d + 1).

* `LinearSelfAttention` / `LSAStack`: the von Oswald et al. (2023) layer
  e_j <- e_j + P sum_i (W_V e_i)(W_K e_i)^T (W_Q e_j) / N, keys and values from the N context tokens
  only; the prediction is minus the query's y-slot, so one layer can implement one GD step from w = 0.
* `ZFBLinearSelfAttention`: the Zhang-Frei-Bartlett (2023) parameterisation
  f(E) = E + W^PV E (E^T W^KQ E) / N over all N + 1 tokens with their initialisation
  W^PV = sigma diag(0, ..., 0, 1), W^KQ = sigma [[Theta Theta^T, 0], [0, 0]]; the prediction is the
  query's y-slot.
"""

import jax
import jax.numpy as jnp
from flax import nnx


def _check_tokens(e_BTD, dim):
  if e_BTD.ndim != 3 or e_BTD.shape[-1] != dim + 1:
    raise ValueError(f"tokens must have shape (batch, N + 1, {dim + 1}), got {e_BTD.shape}")
  if e_BTD.shape[1] < 2:
    raise ValueError(f"tokens need at least one context token and the query, got T={e_BTD.shape[1]}")


def _check_dim(dim):
  if int(dim) != dim or dim < 1:
    raise ValueError(f"dim must be a positive integer, got {dim}")


class LinearSelfAttention(nnx.Module):
  """One single-head linear self-attention layer; keys and values exclude the query token."""

  def __init__(self, dim: int, *, init_scale: float = 1e-2, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    _check_dim(dim)
    self.dim = dim
    self.dtype = dtype
    width = dim + 1
    init = nnx.initializers.normal(stddev=init_scale)
    self.w_q = nnx.Param(init(rngs.params(), (width, width), param_dtype))
    self.w_k = nnx.Param(init(rngs.params(), (width, width), param_dtype))
    self.w_v = nnx.Param(init(rngs.params(), (width, width), param_dtype))
    self.w_p = nnx.Param(init(rngs.params(), (width, width), param_dtype))

  def __call__(self, e_BTD):
    _check_tokens(e_BTD, self.dim)
    e = e_BTD.astype(self.dtype)
    w_q, w_k, w_v, w_p = (jnp.asarray(w[...], self.dtype)
                          for w in (self.w_q, self.w_k, self.w_v, self.w_p))
    ctx_BND = e[:, :-1]
    num_context = ctx_BND.shape[1]
    q_BTD = e @ w_q
    k_BND = ctx_BND @ w_k
    v_BND = ctx_BND @ w_v
    # sum_i v_i k_i^T, shared by every token: linear attention never forms the T x T score matrix.
    kv_BDD = jnp.einsum("bnk,bnv->bkv", k_BND, v_BND) / num_context
    return e + jnp.einsum("btk,bkv,vo->bto", q_BTD, kv_BDD, w_p)


class LSAStack(nnx.Module):
  """`num_layers` linear self-attention layers; the prediction is minus the query's y-slot."""

  def __init__(self, dim: int, num_layers: int, *, init_scale: float = 1e-2, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if int(num_layers) != num_layers or num_layers < 1:
      raise ValueError(f"num_layers must be a positive integer, got {num_layers}")
    self.layers = nnx.List([
        LinearSelfAttention(dim, init_scale=init_scale, dtype=dtype, param_dtype=param_dtype,
                            rngs=rngs) for _ in range(num_layers)])

  def __call__(self, e_BTD):
    for layer in self.layers:
      e_BTD = layer(e_BTD)
    return -e_BTD[:, -1, -1]


class ZFBLinearSelfAttention(nnx.Module):
  """The single LSA layer of Zhang, Frei & Bartlett with their small structured initialisation."""

  def __init__(self, dim: int, *, init_scale: float = 1e-2, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    _check_dim(dim)
    if init_scale <= 0:
      raise ValueError(f"init_scale must be positive, got {init_scale}")
    self.dim = dim
    self.dtype = dtype
    width = dim + 1
    theta = jax.random.normal(rngs.params(), (dim, dim), param_dtype)
    theta_gram = theta @ theta.T
    theta_gram = theta_gram / jnp.linalg.norm(theta_gram)
    w_kq = jnp.zeros((width, width), param_dtype).at[:dim, :dim].set(init_scale * theta_gram)
    w_pv = jnp.zeros((width, width), param_dtype).at[dim, dim].set(init_scale)
    self.w_kq = nnx.Param(w_kq)
    self.w_pv = nnx.Param(w_pv)

  def __call__(self, e_BTD):
    """Returns the query's y-slot prediction, shape (batch,)."""
    _check_tokens(e_BTD, self.dim)
    e = e_BTD.astype(self.dtype)
    num_context = e.shape[1] - 1
    w_kq = jnp.asarray(self.w_kq[...], self.dtype)
    w_pv = jnp.asarray(self.w_pv[...], self.dtype)
    # Column form f(E)_q = E_q + W^PV sum_i E_i (E_i^T W^KQ E_q) / N, query included in the sum.
    scores_BT = jnp.einsum("btd,de,be->bt", e, w_kq, e[:, -1]) / num_context
    update_BD = jnp.einsum("bt,btd,od->bo", scores_BT, e, w_pv)
    return e[:, -1, -1] + update_BD[:, -1]

  def learned_matrix(self):
    """u * W^KQ_11^T, the matrix G in y_hat = x_q^T G (1/N) sum_i y_i x_i; equals Gamma^-1 at the optimum."""
    d = self.dim
    return self.w_pv[...][d, d] * self.w_kq[...][:d, :d].T


def regression_tokens(x_BND, y_BN, xq_BD):
  """Stacks context pairs (x_i, y_i) and the query (x_q, 0) into tokens e_BTD."""
  if x_BND.ndim != 3 or y_BN.shape != x_BND.shape[:2] or xq_BD.shape != (x_BND.shape[0],
                                                                            x_BND.shape[2]):
    raise ValueError(f"inconsistent shapes x {x_BND.shape}, y {y_BN.shape}, x_q {xq_BD.shape}")
  ctx = jnp.concatenate([x_BND, y_BN[..., None]], axis=-1)
  query = jnp.concatenate([xq_BD, jnp.zeros_like(xq_BD[:, :1])], axis=-1)
  return jnp.concatenate([ctx, query[:, None]], axis=1)
