"""Writes official-implementation optimizer trajectories for tests/optim/test_official_replay.py.

Run by hand in a Python with torch (2.13 here; transformers for GaLore / Fira / FRUGAL) next to
checkouts of the official code; nothing here is needed by the default install or the tests:

  python scripts/optim_peer_check.py --out tests/data/optim \
      --galore DIR --fira DIR --cosmos DIR --muon DIR --soap DIR --spam DIR --lion DIR \
      --sophia DIR --adahessian DIR --frugal DIR

Each DIR is a checkout root (jiaweizzhao/GaLore, xichen-fy/Fira, lliu606/COSMOS, KellerJordan/Muon,
nikhilvyas/SOAP, TianjinYellow/SPAM-Optimizer, lucidrains/lion-pytorch, Liuhong99/Sophia,
amirgholami/adahessian, the FRUGAL repository with its ``frugal`` package); give only the ones to
(re)write.

For every case the parameters, the gradient sequence and the random draws injected into both sides
(Sophia-G's sampled-label gradients, AdaHessian's Rademacher vectors, FRUGAL's block
permutations) come from seeded NumPy generators (``initial_params``, ``gradient``: gradients at
1e-4 scale), so a fixture stores the seed, the official parameters after a few steps and only the
draws the replay cannot regenerate: FRUGAL's permutations and SOAP's set-up eigenbasis (whose
null-space part is arbitrary for a non-square gradient). AdaHessian differentiates a fixed loss
with a non-diagonal Hessian (``adahessian_loss``) instead of taking the gradient sequence.

The tree has non-square and square hidden kernels, a 4-D convolution kernel and a norm scale, in
the Flax layout; the official side sees them transposed to PyTorch's (out, in) / (O, I, H, W)
layout and grouped as jaxllm's labels group them (hidden kernels to the method, the rest to the
class's Adam branch). Newton-Schulz runs at the parameters' precision on the official side too
(the official Muon and COSMOS cast to bfloat16; the patch replaces only that cast).
"""

import argparse
import importlib
import json
import math
import os
import sys
import types

import numpy as np

STEPS = 20
CHECKPOINTS = (1, 2, 3, 5, 10, 20)
GRAD_SCALE = 1e-4

SMALL = {"blocks/0/attn/o/kernel": (16, 24), "blocks/0/attn/q/kernel": (24, 16),
         "blocks/0/mlp/up/kernel": (16, 16), "conv/kernel": (3, 3, 4, 8),
         "final_norm/scale": (16,)}
# COSMOS's default rank 64 must not exceed the input width (the class requires it).
WIDE = {"blocks/0/attn/o/kernel": (72, 80), "blocks/0/attn/q/kernel": (80, 72),
        "blocks/0/mlp/up/kernel": (72, 72), "conv/kernel": (3, 3, 4, 8),
        "final_norm/scale": (16,)}

# (case, official package, jaxllm name, jaxllm hparams, learning rate, leaf shapes, extra)
CASES = (
    ("galore", "galore", "galore", {}, 1e-2, SMALL, {}),
    ("galore_rank4_wd", "galore", "galore", {"rank": 4, "weight_decay": 0.1}, 1e-2, SMALL, {}),
    ("fira", "fira", "fira", {}, 1e-2, SMALL, {}),
    ("fira_rank4_wd", "fira", "fira", {"rank": 4, "weight_decay": 0.1}, 1e-2, SMALL, {}),
    # COSMOS's first step is sign-like on r projected coordinates (G U / |G U|), so coordinates
    # within eps of zero make its float32 result differ from float64 by ~2e-4 in the official
    # code itself; the fixture records that noise and the replay allows twice it.
    ("cosmos", "cosmos", "cosmos", {}, 1e-3, WIDE, {"float64_noise": True}),
    ("muon", "muon", "muon", {}, 2e-2, SMALL, {}),
    ("soap", "soap", "soap", {}, 3e-3, SMALL, {}),
    ("soap_wd", "soap", "soap", {"weight_decay": 0.1}, 1e-2, SMALL, {}),
    ("spam", "spam", "spam", {}, 1e-3, SMALL, {}),
    # lr wd = 1e-3: the decay order (before or after the step) moves the result by about that.
    ("spam_wd", "spam", "spam", {"weight_decay": 0.1}, 1e-2, SMALL, {}),
    ("lion", "lion", "lion", {}, 1e-4, SMALL, {}),
    ("sophia_g", "sophia", "sophia_g", {}, 6e-4, SMALL, {"hess_scale": 2e-2, "bs": 480}),
    ("adahessian", "adahessian", "adahessian", {}, 0.15, SMALL, {}),
    ("frugal", "frugal", "frugal", {}, 1e-3, SMALL, {}),
    ("frugal_svd", "frugal", "frugal", {"variant": "svd", "update_gap": 8}, 1e-3, SMALL, {}),
    ("frugal_descending", "frugal", "frugal", {"block_order": "descending", "density": 0.5,
                                               "update_gap": 5}, 1e-3, SMALL, {}),
)


