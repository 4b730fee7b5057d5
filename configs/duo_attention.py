"""DuoAttention: learn per-KV-head gates on a frozen LM, deploy retrieval / streaming heads.

Full (the paper's gate-training defaults; needs a base model that retrieves passkeys, given as a
Hugging Face directory in ``base.load_dir`` or trained first from ``base``):
  python -m jaxllm.main --config=configs/duo_attention.py --workdir=runs/duo
Smoke (a tiny LM trained on the passkey task, then its gates; a few minutes on 2 CPU cores):
  python -m jaxllm.main --config=configs/duo_attention.py:smoke --workdir=runs/duo_smoke

Gate defaults follow REFERENCE / the paper: sink 128, recent 256, lr 0.02, 2000 steps, reg 0.05,
10 passkeys of 32 digits per haystack; deployment sink 64, recent 256 at 50% streaming heads.
Haystacks: ``config.text`` (default the stdlib sources as bytes, so passkeys are written as
Python assignments).
"""

import ml_collections

from jaxllm.data.pipeline import text_config

ARGS = (None, "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in ARGS:
    raise ValueError(f"configs/duo_attention.py: unknown arg {arg!r}; allowed: {list(ARGS)}")
  c = ml_collections.ConfigDict()
  c.experiment = "duo_attention"
  c.seed = 0
  c.text = text_config(seq_len=4096)
  c.model = ml_collections.ConfigDict(dict(
      style="llama", d_model=512, num_layers=8, num_heads=8, num_kv_heads=4,
      attention="dense", attention_impl="auto", attention_options={}, dtype="float32",
      rope_theta=10000.0))
  # The base LM: loaded from a Hugging Face directory, or trained on passkey haystacks (LM loss
  # on every token plus the answer tokens' loss) and saved as one under workdir/base.
  c.base = ml_collections.ConfigDict(dict(
      load_dir="", steps=5000, batch_size=8, learning_rate=1e-3, warmup_steps=200,
      seq_len=4096, num_passkeys=10, passkey_length=32))
  c.gates = ml_collections.ConfigDict(dict(
      steps=2000, learning_rate=0.02, reg=0.05, sinks=128, recent=256, batch_size=1,
      seq_len=4096, num_passkeys=10, passkey_length=32, log_every=50))
  c.deploy = ml_collections.ConfigDict(dict(sinks=64, recent=256, fraction=0.5,
                                            random_seeds=(0, 1, 2)))
  c.eval = ml_collections.ConfigDict(dict(
      seq_len=4096, num_samples=64, num_passkeys=10, passkey_length=32, batch_size=4,
      decode_tokens=64, decode_batch=1))
  if arg == "smoke":
    # One passkey per haystack: a 2-layer model learns to copy it within the smoke's budget.
    c.text.seq_len = 192
    c.model.update(d_model=64, num_layers=2, num_heads=4, num_kv_heads=4)
    c.base.update(steps=2000, batch_size=16, learning_rate=6e-3, warmup_steps=30, seq_len=192,
                  num_passkeys=1, passkey_length=6)
    c.gates.update(steps=200, sinks=8, recent=24, batch_size=4, seq_len=192, num_passkeys=1,
                   passkey_length=6, log_every=25)
    c.deploy.update(sinks=4, recent=24)
    c.eval.update(seq_len=192, num_samples=64, num_passkeys=1, passkey_length=6, batch_size=32,
                  decode_tokens=32, decode_batch=4)
  return c
