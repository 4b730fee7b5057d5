"""Sophia-G and AdaHessian against hand-computed updates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm.optim import adahessian as ada_lib
from jaxllm.optim import sophia_g as sg_lib


def _softmax_problem():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4)).astype(np.float32)  # [batch, time, features]
  mask = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
  w0 = (0.5 * rng.normal(size=(4, 5))).astype(np.float32)

  def logits_fn(p):
    return jnp.einsum("btf,fv->btv", x, p["w"]), jnp.asarray(mask)

  return x, mask, {"w": jnp.asarray(w0)}, logits_fn


def test_sophia_g_matches_official_rule_and_gnb_estimator():
  x, mask, params, logits_fn = _softmax_problem()
  b1, b2, rho, k, lr, wd, bs = 0.9, 0.8, 0.05, 2, 0.1, 0.2, 5.0
  opt = sg_lib.sophia_g(lr, b1=b1, b2=b2, rho=rho, weight_decay=wd, update_interval=k,
                        hess_clip=None, batch_tokens=bs, seed=4)
  state = opt.init(params)
  update = jax.jit(lambda g, s, p: opt.update(g, s, p, logits_fn=logits_fn))
  rng = np.random.default_rng(1)
  m = np.zeros((4, 5))
  h = np.zeros((4, 5))
  key = jax.random.PRNGKey(4)
  w = np.asarray(params["w"], np.float64)
  for t in range(5):
    g = rng.normal(size=(4, 5)).astype(np.float32)
    u, state = update({"w": jnp.asarray(g)}, state, params)
    m = b1 * m + (1 - b1) * g
    ratio = np.minimum(np.abs(m) / (rho * bs * h + 1e-15), 1.0)
    expected = -lr * (np.sign(m) * ratio + wd * w)
    np.testing.assert_allclose(np.asarray(u["w"]), expected, rtol=1e-5, atol=1e-7)
    key, sub = jax.random.split(key)
    if t % k == k - 1:
      logits = np.einsum("btf,fv->btv", x, w)
      y = np.asarray(jax.random.categorical(sub, jnp.asarray(logits, jnp.float32)))
      p = np.exp(logits - logits.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      p[np.arange(2)[:, None], np.arange(3)[None, :], y] -= 1.0
      g_hat = np.einsum("btf,btv->fv", x, p * mask[..., None]) / mask.sum()
      h = b2 * h + (1 - b2) * g_hat ** 2
    np.testing.assert_allclose(np.asarray(state[0].h["w"]), h, rtol=1e-4, atol=1e-9)
    params = optax.apply_updates(params, u)
    w = np.asarray(params["w"], np.float64)


def test_sophia_g_clips_the_hessian_gradient_and_counts_tokens():
  _, mask, params, logits_fn = _softmax_problem()
  opt = sg_lib.scale_by_sophia_g(b2=0.0, update_interval=1, hess_clip=1e-3)
  state = opt.init(params)
  _, state = opt.update(jax.tree.map(jnp.zeros_like, params), state, params, logits_fn=logits_fn)
  np.testing.assert_allclose(float(jnp.sqrt(jnp.sum(state.h["w"]))), 1e-3, rtol=1e-4)
  assert float(state.tokens) == mask.sum()


def test_sophia_g_needs_logits_fn():
  params = {"w": jnp.ones((2, 2))}
  opt = sg_lib.sophia_g(1e-3)
  try:
    opt.update(params, opt.init(params), params)
  except ValueError as e:
    assert "logits_fn" in str(e)
  else:
    raise AssertionError("sophia_g without logits_fn did not raise")


def test_adahessian_matches_rule_on_diagonal_quadratic():
  a = np.array([[2.0, 0.5, 3.0], [1.0, 4.0, 0.25]], np.float32)
  obj = lambda p: 0.5 * jnp.sum(jnp.asarray(a) * p["w"] ** 2)  # H = diag(a): |H v| = a
  b1, b2, eps, lr = 0.9, 0.99, 1e-4, 0.15
  opt = ada_lib.adahessian(lr, b1=b1, b2=b2, eps=eps)
  params = {"w": jnp.ones((2, 3))}
  state = opt.init(params)
  update = jax.jit(lambda g, s, p: opt.update(g, s, p, obj_fn=obj))
  grad = jax.jit(jax.grad(obj))
  m = np.zeros_like(a)
  s = np.zeros_like(a)
  for t in range(1, 5):
    g = np.asarray(grad(params)["w"])
    u, state = update({"w": jnp.asarray(g)}, state, params)
    m = b1 * m + (1 - b1) * g
    s = b2 * s + (1 - b2) * a ** 2
    expected = -lr * (m / (1 - b1 ** t)) / (np.sqrt(s / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(np.asarray(u["w"]), expected, rtol=1e-5)
    params = optax.apply_updates(params, u)


def test_adahessian_hutchinson_is_unbiased_for_a_full_hessian_and_averages_conv_kernels():
  rng = np.random.default_rng(0)
  b = rng.normal(size=(4, 4)).astype(np.float32)
  h = b @ b.T
  obj = lambda p: 0.5 * p["w"] @ jnp.asarray(h) @ p["w"]
  params = {"w": jnp.zeros(4)}
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)

  def v_hv(k):
    v = ada_lib.rademacher_like(k, params)
    return v["w"] * (jnp.asarray(h) @ v["w"])

  est = jnp.mean(jax.jit(jax.vmap(v_hv))(keys), axis=0)
  np.testing.assert_allclose(np.asarray(est), np.diag(h), atol=0.15 * np.abs(h).max())
  conv = {"w": jnp.ones((2, 2, 3, 1))}
  scale = jnp.arange(12.0).reshape(2, 2, 3, 1)
  d = ada_lib.hessian_diag(lambda p: 0.5 * jnp.sum(scale * p["w"] ** 2), conv,
                           jax.random.PRNGKey(1))
  np.testing.assert_allclose(np.asarray(d["w"][0, 0, :, 0]),
                             np.asarray(scale).mean(axis=(0, 1))[:, 0], rtol=1e-6)
