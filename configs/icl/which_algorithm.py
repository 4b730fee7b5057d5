"""What learning algorithm is in-context learning? (Akyurek et al. 2022).

Paper scale (d = 8, k up to 40, depths 1-16 x widths 16-512 x noise variance {0, 0.1}, 48 models,
500k steps each):
  python -m jaxllm.main --config=configs/icl/which_algorithm.py --workdir=runs/which_algorithm_full
Smoke (d = 4, k up to 12, depths {1, 3} x noise variance {0, 0.25}, four width-64 models, minutes
on 2 CPU cores):
  python -m jaxllm.main --config=configs/icl/which_algorithm.py:smoke --workdir=runs/which_algorithm
Figure:
  python scripts/figures/fig_which_algorithm.py --workdir=runs/which_algorithm
"""

import ml_collections

from configs.icl import common, linear_regression

ARGS = (None, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  common.check_arg("configs/icl/which_algorithm.py", arg, ARGS)
  # Task, curriculum, optimizer and training loop of the linear-regression study.
  c = linear_regression.get_config(None)
  c.experiment = "icl.which_algorithm"
  c.task.n_dims = 8
  c.task.n_points = 41  # k = 0..40 (5d) in-context examples
  c.task.curriculum.update(dims_start=2, points_start=5)
  c.model.update(num_heads=4, max_len=96)
  # One model per (depth, width, noise variance); model.num_layers / d_model / task.noise_std are
  # set from here.
  c.grid = ml_collections.ConfigDict(dict(
      depths=(1, 2, 4, 8, 12, 16), widths=(16, 64, 256, 512), noise_variances=(0.0, 0.1)))
  c.eval = ml_collections.ConfigDict(dict(
      num_prompts=2000, tune_prompts=2000, ilwd_prompts=200, num_probes=64,
      gd_steps=(1, 2, 4, 8, 16), ridge_floor=1e-6))

  if arg == "smoke":
    c.task.n_dims = 4
    c.task.n_points = 13  # k = 0..12 (3d)
    c.task.curriculum.update(dims_start=2, points_start=5, points_inc=2, interval=200)
    c.model.update(num_heads=2, max_len=32)
    c.grid.update(depths=(1, 3), widths=(64,), noise_variances=(0.0, 0.25))
    c.optimizer.update(**common.SMOKE_OPTIMIZER)
    c.train.update(steps=2000, batch_size=128, log_every=250, checkpoint_every=2000)
    c.eval.update(num_prompts=1000, tune_prompts=1000, ilwd_prompts=64, num_probes=16,
                  gd_steps=(1, 2, 4))
  return c
