"""Parallel vs chunked vs recurrent decayed linear attention: outputs, final state, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.attention.linear import decay, forms

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 5e-3}  # float32: the forms compute the same sum


def rel_rmse(x, y):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return float(np.sqrt(np.mean((x - y) ** 2)) / (np.sqrt(np.mean(y ** 2)) + 1e-30))


def _inputs(seed, b, t, h, d, e, strength, dtype):
  rng = np.random.default_rng(seed)
  q, k = (jnp.asarray(rng.normal(size=(b, t, h, d)) / np.sqrt(d), dtype) for _ in range(2))
  v = jnp.asarray(rng.normal(size=(b, t, h, e)), dtype)
  lo, hi = {"weak": (0.97, 1.0), "strong": (0.05, 0.6)}[strength]
  lam = rng.uniform(lo, hi, size=h)
  lam[0] = hi
  s0 = jnp.asarray(rng.normal(size=(b, h, d, e)), jnp.float32)
  return q, k, v, jnp.log(jnp.asarray(lam, jnp.float32)), s0


def _value_and_grads(form, q, k, v, a, s0, **kw):
  fn = forms.FORMS[form]
  rng = np.random.default_rng(123)
  do = jnp.asarray(rng.normal(size=q.shape[:3] + (v.shape[-1],)), jnp.float32)
  dst = jnp.asarray(rng.normal(size=s0.shape), jnp.float32)

  def loss(q, k, v, a, s0):
    o, s = fn(q, k, v, a, s0, **kw)
    return jnp.sum(o * do) + jnp.sum(s * dst), (o, s)

  grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))
  grads, (o, s) = grad_fn(q, k, v, a, s0)
  return o, s, grads


CASES = [  # (seed, B, T, H, D, E, chunk, decay strength, dtype)
    (0, 2, 37, 3, 8, 5, 8, "weak", jnp.float32),
    (1, 1, 50, 2, 16, 16, 16, "strong", jnp.float32),
    (2, 2, 23, 2, 4, 6, 64, "weak", jnp.float32),
    (3, 1, 31, 4, 8, 8, 5, "strong", jnp.float32),
    (4, 2, 29, 2, 8, 8, 7, "weak", jnp.bfloat16),
    (5, 1, 64, 2, 8, 4, 16, "strong", jnp.bfloat16),
]


@pytest.mark.parametrize("seed,b,t,h,d,e,chunk,strength,dtype", CASES)
def test_forms_agree(seed, b, t, h, d, e, chunk, strength, dtype):
  q, k, v, a, s0 = _inputs(seed, b, t, h, d, e, strength, dtype)
  o_p, s_p, g_p = _value_and_grads("parallel", q, k, v, a, s0)
  o_c, s_c, g_c = _value_and_grads("chunked", q, k, v, a, s0, chunk_size=chunk)
  o_r, s_r, g_r = _value_and_grads("recurrent", q, k, v, a, s0)
  assert o_p.shape == (b, t, h, e) and s_p.shape == (b, h, d, e)
  tol = TOL[dtype]
  for o, s, g in ((o_c, s_c, g_c), (o_r, s_r, g_r)):
    assert rel_rmse(o, o_p) < tol
    assert rel_rmse(s, s_p) < tol
    for name, x, y in zip("q k v decay state".split(), g, g_p):
      assert rel_rmse(x, y) < tol, name


def test_forms_match_explicit_sum():
  """The forms compute o_t = sum_{s<=t} lambda^(t-s) (q_t.k_s) v_s + lambda^(t+1) S_0^T q_t."""
  q, k, v, a, s0 = _inputs(7, 1, 9, 2, 3, 2, "strong", jnp.float32)
  qn, kn, vn, s0n = (np.asarray(x, np.float64) for x in (q, k, v, s0))
  lam = np.exp(np.asarray(a, np.float64))
  want = np.zeros((1, 9, 2, 2))
  for h in range(2):
    for t in range(9):
      want[0, t, h] = lam[h] ** (t + 1) * qn[0, t, h] @ s0n[0, h]
      for s in range(t + 1):
        want[0, t, h] += lam[h] ** (t - s) * (qn[0, t, h] @ kn[0, s, h]) * vn[0, s, h]
  o, _ = forms.chunked(q, k, v, a, s0, chunk_size=4)
  np.testing.assert_allclose(o, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["parallel", "chunked", "recurrent"])
def test_normalised_form(form):
  q, k, v, a, _ = _inputs(8, 2, 19, 2, 4, 3, "weak", jnp.float32)
  q, k = jax.nn.elu(q) + 1, jax.nn.elu(k) + 1
  o, s = forms.attend(q, k, v, a, form=form, chunk_size=4, normalize=True)
  lam = jnp.exp(a)
  t = jnp.arange(19)
  dist = t[:, None] - t[None, :]
  w = jnp.where(dist >= 0, lam[:, None, None] ** jnp.maximum(dist, 0), 0.0)
  scores = jnp.einsum("bthd,bshd->bhts", q, k) * w
  want = jnp.einsum("bhts,bshe->bthe", scores, v) / jnp.sum(scores, -1).transpose(0, 2, 1)[..., None]
  assert rel_rmse(o, want) < 1e-5
  assert s.shape == (2, 2, 4, 4)


def test_lightning_schedule():
  got = decay.lightning_log_decay(4, layer_index=1, num_layers=4)
  np.testing.assert_allclose(got, [-(8 / 4) * h * (1 - 1 / 4) for h in range(4)], rtol=1e-6)
  assert float(decay.lightning_log_decay(8, 0, 2)[0]) == 0.0


def test_retnet_gamma():
  np.testing.assert_allclose(np.exp(decay.retnet_log_decay(3)), [1 - 2.0 ** (-5 - h) for h in range(3)],
                             rtol=1e-6)


def test_form_errors():
  q = jnp.zeros((1, 4, 2, 8))
  with pytest.raises(ValueError, match="form"):
    forms.attend(q, q, q, jnp.zeros(2), form="quadratic")
  with pytest.raises(ValueError, match="log_decay"):
    forms.parallel(q, q, q, jnp.zeros(3))
  with pytest.raises(ValueError, match="chunk_size"):
    forms.chunked(q, q, q, jnp.zeros(2), chunk_size=0)
  with pytest.raises(ValueError, match="layer_index"):
    decay.lightning_log_decay(2, layer_index=3, num_layers=2)
