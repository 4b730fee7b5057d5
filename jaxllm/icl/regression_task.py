"""The in-context linear-regression prompt task (Garg et al. 2022) that the regression studies
share: the training task with its curriculum over d and k, the loss and predictions read at the x
positions of interleaved prompts, hidden states for probes, and ill-conditioned inputs (Fu et al.
2023); and the query-last prompts of the linear self-attention studies."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm.data import icl_regression as data
from jaxllm.icl.linear_self_attention import regression_tokens
from jaxllm.models.transformer import build


def check_prompt_fits(model_cfg: dict, n_points: int):
  """Raises ValueError when 2 * n_points prompt tokens exceed ``model.max_len``."""
  if 2 * n_points > model_cfg.get("max_len", 0):
    raise ValueError(f"model.max_len={model_cfg.get('max_len')} is shorter than the prompt "
                     f"(2 * task.n_points = {2 * n_points} tokens)")


def prompt_loss(model, batch):
  """Mean squared error of the predictions read at the x positions of interleaved prompts."""
  preds = model(batch["tokens"])[:, ::2, 0]
  return jnp.mean((preds - batch["ys"]) ** 2), {}


class LinearRegressionTask:
  """Batches are a pure function of (seed, step); the curriculum widens d and k over training.

  The regression studies subclass it and replace ``batch``: ``input_dim`` is the token width when
  it differs from ``task.n_dims``, and ``grow_dims=False`` keeps every input dimension active from
  the start.
  """

  def __init__(self, config, *, input_dim: int | None = None, grow_dims: bool = True):
    c = config.task
    self.n_dims, self.n_points = int(c.n_dims), int(c.n_points)
    self.input_dim = self.n_dims if input_dim is None else int(input_dim)
    self.batch_size = int(config.train.batch_size)
    self.noise_std = float(c.get("noise_std", 0.0))
    self.seed = int(config.seed)
    cur = c.curriculum
    self.dims = data.Curriculum(int(cur.dims_start) if grow_dims else self.input_dim,
                                self.input_dim, int(cur.dims_inc), int(cur.interval))
    self.points = data.Curriculum(int(cur.points_start), self.n_points, int(cur.points_inc),
                                  int(cur.interval))
    self.model_cfg = dict(config.model.to_dict(), io="vectors", input_dim=self.input_dim,
                          output_dim=1)
    check_prompt_fits(self.model_cfg, self.n_points)

  def init_model(self, rngs):
    return build(self.model_cfg, rngs=rngs)

  def batch(self, step: int):
    rng = np.random.default_rng([self.seed, step])
    xs, ys, _ = data.sample_prompts(
        rng, self.batch_size, self.points.value(step), self.n_dims,
        active_dims=self.dims.value(step), noise_std=self.noise_std)
    return {"tokens": data.interleave(xs, ys), "ys": ys}

  def loss(self, model, batch):
    return prompt_loss(model, batch)


def predict(model, xs, ys, batch_size: int = 256) -> np.ndarray:
  """Transformer predictions [B, k] of y_i from the first i pairs."""
  fwd = nnx.jit(lambda m, tok: m(tok)[:, ::2, 0])
  out = [np.asarray(fwd(model, jnp.asarray(data.interleave(xs[i:i + batch_size],
                                                           ys[i:i + batch_size]))))
         for i in range(0, len(xs), batch_size)]
  return np.concatenate(out)


def hidden_states(model, xs, ys, batch_size: int = 256):
  """Hidden states [L + 1, B, T, D] (embedding, then each block) and outputs at x positions."""
  fwd = nnx.jit(lambda m, tok: m(tok, return_hidden=True))
  hs, outs = [], []
  for i in range(0, len(xs), batch_size):
    out, hidden = fwd(model, jnp.asarray(data.interleave(xs[i:i + batch_size],
                                                         ys[i:i + batch_size])))
    hs.append(np.stack([np.asarray(h) for h in hidden]))
    outs.append(np.asarray(out)[:, ::2, 0])
  return np.concatenate(hs, axis=1), np.concatenate(outs)


def conditioned_inputs(rng, xs, condition_number: float, active_dims=None):
  """Maps isotropic xs [B, k, d] to x ~ N(0, U diag(lam) U^T) per prompt, with U a random rotation
  and lam geometric from 1 down to 1 / condition_number (the top eigenvalue stays 1, so GD's
  stable step sizes do not depend on the condition number)."""
  if condition_number < 1:
    raise ValueError(f"condition_number must be >= 1, got {condition_number}")
  b, _, d = xs.shape
  a = d if active_dims is None else int(active_dims)
  if condition_number == 1:
    return xs
  lam = np.geomspace(1.0, 1.0 / condition_number, a)
  q, r = np.linalg.qr(rng.standard_normal((b, a, a)))
  q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]  # Haar-distributed rotations
  root_BAA = np.einsum("bij,j,bkj->bik", q, np.sqrt(lam), q)
  out = xs.copy()
  out[..., :a] = np.einsum("bna,bca->bnc", xs[..., :a], root_BAA)
  return out.astype(np.float32)


def query_loss(model, x_BND, y_BN, xq_BD, yq_B):
  """0.5 * mean squared error of the query prediction (the von Oswald / ZFB convention) of a model
  reading tokens (x_i, y_i) and (x_q, 0)."""
  pred_B = model(regression_tokens(x_BND, y_BN, xq_BD))
  return 0.5 * jnp.mean(jnp.square(pred_B - yq_B))


class QueryRegressionTask:
  """Prompts of N context pairs and one query for the linear self-attention studies: tokens
  e_i = (x_i, y_i) and (x_q, 0), loss ``query_loss``; ``task.n_points`` = N + 1. Batches are a pure
  function of (seed, step).

  Args:
    config: reads ``task.n_dims``, ``task.n_points``, ``task.input_dist`` (Gaussian when absent),
      ``train.batch_size`` and ``seed``.
    make_model: rngs -> the model to train.
    input_cov_sqrt: square root of the Gaussian input covariance (identity when None).
  """

  def __init__(self, config, make_model, *, input_cov_sqrt=None):
    c = config.task
    self.n_dims, self.n_points = int(c.n_dims), int(c.n_points)
    if self.n_points < 2:
      raise ValueError(f"task.n_points must be >= 2 (a context pair and the query), got "
                       f"{self.n_points}")
    self.input_dist = c.get("input_dist", "gaussian")
    self.input_cov_sqrt = input_cov_sqrt
    self.batch_size, self.seed = int(config.train.batch_size), int(config.seed)
    self.make_model = make_model

  def init_model(self, rngs):
    return self.make_model(rngs)

  def batch(self, step: int):
    xs, ys, _ = data.sample_prompts(np.random.default_rng([self.seed, step]), self.batch_size,
                                    self.n_points, self.n_dims, input_dist=self.input_dist,
                                    input_cov_sqrt=self.input_cov_sqrt)
    return dict(zip(("x", "y", "xq", "yq"), data.split_query(xs, ys)))

  def loss(self, model, batch):
    return query_loss(model, batch["x"], batch["y"], batch["xq"], batch["yq"]), {}
