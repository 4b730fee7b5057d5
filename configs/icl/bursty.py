"""Bursty in-context classification (Reddy 2023): ICL vs IWL, abrupt induction-head formation.

Paper scale (D = 63, L = 32, N = 8, eps = 0.1, SGD 0.01, batch 128; sweeps over burstiness B and the
number of classes K):
  python -m jaxllm.main --config=configs/icl/bursty.py --workdir=runs/bursty
Smoke (a few minutes on 2 CPU cores; a bursty run and a non-bursty control, K = 4096):
  python -m jaxllm.main --config=configs/icl/bursty.py:smoke --workdir=runs/bursty
Smoke-scale sweep (B in {0, 1, 2, 4} at K = 4096, K in {128, 512, 1024} at B = 4):
  python -m jaxllm.main --config=configs/icl/bursty.py:smoke_sweep --workdir=runs/bursty_sweep
Figure:
  python scripts/figures/fig_bursty.py --workdir=runs/bursty
"""

import ml_collections

ARGS = (None, "smoke", "smoke_sweep")


def get_config(arg=None):
  """Returns the config; `arg` is None (paper scale), "smoke" or "smoke_sweep".

  "smoke_sweep" keeps the smoke training settings and sweeps burstiness B (at K = 4096) and the
  number of classes K (at B = 4).
  """
  if arg not in ARGS:
    raise ValueError(f"unknown config arg {arg!r}; allowed: {ARGS}")
  config = ml_collections.ConfigDict()
  config.experiment = "icl.bursty"
  config.seed = 0
  config.dim = 63
  # One-hot positions, randomly shifted per sequence (at least 2N + 1).
  config.pos_dim = 65
  config.num_labels = 32
  config.num_examples = 8
  config.eps = 0.1
  config.hidden = 128
  # Defaults of every run; each entry of `runs` overrides some of them.
  config.burstiness = 4
  config.num_classes = 512
  config.alpha = 0.0
  config.p_bursty = 1.0
  config.icl_test_burstiness = 4
  config.optimizer = "sgd"
  config.learning_rate = 0.01
  config.batch_size = 128
  config.num_steps = 100_000
  config.eval_every = 1000
  config.eval_size = 2000
  config.runs = tuple(
      [dict(name=f"B{b}_K{k}", burstiness=b, num_classes=k)
       for b in (0, 1, 2, 4) for k in (128, 512, 2048)]
      + [dict(name="B4_K2048_alpha1_pB0.75", burstiness=4, num_classes=2048, alpha=1.0,
              p_bursty=0.75)])
  if arg in ("smoke", "smoke_sweep"):
    # Many classes make memorising slow, so the bursty run turns to ICL within ~1.5k Adam steps.
    config.num_classes = 4096
    config.optimizer = "adam"
    config.learning_rate = 1e-3
    config.num_steps = 1600
    config.eval_every = 200
    config.eval_size = 1000
    config.runs = (dict(name="bursty_B4", burstiness=4), dict(name="iid_B0", burstiness=0))
  if arg == "smoke_sweep":
    config.runs = tuple(
        [dict(name=f"B{b}_K4096", burstiness=b) for b in (0, 1, 2, 4)]
        + [dict(name=f"B4_K{k}", burstiness=4, num_classes=k) for k in (128, 512, 1024)])
  return config
