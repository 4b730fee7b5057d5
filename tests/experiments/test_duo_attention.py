"""DuoAttention run: passkey scoring through a cache, KV bytes, and the run end to end (slow)."""

import jax.numpy as jnp
import numpy as np
import pytest

from configs import duo_attention as cfg_module
from experiments import duo_attention as exp
from jaxllm.inference import cost_model as cm
from jaxllm.inference import decode, duo
from jaxllm.inference.policies import Policy
from tests.inference import helpers


def _samples(n=6, length=40):
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, helpers.VOCAB, (n, length)).astype(np.int32)
  answer = np.zeros((n, length), bool)
  answer[:, -3:] = True
  return tokens, answer


@pytest.mark.slow
def test_passkey_accuracy_through_the_full_cache_is_the_models_own():
  """On a model's own greedy continuations accuracy is 1; one wrong answer token makes it 0."""
  model = helpers.model(num_kv_heads=2)
  tokens, answer = _samples()
  prompt = jnp.asarray(tokens[:, :-3])
  greedy = decode.generate(model, prompt, 3)["tokens"]  # the answer it will be scored on
  own = np.concatenate([tokens[:, :-3], np.asarray(greedy)], axis=1)
  assert exp.passkey_accuracy(model, Policy("full"), own, answer, batch=4) == 1.0
  wrong = own.copy()
  wrong[:3, -1] = (wrong[:3, -1] + 1) % helpers.VOCAB
  assert exp.passkey_accuracy(model, Policy("full"), wrong, answer, batch=4) == 0.5


def test_kv_bytes_of_the_run_match_the_cost_model():
  model = helpers.model(num_kv_heads=2)
  spec = cm.spec_from_model_config(model.cfg, bytes_per_element=4)
  policy = duo.DuoPolicy.from_pattern({"alpha": np.asarray([[0.1, 0.9], [0.8, 0.2]])}, 0.5,
                                      sinks=2, recent=6)
  want = cm.kv_bytes(spec, 30 + 4, 1, cm.Policy("duo", fraction=0.5, sink=2, recent=6))
  assert exp.kv_bytes(model, policy, 30, 4) == want
  assert exp.kv_bytes(model, Policy("full"), 30, 4) == cm.kv_bytes(spec, 34, 1, cm.Policy())


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
  config = cfg_module.get_config("smoke")
  config.base.update(steps=20, warmup_steps=5, batch_size=4, seq_len=128)
  config.gates.update(steps=4, batch_size=2, seq_len=128, log_every=2)
  config.eval.update(seq_len=128, num_samples=8, batch_size=8, decode_tokens=4, decode_batch=2)
  config.deploy.random_seeds = (0,)
  out = exp.run(config, str(tmp_path))
  alpha = np.asarray(out["alpha"])
  assert alpha.shape == (2, 4) and np.all((alpha >= 0) & (alpha <= 1))
  pattern = duo.load_pattern(out["pattern_file"])
  np.testing.assert_allclose(pattern["alpha"], alpha)
  rows = {r["policy"]: r for r in out["rows"]}
  for r in rows.values():
    if "kv_bytes_cost_model" in r:
      assert r["kv_bytes"] == r["kv_bytes_cost_model"]
  assert rows["full"]["kv_bytes"] > rows["duo@0.5 (learned gates)"]["kv_bytes"]
  assert (tmp_path / "results.json").exists() and (tmp_path / "base" / "config.json").exists()
