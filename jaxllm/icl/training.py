"""A small jitted training loop for the in-context regression models (no checkpointing needed)."""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxllm.icl.linear_self_attention import regression_tokens


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
    log_every: steps per jitted chunk; the loss of each chunk's last step is recorded.

  Returns:
    A dict with "step" and "loss" lists.

  Raises:
    FloatingPointError: when the loss stops being finite.
  """
  if num_steps < 1 or log_every < 1:
    raise ValueError(f"num_steps and log_every must be positive, got {num_steps}, {log_every}")
  graphdef, params = nnx.split(model, nnx.Param)
  opt_state = tx.init(params)

  def step(carry, key):
    params, opt_state = carry
    x, y, xq, yq = sample_fn(key)[:4]

    def loss_fn(p):
      return regression_loss(nnx.merge(graphdef, p), x, y, xq, yq)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  # Scanning a chunk of steps per call keeps host dispatch out of the loop: these models are tiny.
  @partial(jax.jit, static_argnums=3)
  def run_chunk(params, opt_state, key, length):
    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state),
                                               jax.random.split(key, length))
    return params, opt_state, losses[-1]

  history = {"step": [], "loss": []}
  done = 0
  while done < num_steps:
    length = min(log_every, num_steps - done)
    key, sub = jax.random.split(key)
    params, opt_state, loss = run_chunk(params, opt_state, sub, length)
    done += length
    _record(history, done - 1, loss)
  nnx.update(model, params)
  return history


def _record(history, step, loss):
  value = float(np.asarray(loss))
  if not math.isfinite(value):
    raise FloatingPointError(f"training loss became {value} at step {step}; lower the learning rate")
  history["step"].append(step)
  history["loss"].append(value)
