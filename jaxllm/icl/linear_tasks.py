"""Noiseless in-context linear regression prompts: y_i = w . x_i with w fresh per prompt."""

import jax
import jax.numpy as jnp

INPUT_DISTRIBUTIONS = ("gaussian", "uniform")


def sample_linear_prompts(key, batch_size, num_examples, dim, *, input_dist="gaussian",
                          input_cov_sqrt=None, task_cov_sqrt=None, task_mean=None):
  """Samples a batch of prompts.

  Args:
    key: PRNG key.
    batch_size: number of prompts B.
    num_examples: context examples N per prompt.
    dim: input dimension d.
    input_dist: "gaussian" (x = A z, z ~ N(0, I)) or "uniform" (x ~ U(-0.5, 0.5)^d, the von Oswald
      et al. notebook's inputs).
    input_cov_sqrt: (d, d) matrix A with covariance A A^T for Gaussian inputs; identity when None.
    task_cov_sqrt: (d, d) matrix C with w = task_mean + C g, g ~ N(0, I); identity when None.
    task_mean: (d,) mean of w; zero when None.

  Returns:
    x_BND (context inputs), y_BN (context targets), xq_BD (query), yq_B (query target), w_BD.
  """
  if input_dist not in INPUT_DISTRIBUTIONS:
    raise ValueError(f"input_dist must be one of {INPUT_DISTRIBUTIONS}, got {input_dist!r}")
  for name, n in (("batch_size", batch_size), ("num_examples", num_examples), ("dim", dim)):
    if int(n) != n or n < 1:
      raise ValueError(f"{name} must be a positive integer, got {n}")
  k_x, k_w = jax.random.split(key)
  shape = (batch_size, num_examples + 1, dim)
  if input_dist == "uniform":
    if input_cov_sqrt is not None:
      raise ValueError("input_cov_sqrt applies only to input_dist='gaussian'")
    x_BTD = jax.random.uniform(k_x, shape, minval=-0.5, maxval=0.5)
  else:
    x_BTD = jax.random.normal(k_x, shape)
    if input_cov_sqrt is not None:
      x_BTD = x_BTD @ jnp.asarray(input_cov_sqrt, jnp.float32).T
  w_BD = jax.random.normal(k_w, (batch_size, dim))
  if task_cov_sqrt is not None:
    w_BD = w_BD @ jnp.asarray(task_cov_sqrt, jnp.float32).T
  if task_mean is not None:
    w_BD = w_BD + jnp.asarray(task_mean, jnp.float32)
  y_BT = jnp.einsum("btd,bd->bt", x_BTD, w_BD)
  return x_BTD[:, :-1], y_BT[:, :-1], x_BTD[:, -1], y_BT[:, -1], w_BD