def is_hidden(path: str, shape) -> bool:
  """The label jaxllm gives these leaves: 2-D kernels outside norms are hidden."""
  return path.endswith("kernel") and len(shape) == 2


def initial_params(seed: int, shapes) -> dict:
  """GPT-style N(0, 0.02^2) weights: at O(1) weights float32 rounding of p + lr u alone would be
  a few 1e-4 of COSMOS's first step (1e-4 per entry)."""
  rng = np.random.default_rng([seed, 0])
  return {k: (0.02 * rng.standard_normal(s)).astype(np.float32)
          for k, s in sorted(shapes.items())}


def _spread_spectrum(rng, shape):
  """A random matrix with RMS entry 1 and squared singular values evenly spread from 1 to 0.1:
  random Gaussian matrices have near-equal adjacent singular values, whose singular vectors
  float32 cannot pin down, and COSMOS's first eigenbasis depends on each of them."""
  a, b = shape
  k = min(a, b)
  u, _ = np.linalg.qr(rng.standard_normal((a, k)))
  v, _ = np.linalg.qr(rng.standard_normal((b, k)))
  s = np.sqrt(np.linspace(1.0, 0.1, k))
  m = (u * s) @ v.T
  return m / np.sqrt(np.mean(m * m))


def gradient(seed: int, shapes, step: int, stream: int = 1, scale: float = GRAD_SCALE) -> dict:
  """The gradient of (1-based) ``step``; ``stream`` 2 is Sophia-G's sampled-label gradient."""
  rng = np.random.default_rng([seed, stream, step])
  out = {}
  for k, s in sorted(shapes.items()):
    x = _spread_spectrum(rng, s) if len(s) == 2 else rng.standard_normal(s)
    out[k] = (scale * x).astype(np.float32)
  return out


def adahessian_terms(seed: int, shapes) -> dict:
  """Per leaf (a, w) of AdaHessian's loss: a in [1e-3, 1e-2] (gradients ~1e-4 at the 0.02-scale
  weights), w ~ 1e-2 N(0, 1) (a rank-one Hessian part, so H v depends on the Rademacher v)."""
  rng = np.random.default_rng([seed, 4])
  return {k: (rng.uniform(1e-3, 1e-2, s).astype(np.float32),
              (1e-2 * rng.standard_normal(s)).astype(np.float32))
          for k, s in sorted(shapes.items())}


def adahessian_loss(params: dict, terms: dict):
  """sum over leaves of a . p^2 / 2 + (w . p)^2 / 2 (torch or jax arrays, matching layouts)."""
  return sum(0.5 * (a * params[k] * params[k]).sum() + 0.5 * ((w * params[k]).sum()) ** 2
             for k, (a, w) in terms.items())


def rademacher(seed: int, shapes, step: int) -> dict:
  """The Rademacher vectors of (1-based) ``step``, in the Flax layout."""
  rng = np.random.default_rng([seed, 5, step])
  return {k: rng.choice(np.array([-1.0, 1.0], np.float32), size=s)
          for k, s in sorted(shapes.items())}


