"""In-context linear regression (Garg et al. 2022), the default jaxllm job.

Smoke (the default job, d = 5, k up to 20, a few minutes on 2 CPU cores):
  python -m jaxllm.main --config=configs/icl/linear_regression.py:smoke --workdir=runs/linear_regression_smoke
Paper scale (d = 20, k up to 40, 12 layers / 8 heads / width 256, 500k steps):
  python -m jaxllm.main --config=configs/icl/linear_regression.py --workdir=runs/linear_regression
Figure:
  python scripts/figures/fig_linear_regression.py --workdir=runs/linear_regression_smoke
"""

import ml_collections

ARGS = (None, "smoke", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in ARGS:
    raise ValueError(f"configs/icl/linear_regression.py: unknown arg {arg!r}; allowed: {list(ARGS)}")
  c = ml_collections.ConfigDict()
  c.experiment = "icl.linear_regression"
  c.seed = 0

  c.task = ml_collections.ConfigDict()
  c.task.n_dims = 20
  c.task.n_points = 41  # k = 0..40 in-context examples
  c.task.noise_std = 0.0
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
  c.eval = ml_collections.ConfigDict(dict(num_prompts=1280, ridge_lambda=1e-3))

  if arg in ("smoke", "tiny"):
    c.task.n_dims = 5
    c.task.n_points = 21  # k = 0..20
    c.task.curriculum = ml_collections.ConfigDict(dict(
        dims_start=2, dims_inc=1, points_start=6, points_inc=3, interval=250))
    # Narrower and shallower than the paper's small scale (width 128, 4+ layers) so the run fits
    # in minutes on 2 CPU cores; a higher learning rate with warmup makes up for fewer steps.
    c.model.update(d_model=64, num_layers=3, num_heads=2, max_len=64)
    c.optimizer.update(learning_rate=1e-3, schedule="cosine", warmup_steps=200, grad_clip=1.0)
    c.train.update(steps=6000, batch_size=64, log_every=100, checkpoint_every=1000)
  if arg == "tiny":  # seconds: wiring checks only, not the paper's result
    c.model.update(d_model=32, num_layers=2, num_heads=2)
    c.optimizer.warmup_steps = 5
    c.train.update(steps=20, batch_size=8, log_every=5, checkpoint_every=10)
    c.eval.num_prompts = 64
  return c
