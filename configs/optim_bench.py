"""Optimizer benchmark: a small Llama-style byte LM trained with each optimizer on one token budget.

Smoke (minutes on 2 CPU cores):
  python -m jaxllm.main --config=configs/optim_bench.py:smoke --workdir=runs/optim_bench_smoke
Full:
  python -m jaxllm.main --config=configs/optim_bench.py --workdir=runs/optim_bench
Figure:
  python scripts/figures/fig_optim_bench.py --workdir=runs/optim_bench_smoke

The AdamW learning rate and batch size come from Step Law for (N non-embedding params, D =
``token_budget``); ``train.batch_size`` > 0 overrides the batch. Each optimizer's entry gives its
published hyperparameters and either an absolute published learning rate (``lr``) or a published
multiple of the AdamW one (``lr_factor``); the value "step_law" inside hparams stands for the
Step-Law AdamW learning rate (used for the AdamW branch of Muon).
"""

import ml_collections

from jaxllm.data.pipeline import text_config

ARGS = (None, "smoke", "tiny")


def _optimizers(rank: int, long_run: bool) -> dict:
  gap = 200 if long_run else 50
  return {
      "adamw": dict(lr_factor=1.0, hparams=dict(b1=0.9, b2=0.95, weight_decay=0.1)),
      "adam": dict(lr_factor=1.0, hparams={}),
      "adafactor": dict(lr_factor=1.0, hparams={}),
      # Lion: lr 3-10x smaller and wd 3-10x larger than AdamW, b = (0.95, 0.98) for LMs.
      "lion": dict(lr_factor=1 / 3, hparams=dict(b1=0.95, b2=0.98, weight_decay=0.3)),
      "sophia_h": dict(lr_factor=1.0, hparams=dict(b1=0.965, b2=0.99, gamma=0.01,
                                                   weight_decay=0.1)),
      "sophia_g": dict(lr_factor=1.0, hparams=dict(b1=0.965, b2=0.99, rho=0.05,
                                                   weight_decay=0.2)),
      "adahessian": dict(lr=0.15, hparams=dict(b1=0.9, b2=0.999, eps=1e-4)),
      "galore": dict(lr=0.01, hparams=dict(rank=rank, update_proj_gap=gap, scale=0.25)),
      "fira": dict(lr=0.01, hparams=dict(rank=rank, update_proj_gap=gap, alpha=0.25)),
      "muon": dict(lr=0.02, hparams=dict(beta=0.95, other_learning_rate="step_law")),
      "spam": dict(lr_factor=1.0, hparams=dict(theta=5000.0,
                                               reset_interval=500 if long_run else 100,
                                               warmup=150 if long_run else 30)),
      "frugal": dict(lr_factor=1.0, hparams=dict(variant="block", density=0.25,
                                                 update_gap=gap)),
      "cosmos": dict(lr_factor=1.0, hparams=dict(rank=rank, lr_ratio=0.1, gamma=0.2)),
      "soap": dict(lr_factor=1.0, hparams=dict(b1=0.95, b2=0.95, weight_decay=0.01)),
      # Zeroth-order methods are fine-tuning methods; from scratch they only show the trend.
      "zo_sgd": dict(lr=1e-3, hparams=dict(eps=1e-3)),
      "zo_adam": dict(lr=1e-4, hparams=dict(eps=1e-3)),
      "forward_grad": dict(lr=1e-3, hparams={}),
  }


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in ARGS:
    raise ValueError(f"configs/optim_bench.py: unknown arg {arg!r}; allowed: {list(ARGS)}")
  c = ml_collections.ConfigDict()
  c.experiment = "optim_bench"
  c.seed = 0
  c.progress = True
  c.reference = "adamw"
  c.token_budget = 20_000_000
  c.warmup_fraction = 0.1
  # Python's stdlib sources as bytes, a TFDS dataset built on first use (jaxllm.data.pipeline).
  c.text = text_config(seq_len=256)
  c.model = ml_collections.ConfigDict(dict(
      style="llama", d_model=256, num_layers=4, num_heads=4, num_kv_heads=None,
      attention_impl="auto", dtype="float32"))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-3, schedule="cosine", warmup_steps=0, grad_clip=1.0,
      hparams={}))
  c.train = ml_collections.ConfigDict(dict(steps=1, batch_size=0, log_every=20,
                                           checkpoint_every=0))
  c.eval = ml_collections.ConfigDict(dict(num_sequences=256, timing_repeats=20))
  c.optimizers = _optimizers(rank=64, long_run=True)
  if arg in ("smoke", "tiny"):
    c.token_budget = 240_000
    c.text.seq_len = 64
    c.model.update(d_model=64, num_layers=2, num_heads=4)
    c.train.update(batch_size=16, log_every=10)
    c.eval.update(num_sequences=128, timing_repeats=20)
    c.optimizers = _optimizers(rank=16, long_run=False)
  if arg == "tiny":  # seconds: wiring checks only
    c.token_budget = 2_048
    c.model.update(d_model=32, num_layers=1, num_heads=2)
    c.train.update(batch_size=4, log_every=2)
    c.eval.update(num_sequences=8, timing_repeats=2)
    c.optimizers = {k: v for k, v in c.optimizers.items() if k in ("adamw", "sophia_g", "fira",
                                                                   "zo_sgd")}
  return c
