"""In-context learning with a fixed representation (Guo et al. 2023).

Paper scale (d = 20, Phi a ReLU MLP with hidden and output width D = 20, noise 0.1, k up to 40,
12 layers / 8 heads / width 256, batch 64, Adam, 300k steps; deeper Phi with
--config.task.phi_depth=3):
  python -m jaxllm.main --config=configs/icl/representations.py --workdir=runs/representations_full
Smoke (d = 5, D = 5, Phi of depth 2, k up to 20, a 4-layer width-64 model, 3000 steps; 23 minutes
measured on 2 CPU cores shared with several other jobs, far less on an idle machine):
  python -m jaxllm.main --config=configs/icl/representations.py:smoke --workdir=runs/representations
Figure:
  python scripts/figures/fig_representations.py --workdir=runs/representations
"""

import ml_collections

from configs.icl import common, linear_regression

ARGS = (None, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  common.check_arg("configs/icl/representations.py", arg, ARGS)
  # The foundation study's model, optimiser and k-curriculum; Phi needs all d inputs from the start.
  c = linear_regression.get_config()  # the paper scale; smoke_k20 shrinks it
  if arg == "smoke":
    linear_regression.smoke_k20(c)
  c.experiment = "icl.representations"
  # phi_depth counts weight matrices (ReLU between them); phi_seed fixes Phi for train and test.
  c.task.update(rep_dim=20, phi_hidden=20, phi_depth=2, phi_seed=1234, noise_std=0.1)
  c.task.curriculum.update(dims_start=c.task.n_dims, dims_inc=0)
  c.train.steps = 300_000
  # Probes: least-squares read-outs fitted on probe_train_prompts, scored on the num_prompts test
  # prompts; the y / ridge-on-Phi probes at each of context_lengths, the Phi probe at every x.
  c.eval = ml_collections.ConfigDict(dict(
      num_prompts=1280, probe_train_prompts=2000, probe_ridge=1e-4, context_lengths=(20, 40)))

  if arg == "smoke":
    c.task.update(rep_dim=5, phi_hidden=5)
    c.model.update(num_layers=4)
    c.train.update(steps=3000)
    c.eval.update(num_prompts=1000, probe_train_prompts=3000, context_lengths=(5, 10))
  return c
