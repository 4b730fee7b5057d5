"""Long-context LM: a Llama-style model on real text, scored by position loss, passkey and needles.

Smoke (512-token training, evaluation up to 2048 = 4x; a few minutes on 2 CPU cores):
  python -m jaxllm.main --config=configs/lm_long.py:smoke --workdir=runs/lm_long_smoke
Full (2048-token training, evaluation up to 8192):
  python -m jaxllm.main --config=configs/lm_long.py --workdir=runs/lm_long
Any attention method:  --config.model.attention=lightning --config.model.attention_options='{}'
Figure:
  python scripts/figures/fig_lm_long.py --workdir=runs/lm_long_smoke

Data: ``config.text`` (jaxllm.data.pipeline; default Python's stdlib sources as bytes, packed by
concatenate-then-split). Evaluation (jaxllm.eval.long_context): ``eval.lengths`` are multiples of
the training length; needles at ``eval.depths`` in held-out text, written as Python assignments
(``eval.style="code"``) since the corpus is source code.
"""

import ml_collections

from jaxllm.data.pipeline import text_config

ARGS = (None, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in ARGS:
    raise ValueError(f"configs/lm_long.py: unknown arg {arg!r}; allowed: {list(ARGS)}")
  c = ml_collections.ConfigDict()
  c.experiment = "lm_long"
  c.seed = 0
  c.text = text_config(seq_len=2048, packing="concat")
  c.model = ml_collections.ConfigDict(dict(
      style="llama", d_model=512, num_layers=8, num_heads=8, num_kv_heads=4,
      attention="dense", attention_impl="auto", attention_options={}, dtype="float32",
      rope_theta=10000.0))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=6e-4, schedule="cosine", warmup_steps=500, grad_clip=1.0,
      hparams=dict(b1=0.9, b2=0.95, weight_decay=0.1)))
  c.train = ml_collections.ConfigDict(dict(steps=20_000, batch_size=16, log_every=50,
                                           checkpoint_every=1000))
  c.eval = ml_collections.ConfigDict(dict(
      length_multiples=(0.5, 1, 2, 4), depths=(0.0, 0.25, 0.5, 0.75, 1.0), num_samples=8,
      tasks=("passkey", "needle", "multikey"), num_keys=4, style="code",
      ppl_sequences=16, ppl_bucket=256, batch_size=4))
  if arg == "smoke":
    c.text.seq_len = 512
    c.model.update(d_model=64, num_layers=2, num_heads=4, num_kv_heads=2)
    c.optimizer.update(learning_rate=3e-3, warmup_steps=30)
    c.train.update(steps=200, batch_size=8, log_every=20, checkpoint_every=200)
    c.eval.update(num_samples=2, ppl_sequences=4, ppl_bucket=128, batch_size=4)
  return c
