"""Transformers learn higher-order optimisation methods in context (Fu et al. 2023).

Paper scale (d = 20, n up to 40, 12 layers / 8 heads / width 256; isotropic inputs, add
--config.task.condition_number=100 for the ill-conditioned run):
  python -m jaxllm.main --config=configs/icl/higher_order.py --workdir=runs/higher_order
Smoke (d = 5, n up to 20, a 3-layer width-64 model, 6000 steps, minutes on 2 CPU cores):
  python -m jaxllm.main --config=configs/icl/higher_order.py:smoke --workdir=runs/higher_order
Figure:
  python scripts/figures/fig_higher_order.py --workdir=runs/higher_order
"""

import ml_collections

from configs.icl import common, linear_regression

ARGS = (None, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  common.check_arg("configs/icl/higher_order.py", arg, ARGS)
  # Same task, model and schedule as the linear-regression study at each scale (at smoke scale,
  # 2000 steps leave the model near the averaging regime; its 6000 are needed for the probes).
  c = linear_regression.get_config()  # the paper scale; smoke_k20 shrinks it
  if arg == "smoke":
    linear_regression.smoke_k20(c)
  c.experiment = "icl.higher_order"
  c.task.condition_number = 1.0
  # Probes: least-squares read-outs fitted on probe_train_prompts, scored on num_prompts others.
  c.eval = ml_collections.ConfigDict(dict(
      num_prompts=2000, probe_train_prompts=8000, probe_ridge=1e-4, context_lengths=(20, 40),
      newton_iters=30, gd_lr=0.01, gd_steps=tuple(2 ** i for i in range(13))))
  # The algorithms alone, at the paper's d = 20, n = 40 (needs no training).
  c.algorithms = ml_collections.ConfigDict(dict(
      n_dims=20, n_points=40, num_prompts=500, condition_numbers=(1.0, 10.0, 100.0),
      max_newton_iters=60, gd_steps=tuple(2 ** i for i in range(17)), rel_tol=1e-2))

  if arg == "smoke":
    c.eval.update(num_prompts=1000, probe_train_prompts=3000, context_lengths=(5, 10),
                  newton_iters=20, gd_steps=tuple(2 ** i for i in range(11)))
    c.algorithms.update(num_prompts=200, gd_steps=tuple(2 ** i for i in range(14)))
  return c
