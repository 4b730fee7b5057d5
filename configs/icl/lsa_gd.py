"""Linear self-attention = gradient descent (von Oswald et al. 2023): LSA stacks vs GD steps.

Paper scale (d = N = 10, x ~ U(-0.5, 0.5), batch 2048, Adam 1e-3, 5000 steps; depths 1, 2, 3):
  python -m jaxllm.main --config=configs/icl/lsa_gd.py --workdir=runs/lsa_gd
Smoke (about a minute on 2 CPU cores):
  python -m jaxllm.main --config=configs/icl/lsa_gd.py:smoke --workdir=runs/lsa_gd
Figure:
  python scripts/figures/fig_lsa_gd.py --workdir=runs/lsa_gd
"""

import ml_collections

from configs.icl import common

ARGS = (None, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; ``arg`` is None (paper scale) or "smoke"."""
  common.check_arg("configs/icl/lsa_gd.py", arg, ARGS)
  c = ml_collections.ConfigDict()
  c.experiment = "icl.lsa_gd"
  c.seed = 0
  # N = n_points - 1 = 10 context pairs and the query.
  c.task = ml_collections.ConfigDict(dict(n_dims=10, n_points=11, input_dist="uniform"))
  # One LSA stack per depth in num_layers.
  c.model = ml_collections.ConfigDict(dict(num_layers=(1, 2, 3), init_scale=0.02))
  c.optimizer = common.optimizer("adam", 1e-3, grad_clip=10.0)
  c.train = common.train(steps=5000, batch_size=2048, log_every=100, checkpoint_every=0)
  # gd_steps: the GD step counts tabulated beside those matching each depth.
  c.eval = ml_collections.ConfigDict(dict(gd_steps=(1, 2, 3, 10), num_prompts=10_000,
                                          rate_search_prompts=100_000))
  if arg == "smoke":
    c.model.num_layers = (1, 2)
    c.optimizer.learning_rate = 3e-3
    c.train.update(steps=2000, batch_size=512)
    c.eval.update(gd_steps=(1, 2), num_prompts=4000, rate_search_prompts=20_000)
  return c