def degenerate_axes(shape) -> tuple[bool, ...]:
  """Axes whose SOAP factor from one gradient is rank-deficient (size above the product of the
  other sizes): the eigenbasis of its null space is arbitrary, so the replay takes the
  official one."""
  n = int(np.prod(shape))
  return tuple(len(shape) >= 2 and d * d > n for d in shape)


def to_torch_layout(x):
  if x.ndim == 2:
    return x.T
  if x.ndim == 4:  # HWIO -> OIHW
    return x.transpose(3, 2, 0, 1)
  return x


def from_torch_layout(x):
  if x.ndim == 2:
    return x.T
  if x.ndim == 4:
    return x.transpose(2, 3, 1, 0)
  return x


def _package(name: str, directory: str):
  """Registers ``directory`` as package ``name`` without running its __init__ (whose imports
  pull in optional dependencies such as bitsandbytes)."""
  mod = types.ModuleType(name)
  mod.__path__ = [directory]
  sys.modules[name] = mod
  return mod


def _ns5_full_precision(torch):
  def ns(g, steps=5, eps=1e-7):
    a, b, c = (3.4445, -4.7750, 2.0315)
    x = g.to(torch.promote_types(g.dtype, torch.float32))
    if g.size(-2) > g.size(-1):
      x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
      s = x @ x.mT
      x = a * x + (b * s + c * s @ s) @ x
    if g.size(-2) > g.size(-1):
      x = x.mT
    return x
  return ns


