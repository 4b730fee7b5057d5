"""Active / temporary forgetting of token embeddings: structural ICL on unseen tokens vs in-weights
learning (Anand et al. 2024, after Chen et al. 2023). Three regimes: vanilla, active forgetting
(re-draw the token embedding every k updates) and temporary forgetting (only early in training).

Smoke (three 2-layer width-64 decoders, a few minutes on 2 CPU cores):
  python -m jaxllm.main --config=configs/icl/active_forgetting.py:smoke --workdir=runs/active_forgetting
Paper-like scale (larger vocabulary, longer training, k = 1000):
  python -m jaxllm.main --config=configs/icl/active_forgetting.py --workdir=runs/active_forgetting_full
Figure:
  python scripts/figures/fig_active_forgetting.py --workdir=runs/active_forgetting
"""

import ml_collections

from configs.icl import common

ARGS = (None, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; ``arg`` is None (paper-like scale) or "smoke"."""
  common.check_arg("configs/icl/active_forgetting.py", arg, ARGS)
  c = ml_collections.ConfigDict()
  c.experiment = "icl.active_forgetting"
  c.seed = 0
  # L label tokens, S seen items (Zipf alpha, fixed labels), U unseen items (never in training);
  # a fraction p_bursty of training sequences is bursty (B copies of N / B items), and a fraction
  # p_relabel of those carries random in-context labels. Token embeddings are drawn N(0, embed_std^2)
  # at init and at every reset; a reset re-draws the rows of forget_rows ("items": every token but
  # the L labels; "all") and zeroes their Adam moments. With the decoder's default std 0.02 Adam
  # swamps the random part of a re-drawn row within a few updates, and unseen-token ICL stayed at
  # the context-chance level with and without forgetting.
  c.task = ml_collections.ConfigDict(dict(
      num_labels=16, num_seen=2048, num_unseen=512, alpha=1.0, num_examples=8, burstiness=2,
      p_bursty=0.75, p_relabel=1.0, embed_std=1.0, forget_rows="items"))
  c.model = common.backbone(style="llama", d_model=128, num_layers=4, num_heads=4, max_len=32,
                            tie_embeddings=False)
  # Adam without weight decay: rows of unseen items get zero gradient and stay at their init.
  c.optimizer = common.optimizer("adam", 3e-4, grad_clip=1.0)
  c.train = common.train(steps=60_000, batch_size=128, checkpoint_every=5000)
  c.eval = ml_collections.ConfigDict(dict(eval_every=2000, eval_size=2000))
  # Regimes: forget_every = k (0: never), forget_until = last update that may reset (None: all).
  c.runs = (dict(name="vanilla", forget_every=0),
            dict(name="active", forget_every=1000),
            dict(name="temporary", forget_every=1000, forget_until=20_000))
  if arg == "smoke":
    c.task.update(num_seen=512, num_unseen=128)
    c.model.update(d_model=64, num_layers=2, num_heads=2)
    c.optimizer.update(learning_rate=2e-3)
    c.train.update(steps=4800, batch_size=64, log_every=100, checkpoint_every=0)
    c.eval.update(eval_every=400, eval_size=500)
    # Vanilla copies in context from ~300 updates on and its unseen-token ICL plateaus from ~1200;
    # blocks of k = 100 with the label rows kept; temporary forgetting stops halfway.
    c.runs = (dict(name="vanilla", forget_every=0),
              dict(name="active", forget_every=100),
              dict(name="temporary", forget_every=100, forget_until=2400))
  return c
