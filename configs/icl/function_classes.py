"""In-context learning of function classes (Garg et al. 2022): sparse linear, ReLU nets, trees.

Paper scale (d = 20, k up to 40, 12 layers / 8 heads / width 256, 500k steps per family):
  python -m jaxllm.main --config=configs/icl/function_classes.py --workdir=runs/function_classes_full
Smoke (sparse linear and trees, d = 5, k up to 20, a 3-layer width-64 model, 2000 steps each,
about 10 minutes on 2 CPU cores):
  python -m jaxllm.main --config=configs/icl/function_classes.py:smoke --workdir=runs/function_classes
Figure:
  python scripts/figures/fig_function_classes.py --workdir=runs/function_classes
"""

import ml_collections

from configs.icl import common

ARGS = (None, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  common.check_arg("configs/icl/function_classes.py", arg, ARGS)
  c = ml_collections.ConfigDict()
  c.experiment = "icl.function_classes"
  c.seed = 0
  c.task = ml_collections.ConfigDict(dict(
      families=("sparse_linear", "relu_net", "decision_tree"), n_dims=20, n_points=41,
      sparsity=3, hidden=100, tree_depth=4))
  c.task.curriculum = common.curriculum()
  c.model = common.backbone()
  c.optimizer = common.optimizer()
  c.train = common.train()
  # One fixed Lasso alpha and tree ensemble for every k (not re-tuned per context length).
  c.eval = ml_collections.ConfigDict(dict(
      num_prompts=1280, num_sklearn_prompts=200, lasso_alpha=0.01, gbt_estimators=100, gbt_lr=0.1,
      gbt_depth=4))

  if arg == "smoke":
    # ReLU nets are left to the full config: two families already take the smoke budget.
    c.task.update(families=("sparse_linear", "decision_tree"), n_dims=5, n_points=21)
    c.task.curriculum = common.curriculum(dims_start=2, points_start=6, points_inc=3,
                                          interval=150)
    common.shrink_to_smoke(c, steps=2000, checkpoint_every=2000)
    c.eval.update(num_prompts=512, num_sklearn_prompts=48)
  return c