def build(torch, package, roots, tparams, hidden, rest, hp, lr, extra, draws):
  """The official optimizer over torch parameters, and a per-step hook (or None)."""
  root = roots[package]
  if package == "galore":
    _package("galore_torch", os.path.join(root, "galore_torch"))
    # The Tucker projector (groups with dim > 2 only, none here) needs tensorly.
    tensor = types.ModuleType("galore_torch.galore_projector_tensor")
    tensor.GaLoreProjectorTensor = None
    sys.modules.setdefault(tensor.__name__, tensor)
    mod = importlib.import_module("galore_torch.adamw")
    group = {"params": hidden, "rank": hp.get("rank", 128), "update_proj_gap": 200,
             "scale": 0.25, "proj_type": "std"}
    return mod.AdamW([{"params": rest}, group], lr=lr, weight_decay=hp.get("weight_decay", 0.0),
                     no_deprecation_warning=True), None
  if package == "fira":
    _package("optimizer_torch", os.path.join(root, "optimizer_torch"))
    mod = importlib.import_module("optimizer_torch.fira_adamw")
    group = {"params": hidden, "rank": hp.get("rank", 128), "update_proj_gap": 200,
             "alpha": 0.25, "proj_type": "std"}
    return mod.AdamW([{"params": rest}, group], lr=lr, weight_decay=hp.get("weight_decay", 0.0),
                     no_deprecation_warning=True), None
  if package in ("cosmos", "muon"):
    sys.path.insert(0, root)
    mod = importlib.import_module({"cosmos": "COSMOS_optim", "muon": "muon"}[package])
    mod.zeropower_via_newtonschulz5 = _ns5_full_precision(torch)
    if package == "cosmos":
      return mod.COSMOS(hidden + rest, lr=lr), None
    return mod.SingleDeviceMuonWithAuxAdam([dict(params=hidden, use_muon=True),
                                            dict(params=rest, use_muon=False)]), None
  if package == "soap":
    sys.path.insert(0, root)
    return importlib.import_module("soap").SOAP(
        hidden + rest, lr=lr, weight_decay=hp.get("weight_decay", 0.01)), None
  if package == "spam":
    _package("galore_torch", os.path.join(root, "galore_torch"))
    mod = importlib.import_module("galore_torch.SPAM")
    return mod.AdamW(hidden + rest, lr=lr, weight_decay=hp.get("weight_decay", 0.0)), None
  if package == "lion":
    sys.path.insert(0, root)
    return importlib.import_module("lion_pytorch.lion_pytorch").Lion(hidden + rest, lr=lr), None
  if package == "sophia":
    sys.path.insert(0, root)
    mod = importlib.import_module("sophia")
    params = hidden + rest
    # nanoGPT's grouping, which jaxllm's decay mask follows: decay only rank >= 2 leaves.
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.2},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = mod.SophiaG(groups, lr=lr, rho=0.05)

    def hook(step):
      opt.step(bs=extra["bs"])
      if step % 10 == 9:  # the training loop's Hessian refresh, right after the step
        g_hat = draws["hess"][step]
        for p in params:
          p.grad = g_hat[id(p)]
        opt.update_hessian()
    return opt, hook
  if package == "adahessian":
    sys.path.insert(0, os.path.join(root, "image_classification"))
    opt = importlib.import_module("optim_adahessian").Adahessian(hidden + rest, lr=lr)
    params = dict(zip(draws["paths"], hidden + rest))
    terms = {k: tuple(torch.from_numpy(to_torch_layout(x).copy()).to(params[k].dtype)
                      for x in ab) for k, ab in draws["terms"].items()}
    real = torch.randint_like

    def hook(step):
      # The official loop: gradients with create_graph, then step (H v from those gradients).
      for p in params.values():
        p.grad = None
      adahessian_loss(params, terms).backward(create_graph=True)
      signs = iter(draws["v"][step][k] for k in draws["paths"])
      # 2 * randint(0, 2) - 1 is the official Rademacher draw; hand it the injected one.
      torch.randint_like = lambda p, high: torch.from_numpy((next(signs) + 1.0) / 2.0).to(p.dtype)
      try:
        opt.step()
      finally:
        torch.randint_like = real
    return opt, hook
  if package == "frugal":
    sys.path.insert(0, root)
    import torch.optim.optimizer as topt
    if not hasattr(topt, "_dispatch_sqrt"):  # removed from torch after the code was written
      topt._dispatch_sqrt = math.sqrt
    _package("frugal", os.path.join(root, "frugal"))
    mod = importlib.import_module("frugal.adamw")
    kw = {k: hp[k] for k in ("density", "update_gap", "block_order") if k in hp}
    cls = mod.GaloreAdamW if hp.get("variant") == "svd" else mod.BlockAdamW
    opt = cls([{"params": rest, "is_proj_params": False},
               {"params": hidden, "is_proj_params": True}], lr=lr, no_deprecation_warning=True,
              **kw)
    perms = iter(draws["perms"])
    real = torch.randperm

    def hook(step):
      torch.randperm = lambda n, *a, **k: torch.as_tensor(next(perms)[:n])
      try:
        opt.step()
      finally:
        torch.randperm = real
    return opt, hook
  raise ValueError(f"unknown package {package!r}")


