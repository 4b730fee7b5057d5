"""Attention as a max-margin token separator (Tarzanagh et al. 2023): cos(W_t, W_mm) -> 1.

Paper setting (n = 6 samples, T = 8 tokens, d = 10, logistic loss, normalised GD, lr 0.1,
2000 iterations), over 20 random problems:
  python -m jaxllm.main --config=configs/icl/attention_svm.py --workdir=runs/attention_svm
Smoke (seconds on 2 CPU cores):
  python -m jaxllm.main --config=configs/icl/attention_svm.py:smoke --workdir=runs/attention_svm
Figure:
  python scripts/figures/fig_attention_svm.py --workdir=runs/attention_svm
"""

import ml_collections

ARGS = (None, "smoke")


def get_config(arg=None):
  """Returns the config; `arg` is None (paper scale) or "smoke"."""
  if arg not in ARGS:
    raise ValueError(f"unknown config arg {arg!r}; allowed: {ARGS}")
  config = ml_collections.ConfigDict()
  config.experiment = "icl.attention_svm"
  config.seed = 0
  config.num_samples = 6
  config.num_tokens = 8
  config.dim = 10
  # "separate": cross-attention with its own query z_i; "first_token": self-attention, z_i = x_i1.
  config.query = "separate"
  config.learning_rate = 0.1
  config.init_scale = 0.01
  config.num_iterations = 2000
  config.log_every = 20
  config.num_trials = 20
  if arg == "smoke":
    config.num_trials = 4
  return config
