"""A small jitted training loop for the in-context regression models (no checkpointing needed)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxllm.models.lsa import regression_tokens


def regression_loss(model, x_BND, y_BN, xq_BD, yq_B):
  """0.5 * mean squared error of the query prediction (the von Oswald / ZFB convention)."""
  pred_B = model(regression_tokens(x_BND, y_BN, xq_BD))
  return 0.5 * jnp.mean(jnp.square(pred_B - yq_B))


def train_regression(model, tx, sample_fn, *, num_steps, key, log_every=100):
  """Trains `model` in place on fresh prompts each step.

  Args:
    model: an NNX module mapping tokens e_BTD to predictions (B,).
    tx: an optax GradientTransformation.
    sample_fn: key -> (x_BND, y_BN, xq_BD, yq_B, ...) a fresh batch.
    num_steps: number of optimisation steps.
    key: PRNG key for the data stream.
    log_every: record the training loss every this many steps (and at the last step).

  Returns:
    A dict with "step" and "loss" lists.

  Raises:
    FloatingPointError: when the loss stops being finite.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be positive, got {num_steps}")
  graphdef, params = nnx.split(model, nnx.Param)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, key):
    x, y, xq, yq = sample_fn(key)[:4]

    def loss_fn(p):
      return regression_loss(nnx.merge(graphdef, p), x, y, xq, yq)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  history = {"step": [], "loss": []}
  pending = None
  for i in range(num_steps):
    key, sub = jax.random.split(key)
    params, opt_state, loss = step(params, opt_state, sub)
    if i % log_every == 0 or i == num_steps - 1:
      # Read the previous logged loss only now, so the host never stalls the device queue.
      if pending is not None:
        _record(history, *pending)
      pending = (i, loss)
  _record(history, *pending)
  nnx.update(model, params)
  return history


def _record(history, step, loss):
  value = float(np.asarray(loss))
  if not math.isfinite(value):
    raise FloatingPointError(f"training loss became {value} at step {step}; lower the learning rate")
  history["step"].append(step)
  history["loss"].append(value)
