"""Tokenizers behind one interface: UTF-8 bytes, SentencePiece, and HF ``tokenizer.json``.

``get(spec)`` picks one: ``"bytes"`` (the default, vocabulary 256), a SentencePiece ``.model``
file, or a Hugging Face ``tokenizer.json`` (the tokenizer of an imported checkpoint). All of them
encode text to int32 ids without adding special tokens: documents are delimited by the packer's
segment ids, not by BOS/EOS.

Train a SentencePiece model offline on a corpus in a TFDS data_dir (see ``jaxllm.data.text``)::

  python -m jaxllm.data.tokenizer train --name=python_stdlib --vocab_size=2048 \\
      --output=tokenizers/stdlib_2k

writes ``tokenizers/stdlib_2k.model`` (and ``.vocab``); use it as ``text.tokenizer``.
"""

import os
import shutil
import tempfile
from typing import Protocol

import numpy as np
from absl import app, flags

from jaxllm import cli


class Tokenizer(Protocol):
  vocab_size: int

  def encode(self, text: str) -> np.ndarray:
    """int32 ids [n]."""

  def decode(self, ids) -> str:
    ...


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255."""

  vocab_size = 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    return bytes(np.asarray(ids, np.uint8).tolist()).decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  """A trained SentencePiece model (``sentencepiece`` library)."""

  def __init__(self, model_file: str):
    import sentencepiece as spm
    self.model_file = model_file
    self._sp = spm.SentencePieceProcessor(model_file=model_file)
    self.vocab_size = int(self._sp.get_piece_size())

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), np.int32)

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in np.asarray(ids).ravel()])


class HFTokenizer:
  """A Hugging Face ``tokenizer.json`` (``tokenizers`` library), as shipped with checkpoints."""

  def __init__(self, path: str):
    from tokenizers import Tokenizer as _HF
    self.path = path
    self._tok = _HF.from_file(path)
    self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in np.asarray(ids).ravel()], skip_special_tokens=False)


def get(spec: str = "bytes") -> Tokenizer:
  """``"bytes"``, a path to a SentencePiece ``.model``, or a path to a ``tokenizer.json``."""
  spec = spec or "bytes"
  if spec == "bytes":
    return ByteTokenizer()
  if spec.endswith(".model") or spec.endswith(".json"):
    if not os.path.isfile(spec):
      raise ValueError(f"text.tokenizer={spec!r}: no such file")
    return SentencePieceTokenizer(spec) if spec.endswith(".model") else HFTokenizer(spec)
  raise ValueError(f"text.tokenizer={spec!r}; allowed: 'bytes', a SentencePiece '*.model' file or "
                   "a Hugging Face '*.json' (tokenizer.json) file")


def _training_lines(source, max_lines: int):
  from jaxllm.data.text import document_text
  count = 0
  for i in range(len(source)):
    for line in document_text(source[i]).splitlines():
      if line.strip():
        yield line
        count += 1
        if count >= max_lines:
          return


def train_sentencepiece(name: str, data_dir: str, output: str, *, vocab_size: int,
                        model_type: str = "unigram", max_lines: int = 1_000_000,
                        input_pattern: str = "") -> str:
  """Trains SentencePiece on the ``train`` split's lines; returns the ``.model`` path.

  The corpus is read as a TFDS data source (built first if it is the default one or
  ``input_pattern`` is given). Training writes into a temporary directory and moves the files
  into place at the end, so a failed run leaves no partial model.
  """
  import sentencepiece as spm

  from jaxllm.data import text
  if model_type not in ("unigram", "bpe", "char", "word"):
    raise ValueError(f"model_type={model_type!r}; allowed: unigram, bpe, char, word")
  if vocab_size < 8:
    raise ValueError(f"vocab_size must be >= 8, got {vocab_size}")
  name, data_dir = text.ensure(name, data_dir, input_pattern)
  source = text.data_source(name, data_dir, "train")
  out_dir = os.path.dirname(os.path.abspath(output))
  os.makedirs(out_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
    prefix = os.path.join(tmp, "sp")
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=_training_lines(source, max_lines), model_prefix=prefix,
          vocab_size=vocab_size, model_type=model_type, character_coverage=1.0,
          byte_fallback=True, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
          # Lossless on source code: spaces, indentation and a leading space are kept as written.
          remove_extra_whitespaces=False, add_dummy_prefix=False,
          normalization_rule_name="identity", split_digits=True, num_threads=2, minloglevel=2)
    except RuntimeError as e:  # e.g. a vocabulary larger than the corpus supports
      raise ValueError(f"SentencePiece training failed: {e}") from None
    for ext in (".model", ".vocab"):
      shutil.move(prefix + ext, output + ext)
  return output + ".model"


def _define_flags():
  # Defined only when run as a CLI, so importing the module adds no global flags.
  flags.DEFINE_string("name", "", "Dataset name in --data_dir (default: the stdlib corpus).")
  flags.DEFINE_string("data_dir", "", "TFDS data_dir (default: jaxllm.data.text's).")
  flags.DEFINE_string("input", "", "Files to build --name from if it is not built yet.")
  flags.DEFINE_string("output", None, "Output prefix: writes PREFIX.model and PREFIX.vocab.")
  flags.DEFINE_integer("vocab_size", 2048, "SentencePiece vocabulary size.")
  flags.DEFINE_string("model_type", "unigram", "unigram, bpe, char or word.")
  flags.DEFINE_integer("max_lines", 1_000_000, "Training lines read from the corpus at most.")


def main(argv):
  FLAGS = flags.FLAGS
  cli.expect_command(argv, "train", "python -m jaxllm.data.tokenizer train --output=PREFIX "
                     "[--name=NAME --data_dir=DIR --vocab_size=N]")
  cli.require("output")
  try:
    path = train_sentencepiece(FLAGS.name, FLAGS.data_dir, FLAGS.output,
                               vocab_size=FLAGS.vocab_size, model_type=FLAGS.model_type,
                               max_lines=FLAGS.max_lines, input_pattern=FLAGS.input)
  except ValueError as e:
    cli.fail(e)
  print(path)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
