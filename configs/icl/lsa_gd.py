"""Linear self-attention = gradient descent (von Oswald et al. 2023): LSA stacks vs GD steps.

Paper scale (d = N = 10, x ~ U(-0.5, 0.5), batch 2048, Adam 1e-3, 5000 steps; depths 1, 2, 3):
  python -m jaxllm.main --config=configs/icl/lsa_gd.py --workdir=runs/lsa_gd
Smoke (about a minute on 2 CPU cores):
  python -m jaxllm.main --config=configs/icl/lsa_gd.py:smoke --workdir=runs/lsa_gd
Figure:
  python scripts/figures/fig_lsa_gd.py --workdir=runs/lsa_gd
"""

import ml_collections

ARGS = (None, "smoke")


def get_config(arg=None):
  """Returns the config; `arg` is None (paper scale) or "smoke"."""
  if arg not in ARGS:
    raise ValueError(f"unknown config arg {arg!r}; allowed: {ARGS}")
  config = ml_collections.ConfigDict()
  config.experiment = "icl.lsa_gd"
  config.seed = 0
  config.dim = 10
  config.num_examples = 10
  config.input_dist = "uniform"
  config.num_layers = (1, 2, 3)
  config.gd_steps_reported = (1, 2, 3, 10)
  config.init_scale = 0.02
  config.learning_rate = 1e-3
  config.grad_clip = 10.0
  config.batch_size = 2048
  config.num_steps = 5000
  config.log_every = 100
  config.eval_prompts = 10000
  config.rate_search_prompts = 100000
  if arg == "smoke":
    config.num_layers = (1, 2)
    config.gd_steps_reported = (1, 2)
    config.learning_rate = 3e-3
    config.batch_size = 512
    config.num_steps = 2000
    config.eval_prompts = 4000
    config.rate_search_prompts = 20000
  return config
