"""Zeroth-order updates against their formulas, with the direction regenerated from the key."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxllm.optim import registry
from jaxllm.optim import zeroth_order as zo

A = np.diag([1.0, 2.0, 3.0, 0.5]).astype(np.float32)


def _obj(p):
  w = p["w"]
  return 0.5 * w @ jnp.asarray(A) @ w + jnp.sum(jnp.sin(w))


def _direction(seed, params):
  _, sub = jax.random.split(jax.random.PRNGKey(seed))
  return np.asarray(zo.normal_like(sub, params)["w"], np.float64)


@pytest.mark.parametrize("method", ["zo_sgd", "zo_sign", "forward_grad", "one_sided"])
def test_first_update_matches_formula(method):
  params = {"w": jnp.array([0.3, -0.2, 0.5, 1.0])}
  lr, eps, wd = 0.1, 1e-3, 0.01
  name = "zo_sgd" if method == "one_sided" else method
  opt = zo.zeroth_order(lr, name, eps=eps, weight_decay=wd, one_sided=method == "one_sided",
                        seed=7)
  u, _ = jax.jit(lambda g, s, p: opt.update(g, s, p, obj_fn=_obj))(
      jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
  z = _direction(7, params)
  w = np.asarray(params["w"], np.float64)
  f = lambda x: 0.5 * x @ A @ x + np.sum(np.sin(x))
  if method == "forward_grad":
    pg = (A @ w + np.cos(w)) @ z
  elif method == "one_sided":
    pg = (f(w + eps * z) - f(w)) / eps
  else:
    pg = (f(w + eps * z) - f(w - eps * z)) / (2 * eps)
  if method == "zo_sign":
    pg = np.sign(pg)
  np.testing.assert_allclose(np.asarray(u["w"]), -lr * (pg * z + wd * w), rtol=2e-3, atol=1e-6)


def test_two_sided_estimate_is_unbiased_gradient_in_expectation():
  params = {"w": jnp.array([0.3, -0.2, 0.5, 1.0])}
  keys = jax.random.split(jax.random.PRNGKey(0), 20000)

  def est(k):
    z = zo.normal_like(k, params)
    pg = zo.projected_gradient(_obj, params, z, "two_sided", 1e-3)
    return pg * z["w"]

  mean = jnp.mean(jax.jit(jax.vmap(est))(keys), axis=0)
  grad = jax.grad(_obj)(params)["w"]
  np.testing.assert_allclose(np.asarray(mean), np.asarray(grad), atol=0.08)


def test_momentum_and_adam_variants_feed_the_estimate_to_their_base():
  params = {"w": jnp.array([0.3, -0.2, 0.5, 1.0])}
  zeros = jax.tree.map(jnp.zeros_like, params)
  for name, base in [("zo_sgd_momentum", optax.sgd(0.1, momentum=0.9)),
                     ("zo_adam", optax.adam(0.1))]:
    opt = registry.make(name, 0.1, seed=3)
    est = zo.zo_gradient_estimate(seed=3)
    s_opt, s_est, s_base = opt.init(params), est.init(params), base.init(params)
    p = params
    for _ in range(3):
      u, s_opt = opt.update(zeros, s_opt, p, obj_fn=_obj)
      g_hat, s_est = est.update(zeros, s_est, p, obj_fn=_obj)
      u_ref, s_base = base.update(g_hat, s_base, p)
      np.testing.assert_allclose(np.asarray(u["w"]), np.asarray(u_ref["w"]), rtol=1e-6)
      p = optax.apply_updates(p, u)


def test_gradient_free_names_and_missing_obj_fn():
  assert registry.GRADIENT_FREE == frozenset(zo.METHODS)
  opt = registry.make("zo_sgd", 0.1)
  params = {"w": jnp.zeros(2)}
  with pytest.raises(ValueError, match="obj_fn"):
    opt.update(params, opt.init(params), params)
