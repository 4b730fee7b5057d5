"""Deployment cost model: the paper's 34B / 50K worked example, policy accounting, the CLI."""

import json
import os
import subprocess
import sys

import pytest

from jaxllm.inference import cost_model as cm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Fu 2024's example: a 34B model with 60 layers, 8 KV heads, head dim 128 (56 query heads), bf16.
SPEC_34B = cm.ModelSpec(params=34e9, layers=60, kv_heads=8, head_dim=128, q_heads=56)
A100 = cm.HARDWARE["a100-80gb"]


def test_worked_example_34b_on_one_a100():
  assert SPEC_34B.kv_bytes_per_token == 245_760
  assert cm.kv_bytes(SPEC_34B, 50_000) == 245_760 * 50_000  # 12.3 GB
  assert abs(cm.kv_bytes(SPEC_34B, 50_000) / 1e9 - 12.29) < 0.01
  # Prefill of 4K tokens, compute bound: 2 x 34e9 x 4096 / 312e12 = 0.893 s.
  linear = cm.prefill_flops(SPEC_34B, 4096, attention=False) / A100.peak_flops
  assert abs(linear - 0.8926) < 1e-3
  full = cm.estimate(SPEC_34B, A100, 4096)
  assert 0.89 < full["prefill_seconds"] < 0.95  # the causal attention term adds about 5%
  # Concurrency: (80 GiB - 68 GB of weights) / KV per user.
  assert cm.estimate(SPEC_34B, A100, 4096)["concurrency"] == 17
  assert cm.estimate(SPEC_34B, A100, 50_000)["concurrency"] == 1
  # Decode step at batch 1 and 50K: (68 GB + 12.3 GB) / 2.039 TB/s.
  step = cm.estimate(SPEC_34B, A100, 50_000)["decode_seconds_per_step"]
  assert step == pytest.approx((68e9 + 245_760 * 50_000) / 2.039e12, rel=1e-12)
  # Context switch: the cache out and back in over PCIe 4.0 x16.
  switch = cm.estimate(SPEC_34B, A100, 50_000)["context_switch_seconds"]
  assert switch == pytest.approx(2 * 245_760 * 50_000 / 32e9, rel=1e-12)


def test_policies_change_cached_tokens_and_attended_pairs():
  spec = cm.ModelSpec(params=1e6, layers=2, kv_heads=4, head_dim=8, q_heads=8)
  per_token = spec.kv_bytes_per_token
  assert cm.kv_bytes(spec, 1000, 3) == 3 * 1000 * per_token
  assert cm.kv_bytes(spec, 1000, 1, cm.Policy("h2o", budget=100)) == 100 * per_token
  assert cm.kv_bytes(spec, 50, 1, cm.Policy("sirllm", budget=100)) == 50 * per_token
  duo = cm.Policy("duo", fraction=0.25, sink=4, recent=16)
  assert duo.streaming_heads(spec) == 2  # a quarter of 2 x 4 KV heads
  bytes_per_head_token = 2 * spec.head_dim * spec.bytes_per_element
  assert cm.kv_bytes(spec, 1000, 1, duo) == bytes_per_head_token * (6 * 1000 + 2 * 20)
  # Prefill pairs: dense for eviction policies, a band of 20 keys for streaming heads.
  dense = 1000 * 1001 // 2
  band = 20 * 21 // 2 + 980 * 20
  assert cm.Policy("h2o", budget=100).attended_pairs(spec, 1000) == 8 * dense
  assert duo.attended_pairs(spec, 1000) == 6 * dense + 2 * band
  assert cm.Policy("window", budget=20).attended_pairs(spec, 1000) == 8 * band
  # Brute force of the band count.
  assert band == sum(min(t, 20) for t in range(1, 1001))


def test_decode_throughput_grows_with_batch_until_memory_runs_out():
  small = cm.estimate(SPEC_34B, A100, 4096, batch=1)
  big = cm.estimate(SPEC_34B, A100, 4096, batch=8)
  assert big["decode_tokens_per_second"] > 5 * small["decode_tokens_per_second"]
  assert big["fits"] and not cm.estimate(SPEC_34B, A100, 50_000, batch=2)["fits"]


def test_spec_from_hf_config_counts_llama_parameters():
  cfg = dict(model_type="llama", num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
             num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
             tie_word_embeddings=False)
  spec = cm.spec_from_hf_config(cfg)
  assert spec.params == 8_030_261_248 - 32 * 2 * 4096 - 4096  # Llama-3-8B less its norm weights
  assert (spec.layers, spec.kv_heads, spec.head_dim, spec.q_heads) == (32, 8, 128, 32)


