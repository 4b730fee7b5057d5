"""The conversion and generation command lines on the transformers fixtures."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer

from jaxllm import generate
from jaxllm.interop import checkpoint, convert, load_hf
from tests.interop.test_hf import DATA, _expected, _tensors

PROMPT = "the quick brown fox"  # the fixtures' text prompt (scripts/make_interop_fixtures.py)


def _exit_line(capsys, fn, argv):
  with pytest.raises(SystemExit) as e:
    fn(argv)
  err = capsys.readouterr().err.strip()
  assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err
  return err


def test_convert_there_and_back_is_exact(tmp_path, capsys):
  ckpt, back = str(tmp_path / "ckpt"), str(tmp_path / "hf")
  convert.main([f"--hf={os.path.join(DATA, 'llama3')}", f"--out={ckpt}"])
  assert "llama" in capsys.readouterr().out
  assert os.path.exists(os.path.join(ckpt, "tokenizer.json"))
  assert checkpoint.info(ckpt)["family"] == "llama"
  model = checkpoint.load(ckpt)
  assert model.cfg == load_hf(os.path.join(DATA, "llama3")).cfg
  convert.main(["--to_hf", f"--checkpoint={ckpt}", f"--out={back}", "--shard_mb=0.05"])
  assert "model.safetensors.index.json" in os.listdir(back)
  assert _tensors(back) == _tensors(os.path.join(DATA, "llama3"))


def test_converted_checkpoint_generates_transformers_greedy_text(tmp_path, capsys):
  ckpt = str(tmp_path / "ckpt")
  convert.main([f"--hf={os.path.join(DATA, 'mistral')}", f"--out={ckpt}"])
  capsys.readouterr()
  e = _expected("mistral")
  tok = Tokenizer.from_file(os.path.join(DATA, "mistral", "tokenizer.json"))
  assert tok.encode(PROMPT).ids == e["text_prompt"][0].tolist()
  n = e["text_greedy"].shape[1]
  generate.main([f"--checkpoint={ckpt}", f"--prompt={PROMPT}", f"--max_new_tokens={n}", "--ids"])
  text, ids = capsys.readouterr().out.rstrip("\n").split("\n")
  assert [int(i) for i in ids.split()] == e["text_greedy"][0].tolist()
  assert text == tok.decode(e["text_greedy"][0].tolist())


def test_generate_module_runs_on_a_hugging_face_directory():
  """The real entry point, with an evicting policy (budget below the sequence length)."""
  e = _expected("gpt2")
  n = e["text_greedy"].shape[1]
  out = subprocess.run(
      [sys.executable, "-m", "jaxllm.generate", f"--checkpoint={os.path.join(DATA, 'gpt2')}",
       f"--prompt={PROMPT}", f"--max_new_tokens={n}", "--policy=streaming", "--budget=64",
       "--ids"], capture_output=True, text=True, timeout=300, check=True)
  ids = [int(i) for i in out.stdout.rstrip("\n").split("\n")[-1].split()]
  assert ids == e["text_greedy"][0].tolist()  # budget 64 holds all 15 tokens: same as full


def test_generate_stops_at_the_checkpoint_eos(tmp_path, capsys):
  ckpt = str(tmp_path / "ckpt")
  convert.main([f"--hf={os.path.join(DATA, 'gpt2')}", f"--out={ckpt}"])
  capsys.readouterr()
  info_file = os.path.join(ckpt, checkpoint.MODEL_FILE)
  with open(info_file) as f:
    info = json.load(f)
  greedy = _expected("gpt2")["text_greedy"][0].tolist()
  info["eos_token_id"] = greedy[2]
  with open(info_file, "w") as f:
    json.dump(info, f)
  generate.main([f"--checkpoint={ckpt}", f"--prompt={PROMPT}", "--max_new_tokens=8", "--ids"])
  ids = capsys.readouterr().out.rstrip("\n").split("\n")[-1]
  first = greedy.index(greedy[2])
  assert [int(i) for i in ids.split()] == greedy[:first + 1]


@pytest.mark.parametrize("argv,match", [
    (["--out=x"], "import needs --hf"),
    (["--to_hf", "--out=x"], "--to_hf exports --checkpoint"),
    ([f"--hf={DATA}", "--out=x"], "no config.json"),
    (["--hf=x"], "--out"),
])
def test_convert_errors_are_one_line(capsys, argv, match):
  assert match in _exit_line(capsys, convert.main, argv)


@pytest.mark.parametrize("argv,match", [
    ([f"--checkpoint={DATA}", "--prompt=a"], "neither model.json"),
    ([f"--checkpoint={os.path.join(DATA, 'llama')}", "--prompt=a", "--policy=h2o"],
     "needs a budget"),
    ([f"--checkpoint={os.path.join(DATA, 'llama')}", "--prompt=a", "--policy=lru"],
     "invalid choice"),
    ([f"--checkpoint={os.path.join(DATA, 'llama')}", "--prompt=", "--max_new_tokens=2"],
     "encodes to no tokens"),
    ([f"--checkpoint={os.path.join(DATA, 'llama')}", "--prompt=a", "--attention=nope"],
     "nope"),
])
def test_generate_errors_are_one_line(capsys, argv, match):
  assert match in _exit_line(capsys, generate.main, argv)


def test_attention_override_reaches_the_model():
  model, _, _ = generate.load(os.path.join(DATA, "llama"), attention_impl="xla")
  assert model.cfg.attention_impl == "xla" and model.blocks[0].attn.cfg.attention_impl == "xla"
  e = _expected("llama")
  np.testing.assert_allclose(np.asarray(model(e["prompt"])), e["logits"], atol=1e-4, rtol=0)
