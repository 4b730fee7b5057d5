"""Trained LSA closed form (Zhang, Frei & Bartlett 2023): one LSA layer vs Gamma^-1.

Paper scale (d = 5, N = 20, Lambda = I; test error d(d+1)/(N+d+1) = 1.154):
  python -m jaxllm.main --config=configs/icl/lsa_closed_form.py --workdir=runs/lsa_closed_form
Smoke (about a minute on 2 CPU cores):
  python -m jaxllm.main --config=configs/icl/lsa_closed_form.py:smoke --workdir=runs/lsa_closed_form
Figure:
  python scripts/figures/fig_lsa_closed_form.py --workdir=runs/lsa_closed_form
"""

import ml_collections

from configs.icl import common

ARGS = (None, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; ``arg`` is None (paper scale) or "smoke"."""
  common.check_arg("configs/icl/lsa_closed_form.py", arg, ARGS)
  c = ml_collections.ConfigDict()
  c.experiment = "icl.lsa_closed_form"
  c.seed = 0
  # N = n_points - 1 = 20 context pairs and the query; covariance_diag is the diagonal of Lambda
  # (all ones: the paper's headline setting Lambda = I).
  c.task = ml_collections.ConfigDict(dict(n_dims=5, n_points=21, covariance_diag=(1.0,) * 5))
  c.model = ml_collections.ConfigDict(dict(init_scale=0.1))
  # Small-step SGD, the discretised gradient flow; the cosine decay keeps the SGD noise around the
  # gradient-flow limit small at the end.
  c.optimizer = common.optimizer("sgd", 0.02, schedule="cosine", final_fraction=0.02)
  c.train = common.train(steps=5000, batch_size=4096, log_every=100, checkpoint_every=0)
  # eval_lengths: context lengths M tested; task shift w ~ N(task_shift_mean * 1, I) at test time;
  # covariate shift: test inputs ~ N(0, c^2 Lambda) for c in covariate_scales.
  c.eval = ml_collections.ConfigDict(dict(
      num_prompts=50_000, eval_lengths=(5, 10, 20, 40, 80, 160, 320), task_shift_mean=1.0,
      covariate_scales=(0.5, 2.0)))
  if arg == "smoke":
    c.optimizer.learning_rate = 0.04
    c.train.update(steps=800, batch_size=1024)
    c.eval.update(num_prompts=8000, eval_lengths=(5, 20, 80, 320))
  return c