@pytest.mark.parametrize("kw, field", [
    (dict(name="lru"), "policy"), (dict(name="h2o"), "budget"),
    (dict(name="duo", fraction=1.5), "fraction")])
def test_bad_policy_is_a_value_error(kw, field):
  with pytest.raises(ValueError, match=field):
    cm.Policy(**kw)


def test_bad_hardware_is_a_value_error():
  with pytest.raises(ValueError, match="hbm_bandwidth"):
    cm.Hardware("x", 1e12, 1e9, 0.0, 1e9)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "jaxllm.inference.cost_model", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_spec_from_jaxllm_config_counts_the_model_parameters():
  from configs import lm_efficiency
  from flax import nnx
  import jax
  from jaxllm.models.config import TransformerConfig
  from jaxllm.models.transformer import Transformer
  mcfg = lm_efficiency.get_config("smoke").model
  spec = cm.spec_from_model_config(mcfg, vocab_size=256)
  model = Transformer(TransformerConfig.from_config(dict(mcfg.to_dict(), vocab_size=256)),
                      rngs=nnx.Rngs(0))
  assert spec.params == sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert (spec.layers, spec.q_heads) == (mcfg.num_layers, mcfg.num_heads)


def test_cli_on_hf_config_writes_json_and_figure(tmp_path):
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text(json.dumps(dict(
      model_type="llama", num_hidden_layers=60, hidden_size=7168, num_attention_heads=56,
      num_key_value_heads=8, intermediate_size=20480, vocab_size=64000)))
  out = tmp_path / "cost.json"
  proc = _cli(f"--model={hf}", "--context=4096,50000", "--policy=full",
              "--policy=duo:fraction=0.5", f"--out={out}")
  assert proc.returncode == 0, proc.stderr
  rows = json.loads(out.read_text())["rows"]
  assert [r["policy"] for r in rows] == ["full", "full", "duo(fraction=0.5)", "duo(fraction=0.5)"]
  assert rows[1]["kv_bytes"] == 245_760 * 50_000
  assert (tmp_path / "cost.png").exists()


@pytest.mark.parametrize("args, word", [
    (["--context=4096"], "--model"),
    (["--model=/nonexistent", "--context=4096"], "/nonexistent"),
    (["--model=configs/lm_efficiency.py"], "vocab_size"),
    (["--model=configs/lm_efficiency.py", "--vocab_size=256", "--policy=h2o"], "budget"),
    (["--model=configs/lm_efficiency.py", "--vocab_size=256", "--hardware=custom"], "peak_flops"),
    (["--model=configs/lm_efficiency.py", "--hardware=tpu9"], "hardware"),
])
def test_cli_bad_input_exits_2_with_one_line(args, word):
  proc = _cli(*args)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and word in lines[0], proc.stderr


@pytest.mark.parametrize("policy", [cm.Policy("full"), cm.Policy("h2o", budget=8),
                                    cm.Policy("streaming", budget=8)], ids=lambda p: p.label)
def test_predicted_kv_bytes_equal_jaxllm_cache(policy):
  """The cost model's KV bytes equal what jaxllm's decoding cache holds after 20 + 5 tokens."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from jaxllm.inference import decode
  from jaxllm.inference.policies import Policy
  from jaxllm.models.config import TransformerConfig
  from jaxllm.models.transformer import Transformer
  cfg = TransformerConfig(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=64,
                          max_len=64, positions="rope", norm="rmsnorm", mlp="swiglu",
                          use_bias=False)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  batch, prompt, new = 3, 20, 5
  tokens = jax.random.randint(jax.random.key(1), (batch, prompt), 0, 64)
  jax_policy = Policy(policy.name, budget=policy.budget) if policy.budget else Policy("full")
  _, cache = decode.prefill(model, tokens, jax_policy, max_new_tokens=new)
  for i in range(new):
    _, cache, _ = decode.decode_step(model, cache, jnp.full((batch,), i, jnp.int32))
  spec = cm.spec_from_model_config(cfg, bytes_per_element=4)
  predicted = cm.kv_bytes(spec, prompt + new, batch, policy)
  per_token = 2 * cfg.dim_per_head * 4  # keys and values of one token in one kv head
  held = sum(int(np.sum(np.asarray(layer.pos) >= 0)) for layer in cache.layers) * per_token
  assert held == predicted
  allocated = sum(layer.k.nbytes + layer.v.nbytes for layer in cache.layers)
  if policy.name == "full":
    assert allocated == predicted  # the full cache allocates exactly the tokens it holds
  else:  # bounded caches hold one transient slot for the newest token beyond the budget
    assert allocated == predicted * (policy.budget + 1) // policy.budget
