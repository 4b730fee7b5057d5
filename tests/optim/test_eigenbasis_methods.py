"""Newton-Schulz and SOAP against step-by-step NumPy transcriptions (Flax (in, out) layout);
COSMOS is checked against the official code in test_official_replay.py."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.optim import cosmos as cosmos_lib
from jaxllm.optim import soap as soap_lib


def _ns5_np(x, steps=5, eps=1e-7):
  a, b, c = 3.4445, -4.7750, 2.0315
  tall = x.shape[0] > x.shape[1]
  y = x.T if tall else x
  y = y / (np.linalg.norm(y) + eps)
  for _ in range(steps):
    s = y @ y.T
    t = s @ y
    y = a * y + b * t + c * s @ t
  return y.T if tall else y


def test_newton_schulz_flattens_singular_values():
  x = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
  y = np.asarray(cosmos_lib.newton_schulz5(jnp.asarray(x)))
  np.testing.assert_allclose(y, _ns5_np(x.astype(np.float64)), rtol=1e-3, atol=1e-4)
  sv = np.linalg.svd(y, compute_uv=False)
  assert sv.min() > 0.5 and sv.max() < 1.3


def _soap_reference(grads, b1, b2, sb, eps, freq):
  """NumPy SOAP for one 2-D leaf; returns the update of every call."""
  m = v = gl = gr = ql = qr = None
  outs = []
  for n, g in enumerate(grads):
    if n == 0:
      m = np.zeros_like(g)
      v = np.zeros_like(g)
      gl = (1 - sb) * g @ g.T
      gr = (1 - sb) * g.T @ g
      ql = np.linalg.eigh(gl)[1][:, ::-1]
      qr = np.linalg.eigh(gr)[1][:, ::-1]
      outs.append(np.zeros_like(g))
      continue
    gp = ql.T @ g @ qr
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * gp ** 2
    norm = ql @ ((ql.T @ m @ qr) / (np.sqrt(v) + eps)) @ qr.T
    outs.append(np.sqrt(1 - b2 ** n) / (1 - b1 ** n) * norm)
    gl = sb * gl + (1 - sb) * g @ g.T
    gr = sb * gr + (1 - sb) * g.T @ g
    if n % freq == 0:
      for side in (0, 1):
        gg, q = (gl, ql) if side == 0 else (gr, qr)
        order = np.argsort(-np.diag(q.T @ gg @ q))
        q = q[:, order]
        v = np.take(v, order, axis=side)
        q = np.linalg.qr(gg @ q)[0]
        if side == 0:
          ql = q
        else:
          qr = q
  return outs


def test_soap_matches_rule_with_first_step_setup_and_qr_refresh():
  rng = np.random.default_rng(2)
  b1, b2, eps, freq = 0.95, 0.9, 1e-8, 3
  grads = [rng.normal(size=(4, 5)) for _ in range(8)]
  ref = _soap_reference(grads, b1, b2, b2, eps, freq)
  opt = soap_lib.scale_by_soap(b1, b2, None, eps, freq)
  state = opt.init(jnp.zeros((4, 5)))
  update = jax.jit(opt.update)
  for n, g in enumerate(grads):
    u, state = update(jnp.asarray(g, jnp.float32), state)
    np.testing.assert_allclose(np.asarray(u), ref[n], rtol=2e-3, atol=2e-4, err_msg=f"call {n}")


def test_soap_leaves_vectors_and_large_axes_unrotated():
  params = {"b": jnp.zeros(5), "w": jnp.zeros((3, 40))}
  opt = soap_lib.scale_by_soap(b1=0.9, b2=0.99, max_precond_dim=10)
  state = opt.init(params)
  shapes = lambda qs: [None if q is None else q.shape for q in qs]
  assert shapes(state.q["w"]) == [(3, 3), None]
  assert shapes(state.q["b"]) == [None]
  g = {"b": jnp.arange(1.0, 6.0), "w": jnp.ones((3, 40))}
  update = jax.jit(opt.update)
  u, state = update(g, state)
  np.testing.assert_array_equal(np.asarray(u["b"]), 0.0)  # the first call only sets up
  u, state = update(g, state)
  # Unrotated vector: plain Adam's first step, m_hat / sqrt(v_hat) = sign(g).
  np.testing.assert_allclose(np.asarray(u["b"]), 1.0, rtol=1e-5)