def run_case(torch, case, roots, seed, dtype=None):
  """The fixture arrays of one case (official run in ``dtype``, default float32)."""
  name, package, opt_name, hp, lr, shapes, extra = case
  dtype = dtype or torch.float32
  params = initial_params(seed, shapes)
  paths = sorted(shapes)
  tensor = lambda x: torch.from_numpy(x.copy()).to(dtype)
  tparams = {k: torch.nn.Parameter(tensor(to_torch_layout(params[k]))) for k in paths}
  hidden = [tparams[k] for k in paths if is_hidden(k, shapes[k])]
  rest = [tparams[k] for k in paths if not is_hidden(k, shapes[k])]
  draws, arrays = {}, {}
  if package == "sophia":
    draws["hess"] = {}
    for t in range(STEPS):
      g = gradient(seed, shapes, t + 1, stream=2, scale=extra["hess_scale"])
      draws["hess"][t] = {id(tparams[k]): tensor(to_torch_layout(g[k])) for k in paths}
  if package == "adahessian":
    order = [k for k in paths if is_hidden(k, shapes[k])] + [
        k for k in paths if not is_hidden(k, shapes[k])]
    draws["paths"] = order
    draws["terms"] = adahessian_terms(seed, shapes)
    draws["v"] = [{k: to_torch_layout(x) for k, x in rademacher(seed, shapes, t + 1).items()}
                  for t in range(STEPS)]
  if package == "frugal":
    rng = np.random.default_rng([seed, 3])
    perms = [rng.permutation(len(hidden)) for _ in range(STEPS)]
    draws["perms"] = perms
    arrays["draw/perms"] = np.stack(perms).astype(np.int32)
  opt, hook = build(torch, package, roots, tparams, hidden, rest, hp, lr, extra, draws)
  for t in range(STEPS):
    if package != "adahessian":  # AdaHessian differentiates its loss instead
      g = gradient(seed, shapes, t + 1)
      for k in paths:
        tparams[k].grad = tensor(to_torch_layout(g[k]))
    if hook is None:
      opt.step()
    else:
      hook(t)
    if package == "soap" and t == 0:
      for k in paths:
        if len(shapes[k]) >= 2:
          flax_axis = (1, 0) if len(shapes[k]) == 2 else (3, 2, 0, 1)
          for i, q in enumerate(opt.state[tparams[k]]["Q"]):
            arrays[f"draw/soap_q/{k}/{flax_axis[i]}"] = q.numpy().astype(np.float32)
    if t + 1 in CHECKPOINTS:
      for k in paths:
        arrays[f"traj/{t + 1}/{k}"] = from_torch_layout(
            tparams[k].detach().numpy()).astype(np.float32 if dtype == torch.float32 else None)
  meta = {"case": name, "optimizer": opt_name, "hparams": hp, "learning_rate": lr,
          "shapes": {k: list(s) for k, s in shapes.items()}, "seed": seed, "steps": STEPS,
          "checkpoints": list(CHECKPOINTS), "grad_scale": GRAD_SCALE, "extra": extra,
          "official": package, "torch": torch.__version__}
  arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
  return arrays


def float32_noise(arrays, exact, shapes, seed) -> dict:
  """Per checkpoint: ||official float32 - official float64|| / ||float64 - initial||."""
  p0 = initial_params(seed, shapes)
  out = {}
  for t in CHECKPOINTS:
    diff = sum(np.sum((arrays[f"traj/{t}/{k}"] - exact[f"traj/{t}/{k}"]) ** 2) for k in shapes)
    moved = sum(np.sum((exact[f"traj/{t}/{k}"] - p0[k]) ** 2) for k in shapes)
    out[str(t)] = float(np.sqrt(diff / moved))
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="tests/data/optim")
  ap.add_argument("--seed", type=int, default=0)
  for pkg in sorted({c[1] for c in CASES}):
    ap.add_argument(f"--{pkg}", metavar="DIR", help=f"checkout of the official {pkg} code")
  args = ap.parse_args(argv)
  roots = {pkg: os.path.abspath(getattr(args, pkg)) for pkg in {c[1] for c in CASES}
           if getattr(args, pkg)}
  if not roots:
    ap.error("give at least one official checkout (e.g. --soap DIR)")
  for pkg, root in roots.items():
    if not os.path.isdir(root):
      ap.error(f"--{pkg}: no directory {root}")
  import torch
  torch.set_num_threads(1)
  os.makedirs(args.out, exist_ok=True)
  for case in CASES:
    if case[1] not in roots:
      continue
    arrays = run_case(torch, case, roots, args.seed)
    if case[6].get("float64_noise"):
      exact = run_case(torch, case, roots, args.seed, torch.float64)
      arrays["meta"] = np.array(json.dumps(
          {**json.loads(str(arrays["meta"])),
           "official_float32_noise": float32_noise(arrays, exact, case[5], args.seed)},
          sort_keys=True))
    path = os.path.join(args.out, f"{case[0]}.npz")
    np.savez_compressed(path + ".tmp.npz", **arrays)
    os.replace(path + ".tmp.npz", path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
  main()
