"""Text corpora as TFDS datasets: built offline from local files, read back with ``tfds.data_source``.

Build a dataset from a directory or glob of .txt, .jsonl or source files (one document per file,
or per line with ``--per_line``; .jsonl files are always a document per line, the text in
``--field``) into array_record files under a TFDS data_dir::

  python -m jaxllm.data.text build --input='corpus/**/*.txt' --data_dir=data --name=my_corpus

Any dataset already in a data_dir (built here, or prepared elsewhere: lm1b, c4, ...) is then read by
name with ``tfds.data_source``: random access, no TensorFlow. The default corpus is Python's
standard library sources (``stdlib/*.py``, the byte LM corpus these runs have always used), built on
first use and cached in the data_dir. Splits: ``train`` and ``validation`` (a fixed fraction of the
documents, chosen by a hash of their key so the split does not depend on file order).
"""

import glob
import json
import math
import os
import re
import shutil
import sysconfig
import zlib

from absl import app, flags

from jaxllm import cli

DEFAULT_NAME = "python_stdlib"
DEFAULT_EVAL_FRACTION = 0.05
VERSION = "1.0.0"
ENV_DATA_DIR = "JAXLLM_DATA_DIR"


def default_data_dir() -> str:
  """``$JAXLLM_DATA_DIR`` or ``~/.cache/jaxllm/tensorflow_datasets``."""
  return os.environ.get(ENV_DATA_DIR) or os.path.join(
      os.path.expanduser("~"), ".cache", "jaxllm", "tensorflow_datasets")


def stdlib_glob() -> str:
  return os.path.join(sysconfig.get_paths()["stdlib"], "*.py")


def _tfds():
  import tensorflow_datasets as tfds  # imported late: the CLI's --help and errors stay instant
  tfds.disable_progress_bar()
  return tfds


def input_files(pattern: str) -> list[str]:
  """Sorted files of a glob (``**`` recursive) or of a directory (all files below it)."""
  if os.path.isdir(pattern):
    pattern = os.path.join(pattern, "**", "*")
  files = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
  if not files:
    raise ValueError(f"input={pattern!r} matches no file")
  return files


def _read_text(path: str) -> str:
  with open(path, "rb") as f:
    return f.read().decode("utf-8", errors="replace")


def documents(files: list[str], *, per_line: bool = False, field: str = "text"):
  """Yields (key, text, source) for every non-empty document of ``files``."""
  root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in files])
  for path in files:
    rel = os.path.relpath(os.path.abspath(path), root)
    if path.endswith(".jsonl"):
      for i, line in enumerate(_read_text(path).splitlines()):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{i + 1}: not a JSON line ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
          raise ValueError(f"{path}:{i + 1}: no string field {field!r} (set --field)")
        if record[field]:
          yield f"{rel}:{i + 1}", record[field], rel
    elif per_line:
      for i, line in enumerate(_read_text(path).splitlines()):
        if line.strip():
          yield f"{rel}:{i + 1}", line, rel
    else:
      text = _read_text(path)
      if text:
        yield rel, text, rel


def _validation_keys(keys: list[str], eval_fraction: float) -> set[str]:
  """The ceil(fraction * n) keys with the smallest crc32: at least one when n >= 2 and the
  fraction is positive, and never all of them (train keeps at least one document)."""
  if not 0.0 <= eval_fraction < 1.0:
    raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
  n = len(keys)
  k = math.ceil(eval_fraction * n)
  if eval_fraction > 0 and n >= 2:
    k = max(k, 1)
  k = min(k, n - 1)
  ranked = sorted(keys, key=lambda s: (zlib.crc32(s.encode()), s))
  return set(ranked[:k])


