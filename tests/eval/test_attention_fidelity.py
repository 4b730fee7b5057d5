"""The fidelity harness: its numbers against independent dense computations, the table plug-in,
planted structure, captured LM inputs, the results file and the CLI's errors."""

import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.attention.methods import dense
from jaxllm.attention.sparse import moba
from jaxllm.eval import attention_fidelity as fid
from jaxllm.eval import capture, planted
from pallas_kernels.block_sparse import masks


def _probs(q, k):
  """Dense causal softmax probabilities [B, H, T, S] (GQA by repetition)."""
  t, s = q.shape[1], k.shape[1]
  logits = jnp.einsum("bthd,bshd->bhts", q, jnp.repeat(k, q.shape[2] // k.shape[2], axis=2))
  logits = jnp.where(jnp.tri(t, s, s - t, dtype=bool), logits / np.sqrt(q.shape[-1]), -jnp.inf)
  return jax.nn.softmax(logits, axis=-1)


@pytest.fixture(scope="module")
def qkv():
  q, k, v, _ = planted.planted_qkv(1, length=192, kv_heads=5, group=2, head_dim=16)
  return q, k, v


def test_planted_patterns_hold_their_mass():
  q, k, _, heads = planted.planted_qkv(0, length=256, head_dim=32)
  p = np.asarray(_probs(q, k))[0, :, 128:]  # later queries, every head
  top = np.sort(p, axis=-1)[..., ::-1]
  mass = {name: top[i, :, :32].sum(-1).mean() for i, name in enumerate(heads)}
  assert heads == list(planted.PATTERNS)
  assert mass["vertical"] > 0.95 and mass["slash"] > 0.8 and mass["local"] > 0.8
  # Vertical mass sits on a handful of columns, local mass on the nearest keys.
  assert np.sort(p[0].sum(0))[::-1][:8].sum() / p[0].sum() > 0.95
  near = np.tri(256, 256, 0)[128:] - np.tri(256, 256, -16)[128:]
  assert (p[2] * near).sum(-1).mean() > 0.6
  with pytest.raises(ValueError, match="patterns"):
    planted.planted_qkv(0, length=8, patterns=("spiral",))


@pytest.mark.slow
def test_dense_is_exact(qkv):
  row = fid.measure("dense", *qkv, repeats=1)
  assert row["density"] == 1.0 and abs(row["recall"] - 1.0) < 1e-5
  assert row["out_rel_err"] < 1e-6 and row["lse_err"] < 1e-5


def test_sink_window_numbers_match_an_independent_computation(qkv):
  q, k, v = qkv
  row = fid.measure("sink_window", q, k, v, {"sinks": 4, "window": 24}, repeats=1)
  t = q.shape[1]
  ok = np.tri(t, t, 0, bool) & ~np.tri(t, t, -24, bool)
  ok[:, :4] |= np.tri(t, t, 0, bool)[:, :4]
  p = np.asarray(_probs(q, k))
  assert abs(row["recall"] - (p * ok).sum(-1).mean()) < 1e-5
  assert abs(row["density"] - ok.sum() / np.tri(t).sum()) < 1e-9
  want = dense.reference(q, k, v, window=24, sinks=4)
  o = fid.sink_window_run(q, k, v, sinks=4, window=24)[0]
  assert float(jnp.abs(o - want).max()) < 1e-5
  err = float(jnp.linalg.norm(want - dense.reference(q, k, v)) / jnp.linalg.norm(
      dense.reference(q, k, v)))
  assert abs(row["out_rel_err"] - err) < 1e-4


@pytest.mark.slow
def test_moba_density_and_recall_follow_its_pairs(qkv):
  q, k, v = qkv
  opts = {"chunk_size": 32, "topk": 2}
  row = fid.measure("moba", q, k, v, opts, repeats=1)
  pairs = np.asarray(moba.pair_mask(q, k, **opts))
  p = np.asarray(_probs(q, k))
  assert abs(row["density"] - pairs.mean(axis=(0, 1)).sum() / np.tri(192).sum()) < 1e-6
  assert abs(row["recall"] - (p * pairs).sum(-1).mean()) < 1e-5
  assert 0.3 < row["density"] < 0.9 and row["selection_share"] > 0


def test_table_methods_plug_in_through_select(qkv, monkeypatch):
  """A method known only by its BlockTable: pairs = dense_mask, output = the op over it."""
  import jaxllm.attention as attention_pkg
  q, k, v = qkv
  blocks = jax.random.bernoulli(jax.random.key(0), 0.5, (1, q.shape[2], 6, 6)) | jnp.eye(6, dtype=bool)
  table = masks.from_block_mask(blocks, block_q=32, block_k=32)
  fake = types.SimpleNamespace(select=lambda method, q, k, **o: table, METHODS=("fake_table",))
  monkeypatch.setitem(sys.modules, "jaxllm.attention.sparse", fake)
  monkeypatch.setattr(attention_pkg, "sparse", fake, raising=False)
  row = fid.measure("fake_table", q, k, v, repeats=1)
  keep = np.asarray(masks.dense_mask(table, 192, 192, causal=True))
  p = np.asarray(_probs(q, k))
  assert abs(row["recall"] - (p * keep).sum(-1).mean()) < 1e-5
  assert abs(row["density"] - keep.mean(axis=(0, 1)).sum() / np.tri(192).sum()) < 1e-6
  with pytest.raises(ValueError, match="unknown method"):
    fid.adapter("not_a_method")


@pytest.mark.slow
def test_run_writes_results_and_figure(tmp_path):
  opts = {"cca": {"group_size": 8, "window": 32}, "block_sparse": {"block": 32, "topk": 2}}
  res = fid.run(["cca", "block_sparse"], [128], str(tmp_path), options=opts, repeats=1)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["rows"] == json.loads(json.dumps(res["rows"]))
  assert (tmp_path / "attention_fidelity.png").stat().st_size > 10_000
  for row in saved["rows"]:
    assert 0 < row["density"] < 1 and 0 < row["recall"] <= 1 + 1e-6 and row["out_rel_err"] > 0


def test_captured_inputs_are_the_model_attention_inputs(tmp_path):
  model, task = capture.load_or_train(str(tmp_path / "lm"), config_arg="tiny", steps=2)
  tokens = capture.text_tokens(task, 48)
  got = capture.capture_qkv(model, tokens, block=16)
  _, hidden = model(tokens, return_hidden=True)
  for layer, (blk, (q, k, v)) in enumerate(zip(model.blocks, got)):
    want = blk.attn.qkv(blk.attn_norm(hidden[layer]), jnp.arange(48))
    for a, b in zip((q, k, v), want):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
  # A finished run is restored, not retrained: same weights back.
  again, _ = capture.load_or_train(str(tmp_path / "lm"), config_arg="tiny", steps=2)
  np.testing.assert_array_equal(np.asarray(again.blocks[0].attn.wq.kernel.value),
                                np.asarray(model.blocks[0].attn.wq.kernel.value))
  res = fid.run(["sink_window"], [64], str(tmp_path / "fid"), inputs=["captured"],
                options={"sink_window": {"window": 16}}, repeats=1,
                lm_workdir=str(tmp_path / "lm"), lm_config="tiny", lm_steps=2)
  saved = json.loads((tmp_path / "fid" / "results.json").read_text())
  assert saved["rows"] == json.loads(json.dumps(res["rows"]))
  assert (tmp_path / "fid" / "attention_fidelity.png").stat().st_size > 10_000
  assert res["rows"][0]["layers"] == len(model.blocks)
  assert 0 < res["rows"][0]["recall"] < 1


@pytest.mark.parametrize("args,word", [(["--lengths=12x"], "--lengths"),
                                       (["--methods=dense,nope", "--lengths=16"], "nope")])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, word):
  proc = subprocess.run([sys.executable, "-m", "jaxllm.eval.attention_fidelity",
                         f"--workdir={tmp_path}", *args], capture_output=True, text=True,
                        env=dict(os.environ), timeout=120)
  assert proc.returncode == 2
  assert len(proc.stderr.strip().splitlines()) == 1 and word in proc.stderr
  assert not (tmp_path / "results.json").exists()


def test_planted_share_is_kept_across_lengths_and_vertical_slash_has_both():
  shares = []
  for length in (512, 2048):
    q, k, _, heads = planted.planted_qkv(2, length=length, kv_heads=2, head_dim=32,
                                         patterns=("vertical", "vertical_slash"))
    p = np.asarray(_probs(q, k))[0, :, length // 2:]  # [head, later queries, S]
    cols = np.sort(p[0].sum(0))[::-1][:8].sum() / p[0].sum()
    shares.append(cols)
    # vertical_slash: a few columns and the queries' diagonals (d = 0 or one of two far ones)
    col_mass = np.sort(p[1].sum(0))[::-1][:6].sum() / p[1].sum()
    assert col_mass > 0.3 and col_mass < 0.85, col_mass
  assert heads == ["vertical", "vertical_slash"]
  assert min(shares) > 0.9 and abs(shares[0] - shares[1]) < 0.03, shares
  assert planted.default_strength(1024) == 8.0
  assert abs(planted.default_strength(8192) - (8.0 + np.log(8.0))) < 1e-12


def test_last_queries_and_per_head_recall_match_an_independent_computation(qkv):
  q, k, v = fid.last_queries(qkv, 64)
  assert q.shape[1] == 64 and k.shape[1] == 192 and fid.last_queries(qkv, 0)[0] is qkv[0]
  row = fid.measure("sink_window", q, k, v, {"sinks": 4, "window": 24}, repeats=1)
  pos = np.arange(64)[:, None] + 128
  key = np.arange(192)[None, :]
  ok = (key <= pos) & ((key > pos - 24) | (key < 4))
  p = np.asarray(_probs(q, k))  # [B, H, 64, 192]
  want = (p * ok).sum(-1).mean(axis=(0, 2))
  np.testing.assert_allclose(row["head_recall"], want, atol=1e-5)
  assert abs(row["recall"] - want.mean()) < 1e-5
  assert abs(row["density"] - ok.sum() / (key <= pos).sum()) < 1e-9


def test_planted_local_band_has_no_far_revival():
  q, k, _, _ = planted.planted_qkv(3, length=4096, kv_heads=1, head_dim=32, patterns=("local",))
  pos = np.arange(3000, 3064)[:, None]  # 64 late queries, past the former period (1984)
  key = np.arange(4096)[None, :]
  logits = np.asarray(q[0, 3000:3064, 0] @ k[0, :, 0].T) / np.sqrt(32)
  p = jax.nn.softmax(np.where(key <= pos, logits, -np.inf), axis=-1)
  near = (key <= pos) & (key > pos - 256)
  assert float((p * near).sum(-1).mean()) > 0.85
