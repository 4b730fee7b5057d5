"""Every optimizer written here decreases a convex problem and a small MLP loss, under jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxllm import optim

rng = np.random.default_rng(0)
X = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
W_TRUE = rng.normal(size=(8, 6)).astype(np.float32)
Y_REG = X @ W_TRUE
Y_CLS = jnp.argmax(X @ rng.normal(size=(8, 4)).astype(np.float32), axis=-1)


def _quadratic_params():
  return {"layer": {"kernel": jnp.zeros((8, 6))}, "out": {"bias": jnp.zeros(6)}}


def _quadratic(p):
  return 0.5 * jnp.mean(jnp.sum((X @ p["layer"]["kernel"] + p["out"]["bias"] - Y_REG) ** 2, -1))


def _logreg_params():
  return {"layer": {"kernel": jnp.zeros((8, 4))}, "out": {"bias": jnp.zeros(4)}}


def _logreg_logits(p):
  return X @ p["layer"]["kernel"] + p["out"]["bias"], jnp.ones(X.shape[0])


def _mlp_params():
  k1, k2 = jax.random.split(jax.random.PRNGKey(1))
  return {"l1": {"kernel": 0.3 * jax.random.normal(k1, (8, 16)), "bias": jnp.zeros(16)},
          "l2": {"kernel": 0.3 * jax.random.normal(k2, (16, 4)), "bias": jnp.zeros(4)}}


def _mlp_logits(p):
  h = jnp.tanh(X @ p["l1"]["kernel"] + p["l1"]["bias"])
  return h @ p["l2"]["kernel"] + p["l2"]["bias"], jnp.ones(X.shape[0])


def _ce(logits_fn, p):
  logits, _ = logits_fn(p)
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), Y_CLS[:, None], -1))


# name, hyperparameters, learning rate on the convex problem, on the MLP, steps.
CASES = [
    ("sophia_g", dict(update_interval=2, rho=0.05), 3e-2, 3e-2, 150),
    ("adahessian", {}, 0.15, 0.15, 150),
    ("spam", dict(reset_interval=40, warmup=10, clip_skip=5), 5e-2, 3e-2, 150),
    ("fira", dict(rank=2, update_proj_gap=20), 5e-2, 3e-2, 150),
    ("frugal", dict(variant="svd", update_gap=20), 1e-2, 1e-2, 150),
    ("frugal", dict(variant="random", update_gap=20), 1e-2, 1e-2, 150),
    ("frugal", dict(variant="block", update_gap=20, density=0.5), 1e-2, 1e-2, 150),
    ("cosmos", dict(rank=2, lr_ratio=0.2), 5e-2, 5e-2, 150),
    ("soap", {}, 5e-2, 3e-2, 150),
    ("zo_sgd", {}, 1e-2, 5e-2, 300),
    ("zo_sgd_momentum", {}, 2e-3, 1e-2, 300),
    ("zo_adam", {}, 2e-2, 1e-2, 300),
    ("zo_sign", {}, 1e-2, 2e-2, 300),
    ("forward_grad", {}, 1e-2, 5e-2, 300),
]


def _run(name, hp, lr, steps, loss_fn, params, logits_fn):
  opt = optim.make(name, lr, **hp)
  extra = dict(obj_fn=loss_fn, logits_fn=logits_fn, key=jax.random.PRNGKey(0))
  extra = extra if isinstance(opt, optax.GradientTransformationExtraArgs) else {}

  def body(_, carry):
    p, s = carry
    if name in optim.GRADIENT_FREE:
      g = jax.tree.map(jnp.zeros_like, p)
    else:
      g = jax.grad(loss_fn)(p)
    u, s = opt.update(g, s, p, **extra)
    return optax.apply_updates(p, u), s

  p, _ = jax.lax.fori_loop(0, steps, body, (params, opt.init(params)))
  return loss_fn(params), loss_fn(p)


@pytest.mark.parametrize("name,hp,lr_convex,lr_mlp,steps", CASES,
                         ids=[f"{c[0]}-{c[1].get('variant', '')}" for c in CASES])
def test_decreases_convex_and_mlp_losses_under_jit(name, hp, lr_convex, lr_mlp, steps):
  if name == "sophia_g":  # needs a softmax model: multinomial logistic regression is convex
    convex = (functools.partial(_ce, _logreg_logits), _logreg_params(), _logreg_logits)
  else:
    convex = (_quadratic, _quadratic_params(), None)
  mlp = (functools.partial(_ce, _mlp_logits), _mlp_params(), _mlp_logits)

  @jax.jit
  def both():
    return (_run(name, hp, lr_convex, steps, *convex), _run(name, hp, lr_mlp, steps, *mlp))

  (c0, c1), (m0, m1) = both()
  zo = name in optim.GRADIENT_FREE
  assert np.isfinite(float(c1)) and np.isfinite(float(m1))
  assert float(c1) < (0.8 if zo else 0.3) * float(c0), (float(c0), float(c1))
  assert float(m1) < (0.95 if zo else 0.7) * float(m0), (float(m0), float(m1))
