"""In-context linear regression (Garg et al. 2022), the default jaxllm job.

Smoke (the default job, d = 5, k up to 10, under 5 minutes on 2 CPU cores):
  python -m jaxllm.main --config=configs/icl/linear_regression.py:smoke --workdir=runs/linear_regression_smoke
Paper scale (d = 20, k up to 40, 12 layers / 8 heads / width 256, 500k steps):
  python -m jaxllm.main --config=configs/icl/linear_regression.py --workdir=runs/linear_regression
Figure:
  python scripts/figures/fig_linear_regression.py --workdir=runs/linear_regression_smoke
"""

import ml_collections

from configs.icl import common

ARGS = (None, "smoke", "tiny")
SMOKE_STEPS = 6000


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The default job: d = 5 and Garg et al.'s 2d + 1 points (k = 0..10), a GPT-2-style decoder of
  width 128 with 5 layers, 4 heads and a 384-wide MLP, 6000 Adam steps of 64 prompts.

  Weights start at normal(0.05) rather than GPT-2's 0.02 (``model.initializer_range``): with
  0.02 the small models sit on the zero predictor for 1300-2000 steps before in-context
  regression appears; 0.05 shortens that plateau to about 800-1200. Adam's beta2 is 0.99 and the
  cosine decays to zero. Measured one change at a time (error / d at k = d / 2d; single-thread
  runs, whose float sums differ from the two-thread default run's by about 0.002 at k = d):
  from 4 layers with a 512-wide MLP, 4500 steps, beta2 0.999 and a cosine to 0.1 of the peak
  (0.115 / 0.010): no gradient clipping 0.116 / 0.012, beta2 0.99 0.113 / 0.010, and with it
  8 heads 0.134 / 0.017 or 6 layers with a 256-wide MLP 0.107 / 0.017; at 6000 steps with beta2 0.99: the
  cosine to 0.1 0.108 / 0.009, to zero 0.100 / 0.007, a linear decay to zero 0.113 / 0.007, the
  curriculum every 200 steps 0.110 / 0.008, beta2 0.95 0.102 / 0.007, and 5 layers with a
  384-wide MLP 0.098 / 0.006 (this recipe; 0.110 / 0.011 at 5000 steps, 0.127 / 0.013 there
  with learning rate 1.5e-3). Earlier, at 4500 steps: batch 32 x 9000 steps 0.179 / 0.026,
  batch 128 x 2250 0.117 / 0.017, learning rate 2e-3 0.156 / 0.032 and 6e-4 0.126 / 0.011.
  """
  c.task.update(n_dims=5, n_points=11)
  c.task.curriculum = common.curriculum(dims_start=2, points_start=5, points_inc=2, interval=250)
  common.shrink_to_smoke(c, steps=SMOKE_STEPS)
  c.model.update(d_model=128, num_layers=5, num_heads=4, mlp_dim=384, initializer_range=0.05)
  c.optimizer.update(final_fraction=0.0, hparams={"b2": 0.99})
  return c


def smoke_k20(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The probe studies' smoke scale (higher-order methods, representations): k up to 20 with
  the 3-layer width-64 backbone (``common.SMOKE_MODEL``) and GPT-2's init, 6000 steps; their
  recorded smoke numbers come from it."""
  c.task.update(n_dims=5, n_points=21)
  c.task.curriculum = common.curriculum(dims_start=2, points_start=6, points_inc=3, interval=250)
  return common.shrink_to_smoke(c, steps=6000)


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
    smoke(c)
  if arg == "tiny":  # seconds: wiring checks only, not the paper's result
    c.model.update(d_model=32, num_layers=2, num_heads=2)
    c.optimizer.warmup_steps = 5
    c.train.update(steps=20, batch_size=8, log_every=5, checkpoint_every=10)
    c.eval.num_prompts = 64
  return c
