"""Gradient descent from w = 0 as an in-context estimator (von Oswald et al. 2023).

GD runs on L(w) = 1/(2N) sum_i (w . x_i - y_i)^2, so one step is w_1 = eta (1/N) sum_i y_i x_i and
k steps give w_k = eta sum_{j<k} (I - eta C)^j b with C = (1/N) sum_i x_i x_i^T, b = (1/N) sum_i y_i x_i.
Losses follow the paper's 0.5 * mean squared error.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize


@partial(jax.jit, static_argnames="num_steps")
def _moment_steps(c_XDD, b_XD, lr_X, num_steps):
  w_XD = jnp.zeros(jnp.broadcast_shapes(lr_X.shape + b_XD.shape[-1:], b_XD.shape), b_XD.dtype)

  def step(w_XD, _):
    grad_XD = jnp.matmul(c_XDD, w_XD[..., None])[..., 0] - b_XD
    return w_XD - lr_X[..., None] * grad_XD, None

  w_XD, _ = jax.lax.scan(step, w_XD, None, length=num_steps)
  return w_XD


def gd_weights_from_moments(c_XDD, b_XD, lr_X, num_steps):
  """Weights after ``num_steps`` steps w <- w - lr (C w - b) from w = 0: GD on
  L(w) = 1/(2N) sum_i (w . x_i - y_i)^2 given its moments C = X^T X / N, b = X^T y / N.

  The one GD iteration of the package: leading axes of C [..., d, d], b [..., d] and the rates
  lr [...] broadcast, so many prompts, prefixes and rates step at once. Diverging rates give
  non-finite weights (no error), for callers that score them.
  """
  if int(num_steps) != num_steps or num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
  b_XD = jnp.asarray(b_XD)
  return _moment_steps(jnp.asarray(c_XDD, b_XD.dtype), b_XD, jnp.asarray(lr_X, b_XD.dtype),
                       int(num_steps))


def gd_weights(x_BND, y_BN, lr, num_steps):
  """Weights w_BD after `num_steps` GD steps from zero with step size `lr`."""
  x_BND, y_BN = jnp.asarray(x_BND), jnp.asarray(y_BN)
  num_examples = x_BND.shape[1]
  c_BDD = jnp.einsum("bnd,bne->bde", x_BND, x_BND) / num_examples
  b_BD = jnp.einsum("bnd,bn->bd", x_BND, y_BN) / num_examples
  return gd_weights_from_moments(c_BDD, b_BD, lr, num_steps)


def gd_predict(x_BND, y_BN, xq_BD, lr, num_steps):
  """Query predictions (B,) of `num_steps` GD steps from zero."""
  return jnp.einsum("bd,bd->b", gd_weights(x_BND, y_BN, lr, num_steps), xq_BD)


def gd_loss(x_BND, y_BN, xq_BD, yq_B, lr, num_steps):
  """0.5 * mean squared query error of k-step GD."""
  return 0.5 * jnp.mean(jnp.square(gd_predict(x_BND, y_BN, xq_BD, lr, num_steps) - yq_B))


def best_gd_rate(x_BND, y_BN, xq_BD, yq_B, num_steps, *, max_rate=None):
  """The step size minimising the k-step GD loss on the given prompts (bounded scalar search).

  Args:
    x_BND, y_BN, xq_BD, yq_B: prompts (context inputs/targets, query input/target).
    num_steps: number of GD steps k.
    max_rate: upper end of the search; defaults to 2 / (largest mean eigenvalue of C), beyond which
      GD diverges on typical prompts.

  Returns:
    (rate, loss) as floats.
  """
  if max_rate is None:
    mean_cov = np.asarray(jnp.einsum("bnd,bne->de", x_BND, x_BND)) / (x_BND.shape[0] *
                                                                        x_BND.shape[1])
    max_rate = 2.0 / float(np.linalg.eigvalsh(mean_cov)[-1])
  if max_rate <= 0:
    raise ValueError(f"max_rate must be positive, got {max_rate}")
  batched = jax.jit(jax.vmap(partial(gd_loss, num_steps=num_steps), (None, None, None, None, 0)))
  def loss_fn(lr):
    return batched(x_BND, y_BN, xq_BD, yq_B, jnp.asarray([lr], jnp.float32))[0]

  # The k-step loss is a degree-2k polynomial in the rate: a grid finds the right basin first.
  grid = np.linspace(0.0, max_rate, 65)
  losses = np.asarray(batched(x_BND, y_BN, xq_BD, yq_B, jnp.asarray(grid, jnp.float32)),
                      np.float64)
  losses[~np.isfinite(losses)] = np.inf
  i = int(np.argmin(losses))
  lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
  res = optimize.minimize_scalar(lambda lr: float(loss_fn(lr)), bounds=(lo, hi), method="bounded",
                                 options={"xatol": 1e-6 * max_rate})
  if res.fun > losses[i]:
    return float(grid[i]), float(losses[i])
  return float(res.x), float(res.fun)


def best_one_step_gd(dim, num_examples, variance, fourth_moment, task_variance=1.0):
  """Exact best step size and loss of one GD step for inputs with i.i.d. symmetric coordinates.

  With E x_k^2 = s, E x_k^4 = m4 and w ~ N(0, tau I), the loss is
  0.5 tau s [d - 2 eta d s + eta^2 E tr C^2] with
  E tr C^2 = (d m4 + d(d-1) s^2) / N + (N-1)/N d s^2, minimised at eta* = d s / E tr C^2.

  Returns:
    (rate, loss); for d = N = 10 and x ~ U(-0.5, 0.5) (s = 1/12, m4 = 1/80): (6.06, 0.206).
  """
  for name, v in (("dim", dim), ("num_examples", num_examples)):
    if int(v) != v or v < 1:
      raise ValueError(f"{name} must be a positive integer, got {v}")
  if variance <= 0 or fourth_moment < variance ** 2:
    raise ValueError(f"need variance > 0 and fourth_moment >= variance^2, got {variance}, "
                     f"{fourth_moment}")
  d, n, s = dim, num_examples, variance
  norm4 = d * fourth_moment + d * (d - 1) * s * s
  tr_c2 = norm4 / n + (n - 1) / n * d * s * s
  rate = d * s / tr_c2
  loss = 0.5 * task_variance * s * (d - (d * s) ** 2 / tr_c2)
  return rate, loss