def _builder_class():
  tfds = _tfds()

  class TextFiles(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One document per example: ``text`` (utf-8) and ``source`` (the file it came from).

    The name is per instance, as in TFDS's own ad-hoc builder, so one class serves every corpus.
    """

    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, name, files, per_line, field, eval_fraction, data_dir):
      self.name = name
      self._files, self._per_line, self._field = files, per_line, field
      self._eval_fraction = eval_fraction
      super().__init__(data_dir=data_dir, file_format="array_record")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description=f"Local text files, one document per {'line' if self._per_line else 'file'}.",
          features=tfds.features.FeaturesDict(
              {"text": tfds.features.Text(), "source": tfds.features.Text()}),
          # Reading order is the build order; shuffling is the pipeline's job (seeded, resumable).
          disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager
      keys = [k for k, _, _ in documents(self._files, per_line=self._per_line, field=self._field)]
      if not keys:
        raise ValueError("the input files hold no non-empty document")
      held_out = _validation_keys(keys, self._eval_fraction)
      splits = {"train": self._generate_examples(held_out, False)}
      if held_out:
        splits["validation"] = self._generate_examples(held_out, True)
      return splits

    def _generate_examples(self, held_out, validation):
      for key, text, source in documents(self._files, per_line=self._per_line, field=self._field):
        if (key in held_out) == validation:
          yield key, {"text": text, "source": source}

  return TextFiles


def build(input_pattern: str, data_dir: str, name: str, *, per_line: bool = False,
          field: str = "text", eval_fraction: float = DEFAULT_EVAL_FRACTION,
          overwrite: bool = False) -> str:
  """Builds ``name`` in ``data_dir`` from local files; returns the dataset's directory.

  A dataset already there is kept as it is unless ``overwrite``. TFDS writes into a temporary directory and renames it when complete, so an interrupted build
  leaves nothing that reads as a dataset.
  """
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name or ""):
    raise ValueError(f"name={name!r}: use lower-case letters, digits and '_', starting with a letter")
  files = input_files(input_pattern)

  def make():
    return _builder_class()(name=name, files=files, per_line=per_line, field=field,
                            eval_fraction=eval_fraction, data_dir=data_dir)

  builder = make()
  if builder.is_prepared():
    if not overwrite:
      return str(builder.data_dir)
    shutil.rmtree(str(builder.data_dir))
    builder = make()
  builder.download_and_prepare()
  return str(builder.data_dir)


def is_built(name: str, data_dir: str) -> bool:
  return bool(glob.glob(os.path.join(data_dir, name, "*", "dataset_info.json")))


def ensure(name: str = "", data_dir: str = "", input_pattern: str = "", **build_kwargs) -> tuple:
  """(name, data_dir) to read, building the dataset from ``input_pattern`` first if it is missing.

  An empty name is the default corpus (Python's stdlib sources, built on first use); an empty
  data_dir the default one. Any other missing name is left to ``tfds.data_source`` (prepared TFDS
  datasets such as lm1b, or a mock in tests).
  """
  data_dir = data_dir or default_data_dir()
  name = name or DEFAULT_NAME
  if not is_built(name, data_dir):
    if not input_pattern and name == DEFAULT_NAME:
      input_pattern = stdlib_glob()
    if input_pattern:
      build(input_pattern, data_dir, name, **build_kwargs)
  return name, data_dir


def data_source(name: str, data_dir: str, split: str = "train"):
  """Random-access source of a TFDS dataset's split (array_record, no TensorFlow)."""
  tfds = _tfds()
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, try_gcs=False)
  except tfds.core.DatasetNotFoundError:
    raise ValueError(f"dataset {name!r} is neither in data_dir {data_dir!r} nor a TFDS dataset; "
                     "build it with `python -m jaxllm.data.text build`") from None
  except ValueError as e:
    if "split" in str(e).lower():
      raise ValueError(f"split={split!r} not in dataset {name!r}: {e}") from None
    raise


def document_text(example, field: str = "text") -> str:
  """The text of one data-source example (TFDS returns Text features as bytes)."""
  value = example[field] if isinstance(example, dict) else example
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _define_flags():
  # Defined only when run as a CLI, so importing the module adds no global flags.
  flags.DEFINE_string("input", None, "Glob or directory of .txt/.jsonl/source files.")
  flags.DEFINE_string("data_dir", None, f"TFDS data_dir (default ${ENV_DATA_DIR} or ~/.cache/...).")
  flags.DEFINE_string("name", None, "Dataset name (lower case, digits, '_').")
  flags.DEFINE_bool("per_line", False, "One document per line instead of per file.")
  flags.DEFINE_string("field", "text", "Text field of .jsonl records.")
  flags.DEFINE_float("eval_fraction", DEFAULT_EVAL_FRACTION, "Share of documents in 'validation'.")
  flags.DEFINE_bool("overwrite", False, "Rebuild a dataset that already exists.")


def main(argv):
  FLAGS = flags.FLAGS
  cli.expect_command(argv, "build",
                     "python -m jaxllm.data.text build --input=GLOB --data_dir=DIR --name=NAME")
  cli.require("input", "name")
  try:
    path = build(FLAGS.input, FLAGS.data_dir or default_data_dir(), FLAGS.name,
                 per_line=FLAGS.per_line, field=FLAGS.field, eval_fraction=FLAGS.eval_fraction,
                 overwrite=FLAGS.overwrite)
  except ValueError as e:
    cli.fail(e)
  print(path)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
