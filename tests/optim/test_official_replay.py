"""Official optimizer trajectories (tests/data/optim, written by scripts/optim_peer_check.py from
the official PyTorch code) replayed through ``optim.make`` at the defaults, without torch.

Each fixture holds the seed of its parameters and 1e-4-scale gradients, the random draws injected
into the official run and the official parameters after steps 1, 2, 3, 5, 10 and 20. The error at
a step is ||params - official|| / ||official - initial|| over the whole tree; it must stay
<= 1e-4, or within NOISE_FACTOR times the official code's own float32-vs-float64 difference where
the fixture records one (COSMOS's sign-like first steps: 1.8e-4 at step 1, 3e-5 by step 20). Two
float32 runs differ by more than one of them differs from float64, and by how much depends on
the CPU: COSMOS's replay was within 2x on one machine and at 2.5-2.7x on another (4.7e-4 at step
1), where the same code run in float64 met the official float32 run at exactly the recorded
difference (1.76e-4 at step 1, 3.25e-5 at step 20), so the excess is float32 rounding (of the
first eigenbasis), not the algorithm. The default tier
replays every optimizer at its defaults; the variants (low rank with weight decay, SPAM weight
decay, FRUGAL's svd variant and descending block order with refreshes) are ``slow``.
"""

import glob
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import optim
from jaxllm.optim import adahessian, frugal, soap, sophia_g

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = sorted(glob.glob(os.path.join(ROOT, "tests", "data", "optim", "*.npz")))
DEFAULTS = ("galore", "fira", "cosmos", "muon", "soap", "spam", "lion", "sophia_g", "adahessian",
            "frugal")
TOLERANCE = 1e-4
NOISE_FACTOR = 4.0  # see the module docstring

_spec = importlib.util.spec_from_file_location(
    "optim_peer_check", os.path.join(ROOT, "scripts", "optim_peer_check.py"))
peer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer)


def _nest(flat):
  tree = {}
  for path, x in flat.items():
    node = tree
    *mods, leaf = path.split("/")
    for m in mods:
      node = node.setdefault(m, {})
    node[leaf] = jnp.asarray(x)
  return tree


def _flat(tree):
  return {"/".join(optim.labels.path_names(p)): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _flat_jnp(tree):
  return {"/".join(optim.labels.path_names(p)): x
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _norm(flat):
  return np.sqrt(sum(float(np.sum(np.square(x.astype(np.float64)))) for x in flat.values()))


def replay(path, monkeypatch):
  data = np.load(path)
  meta = json.loads(str(data["meta"]))
  shapes = {k: tuple(s) for k, s in meta["shapes"].items()}
  seed = meta["seed"]
  if "draw/perms" in data:
    perm = data["draw/perms"][0]
    monkeypatch.setattr(frugal, "_block_flags", lambda key, n, density: jnp.isin(
        jnp.arange(n), jnp.asarray(perm[:frugal.n_active_blocks(n, density)])))
  if meta["optimizer"] == "soap":
    # SOAP's set-up eigenbasis is traced once per factor, in leaf then axis order; where the
    # factor is rank-deficient its null-space basis is arbitrary and the official one is used.
    real, calls = soap._eig_desc, []
    for k in sorted(shapes):
      for axis, degenerate in enumerate(peer.degenerate_axes(shapes[k])):
        calls.append(jnp.asarray(data[f"draw/soap_q/{k}/{axis}"]) if degenerate else None)
    queue = iter(calls)

    def eig_desc(gg):
      q = next(queue)
      return real(gg) if q is None else q
    monkeypatch.setattr(soap, "_eig_desc", eig_desc)
  opt = optim.make(meta["optimizer"], meta["learning_rate"], **meta["hparams"])
  p0 = peer.initial_params(seed, shapes)
  params = _nest(p0)
  state = opt.init(params)
  sophia = meta["optimizer"] == "sophia_g"
  if sophia:
    # The sampled-label gradient of each step is the injected draw, counted as ``bs`` tokens.
    monkeypatch.setattr(sophia_g, "gnb_gradient", lambda p, logits_fn, key: logits_fn(p))
    bs = jnp.float32(meta["extra"]["bs"])
    update = jax.jit(lambda g, s, p, g_hat: opt.update(
        g, s, p, logits_fn=lambda _: (g_hat, bs)))
  elif meta["optimizer"] == "adahessian":
    terms = {k: tuple(jnp.asarray(x) for x in ab)
             for k, ab in peer.adahessian_terms(seed, shapes).items()}
    obj_fn = lambda p: peer.adahessian_loss(_flat_jnp(p), terms)
    drawn = {}
    # The step's Rademacher vectors are the injected ones, handed over at trace time.
    monkeypatch.setattr(adahessian, "rademacher_like", lambda key, p: drawn["v"])

    def update(g, s, p, v):
      drawn["v"] = v
      return opt.update(g, s, p, obj_fn=obj_fn)
    update = jax.jit(update)
  else:
    update = jax.jit(opt.update)
  errors = {}
  for t in range(1, meta["steps"] + 1):
    grads = _nest(peer.gradient(seed, shapes, t))
    if meta["optimizer"] == "adahessian":
      grads = jax.grad(obj_fn)(params)
      u, state = update(grads, state, params, _nest(peer.rademacher(seed, shapes, t)))
    elif sophia:
      g_hat = _nest(peer.gradient(seed, shapes, t, stream=2, scale=meta["extra"]["hess_scale"]))
      u, state = update(grads, state, params, g_hat)
    else:
      u, state = update(grads, state, params)
    params = jax.tree.map(lambda p, d: p + d, params, u)
    if t in meta["checkpoints"]:
      official = {k: data[f"traj/{t}/{k}"] for k in shapes}
      mine = _flat(params)
      diff = {k: mine[k] - official[k] for k in shapes}
      moved = {k: official[k] - p0[k] for k in shapes}
      errors[t] = _norm(diff) / max(_norm(moved), 1e-30)
  return meta, errors


def _case(path):
  return os.path.basename(path)[:-4]


def test_fixtures_cover_every_optimizer_at_its_defaults():
  assert set(DEFAULTS) <= {_case(p) for p in FIXTURES}
  assert sum(os.path.getsize(p) for p in FIXTURES) < 2_000_000


@pytest.mark.parametrize("path", [
    p if _case(p) in DEFAULTS else pytest.param(p, marks=pytest.mark.slow) for p in FIXTURES],
    ids=_case)
def test_official_trajectory_replays(path, monkeypatch):
  meta, errors = replay(path, monkeypatch)
  shapes = [tuple(s) for s in meta["shapes"].values()]
  assert any(len(s) == 2 and s[0] != s[1] for s in shapes)
  assert any(len(s) == 2 and s[0] == s[1] for s in shapes)
  assert any(len(s) == 4 for s in shapes)
  noise = meta.get("official_float32_noise", {})
  for t, err in errors.items():
    allowed = max(TOLERANCE, NOISE_FACTOR * noise.get(str(t), 0.0))
    assert err <= allowed, f"{meta['case']}: trajectory error by step {errors}, noise {noise}"
