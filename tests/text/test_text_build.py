"""Local files -> TFDS dataset (CLI, array_record) -> read back exactly, without TensorFlow."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxllm.data import pipeline, text

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _corpus(tmp_path):
  """A small held-out directory: text files (a document per file), JSON lines and a source file."""
  src = tmp_path / "corpus"
  (src / "sub").mkdir(parents=True)
  docs = {}
  rng = np.random.default_rng(0)
  for i in range(12):
    body = f"Document {i}: " + " ".join(f"w{int(w)}" for w in rng.integers(0, 99, 5 + 7 * i))
    body += "\nünïcode ✓ and a tab\there\n"
    (src / f"doc{i:02d}.txt").write_text(body, encoding="utf-8")
    docs[f"doc{i:02d}.txt"] = body
  lines = ["first json line", "second ✓ line", "third"]
  (src / "sub" / "rows.jsonl").write_text(
      "".join(json.dumps({"text": t, "id": k}) + "\n" for k, t in enumerate(lines)) + "\n")
  for k, t in enumerate(lines):
    docs[f"sub/rows.jsonl:{k + 1}"] = t
  code = "def f(x):\n    return x + 1\n"
  (src / "sub" / "mod.py").write_text(code)
  docs["sub/mod.py"] = code
  return src, docs


_READ_BACK = r"""
import json, sys
from jaxllm.data import text, tokenizer, pipeline
name, data_dir = sys.argv[1], sys.argv[2]
out = {}
for split in ("train", "validation"):
  src = text.data_source(name, data_dir, split)
  out[split] = [[text.document_text(src[i]), text.document_text(src[i], "source")]
                for i in range(len(src))]
