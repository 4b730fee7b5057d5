"""Bayesian prism (Panwar et al.): transformers trained on a mixture of regression priors track the
posterior mean of that mixture.

Smoke (d = 5 dense+sparse mixture and a Fourier prior with frequencies up to 3, one 3-layer model
each with a curriculum over d and k, about ten minutes on 2 CPU cores):
  python -m jaxllm.main --config=configs/icl/bayesian_prism.py:smoke --workdir=runs/bayesian_prism
Paper scale (d = 20, one 12-layer model per prior, 500k steps each; the low-rank family uses
d = task.lowrank_dims = 16, a 4 x 4 matrix of rank task.rank = 1, since 20 is not a square):
  python -m jaxllm.main --config=configs/icl/bayesian_prism.py --workdir=runs/bayesian_prism_full
Figure:
  python scripts/figures/fig_bayesian_prism.py --workdir=runs/bayesian_prism
"""

import ml_collections

ARGS = (None, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in ARGS:
    raise ValueError(f"configs/icl/bayesian_prism.py: unknown arg {arg!r}; allowed: {list(ARGS)}")
  c = ml_collections.ConfigDict()
  c.experiment = "icl.bayesian_prism"
  c.seed = 0
  c.task = ml_collections.ConfigDict(dict(
      n_dims=20, n_points=41, sparsity=3, noise_std=0.1, max_freq=10, half_period=5.0,
      num_monomials=20, rank=1, lowrank_dims=16,
      train_priors=("dense", "sparse", "sign", "dense+sparse", "dense+sign", "fourier",
                    "monomial", "lowrank")))
  c.task.curriculum = ml_collections.ConfigDict(dict(
      dims_start=5, dims_inc=1, points_start=11, points_inc=2, interval=2000))
  c.model = ml_collections.ConfigDict(dict(
      style="gpt2", d_model=256, num_layers=12, num_heads=8, num_kv_heads=None, max_len=128,
      attention="dense", attention_impl="auto", attention_options={}, dtype="float32"))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-4, schedule="constant", warmup_steps=0, grad_clip=None,
      hparams={}))
  c.train = ml_collections.ConfigDict(dict(
      steps=500_000, batch_size=64, log_every=500, checkpoint_every=10_000))
  c.eval = ml_collections.ConfigDict(dict(num_prompts=1280))
  if arg == "smoke":
    c.task.update(n_dims=5, n_points=16, sparsity=1, max_freq=3)
    c.task.train_priors = ("dense+sparse", "fourier")
    c.task.curriculum = ml_collections.ConfigDict(dict(
        dims_start=2, dims_inc=1, points_start=6, points_inc=2, interval=300))
    c.model.update(d_model=64, num_layers=3, num_heads=2, max_len=64)
    c.optimizer.update(learning_rate=1e-3, schedule="cosine", warmup_steps=200, grad_clip=1.0)
    c.train.update(steps=4000, batch_size=64, log_every=100, checkpoint_every=1000)
    c.eval.num_prompts = 512
  return c
