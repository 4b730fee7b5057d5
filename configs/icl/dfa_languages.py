"""In-context language learning (Akyurek et al. 2024): random regular languages in context;
softmax attention against the linear-attention family.

Smoke (prompts packed to 96 tokens, about 15 strings of length 1-10; two width-64 2-layer models,
6000 Adam steps each at a constant learning rate, about 20 minutes on 2 CPU cores; the dense model
leaves the in-context-unigram plateau near step 4000):
  python -m jaxllm.main --config=configs/icl/dfa_languages.py:smoke --workdir=runs/dfa_languages
Paper scale (10-19 strings of length 1-49 per prompt, 5000 training DFAs):
  python -m jaxllm.main --config=configs/icl/dfa_languages.py --workdir=runs/dfa_languages_full
Figure:
  python scripts/figures/fig_dfa_languages.py --workdir=runs/dfa_languages
"""

import ml_collections

from configs.icl import common

ARGS = (None, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  common.check_arg("configs/icl/dfa_languages.py", arg, ARGS)
  c = ml_collections.ConfigDict()
  c.experiment = "icl.dfa_languages"
  c.seed = 0
  c.task = ml_collections.ConfigDict(dict(
      vocab_size=20, min_states=4, max_states=12, min_edges=1, max_edges=3,
      min_strings=10, max_strings=19, min_len=1, max_len=49, num_train_dfas=5000,
      prompt_tokens=0))  # > 0: pack strings into prompts of exactly this many tokens
  c.methods = ("dense", "linear", "lightning", "retention")
  c.model = common.backbone(num_layers=8, num_heads=4, max_len=1024)
  c.optimizer = common.optimizer("adamw", 2.5e-4, schedule="cosine", warmup_steps=1000,
                                 grad_clip=1.0)
  c.train = common.train(steps=100_000, batch_size=32)
  c.eval = ml_collections.ConfigDict(dict(num_prompts=500, ngram_orders=(1, 2, 3, 4),
                                          skip_strings=1, ngram_smoothing=0.1))
  if arg == "smoke":
    c.task.update(min_len=1, max_len=10, prompt_tokens=96)
    c.methods = ("dense", "linear")
    c.model.update(d_model=64, num_layers=2, num_heads=2, max_len=96)
    c.optimizer.update(learning_rate=2e-3, warmup_steps=100, schedule="constant")
    c.train.update(steps=6000, batch_size=32, log_every=100, checkpoint_every=1000)
    c.eval.num_prompts = 200
  return c
