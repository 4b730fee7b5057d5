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

from configs.icl import common

ARGS = (None, "smoke", "smoke_sweep")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; ``arg`` is None (paper scale), "smoke" or "smoke_sweep".

  "smoke_sweep" keeps the smoke training settings and sweeps burstiness B (at K = 4096) and the
  number of classes K (at B = 4).
  """
  common.check_arg("configs/icl/bursty.py", arg, ARGS)
  c = ml_collections.ConfigDict()
  c.experiment = "icl.bursty"
  c.seed = 0
  # Items of n_dims content dimensions plus a one-hot position of pos_dim (at least 2N + 1) randomly
  # shifted per sequence; N = num_examples item-label pairs before the query. burstiness,
  # num_classes, alpha and p_bursty are the defaults of every run; each entry of `runs` overrides
  # some of them.
  c.task = ml_collections.ConfigDict(dict(
      n_dims=63, pos_dim=65, num_labels=32, num_examples=8, eps=0.1, burstiness=4,
      num_classes=512, alpha=0.0, p_bursty=1.0))
  c.model = ml_collections.ConfigDict(dict(hidden=128))
  c.optimizer = common.optimizer("sgd", 0.01)
  c.train = common.train(steps=100_000, batch_size=128, log_every=1000, checkpoint_every=0)
  c.eval = ml_collections.ConfigDict(dict(eval_every=1000, eval_size=2000,
                                          icl_test_burstiness=4))
  c.runs = tuple(
      [dict(name=f"B{b}_K{k}", burstiness=b, num_classes=k)
       for b in (0, 1, 2, 4) for k in (128, 512, 2048)]
      + [dict(name="B4_K2048_alpha1_pB0.75", burstiness=4, num_classes=2048, alpha=1.0,
              p_bursty=0.75)])
  if arg in ("smoke", "smoke_sweep"):
    # Many classes make memorising slow, so the bursty run turns to ICL within ~2k Adam steps
    # (seed 0 on the shared trainer: ICL accuracy 0.60 at step 1400, 0.83 at 1800, 0.98 at 2400;
    # 1600 steps, enough for the study's former loop, stop mid-transition at 0.68).
    c.task.num_classes = 4096
    c.optimizer = common.optimizer("adam", 1e-3)
    c.train.update(steps=2400, log_every=200)
    c.eval.update(eval_every=200, eval_size=1000)
    c.runs = (dict(name="bursty_B4", burstiness=4), dict(name="iid_B0", burstiness=0))
  if arg == "smoke_sweep":
    c.runs = tuple(
        [dict(name=f"B{b}_K4096", burstiness=b) for b in (0, 1, 2, 4)]
        + [dict(name=f"B4_K{k}", burstiness=4, num_classes=k) for k in (128, 512, 1024)])
  return c
