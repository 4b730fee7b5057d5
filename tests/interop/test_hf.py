"""load_hf / save_hf against checkpoints and outputs written by transformers
(scripts/make_interop_fixtures.py; no torch needed here)."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from jaxllm.inference import decode
from jaxllm.interop import hf, load_hf, save_hf
from jaxllm.models.config import TransformerConfig

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "interop")
FAMILIES = ("llama", "llama3", "mistral", "qwen2", "gpt2")


def _expected(name):
  return dict(np.load(os.path.join(DATA, name, "expected.npz")))


def _tensors(path):
  """{name: (dtype string, shape, raw bytes)} over every safetensors file in ``path``."""
  out = {}
  for file in sorted(f for f in os.listdir(path) if f.endswith(".safetensors")):
    with safe_open(os.path.join(path, file), framework="numpy") as f:
      for key in f.keys():
        x = f.get_tensor(key)
        out[key] = (str(x.dtype), x.shape, x.tobytes())
  return out


@pytest.fixture(scope="module")
def models():
  return {name: load_hf(os.path.join(DATA, name)) for name in FAMILIES}


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_and_greedy_match_transformers(models, name):
  e = _expected(name)
  model = models[name]
  logits = model(jnp.asarray(e["prompt"]))
  assert logits.shape == e["logits"].shape
  np.testing.assert_allclose(np.asarray(logits), e["logits"], atol=1e-4, rtol=0)
  out = decode.generate(model, e["prompt"], e["greedy"].shape[1])
  np.testing.assert_array_equal(np.asarray(out["tokens"]), e["greedy"])


def test_family_options_reach_the_model(models):
  cfgs = {n: m.cfg for n, m in models.items()}
  assert dict(cfgs["llama3"].rope_scaling) == dict(
      type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_len=16)
  assert cfgs["llama3"].rope_theta == 500000.0 and cfgs["llama3"].kv_heads == 1
  assert dict(cfgs["mistral"].attention_options) == {"window": 5}
  assert cfgs["mistral"].dim_per_head == 16 and cfgs["mistral"].d_model == 32
  assert cfgs["qwen2"].qkv_bias and not cfgs["qwen2"].use_bias and cfgs["qwen2"].tie_embeddings
  assert cfgs["gpt2"].tie_embeddings and cfgs["gpt2"].positions == "learned"


@pytest.mark.parametrize("name,field,value", [
    ("llama3", "rope_scaling", ()),  # llama3 frequencies read as plain rope
    ("mistral", "attention_options", ()),  # no sliding window
])
def test_dropping_an_option_breaks_parity(models, name, field, value):
  """The fixtures are sensitive to the options the importer maps: without them the logits move."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from jaxllm.interop import checkpoint  # pylint: disable=g-import-not-at-top
  e = _expected(name)
  wrong = checkpoint.with_config(models[name], **{field: value})
  assert dataclasses.replace(models[name].cfg, **{field: value}) == wrong.cfg
  diff = np.abs(np.asarray(wrong(jnp.asarray(e["prompt"]))) - e["logits"]).max()
  assert diff > 1e-2


def test_bfloat16_load_is_close():
  e = _expected("llama")
  model = load_hf(os.path.join(DATA, "llama"), dtype="bfloat16")
  assert model.blocks[0].attn.wq.kernel.value.dtype == jnp.bfloat16
  logits = np.asarray(model(jnp.asarray(e["prompt"])))
  assert np.abs(logits - e["logits"]).max() <= 5e-2 * np.abs(e["logits"]).max()


@pytest.mark.parametrize("name", FAMILIES)
def test_export_round_trip_is_exact(models, name, tmp_path):
  src = os.path.join(DATA, name)
  save_hf(models[name], str(tmp_path))
  assert _tensors(str(tmp_path)) == _tensors(src)
  again = load_hf(str(tmp_path))
  assert again.cfg == models[name].cfg
  configs = []
  for path in (src, str(tmp_path)):
    with open(os.path.join(path, "config.json")) as f:
      configs.append(hf.config_from_hf(json.load(f)))
  assert configs[0] == configs[1]