spec = pipeline.Spec(seq_len=16, batch_size=2, packing="first_fit", num_packing_bins=4)
docs = pipeline.documents(text.data_source(name, data_dir, "train"), tokenizer.get("bytes"), spec)
batch = next(iter(pipeline.lm_dataset(docs, spec)))
out["batch_shape"] = list(batch["tokens"].shape)
out["tf"] = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
print(json.dumps(out))
"""


def _run(args, **kw):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                        cwd=ROOT, timeout=120, **kw)


def test_cli_builds_a_directory_that_reads_back_exactly_without_tensorflow(tmp_path):
  src, docs = _corpus(tmp_path)
  data_dir = tmp_path / "tfds"
  built = _run(["-m", "jaxllm.data.text", "build", f"--input={src}", f"--data_dir={data_dir}",
                "--name=held_out"])
  assert built.returncode == 0, built.stderr[-2000:]
  assert built.stdout.strip().endswith(os.path.join("held_out", text.VERSION))
  assert list((data_dir / "held_out" / text.VERSION).glob("*.array_record-*"))
  read = _run(["-c", _READ_BACK, "held_out", str(data_dir)])
  assert read.returncode == 0, read.stderr[-2000:]
  out = json.loads(read.stdout.strip().splitlines()[-1])
  assert out["tf"] == []
  assert out["batch_shape"] == [2, 17]
  got = {}
  for split in ("train", "validation"):
    for body, source in out[split]:
      got.setdefault(source, []).append(body)
  # Every document once, byte for byte (JSON lines in file order within their file).
  assert {s: sorted(v) for s, v in got.items()} == {
      s: sorted(t for k, t in docs.items() if k.split(":")[0] == s)
      for s in {k.split(":")[0] for k in docs}}
  assert sum(len(v) for v in got.values()) == len(docs)
  assert 1 <= len(out["validation"]) <= 2  # ceil(5% of 16 documents)


def test_split_is_a_fixed_function_of_the_document_keys(tmp_path):
  src, docs = _corpus(tmp_path)
  a = text.build(str(src), str(tmp_path / "a"), "c", eval_fraction=0.25)
  b = text.build(str(src / "**" / "*"), str(tmp_path / "b"), "c", eval_fraction=0.25)
  assert a.endswith(os.path.join("a", "c", text.VERSION))
  va = [text.document_text(x) for x in text.data_source("c", str(tmp_path / "a"), "validation")]
  vb = [text.document_text(x) for x in text.data_source("c", str(tmp_path / "b"), "validation")]
  assert va == vb and len(va) == 4  # ceil(0.25 * 16)
  train = [text.document_text(x) for x in text.data_source("c", str(tmp_path / "a"), "train")]
  assert not set(va) & set(train) and len(train) + len(va) == len(docs)


def test_per_line_documents_and_bad_inputs(tmp_path):
  (tmp_path / "lines.txt").write_text("alpha\n\nbeta gamma\ndelta\n")
  text.build(str(tmp_path / "lines.txt"), str(tmp_path / "d"), "lines", per_line=True,
             eval_fraction=0.0)
  assert [text.document_text(x) for x in text.data_source("lines", str(tmp_path / "d"))] == [
      "alpha", "beta gamma", "delta"]
  (tmp_path / "other.txt").write_text("epsilon\n")
  text.build(str(tmp_path / "other.txt"), str(tmp_path / "d"), "lines", per_line=True)
  assert len(text.data_source("lines", str(tmp_path / "d"))) == 3  # kept
  text.build(str(tmp_path / "other.txt"), str(tmp_path / "d"), "lines", per_line=True,
             overwrite=True)
  assert [text.document_text(x) for x in text.data_source("lines", str(tmp_path / "d"))] == [
      "epsilon"]
  with pytest.raises(ValueError, match="matches no file"):
    text.build(str(tmp_path / "nothing*"), str(tmp_path / "d"), "x")
  with pytest.raises(ValueError, match="name="):
    text.build(str(tmp_path / "lines.txt"), str(tmp_path / "d"), "Bad-Name")
  (tmp_path / "bad.jsonl").write_text('{"body": "no text field"}\n')
  with pytest.raises(ValueError, match="field 'text'"):
    text.build(str(tmp_path / "bad.jsonl"), str(tmp_path / "d"), "bad")
  assert not text.is_built("bad", str(tmp_path / "d"))
  cli = _run(["-m", "jaxllm.data.text", "build", f"--input={tmp_path}/nothing*",
              f"--data_dir={tmp_path}/d", "--name=x"])
  assert cli.returncode == 2 and cli.stderr.strip().splitlines()[-1].startswith("error: input=")


def test_a_prepared_tfds_dataset_is_read_by_name(tmp_path):
  cfg = pipeline.text_config(name="lm1b", data_dir=str(tmp_path), seq_len=8, eval_split="test")
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    data = pipeline.TextData(cfg, batch_size=2, seed=0)
    source = data.source("train")
    docs = [text.document_text(source[i]) for i in range(len(source))]
    spec = pipeline.Spec(seq_len=8, batch_size=2, shuffle=False)
    rows = pipeline.first_rows(
        pipeline.lm_dataset(pipeline.documents(source, data.tokenizer, spec, num_epochs=1), spec),
        3)
    eval_rows = data.eval_batches(4)
  stream = np.concatenate([np.frombuffer(d.encode(), np.uint8) for d in docs])
  got = np.concatenate([r["tokens"].ravel() for r in rows])
  np.testing.assert_array_equal(got, stream[:got.size])
  assert len(eval_rows) == 2 and eval_rows[0]["tokens"].shape == (2, 9)


def test_default_corpus_is_the_stdlib_built_once(tmp_path):
  name, data_dir = text.ensure("", str(tmp_path))
  assert name == text.DEFAULT_NAME and text.is_built(name, data_dir)
  stamp = os.path.getmtime(next((tmp_path / name).glob("*/dataset_info.json")))
  assert text.ensure("", str(tmp_path)) == (name, data_dir)
  assert os.path.getmtime(next((tmp_path / name).glob("*/dataset_info.json"))) == stamp
  sources = {text.document_text(x, "source") for x in text.data_source(name, data_dir, "train")}
  assert "os.py" in sources or "os.py" in {
      text.document_text(x, "source") for x in text.data_source(name, data_dir, "validation")}
  with pytest.raises(ValueError, match="dataset 'not_built' is neither in data_dir"):
    text.data_source("not_built", str(tmp_path))
  with pytest.raises(ValueError, match="split='test' not in dataset"):
    text.data_source(name, data_dir, "test")
