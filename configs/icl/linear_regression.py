"""In-context linear regression (Garg et al. 2022), the default jaxllm job.

Smoke (the default job, d = 5, k up to 20, a few minutes on 2 CPU cores):
  python -m jaxllm.main --config=configs/icl/linear_regression.py:smoke --workdir=runs/linear_regression_smoke
Paper scale (d = 20, k up to 40, 12 layers / 8 heads / width 256, 500k steps):
  python -m jaxllm.main --config=configs/icl/linear_regression.py --workdir=runs/linear_regression
Figure:
  python scripts/figures/fig_linear_regression.py --workdir=runs/linear_regression_smoke
"""

import ml_collections

from configs.icl import common

ARGS = (None, "smoke", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  common.check_arg("configs/icl/linear_regression.py", arg, ARGS)
  c = ml_collections.ConfigDict()
  c.experiment = "icl.linear_regression"
  c.seed = 0
  c.task = ml_collections.ConfigDict(dict(n_dims=20, n_points=41, noise_std=0.0))  # k = 0..40
  c.task.curriculum = common.curriculum()
  c.model = common.backbone()
  c.optimizer = common.optimizer()
  c.train = common.train()
  c.eval = ml_collections.ConfigDict(dict(num_prompts=1280, ridge_lambda=1e-3))

  if arg in ("smoke", "tiny"):
    c.task.update(n_dims=5, n_points=21)  # k = 0..20
    c.task.curriculum = common.curriculum(dims_start=2, points_start=6, points_inc=3,
                                          interval=250)
    common.shrink_to_smoke(c, steps=6000)
  if arg == "tiny":  # seconds: wiring checks only, not the paper's result
    c.model.update(d_model=32, num_layers=2, num_heads=2)
    c.optimizer.warmup_steps = 5
    c.train.update(steps=20, batch_size=8, log_every=5, checkpoint_every=10)
    c.eval.num_prompts = 64
  return c
