"""LLM efficiency run: softmax vs linear vs lightning attention on associative recall and bytes.

Smoke (a few minutes on 2 CPU cores):
  python -m jaxllm.main --config=configs/lm_efficiency.py:smoke --workdir=runs/lm_efficiency_smoke
Full (small LMs, still CPU-sized):
  python -m jaxllm.main --config=configs/lm_efficiency.py --workdir=runs/lm_efficiency
Figure:
  python scripts/figures/fig_lm_efficiency.py --workdir=runs/lm_efficiency_smoke

Every variant shares the model below (width, depth, heads, data, steps, optimizer) and changes
only its attention, or for ``transnormer`` the block (TransNormerLLM: SRMSNorm, gated lightning
attention, simple GLU).
"""

import ml_collections

from jaxllm.data.pipeline import text_config

ARGS = (None, "smoke", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in ARGS:
    raise ValueError(f"configs/lm_efficiency.py: unknown arg {arg!r}; allowed: {list(ARGS)}")
  c = ml_collections.ConfigDict()
  c.experiment = "lm_efficiency"
  c.seed = 0
  c.tasks = ["recall", "text"]
  c.recall = ml_collections.ConfigDict(dict(num_pairs=32, num_queries=32, num_keys=128,
                                            num_values=128))
  # Python's stdlib sources as bytes, a TFDS dataset built on first use (jaxllm.data.pipeline).
  c.text = text_config(seq_len=256)
  c.model = ml_collections.ConfigDict(dict(
      style="llama", d_model=128, num_layers=4, num_heads=4, num_kv_heads=None,
      attention_impl="auto", dtype="float32"))
  c.variants = ml_collections.ConfigDict(dict(
      softmax=dict(attention="dense", attention_options={}),
      linear=dict(attention="linear", attention_options={"feature_map": "elu1"}),
      lightning=dict(attention="lightning", attention_options={"chunk_size": 64}),
      transnormer=dict(block="transnormer", attention="lightning",
                       attention_options={"chunk_size": 64}),
  ))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=100, grad_clip=1.0,
      hparams={}))
  c.train = ml_collections.ConfigDict(dict(steps=3000, batch_size=32, log_every=50,
                                           checkpoint_every=1000))
  c.eval = ml_collections.ConfigDict(dict(num_sequences=512, timing_repeats=5))
  # Softmax recall read through a bounded KV cache (jaxllm.inference): half the pairs' tokens.
  c.eval.cache_policies = (dict(name="streaming", budget=32, sinks=4), dict(name="h2o", budget=32),
                           dict(name="tokenselect", budget=32, sinks=4, recent=8))

  if arg in ("smoke", "tiny"):
    c.recall.update(num_pairs=8, num_queries=8, num_keys=16, num_values=16)
    c.text.seq_len = 64
    c.model.update(d_model=64, num_layers=2, num_heads=4)
    c.variants.lightning.attention_options = {"chunk_size": 16}
    c.variants.transnormer.attention_options = {"chunk_size": 16}
    c.train.update(steps=500, batch_size=32, log_every=20, checkpoint_every=500)
    c.optimizer.update(learning_rate=3e-3, warmup_steps=40)
    c.eval.num_sequences = 256
    c.eval.cache_policies = (dict(name="streaming", budget=8, sinks=2), dict(name="h2o", budget=8),
                             dict(name="tokenselect", budget=8, sinks=2, recent=2))
  if arg == "tiny":  # seconds: wiring checks only
    c.model.update(d_model=32, num_layers=1, num_heads=2)
    c.train.update(steps=4, batch_size=4, log_every=2, checkpoint_every=4)
    c.optimizer.warmup_steps = 1
    c.eval.update(num_sequences=8, timing_repeats=1)
  return c
