"""In-context function classes beyond dense linear regression (Garg et al. 2022; Guo et al. 2023).

Every sampler draws a fresh function per prompt and returns xs [B, k, d] and ys [B, k]
(float32) with x ~ N(0, I_d). With ``active_dims`` < d (curriculum) the trailing input coordinates are zero and
the function only reads the leading ones, as in ``jaxllm.data.icl_regression``.
"""

import numpy as np

FAMILIES = ("linear", "sparse_linear", "relu_net", "decision_tree", "representation")


def _inputs(rng, batch, n_points, n_dims, active_dims):
  active = n_dims if active_dims is None else int(active_dims)
  if not 1 <= active <= n_dims:
    raise ValueError(f"active_dims={active_dims} must be in [1, n_dims={n_dims}]")
  xs = rng.standard_normal((batch, n_points, n_dims), dtype=np.float32)
  xs[..., active:] = 0.0
  return xs, active


def sparse_linear(rng, batch, n_points, n_dims, *, sparsity=3, active_dims=None):
  """y = w.x with w ~ N(0, I) restricted to ``sparsity`` random coordinates (E y^2 = sparsity)."""
  xs, active = _inputs(rng, batch, n_points, n_dims, active_dims)
  s = min(int(sparsity), active)
  if s < 1:
    raise ValueError(f"sparsity must be >= 1, got {sparsity}")
  ws = np.zeros((batch, n_dims), np.float32)
  support = np.argsort(rng.random((batch, active)), axis=1)[:, :s]
  np.put_along_axis(ws, support, rng.standard_normal((batch, s), dtype=np.float32), axis=1)
  return xs, np.einsum("bkd,bd->bk", xs, ws).astype(np.float32)


def relu_net(rng, batch, n_points, n_dims, *, hidden=100, active_dims=None):
  """y = sqrt(2 / hidden) sum_j a_j relu(v_j . x), with v_j, a_j ~ N(0, I) (E y^2 = active dims)."""
  if hidden < 1:
    raise ValueError(f"hidden must be >= 1, got {hidden}")
  xs, active = _inputs(rng, batch, n_points, n_dims, active_dims)
  v = rng.standard_normal((batch, n_dims, hidden), dtype=np.float32)
  v[:, active:] = 0.0
  a = rng.standard_normal((batch, hidden), dtype=np.float32)
  h = np.maximum(np.einsum("bkd,bdh->bkh", xs, v), 0.0)
  return xs, (np.sqrt(2.0 / hidden) * np.einsum("bkh,bh->bk", h, a)).astype(np.float32)


def decision_tree(rng, batch, n_points, n_dims, *, depth=4, active_dims=None):
  """A full binary tree of ``depth``: each internal node tests x[i] > 0 for a random coordinate i,
  leaves carry N(0, 1) values (E y^2 = 1)."""
  if depth < 1:
    raise ValueError(f"depth must be >= 1, got {depth}")
  xs, active = _inputs(rng, batch, n_points, n_dims, active_dims)
  n_internal = 2 ** depth - 1
  feature = rng.integers(0, active, size=(batch, n_internal))
  leaves = rng.standard_normal((batch, 2 ** depth), dtype=np.float32)
  node = np.zeros((batch, n_points), np.int64)
  rows = np.arange(batch)[:, None]
  for _ in range(depth):
    coord = feature[rows, node]  # [B, k]
    go_right = np.take_along_axis(xs, coord[..., None], axis=2)[..., 0] > 0
    node = 2 * node + 1 + go_right
  return xs, leaves[rows, node - n_internal]


def random_mlp(seed, n_dims, hidden, out_dim, depth=2):
  """A fixed random ReLU MLP Phi: R^d -> R^out_dim shared by all prompts (Guo et al. 2023).

  Weights are N(0, 2 / fan_in) (He), so features keep unit scale; the last layer is linear.

  Returns:
    A list of weight matrices; apply it with ``apply_mlp``.
  """
  if min(n_dims, hidden, out_dim, depth) < 1:
    raise ValueError(f"random_mlp needs positive sizes, got n_dims={n_dims}, hidden={hidden}, "
                     f"out_dim={out_dim}, depth={depth}")
  rng = np.random.default_rng(seed)
  sizes = [n_dims] + [hidden] * (depth - 1) + [out_dim]
  return [rng.standard_normal((i, o)).astype(np.float32) * np.float32(np.sqrt(2.0 / i))
          for i, o in zip(sizes[:-1], sizes[1:])]


def apply_mlp(weights, xs):
  h = xs
  for i, w in enumerate(weights):
    h = h @ w
    if i < len(weights) - 1:
      h = np.maximum(h, 0.0)
  return h.astype(np.float32)


def representation(rng, batch, n_points, n_dims, *, phi, noise_std=0.0, active_dims=None):
  """y = w . Phi(x) / sqrt(D) + noise with w ~ N(0, I_D) fresh per prompt and Phi fixed (``phi``
  from ``random_mlp``); dividing by sqrt(D) keeps E y^2 near E|Phi|^2 / D."""
  xs, _ = _inputs(rng, batch, n_points, n_dims, active_dims)
  feats = apply_mlp(phi, xs)
  ws = rng.standard_normal((batch, feats.shape[-1]), dtype=np.float32)
  ys = np.einsum("bkf,bf->bk", feats, ws) / np.sqrt(feats.shape[-1])
  if noise_std:
    ys = ys + noise_std * rng.standard_normal(ys.shape, dtype=np.float32)
  return xs, ys.astype(np.float32)


def linear(rng, batch, n_points, n_dims, *, active_dims=None):
  """Dense y = w.x, w ~ N(0, I) (the foundation study's task, here for mixed runs)."""
  xs, active = _inputs(rng, batch, n_points, n_dims, active_dims)
  ws = rng.standard_normal((batch, n_dims), dtype=np.float32)
  ws[:, active:] = 0.0
  return xs, np.einsum("bkd,bd->bk", xs, ws).astype(np.float32)


def sample(family, rng, batch, n_points, n_dims, *, active_dims=None, **kwargs):
  """Dispatches on ``family`` (one of FAMILIES)."""
  fns = {"linear": linear, "sparse_linear": sparse_linear, "relu_net": relu_net,
         "decision_tree": decision_tree, "representation": representation}
  if family not in fns:
    raise ValueError(f"unknown function family {family!r}; allowed: {list(FAMILIES)}")
  return fns[family](rng, batch, n_points, n_dims, active_dims=active_dims, **kwargs)
