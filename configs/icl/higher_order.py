"""Transformers learn higher-order optimisation methods in context (Fu et al. 2023).

Paper scale (d = 20, n up to 40, 12 layers / 8 heads / width 256; isotropic inputs, add
--config.task.condition_number=100 for the ill-conditioned run):
  python -m jaxllm.main --config=configs/icl/higher_order.py --workdir=runs/higher_order
Smoke (d = 5, n up to 20, a 3-layer width-64 model, 6000 steps, minutes on 2 CPU cores):
  python -m jaxllm.main --config=configs/icl/higher_order.py:smoke --workdir=runs/higher_order
Figure:
  python scripts/figures/fig_higher_order.py --workdir=runs/higher_order
"""

import ml_collections

ARGS = (None, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in ARGS:
    raise ValueError(f"configs/icl/higher_order.py: unknown arg {arg!r}; allowed: {list(ARGS)}")
  c = ml_collections.ConfigDict()
  c.experiment = "icl.higher_order"
  c.seed = 0

  c.task = ml_collections.ConfigDict(dict(n_dims=20, n_points=41, noise_std=0.0,
                                          condition_number=1.0))
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
  # Probes: least-squares read-outs fitted on probe_train_prompts, scored on num_prompts others.
  c.eval = ml_collections.ConfigDict(dict(
      num_prompts=2000, probe_train_prompts=8000, probe_ridge=1e-4, context_lengths=(20, 40),
      newton_iters=30, gd_lr=0.01, gd_steps=tuple(2 ** i for i in range(13))))
  # The algorithms alone, at the paper's d = 20, n = 40 (needs no training).
  c.algorithms = ml_collections.ConfigDict(dict(
      n_dims=20, n_points=40, num_prompts=500, condition_numbers=(1.0, 10.0, 100.0),
      max_newton_iters=60, gd_steps=tuple(2 ** i for i in range(17)), rel_tol=1e-2))

  if arg == "smoke":
    c.task.update(n_dims=5, n_points=21)
    c.task.curriculum = ml_collections.ConfigDict(dict(
        dims_start=2, dims_inc=1, points_start=6, points_inc=3, interval=250))
    # The foundation study's smoke model and schedule: 2000 steps leave it near the averaging
    # regime (every layer then matches Newton iteration 0), so this uses its proven 6000.
    c.model.update(d_model=64, num_layers=3, num_heads=2, max_len=64)
    c.optimizer.update(learning_rate=1e-3, schedule="cosine", warmup_steps=200, grad_clip=1.0)
    c.train.update(steps=6000, batch_size=64, log_every=100, checkpoint_every=1000)
    c.eval.update(num_prompts=1000, probe_train_prompts=3000, context_lengths=(5, 10),
                  newton_iters=20, gd_steps=tuple(2 ** i for i in range(11)))
    c.algorithms.update(num_prompts=200, gd_steps=tuple(2 ** i for i in range(14)))
  return c
