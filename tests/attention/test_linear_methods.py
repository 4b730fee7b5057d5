"""The registered linear-attention methods and their O(1)-state decoding."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.attention import attention
from jaxllm.attention import linear
from jaxllm.attention.methods import dense

TOL = 1e-5  # float32: the three forms compute the same sum
FORMS = ("parallel", "chunked", "recurrent")
METHODS = [
    ("linear", {}),
    ("linear", {"feature_map": "relu", "normalize": False}),
    ("linear", {"feature_map": "identity", "normalize": False, "decay": 0.8}),
    ("lightning", {"layer_index": 0, "num_layers": 3}),
    ("retention", {}),
]


def _attend(q, k, v, **kw):
  return jax.jit(functools.partial(attention, **kw))(q, k, v)


def rel_rmse(x, y):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return float(np.sqrt(np.mean((x - y) ** 2)) / (np.sqrt(np.mean(y ** 2)) + 1e-30))


def _qkv(seed, b, t, s, h, hkv, d, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(b, t, h, d)), dtype)
  k, v = (jnp.asarray(rng.normal(size=(b, s, hkv, d)), dtype) for _ in range(2))
  return q, k, v


@pytest.mark.parametrize("method,opts,dtype", [(m, o, jnp.float32) for m, o in METHODS] + [
    (m, o, jnp.bfloat16) for m, o in METHODS[::2]])
def test_methods_forms_agree_gqa(method, opts, dtype):
  q, k, v = _qkv(0, 2, 27, 27, 4, 2, 8, dtype)
  outs = {f: _attend(q, k, v, method=method, impl="xla", form=f, chunk_size=8, **opts)
          for f in FORMS}
  assert outs["chunked"].shape == q.shape and outs["chunked"].dtype == dtype
  tol = TOL if dtype == jnp.float32 else 2e-2
  for f in ("chunked", "recurrent"):
    assert rel_rmse(outs[f], outs["parallel"]) < tol


def test_linear_matches_formula():
  """Normalised elu+1 linear attention, checked against the textbook sum."""
  q, k, v = _qkv(1, 1, 11, 11, 2, 1, 4)
  o = attention(q, k, v, method="linear", impl="xla", chunk_size=4)
  phi = lambda x: np.where(x > 0, x + 1, np.exp(x))
  qn, kn, vn = (np.asarray(x, np.float64) for x in (q, k, v))
  qn = phi(qn) / math.sqrt(4)
  kn = phi(kn)
  want = np.zeros_like(qn)
  for h in range(2):
    for t in range(11):
      w = kn[0, :t + 1, 0] @ qn[0, t, h]
      want[0, t, h] = w @ vn[0, :t + 1, 0] / (w.sum() + 1e-6)
  np.testing.assert_allclose(o, want, rtol=1e-5, atol=1e-6)


def test_lightning_and_retention_use_their_schedules():
  q, k, v = _qkv(2, 1, 13, 13, 4, 4, 8)
  for method, opts, log_decay in (
      ("lightning", {"layer_index": 1, "num_layers": 4}, linear.lightning_log_decay(4, 1, 4)),
      ("retention", {}, linear.retnet_log_decay(4))):
    got = attention(q, k, v, method=method, impl="xla", form="parallel", **opts)
    override = attention(q, k, v, method=method, impl="xla", form="parallel",
                         decay=np.exp(np.asarray(log_decay)))
    want, _ = linear.parallel(q / math.sqrt(8), k, v, log_decay)
    assert rel_rmse(got, want) < 1e-5
    assert rel_rmse(override, want) < 1e-5


@pytest.mark.parametrize("form", FORMS)
def test_momentum(form):
  q, k, v = _qkv(3, 2, 17, 17, 4, 2, 8)
  eta = 0.7
  got = _attend(q, k, v, method="momentum", impl="xla", eta=eta, form=form, chunk_size=4)
  want = np.asarray(dense.reference(q, k, v), np.float64)
  vn = np.repeat(np.asarray(v, np.float64), 2, axis=2)
  for t in range(17):
    for i in range(t):
      want[:, t] += eta ** (t - i) * vn[:, i]
  assert rel_rmse(got, want) < 1e-5


def test_queries_are_the_last_positions():
  """T < S: the first S - T keys only feed the state, as in the dense reference."""
  q, k, v = _qkv(4, 1, 19, 19, 2, 2, 8)
  full = attention(q, k, v, method="lightning", impl="xla", num_layers=2)
  tail = attention(q[:, 12:], k, v, method="lightning", impl="xla", num_layers=2)
  assert rel_rmse(tail, full[:, 12:]) < 1e-5


def test_noncausal_linear():
  q, k, v = _qkv(5, 1, 6, 9, 2, 2, 4)
  o = attention(q, k, v, method="linear", impl="xla", causal=False, normalize=False,
                feature_map="identity", scale=1.0)
  want = jnp.einsum("bthd,bshd,bshe->bthe", q, k, v)
  assert rel_rmse(o, want) < 1e-5


@pytest.mark.parametrize("method,opts", METHODS)
def test_decode_matches_parallel(method, opts):
  """Prefill a prompt, then step token by token: every output equals the parallel form's."""
  q, k, v = _qkv(6, 2, 21, 21, 4, 2, 8)
  want = _attend(q, k, v, method=method, impl="xla", form="parallel", **opts)
  o_pre, state = linear.prefill(method, q[:, :9], k[:, :9], v[:, :9], chunk_size=4, impl="xla",
                                **opts)
  outs = [o_pre]
  step = jax.jit(linear.step)
  for t in range(9, 21):
    o_t, state = step(state, q[:, t], k[:, t], v[:, t])
    outs.append(o_t[:, None])
  assert rel_rmse(jnp.concatenate(outs, axis=1), want) < 1e-5
  fresh = linear.init_state(method, 2, 4, 8, **opts)
  assert state.s.shape == fresh.s.shape  # O(1) in the context length


def test_option_errors():
  q, k, v = _qkv(7, 1, 4, 4, 2, 2, 8)
  cases = [
      ("linear", {"feature_map": "softplus"}, "feature_map"),
      ("linear", {"form": "quadratic"}, "form"),
      ("linear", {"chunk_size": -1}, "chunk_size"),
      ("linear", {"decay": [0.5, 0.5, 0.5]}, "decay"),
      ("linear", {"decay": 1.5}, "decay"),
      ("linear", {"causal": False, "decay": 0.5}, "causal"),
      ("lightning", {"causal": False}, "causal"),
      ("lightning", {"layer_index": 2, "num_layers": 2}, "layer_index"),
      ("momentum", {}, "eta"),
      ("momentum", {"eta": 1.0}, "eta"),
      ("retention", {"impl": "sparse"}, "impl"),
  ]
  for method, opts, field in cases:
    opts = dict(opts)
    impl = opts.pop("impl", "xla")
    with pytest.raises(ValueError, match=field):
      attention(q, k, v, method=method, impl=impl, **opts)


def test_learned_decay_gradient_agrees_across_forms():
  """A traced ``decay`` array (e.g. a learned decay) gets the same gradient from every form."""
  q, k, v = _qkv(8, 1, 15, 15, 2, 2, 8)
  lam = jnp.asarray([0.95, 0.4])

  def grad(form):
    loss = lambda lam: jnp.sum(attention(q, k, v, method="lightning", impl="xla", form=form,
                                         decay=lam, chunk_size=4) ** 2)
    return jax.jit(jax.grad(loss))(lam)

  want = grad("parallel")
  assert float(jnp.abs(want).min()) > 0
  for form in ("chunked", "recurrent"):
    assert rel_rmse(grad(form), want) < TOL
