"""SPAM against a step-by-step NumPy transcription of the published rule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm.optim import spam as spam_lib


def _reference(grads, lr, b1, b2, eps, theta, dt, skip, warmup, wd, w0):
  m = np.zeros_like(w0)
  v = np.zeros_like(w0)
  w = w0.copy()
  since_reset = None
  out = []
  for t, g in enumerate(grads):
    c = t + 1
    g = g.copy()
    if c % dt == 0:
      m[:] = 0.0
      v[:] = 0.0
      since_reset = 0
    elif since_reset is not None:
      since_reset += 1
    if c >= skip and c % dt >= skip:
      spike = g * g > theta * v
      g[spike] = np.sign(g[spike]) * np.sqrt(theta * v[spike])
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    if since_reset is not None and since_reset < warmup:
      scale = 1 - 0.99 * (1 + np.cos(np.pi * since_reset / (warmup + 1))) / 2
    else:
      scale = 1.0
    step = lr * np.sqrt(1 - b2 ** c) / (1 - b1 ** c)
    stepped = -step * scale * m / (np.sqrt(v) + eps)
    upd = stepped - lr * wd * (w + stepped)  # the official class decays the stepped weights
    w = w + upd
    out.append(upd)
  return out


def test_spam_matches_published_rule_with_resets_clipping_and_warmup():
  rng = np.random.default_rng(0)
  n_steps, dt = 17, 6
  grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(n_steps)]
  grads[3][1, 2] = 500.0   # a spike after the clip-free start: clipped
  grads[6][0, 0] = -900.0  # a spike right after the reset at c = 6: not clipped (skip window)
  grads[14][2, 3] = 700.0  # clipped again
  hp = dict(b1=0.9, b2=0.999, eps=1e-6, theta=50.0, reset_interval=dt, clip_skip=2, warmup=3)
  opt = spam_lib.spam(1e-2, weight_decay=0.1, **hp)
  w = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  ref = _reference(grads, 1e-2, 0.9, 0.999, 1e-6, 50.0, dt, 2, 3, 0.1, np.asarray(w))
  state = opt.init(w)
  update = jax.jit(opt.update)
  for t, g in enumerate(grads):
    u, state = update(jnp.asarray(g), state, w)
    np.testing.assert_allclose(np.asarray(u), ref[t], rtol=2e-5, atol=1e-7, err_msg=f"step {t}")
    w = optax.apply_updates(w, u)


def test_spam_clipping_caps_spike_to_sqrt_theta_v():
  opt = spam_lib.scale_by_spam(b1=0.0, b2=0.5, eps=0.0, theta=4.0, reset_interval=100,
                               clip_skip=2, warmup=1)
  state = opt.init(jnp.zeros(2))
  _, state = opt.update(jnp.array([1.0, 1.0]), state)  # v = 0.5
  g = jnp.array([10.0, -1.0])  # 100 > 4 * 0.5 clipped to sqrt(2); 1 < 2 kept
  u, state = opt.update(g, state)
  g_clip = np.array([np.sqrt(2.0), -1.0])
  v = 0.5 * 0.5 + 0.5 * g_clip ** 2
  np.testing.assert_allclose(np.asarray(state.nu), v, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(u), g_clip / np.sqrt(v) * np.sqrt(1 - 0.25) / 1.0,
                             rtol=1e-6)


def test_warmup_scale_ramps_from_one_percent_after_each_reset():
  s = [float(spam_lib.warmup_scale(jnp.int32(t), 5, 3)) for t in range(11)]
  np.testing.assert_allclose(s[:4], 1.0)
  np.testing.assert_allclose(s[4], 0.01, atol=1e-6)
  np.testing.assert_allclose(s[5], 1 - 0.99 * (1 + np.cos(np.pi / 4)) / 2, rtol=1e-6)
  np.testing.assert_allclose(s[7:9], 1.0)
  np.testing.assert_allclose(s[9], 0.01, atol=1e-6)


def test_sparse_momentum_updates_only_the_subset_and_redraws_on_reset():
  opt = spam_lib.scale_by_spam(density=0.25, reset_interval=3, clip_skip=20, warmup=1, seed=3)
  w = jnp.zeros((8, 6))
  state = opt.init(w)
  k = int(0.25 * 48)
  assert state.mu.shape == (k,) and state.idx.shape == (k,)
  idx0 = np.asarray(state.idx)
  assert len(set(idx0.tolist())) == k
  g = jnp.asarray(np.random.default_rng(1).normal(size=(8, 6)), jnp.float32)
  update = jax.jit(opt.update)
  u, state = update(g, state)
  flat = np.asarray(u).reshape(-1)
  outside = np.setdiff1d(np.arange(48), idx0)
  np.testing.assert_array_equal(flat[outside], 0.0)
  gs = np.asarray(g).reshape(-1)[idx0]
  first = 0.1 * gs / (np.sqrt(0.001) * np.abs(gs) + 1e-6) * np.sqrt(0.001) / 0.1
  np.testing.assert_allclose(flat[idx0], first, rtol=1e-5)
  _, state = update(g, state)
  _, state = update(g, state)  # c = 3: reset, new subset
  assert not np.array_equal(np.asarray(state.idx), idx0)
