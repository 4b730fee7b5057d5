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

from configs.icl import common

ARGS = (None, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; ``arg`` is None (paper scale) or "smoke"."""
  common.check_arg("configs/icl/attention_svm.py", arg, ARGS)
  c = ml_collections.ConfigDict()
  c.experiment = "icl.attention_svm"
  c.seed = 0
  # query "separate": cross-attention with its own query z_i; "first_token": self-attention,
  # z_i = x_i1.
  c.task = ml_collections.ConfigDict(dict(n_dims=10, num_samples=6, num_tokens=8,
                                          query="separate"))
  # The trained object is the attention matrix W itself (d x d), drawn N(0, init_scale^2).
  c.model = ml_collections.ConfigDict(dict(init_scale=0.01))
  # Normalised gradient descent on the logistic loss (W <- W - lr g / ||g||_F), the paper's rule;
  # not an optax optimizer, so no schedule or clipping fields.
  c.optimizer = ml_collections.ConfigDict(dict(name="normalized_gd", learning_rate=0.1))
  c.train = ml_collections.ConfigDict(dict(steps=2000, log_every=20))
  c.num_trials = 20
  if arg == "smoke":
    c.num_trials = 4
  return c
