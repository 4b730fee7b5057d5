"""Tokenizers behind one interface: bytes, SentencePiece trained offline, HF tokenizer.json."""

import os
import subprocess
import sys

import numpy as np
import pytest

from jaxllm.data import text, tokenizer

HELD_OUT = "def area(r):\n    return 3.14159 * r ** 2  # ü ✓\n\n\tindented  twice\n"


def _corpus(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  rng = np.random.default_rng(0)
  words = ["return", "def", "self", "value", "import", "class", "for", "in", "if", "else"]
  for i in range(6):
    lines = [("    " * int(rng.integers(0, 3))) + " ".join(rng.choice(words, 6)) + f" = {i}"
             for _ in range(200)]
    (src / f"f{i}.py").write_text("\n".join(lines) + "\nü ✓ é\n")
  return src


def test_bytes_round_trip_and_ids():
  tok = tokenizer.get("bytes")
  ids = tok.encode(HELD_OUT)
  assert tok.vocab_size == 256 and ids.dtype == np.int32
  assert ids.tolist() == list(HELD_OUT.encode("utf-8"))
  assert tok.decode(ids) == HELD_OUT


def test_sentencepiece_trained_offline_is_lossless_and_compresses(tmp_path):
  data_dir = str(tmp_path / "tfds")
  text.build(str(_corpus(tmp_path)), data_dir, "code")
  path = tokenizer.train_sentencepiece("code", data_dir, str(tmp_path / "tok" / "sp"),
                                       vocab_size=320, model_type="bpe")
  assert path.endswith("sp.model") and not list((tmp_path / "tok").glob("tmp*"))
  tok = tokenizer.get(path)
  assert tok.vocab_size == 320
  sample = "    return value for self in class = 3\n"
  assert len(tok.encode(sample)) < len(sample.encode()) / 2
  with pytest.raises(ValueError, match="SentencePiece training failed"):
    tokenizer.train_sentencepiece("code", data_dir, str(tmp_path / "tok" / "big"),
                                  vocab_size=100_000)
  assert not list((tmp_path / "tok").glob("big*"))
  for s in (sample, HELD_OUT):  # byte fallback covers what training never saw
    ids = tok.encode(s)
    assert ids.dtype == np.int32 and ids.max() < 320
    assert tok.decode(ids) == s


def test_hf_tokenizer_json_matches_the_library(tmp_path):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  hf = Tokenizer(models.BPE())
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = decoders.ByteLevel()
  hf.train_from_iterator([HELD_OUT * 3, "return value self class"],
                         trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>"],
                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  path = str(tmp_path / "tokenizer.json")
  hf.save(path)
  tok = tokenizer.get(path)
  ids = tok.encode(HELD_OUT)
  assert ids.tolist() == Tokenizer.from_file(path).encode(HELD_OUT).ids
  assert tok.vocab_size == hf.get_vocab_size() and tok.decode(ids) == HELD_OUT


def test_unknown_tokenizer_specs_are_value_errors(tmp_path):
  with pytest.raises(ValueError, match="text.tokenizer='gpt9'; allowed"):
    tokenizer.get("gpt9")
  with pytest.raises(ValueError, match="no such file"):
    tokenizer.get(str(tmp_path / "missing.model"))


def test_train_cli_needs_an_output_and_exits_2():
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = subprocess.run([sys.executable, "-m", "jaxllm.data.tokenizer", "train"], cwd=root,
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=root))
  assert out.returncode == 2 and out.stderr.strip().endswith("error: --output is required")
