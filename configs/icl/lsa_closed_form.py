"""Trained LSA closed form (Zhang, Frei & Bartlett 2023): one LSA layer vs Gamma^-1.

Paper scale (d = 5, N = 20, Lambda = I; test error d(d+1)/(N+d+1) = 1.154):
  python -m jaxllm.main --config=configs/icl/lsa_closed_form.py --workdir=runs/lsa_closed_form
Smoke (about a minute on 2 CPU cores):
  python -m jaxllm.main --config=configs/icl/lsa_closed_form.py:smoke --workdir=runs/lsa_closed_form
Figure:
  python scripts/figures/fig_lsa_closed_form.py --workdir=runs/lsa_closed_form
"""

import ml_collections

ARGS = (None, "smoke")


def get_config(arg=None):
  """Returns the config; `arg` is None (paper scale) or "smoke"."""
  if arg not in ARGS:
    raise ValueError(f"unknown config arg {arg!r}; allowed: {ARGS}")
  config = ml_collections.ConfigDict()
  config.experiment = "icl.lsa_closed_form"
  config.seed = 0
  config.dim = 5
  config.num_examples = 20
  # Diagonal of Lambda (all ones: the paper's headline setting Lambda = I).
  config.covariance_diag = (1.0,) * config.dim
  config.init_scale = 0.1
  config.learning_rate = 0.02
  config.batch_size = 4096
  config.num_steps = 5000
  config.log_every = 100
  config.eval_prompts = 50000
  config.eval_lengths = (5, 10, 20, 40, 80, 160, 320)
  # Task shift: w ~ N(task_shift_mean * 1, I) at test time.
  config.task_shift_mean = 1.0
  # Covariate shift: test inputs ~ N(0, c^2 Lambda).
  config.covariate_scales = (0.5, 2.0)
  if arg == "smoke":
    config.batch_size = 1024
    config.num_steps = 800
    config.learning_rate = 0.04
    config.eval_prompts = 8000
    config.eval_lengths = (5, 20, 80, 320)
  return config