def test_sharded_export(models, tmp_path):
  save_hf(models["llama"], str(tmp_path), max_shard_bytes=20_000)
  files = sorted(os.listdir(tmp_path))
  shards = [f for f in files if f.endswith(".safetensors")]
  assert len(shards) > 2 and "model.safetensors.index.json" in files
  assert "model.safetensors" not in files
  assert _tensors(str(tmp_path)) == _tensors(os.path.join(DATA, "llama"))
  e = _expected("llama")
  np.testing.assert_array_equal(np.asarray(load_hf(str(tmp_path))(jnp.asarray(e["prompt"]))),
                                np.asarray(models["llama"](jnp.asarray(e["prompt"]))))
  save_hf(models["llama"], str(tmp_path))  # an unsharded save replaces the shards
  assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def test_gpt2_without_prefix_loads(models, tmp_path):
  """The original gpt2 upload names tensors without ``transformer.`` and keeps mask buffers."""
  src = os.path.join(DATA, "gpt2")
  shutil.copy(os.path.join(src, "config.json"), tmp_path)
  t = {k.removeprefix("transformer."): v for k, v in load_file(
      os.path.join(src, "model.safetensors")).items()}
  t["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
  save_file(t, os.path.join(tmp_path, "model.safetensors"))
  e = _expected("gpt2")
  np.testing.assert_array_equal(np.asarray(load_hf(str(tmp_path))(jnp.asarray(e["prompt"]))),
                                np.asarray(models["gpt2"](jnp.asarray(e["prompt"]))))


def _variant(tmp_path, name, *, config=None, tensors=None):
  """A copy of fixture ``name`` with config fields replaced (None deletes) and tensors edited."""
  src = os.path.join(DATA, name)
  with open(os.path.join(src, "config.json")) as f:
    cfg = json.load(f)
  for k, v in (config or {}).items():
    if v is None:
      cfg.pop(k, None)
    else:
      cfg[k] = v
  with open(os.path.join(tmp_path, "config.json"), "w") as f:
    json.dump(cfg, f)
  t = load_file(os.path.join(src, "model.safetensors"))
  if tensors:
    tensors(t)
  save_file(t, os.path.join(tmp_path, "model.safetensors"))
  return str(tmp_path)


@pytest.mark.parametrize("name,config,tensors,match", [
    ("llama", {"model_type": "falcon"}, None, "model_type='falcon'.*allowed"),
    ("llama", None, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"),
     "lacks the tensor 'model.layers.1.mlp.up_proj.weight'"),
    ("llama", None, lambda t: t.update({"model.layers.0.extra.weight": np.zeros(3, np.float32)}),
     r"does not use: \['model.layers.0.extra.weight'\]"),
    ("llama", None, lambda t: t.update({"model.norm.weight": np.zeros(31, np.float32)}),
     r"'model.norm.weight' has shape \[31\], config.json implies \[32\]"),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, None,
     "rope_type='yarn'"),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "factor": 2.0}}, None,
     "lacks.*low_freq_factor"),
    ("llama", {"hidden_act": "gelu"}, None, "hidden_act='gelu'"),
    ("llama", {"attention_bias": True}, None, "attention_bias=True"),
    ("llama", {"num_key_value_heads": 3}, None, "num_kv_heads=3"),
    ("llama", {"hidden_size": None}, None, "lacks the field 'hidden_size'"),
    ("qwen2", {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 4},
     None, "layer_types mixes"),
    ("qwen2", None, lambda t: t.update({"lm_head.weight": np.ones((96, 32), np.float32)}),
     "'lm_head.weight' differs from the embedding"),
    ("gpt2", {"activation_function": "relu"}, None, "activation_function='relu'"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, None, "scale_attn_by_inverse_layer_idx"),
])
def test_bad_input_names_the_field(tmp_path, name, config, tensors, match):
  path = _variant(tmp_path, name, config=config, tensors=tensors)
  with pytest.raises(ValueError, match=match):
    load_hf(path)


