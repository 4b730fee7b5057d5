"""Bayesian prism (Panwar et al.): transformers trained on a mixture of regression priors track the
posterior mean of that mixture.

Smoke (d = 5 dense+sparse mixture and a Fourier prior with frequencies up to 3, one 3-layer model
each with a curriculum over d and k, about ten minutes on 2 CPU cores):
  python -m jaxllm.main --config=configs/icl/bayesian_prism.py:smoke --workdir=runs/bayesian_prism
Paper scale (d = 20, one 12-layer model per prior, 500k steps each; the low-rank family uses
d = task.lowrank_dims = 16, a 4 x 4 matrix of rank task.rank = 1, since 20 is not a square):
  python -m jaxllm.main --config=configs/icl/bayesian_prism.py --workdir=runs/bayesian_prism_full
Figure:
  python scripts/figures/fig_bayesian_prism.py --workdir=runs/bayesian_prism
"""

import ml_collections

from configs.icl import common

ARGS = (None, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  common.check_arg("configs/icl/bayesian_prism.py", arg, ARGS)
  c = ml_collections.ConfigDict()
  c.experiment = "icl.bayesian_prism"
  c.seed = 0
  c.task = ml_collections.ConfigDict(dict(
      n_dims=20, n_points=41, sparsity=3, noise_std=0.1, max_freq=10, half_period=5.0,
      num_monomials=20, rank=1, lowrank_dims=16,
      train_priors=("dense", "sparse", "sign", "dense+sparse", "dense+sign", "fourier",
                    "monomial", "lowrank")))
  c.task.curriculum = common.curriculum()
  c.model = common.backbone()
  c.optimizer = common.optimizer()
  c.train = common.train()
  c.eval = ml_collections.ConfigDict(dict(num_prompts=1280))
  if arg == "smoke":
    c.task.update(n_dims=5, n_points=16, sparsity=1, max_freq=3)
    c.task.train_priors = ("dense+sparse", "fourier")
    c.task.curriculum = common.curriculum(dims_start=2, points_start=6, interval=300)
    common.shrink_to_smoke(c, steps=4000)
    c.eval.num_prompts = 512
  return c
