"""Fira and FRUGAL against step-by-step NumPy transcriptions (Flax (in, out) layout)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.optim import fira as fira_lib
from jaxllm.optim import frugal as frugal_lib
from jaxllm.optim import lowrank


def _subspace(p):
  p = np.asarray(p, np.float64)
  return p @ p.T


@pytest.mark.parametrize("shape", [(6, 9), (9, 6)])
def test_projector_is_top_singular_subspace_of_shorter_side(shape):
  g = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  p = lowrank.svd_projector(jnp.asarray(g), 2)
  u, _, vt = np.linalg.svd(g)
  short = u[:, :2] if shape[1] >= shape[0] else vt[:2].T
  assert p.shape == (min(shape), 2)
  np.testing.assert_allclose(_subspace(p), short @ short.T, atol=1e-5)
  r = lowrank.project(jnp.asarray(g), p)
  assert r.shape == lowrank.lowrank_shape(shape, 2)


def _fira_reference(g, p, m, v, prev, t, alpha, b1, b2, eps, gamma):
  """One Fira step given the projector in use (taken from the optimizer, sign-ambiguous)."""
  left = g.shape[1] >= g.shape[0]
  r = p.T @ g if left else g @ p
  m = b1 * m + (1 - b1) * r
  v = b2 * v + (1 - b2) * r * r
  psi = m / (np.sqrt(v) + eps)
  ax = 0 if left else 1
  phi = np.linalg.norm(psi, axis=ax, keepdims=True) / (np.linalg.norm(r, axis=ax, keepdims=True)
                                                       + 1e-8)
  back = (lambda x: p @ x) if left else (lambda x: x @ p.T)
  s = (g - alpha * back(r)) * phi
  n = np.linalg.norm(s)
  limited = prev is not None and n > gamma * prev
  if limited:
    s = s * gamma * prev / n
  bc = np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
  return bc * (alpha * back(psi) + s), m, v, np.linalg.norm(s), limited


@pytest.mark.parametrize("shape", [(8, 12), (12, 8)])
def test_fira_matches_rule_with_projector_refresh_and_limiter(shape):
  rng = np.random.default_rng(1)
  rank, gap, alpha, b1, b2, eps, gamma = 3, 3, 0.25, 0.9, 0.999, 1e-6, 1.01
  opt = fira_lib.scale_by_fira(rank, gap, alpha, b1, b2, eps, gamma)
  state = opt.init(jnp.zeros(shape))
  update = jax.jit(opt.update)
  m = np.zeros(lowrank.lowrank_shape(shape, rank))
  v = np.zeros_like(m)
  prev = None
  limited = 0
  for t in range(1, 8):
    g = rng.normal(size=shape) * (5.0 if t == 5 else 1.0)  # a jump the limiter must catch
    old_p = np.asarray(state.proj)
    u, state = update(jnp.asarray(g, jnp.float32), state)
    p = np.asarray(state.proj, np.float64)
    if (t - 1) % gap == 0:
      u_, _, vt = np.linalg.svd(g)
      short = u_[:, :rank] if shape[1] >= shape[0] else vt[:rank].T
      np.testing.assert_allclose(p @ p.T, short @ short.T, atol=1e-4)
    else:
      np.testing.assert_array_equal(np.asarray(state.proj), old_p)
    ref, m, v, n, was_limited = _fira_reference(g, p, m, v, prev, t, alpha, b1, b2, eps, gamma)
    limited += was_limited
    prev = n
    np.testing.assert_allclose(np.asarray(u), ref, rtol=2e-4, atol=1e-5, err_msg=f"step {t}")
    np.testing.assert_allclose(float(state.residual_norm), n, rtol=1e-4)
  assert limited >= 1


def test_fira_full_rank_has_no_residual():
  opt = fira_lib.scale_by_fira(rank=16, alpha=1.0)
  g = jnp.asarray(np.random.default_rng(2).normal(size=(4, 6)), jnp.float32)
  state = opt.init(g)
  _, state = opt.update(g, state)
  assert float(state.residual_norm) < 1e-4


@pytest.mark.parametrize("residual", ["signsgd", "sgd"])
def test_frugal_svd_matches_rule_with_reset_on_refresh(residual):
  rng = np.random.default_rng(3)
  shape, density, gap, b1, b2, eps = (8, 10), 0.25, 3, 0.9, 0.999, 1e-8
  opt = frugal_lib.scale_by_frugal("svd", density, gap, residual, 0.5, b1, b2, eps)
  state = opt.init(jnp.zeros(shape))
  update = jax.jit(opt.update)
  r = frugal_lib.frugal_rank(shape, density)
  assert r == 2
  m = v = None
  for t in range(7):
    g = rng.normal(size=shape)
    u, state = update(jnp.asarray(g, jnp.float32), state)
    p = np.asarray(state.proj, np.float64)
    k = t % gap + 1
    if k == 1:
      m = np.zeros((r, shape[1]))
      v = np.zeros_like(m)
      u_, _, _ = np.linalg.svd(g)
      np.testing.assert_allclose(p @ p.T, u_[:, :r] @ u_[:, :r].T, atol=1e-4)
    low = p.T @ g
    m = b1 * m + (1 - b1) * low
    v = b2 * v + (1 - b2) * low * low
    adam = (m / (1 - b1 ** k)) / (np.sqrt(v / (1 - b2 ** k)) + eps)
    rest = g - p @ low
    free = np.sign(rest) if residual == "signsgd" else rest
    np.testing.assert_allclose(np.asarray(u), p @ adam + 0.5 * free, rtol=2e-4, atol=2e-5)


def test_frugal_block_gives_adam_to_a_quarter_of_the_tensors_and_sign_to_the_rest():
  rng = np.random.default_rng(4)
  params = {f"l{i}": {"kernel": jnp.zeros((3, 5))} for i in range(8)}
  opt = frugal_lib.scale_by_frugal("block", 0.25, update_gap=2)
  state = opt.init(params)
  update = jax.jit(opt.update)
  grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
  u, state = update(grads, state)
  flags = {k: bool(v["kernel"]) for k, v in state.proj.items()}
  assert sum(flags.values()) == 2
  for name, on in flags.items():
    g = np.asarray(grads[name]["kernel"])
    first_adam = g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(np.asarray(u[name]["kernel"]), first_adam if on else np.sign(g),
                               rtol=1e-5)
    assert on or not np.any(np.asarray(state.mu[name]["kernel"]))
  seen = set(k for k, on in flags.items() if on)
  for _ in range(6):
    _, state = update(grads, state)
    seen |= {k for k, v in state.proj.items() if bool(v["kernel"])}
  assert len(seen) > 2  # the active blocks are re-drawn every update_gap steps