def test_tied_head_equal_to_embedding_is_accepted(models, tmp_path):
  path = _variant(tmp_path, "qwen2", tensors=lambda t: t.update(
      {"lm_head.weight": t["model.embed_tokens.weight"].copy()}))
  e = _expected("qwen2")
  np.testing.assert_array_equal(np.asarray(load_hf(path)(jnp.asarray(e["prompt"]))),
                                np.asarray(models["qwen2"](jnp.asarray(e["prompt"]))))


def test_bad_directory_and_dtype(tmp_path):
  with pytest.raises(ValueError, match="no config.json"):
    load_hf(str(tmp_path))
  shutil.copy(os.path.join(DATA, "llama", "config.json"), tmp_path)
  with pytest.raises(ValueError, match="neither model.safetensors nor"):
    load_hf(str(tmp_path))
  with pytest.raises(ValueError, match="dtype='float16'.*allowed"):
    load_hf(os.path.join(DATA, "llama"), dtype="float16")


def test_sharded_index_errors(tmp_path):
  src = os.path.join(DATA, "llama3")
  for f in os.listdir(src):
    shutil.copy(os.path.join(src, f), tmp_path)
  index = os.path.join(tmp_path, "model.safetensors.index.json")
  with open(index) as f:
    idx = json.load(f)
  idx["weight_map"]["model.norm.weight"] = "model-00009-of-00009.safetensors"
  with open(index, "w") as f:
    json.dump(idx, f)
  with pytest.raises(ValueError, match="model-00009-of-00009.safetensors"):
    load_hf(str(tmp_path))


def test_config_rejects_bad_rope_scaling():
  base = dict(vocab_size=8, d_model=16, num_heads=2, positions="rope")
  with pytest.raises(ValueError, match="rope_scaling.type"):
    TransformerConfig(**base, rope_scaling=(("type", "yarn"),))
  with pytest.raises(ValueError, match="needs exactly the keys"):
    TransformerConfig(**base, rope_scaling=(("factor", 8.0), ("type", "llama3")))
  with pytest.raises(ValueError, match="positions='rope'"):
    TransformerConfig(**{**base, "positions": "learned"}, rope_scaling=(
        ("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
        ("original_max_len", 16), ("type", "llama3")))


def test_export_refuses_models_without_a_layout():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxllm.models.transformer import build  # pylint: disable=g-import-not-at-top
  model = nnx.eval_shape(lambda: build(dict(
      style="llama", vocab_size=8, d_model=16, num_heads=2, num_layers=1, attention="linear"),
      rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="no Hugging Face layout"):
    save_hf(model, "/nonexistent/never-written")
  gqa = nnx.eval_shape(lambda: build(dict(
      style="gpt2", vocab_size=8, d_model=16, num_heads=4, num_kv_heads=2, num_layers=1),
      rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="num_kv_heads"):
    save_hf(gqa, "/nonexistent/never-written")


def test_export_refuses_a_family_that_drops_parameters(models):
  with pytest.raises(ValueError, match="qkv_bias=True does not fit llama"):
    save_hf(models["qwen2"], "/nonexistent/never-written", family="llama")
  with pytest.raises(ValueError, match=r"attention_options \['window'\] have no llama"):
    save_hf(models["mistral"], "/nonexistent/never-written", family="llama")


def test_bfloat16_checkpoint_round_trip_is_exact(tmp_path):
  """A bf16 checkpoint loaded as bf16 writes back the same bytes (no float32 detour)."""
  from safetensors.flax import load_file as load_jax, save_file as save_jax  # pylint: disable=g-import-not-at-top
  bf16, back = tmp_path / "bf16", tmp_path / "back"
  bf16.mkdir()
  shutil.copy(os.path.join(DATA, "llama", "config.json"), bf16)
  save_jax({k: v.astype(jnp.bfloat16) for k, v in load_jax(
      os.path.join(DATA, "llama", "model.safetensors")).items()},
           os.path.join(bf16, "model.safetensors"))
  model = load_hf(str(bf16), dtype=jnp.bfloat16)
  assert model.cfg.param_dtype == "bfloat16"
  save_hf(model, str(back))
  tensors = _tensors(str(back))
  assert tensors == _tensors(str(bf16)) and all(v[0] == "bfloat16" for v in tensors.values())
