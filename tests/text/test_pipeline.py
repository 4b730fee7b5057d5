"""The grain chain: exact concat-then-split, first-fit packing, host slices, resumable batches."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxllm.data import packing, pipeline, tokenizer

RNG = np.random.default_rng(0)
DOCS = [{"text": "".join(chr(97 + int(c)) for c in RNG.integers(0, 26, int(n)))}
        for n in RNG.integers(1, 40, 30)]
BYTES = tokenizer.get("bytes")


def _rows(spec, *, num_epochs=1, **kw):
  docs = pipeline.documents(DOCS, BYTES, spec, num_epochs=num_epochs, **kw)
  return list(pipeline.lm_dataset(docs, spec, drop_remainder=False))


def test_concat_then_split_is_the_document_stream_cut_into_rows():
  spec = pipeline.Spec(seq_len=15, batch_size=2, packing="concat", shuffle=False)
  rows = _rows(spec)
  stream = np.concatenate([BYTES.encode(d["text"]) for d in DOCS])
  full = np.concatenate([b["tokens"].reshape(-1) for b in rows])
  seg = np.concatenate([b["segment_ids"].reshape(-1) for b in rows])
  np.testing.assert_array_equal(full[seg > 0], stream)
  for b in rows:
    np.testing.assert_array_equal(b["positions"], packing.positions(b["segment_ids"]))
    np.testing.assert_array_equal(b["mask"], packing.loss_mask(b["segment_ids"]))


def test_first_fit_packs_every_piece_whole_with_per_document_positions():
  spec = pipeline.Spec(seq_len=40, batch_size=4, packing="first_fit", num_packing_bins=4,
                       shuffle=False)
  pieces = sorted(DOCS[i]["text"] for i in range(len(DOCS)))  # all documents fit in a row
  rows = _rows(spec)
  got = []
  for b in rows:
    for r in range(b["tokens"].shape[0]):
      for s in set(b["segment_ids"][r].tolist()) - {0}:
        idx = np.flatnonzero(b["segment_ids"][r] == s)
        assert (np.diff(idx) == 1).all()  # contiguous
        np.testing.assert_array_equal(b["positions"][r, idx], np.arange(idx.size))
        got.append(BYTES.decode(b["tokens"][r, idx]))
  assert sorted(got) == pieces
  padding = sum(int((b["segment_ids"] == 0).sum()) for b in rows)
  assert padding < 0.5 * sum(b["segment_ids"].size for b in rows)


def test_first_fit_splits_long_documents_instead_of_dropping_them():
  spec = pipeline.Spec(seq_len=7, batch_size=2, packing="first_fit", num_packing_bins=2,
                       shuffle=False)
  rows = _rows(spec)
  kept = sum(int((b["segment_ids"] > 0).sum()) for b in rows)
  assert kept == sum(len(d["text"]) for d in DOCS)
  trunc = pipeline.Spec(seq_len=7, batch_size=2, packing="none", shuffle=False,
                        max_document_tokens=5)
  rows = _rows(trunc)
  assert all((b["segment_ids"].sum(1) <= 5).all() for b in rows)
  np.testing.assert_array_equal(rows[0]["tokens"][0, :5], BYTES.encode(DOCS[0]["text"])[:5])


def test_hosts_read_disjoint_documents_and_global_arrays_assemble():
  spec = pipeline.Spec(seq_len=8, batch_size=4, shuffle=True, seed=3)
  seen = []
  for host in range(2):
    docs = pipeline.documents(DOCS, BYTES, spec, process_index=host, process_count=2,
                              num_epochs=1)
    seen.append({BYTES.decode(d["tokens"]) for d in docs})
  assert not seen[0] & seen[1] and seen[0] | seen[1] == {d["text"] for d in DOCS}
  with pytest.raises(ValueError, match="multiple of the host count"):
    pipeline.host_batch_size(5, 2)
  local = _rows(spec)[0]
  mesh = jax.make_mesh((len(jax.devices()),), ("data",))
  glob = pipeline.global_batch(local, NamedSharding(mesh, PartitionSpec("data")))
  assert glob["tokens"].shape == (4, 9) and isinstance(glob["tokens"], jax.Array)
  np.testing.assert_array_equal(np.asarray(glob["segment_ids"]), local["segment_ids"])


def test_shuffle_changes_each_epoch_and_follows_the_seed():
  spec = pipeline.Spec(seq_len=8, batch_size=1, seed=5)
  order = [BYTES.decode(d["tokens"]) for d in pipeline.documents(DOCS, BYTES, spec,
                                                                 num_epochs=2)]
  again = [BYTES.decode(d["tokens"]) for d in pipeline.documents(DOCS, BYTES, spec,
                                                                 num_epochs=2)]
  assert order == again and order[:30] != order[30:] and sorted(order[:30]) == sorted(order[30:])


@pytest.mark.parametrize("kind", ["concat", "first_fit"])
def test_batches_are_a_function_of_the_step_and_resume_from_state(kind):
  spec = pipeline.Spec(seq_len=10, batch_size=3, packing=kind, num_packing_bins=3, seed=1)

  def make():
    return pipeline.Batches(pipeline.lm_dataset(pipeline.documents(DOCS, BYTES, spec), spec))

  a = make()
  ordered = [a(s) for s in range(12)]
  assert ordered[0]["tokens"].shape == (3, 11)
  b = make()
  for s in (7, 2, 11, 0, 7):  # out of order
    np.testing.assert_array_equal(b(s)["tokens"], ordered[s]["tokens"])
  state = json.loads(json.dumps(a.state(6)))  # survives JSON, as in a checkpoint
  c = make()
  c.restore(state)
  for s in range(6, 12):
    for key in ordered[s]:
      np.testing.assert_array_equal(c(s)[key], ordered[s][key])
  np.testing.assert_array_equal(c(1)["tokens"], ordered[1]["tokens"])  # before the state: replay
  with pytest.raises(ValueError, match="text.packing"):
    pipeline.Spec(seq_len=8, batch_size=2, packing="best")


_SHARDED = r"""
import json
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from jaxllm.data import pipeline, tokenizer
docs = [{"text": "abcdefghij" * (i + 1)} for i in range(12)]
spec = pipeline.Spec(seq_len=7, batch_size=8, shuffle=False)
local = next(iter(pipeline.lm_dataset(pipeline.documents(docs, tokenizer.get("bytes"), spec),
                                      spec)))
mesh = jax.make_mesh((4,), ("data",))
glob = pipeline.global_batch(local, NamedSharding(mesh, PartitionSpec("data")))
shards = sorted((s.index[0].start, np.asarray(s.data).tolist())
                for s in glob["tokens"].addressable_shards)
print(json.dumps({"devices": len(jax.devices()), "shape": list(glob["tokens"].shape),
                  "shards": shards, "local": local["tokens"].tolist()}))
"""


def test_global_batch_splits_rows_over_devices():
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  out = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True,
                       env=env, cwd=root, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r["devices"] == 4 and r["shape"] == [8, 8]
  assert [start for start, _ in r["shards"]] == [0, 2, 4, 6]
  for start, rows in r["shards"]:
    assert rows == r["local"][start:start + 2]
