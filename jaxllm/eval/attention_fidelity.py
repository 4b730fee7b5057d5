r"""Attention fidelity: what each sparse method keeps of dense causal attention.

Per method, input and length (B = 1, averaged over captured layers):

* ``density``: computed causal (query, key) pairs / all causal pairs. Pooled or summary tokens a
  query attends (CCA's core tokens) count one pair each;
* ``recall``: dense softmax mass on the keys the method attends exactly, averaged over queries
  (CCA's core tokens summarise keys rather than attend them, so only its local keys count);
  ``head_recall`` the same per query head (planted inputs carry one pattern per KV head);
* ``out_rel_err``: ||o - o_dense||_F / ||o_dense||_F; ``lse_err``: mean |lse - lse_dense|;
* ``selection_share``: time of the method's selection / time of the whole method (selection
  included); ``time_ratio``: whole method / dense (same run, XLA path, a loaded machine reads
  ratios, not absolute times).

Methods plug in through an :class:`Adapter`. Built in: ``dense``, ``sink_window`` (alias
``streaming``), ``block_sparse`` (mean-pooled top-k blocks, MInference's block-sparse rule),
``cca``, ``hyper``, ``moba``. Any other name is taken as a table method: its selection is
``jaxllm.attention.sparse.select(name, q, k, **options)`` -> ``BlockTable`` / ``VerticalSlash``,
its pairs are ``dense_mask`` of that table and its output is the block-sparse op over it.

Inputs: ``planted`` (``jaxllm.eval.planted``: one pattern per KV head) and ``captured`` (q/k/v of
a byte-level LM on held-out text, ``jaxllm.eval.capture``: the lm_efficiency model, or with
``--lm_config=long_smoke`` the long-context LM of configs/lm_long.py). ``--query_len=N`` measures
the last N queries only, onto the earlier positions as a cache (squeezed needs that context).

  python -m jaxllm.eval.attention_fidelity --methods=dense,sink_window,cca,hyper,moba \
      --lengths=4096,8192 --inputs=planted,captured --workdir=runs/fidelity
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm import cli
from jaxllm.attention import masks as vis
from jaxllm.attention.sparse import cca, hyper, moba, patterns
from jaxllm.eval import planted
from jaxllm.results import write_results
from pallas_kernels.block_sparse import api as block_sparse, masks

INPUTS = ("planted", "captured")
BLOCK = 128  # block size of the dense baseline and the static tables


@dataclasses.dataclass(frozen=True)
class Adapter:
  """How the harness drives one method (q [B, T, H, D], k/v [B, S, Hkv, D], causal).

  select(q, k, **opts) -> selection (any pytree; timed as the selection cost);
  run(q, k, v, **opts) -> (o [B, T, H, D], lse float32 [B, H, T]), selection included;
  pairs(selection, q, k, **opts) -> (exact bool [B, H, T, S], extra float [B, H, T]): the keys
  attended exactly and the number of extra (pooled) tokens each query attends.
  """
  select: Callable
  run: Callable
  pairs: Callable
  jit_run: bool = True  # False: run() jits its own parts (a table's width must stay concrete)


def _no_extra(q):
  return jnp.zeros((q.shape[0], q.shape[2], q.shape[1]), jnp.float32)


def _causal_mask(q, k):
  t, s = q.shape[1], k.shape[1]
  return jnp.broadcast_to(vis.visible(*vis.positions(t, s), causal=True),
                          (q.shape[0], q.shape[2], t, s))


@jax.jit
def _table_op(q, k, v, table):
  return block_sparse.block_sparse_attention(q, k, v, table, causal=True, impl="xla",
                                             return_lse=True)


def _table_run(select):
  """Selection outside jit, so that the table is as wide as its widest row (under jit it would
  be every key block, and the gather path walks every slot), then the jitted op."""
  def run(q, k, v, **opts):
    return _table_op(q, k, v, select(q, k, **opts))
  return run


def _table_pairs(table, q, k, **_):
  mask = masks.dense_mask(table, q.shape[1], k.shape[1], causal=True)
  return jnp.broadcast_to(mask, (q.shape[0], q.shape[2]) + mask.shape[2:]), _no_extra(q)


def dense_select(q, k):
  return patterns.causal_table(q.shape[1], k.shape[1], block_q=BLOCK, block_k=BLOCK)


def dense_run(q, k, v):
  """Exact causal attention with its lse, by the block-sparse gather path (no T x S logits)."""
  return block_sparse.block_sparse_attention(q, k, v, dense_select(q, k), causal=True, impl="xla",
                                    return_lse=True)


def sink_window_select(q, k, *, sinks=4, window=1024):
  return patterns.sink_window_table(q.shape[1], k.shape[1], sinks=sinks, window=window, block_q=BLOCK,
                               block_k=BLOCK)


def sink_window_run(q, k, v, *, sinks=4, window=1024):
  return block_sparse.block_sparse_attention(q, k, v, sink_window_select(q, k, sinks=sinks, window=window),
                                    causal=True, window=window, sinks=sinks, impl="xla",
                                    return_lse=True)


def sink_window_pairs(_, q, k, *, sinks=4, window=1024):
  ok = vis.visible(*vis.positions(q.shape[1], k.shape[1]), causal=True, window=window,
                   sinks=sinks)
  return jnp.broadcast_to(ok, (q.shape[0], q.shape[2]) + ok.shape), _no_extra(q)


def pooled_topk_select(q, k, *, block=64, topk=8):
  """Top-k key blocks per query block by mean-pooled q.k (diagonal block always kept)."""
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  pool = lambda x, n: jnp.pad(x.astype(jnp.float32), ((0, 0), (0, -(-n // block) * block - n),
                                                      (0, 0), (0, 0))).reshape(
      b, -1, block, x.shape[2], d).mean(2)
  qb = pool(q, t).reshape(b, -1, hkv, h // hkv, d)
  scores = jnp.einsum("bqkgd,bnkd->bkgqn", qb, pool(k, s)).reshape(b, h, qb.shape[1], -1)
  _, last = masks.query_block_positions(t, s, block)
  diag = jnp.asarray(last // block)[:, None] == jnp.arange(scores.shape[-1])
  scores = jnp.where(diag, jnp.inf, scores)
  return patterns.topk_table(scores, min(topk, scores.shape[-1]), seq_q=t, seq_k=s, block_q=block,
                          block_k=block)


def _cca_pairs(_, q, k, **opts):
  local, core = cca.pair_mask(q, k, group_size=opts.get("group_size", cca.GROUP_SIZE),
                              window=opts.get("window", cca.WINDOW))
  shape = (q.shape[0], q.shape[2])
  return (jnp.broadcast_to(local, shape + local.shape),
          jnp.broadcast_to(core.sum(-1).astype(jnp.float32), shape + core.shape[:1]))


def _split(opts, names):
  return {n: opts[n] for n in names if n in opts}


_HYPER_SELECT = ("lsh_num_projs", "seed", "lsh_order")

ADAPTERS = {
    "dense": Adapter(lambda q, k: dense_select(q, k), dense_run, _table_pairs),
    "sink_window": Adapter(sink_window_select, sink_window_run, sink_window_pairs),
    "block_sparse": Adapter(pooled_topk_select, _table_run(pooled_topk_select), _table_pairs),
    "cca": Adapter(
        lambda q, k, **o: cca.core_tokens(cca.all_queries(q, k, None), k, k,
                                          group_size=o.get("group_size", cca.GROUP_SIZE)),
        cca.attention, _cca_pairs),
    "hyper": Adapter(lambda q, k, **o: hyper.select(q, k, **_split(o, _HYPER_SELECT)),
                     hyper.attention, lambda _, q, k, **o: (hyper.pair_mask(q, k, **o),
                                                            _no_extra(q))),
    "moba": Adapter(moba.gate, moba.attention,
                    lambda _, q, k, **o: (moba.pair_mask(q, k, **o), _no_extra(q))),
}
ADAPTERS["streaming"] = ADAPTERS["sink_window"]


def adapter(method: str) -> Adapter:
  """The built-in adapter, or a table adapter over ``jaxllm.attention.sparse.select``."""
  if method in ADAPTERS:
    return ADAPTERS[method]
  try:
    from jaxllm.attention import sparse  # pylint: disable=g-import-not-at-top
    select = getattr(sparse, "select")
    known = set(getattr(sparse, "METHODS", ()) or ())
  except (ImportError, AttributeError):
    select, known = None, set()
  if select is None or (known and method not in known):
    raise ValueError(f"attention_fidelity: unknown method {method!r}; built in: "
                     f"{sorted(ADAPTERS)}, table methods: {sorted(known) or 'none available'}")
  sel = lambda q, k, **o: select(method, q, k, **o)
  return Adapter(sel, _table_run(sel), _table_pairs, jit_run=False)


def timed(fn, *args, repeats):
  out = jax.block_until_ready(fn(*args))  # compile outside the clock
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return out, float(np.median(times))


@jax.jit
def _mass(q, k, lse_d, exact):
  """Dense softmax mass on ``exact`` per query, float32 [B, H, T]; one query head at a time."""
  b, t, h, d = q.shape
  g = h // k.shape[2]

  def head(i):
    logits = jnp.einsum("btd,bsd->bts", q[:, :, i], k[:, :, i // g],
                        preferred_element_type=jnp.float32) / math.sqrt(d)
    p = jnp.exp(jnp.where(exact[:, i], logits - lse_d[:, i, :, None], -jnp.inf))
    return p.sum(-1)

  return jnp.moveaxis(jax.lax.map(head, jnp.arange(h)), 0, 1)


def measure(method: str, q, k, v, options: dict | None = None, *, dense=None, repeats: int = 2,
            coverage: bool = True):
  """Fidelity and timing of ``method`` on one (q, k, v); ``dense`` = ((o, lse), seconds).

  ``coverage=False`` skips density and recall (None), which materialise bool [B, H, T, S].
  """
  ad = adapter(method)
  opts = dict(options or {})
  (o_d, lse_d), t_dense = dense if dense is not None else timed(jax.jit(dense_run), q, k, v,
                                                                 repeats=repeats)
  wrap = jax.jit if ad.jit_run else (lambda fn: fn)
  sel, t_sel = timed(wrap(lambda q, k: ad.select(q, k, **opts)), q, k, repeats=repeats)
  (o, lse), t_run = timed(wrap(lambda q, k, v: ad.run(q, k, v, **opts)), q, k, v,
                           repeats=repeats)
  density = recall = head_recall = None
  if coverage:
    exact, extra = ad.pairs(sel, q, k, **opts)
    exact = exact & _causal_mask(q, k)
    causal_pairs = float(_causal_mask(q, k)[0, 0].sum()) * q.shape[0] * q.shape[2]
    density = (float(exact.sum()) + float(extra.sum())) / causal_pairs
    per_head = np.asarray(_mass(q, k, lse_d, exact).mean(axis=(0, 2)))
    recall, head_recall = float(per_head.mean()), [float(x) for x in per_head]
  o32, od32 = o.astype(jnp.float32), o_d.astype(jnp.float32)
  finite = jnp.isfinite(lse_d)
  return {
      "density": density, "recall": recall, "head_recall": head_recall,
      "out_rel_err": float(jnp.linalg.norm(o32 - od32) / jnp.linalg.norm(od32)),
      "lse_err": float(jnp.where(finite, jnp.abs(lse - lse_d), 0.0).sum() / finite.sum()),
      "select_s": t_sel, "run_s": t_run, "dense_s": t_dense,
      "selection_share": t_sel / t_run, "time_ratio": t_run / t_dense,
  }


def _average(rows):
  """Mean over captured layers (per head for ``head_recall``)."""
  out = {}
  for key in rows[0]:
    values = [r[key] for r in rows]
    out[key] = (None if values[0] is None else
                [float(x) for x in np.mean(values, axis=0)] if isinstance(values[0], list) else
                float(np.mean(values)))
  return out


def input_sets(name: str, length: int, *, seed: int, lm=None, head_dim: int = 64):
  """The (q, k, v) problems of one input kind and length (one per captured layer)."""
  if name == "planted":
    q, k, v, _ = planted.planted_qkv(seed, length=length, head_dim=head_dim)
    return [(q, k, v)]
  if name == "captured":
    from jaxllm.eval import capture  # pylint: disable=g-import-not-at-top
    model, task = lm
    return capture.capture_qkv(model, capture.text_tokens(task, length, seed=seed))
  raise ValueError(f"attention_fidelity: unknown input {name!r}; allowed: {list(INPUTS)}")


def last_queries(problem, query_len: int):
  """(q, k, v) with only the last ``query_len`` queries (0: all): a chunk prefilled onto the
  earlier positions as a cache, the setting of methods with a fixed context (squeezed)."""
  q, k, v = problem
  if query_len and query_len < q.shape[1]:
    q = q[:, q.shape[1] - query_len:]
  return q, k, v


def run(methods, lengths, workdir, *, inputs=("planted",), options=None, seed=0, repeats=2,
        lm_workdir=None, lm_config="smoke", lm_steps=200, figure=True, query_len=0) -> dict:
  """Measures every method on every input and length; writes results.json (+ a figure).

  ``query_len`` > 0 measures only the last ``query_len`` queries of each length (T < S).
  """
  options = dict(options or {})
  for m in methods:
    adapter(m)
  bad = [i for i in inputs if i not in INPUTS]
  if bad:
    raise ValueError(f"attention_fidelity: unknown inputs {bad}; allowed: {list(INPUTS)}")
  lm = None
  if "captured" in inputs:
    from jaxllm.eval import capture  # pylint: disable=g-import-not-at-top
    lm = capture.load_or_train(lm_workdir or os.path.join(workdir, "lm"), config_arg=lm_config,
                               steps=lm_steps)
  rows = []
  for name in inputs:
    for length in lengths:
      problems = [last_queries(p, query_len) for p in input_sets(name, length, seed=seed, lm=lm)]
      dense = [timed(jax.jit(dense_run), *p, repeats=repeats) for p in problems]
      for m in methods:
        per = [measure(m, *p, options.get(m), dense=d, repeats=repeats)
               for p, d in zip(problems, dense)]
        rows.append({"method": m, "input": name, "length": length, "layers": len(problems),
                     "queries": problems[0][0].shape[1],
                     "options": options.get(m, {}), **_average(per)})
        print(f"{name:9s} T={length:6d} {m:14s} density {rows[-1]['density']:.3f} recall "
              f"{rows[-1]['recall']:.3f} out err {rows[-1]['out_rel_err']:.3g}", flush=True)
  results = {"experiment": "attention_fidelity", "methods": list(methods),
             "lengths": list(lengths), "inputs": list(inputs), "seed": seed, "rows": rows}
  write_results(workdir, results)
  if figure:
    from jaxllm.plots import attention_fidelity as figure  # pylint: disable=g-import-not-at-top
    figure.plot(results, os.path.join(workdir, "attention_fidelity.png"))
  return results


def _parse(argv_flags):
  """Validated arguments from the absl flag values; raises ValueError with one clear line."""
  methods = [m for m in argv_flags.methods.split(",") if m]
  if not methods:
    raise ValueError("--methods must list at least one method")
  try:
    lengths = [int(x) for x in argv_flags.lengths.split(",") if x]
  except ValueError as e:
    raise ValueError(f"--lengths must be comma-separated positive ints, got "
                     f"{argv_flags.lengths!r}") from e
  if not lengths or min(lengths) < 2:
    raise ValueError(f"--lengths must be comma-separated ints >= 2, got {argv_flags.lengths!r}")
  inputs = [i for i in argv_flags.inputs.split(",") if i]
  try:
    options = json.loads(argv_flags.options) if argv_flags.options else {}
  except json.JSONDecodeError as e:
    raise ValueError(f"--options must be a JSON object {{method: {{option: value}}}}: {e}") from e
  if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
    raise ValueError("--options must be a JSON object {method: {option: value}}")
  ints = {}
  for name, low in (("seed", 0), ("repeats", 1), ("lm_steps", 1), ("query_len", 0)):
    raw = getattr(argv_flags, name)
    if not raw.isdigit() or int(raw) < low:
      raise ValueError(f"--{name} must be an int >= {low}, got {raw!r}")
    ints[name] = int(raw)
  if not argv_flags.workdir:
    raise ValueError("--workdir is required")
  return methods, lengths, inputs, options, ints


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  try:
    methods, lengths, inputs, options, ints = _parse(f)
    run(methods, lengths, f.workdir, inputs=inputs, options=options,
        lm_workdir=f.lm_workdir or None, lm_config=f.lm_config or None, **ints)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("methods", "dense,sink_window,block_sparse,cca,hyper,moba",
                      "comma-separated attention methods")
  flags.DEFINE_string("lengths", "4096", "comma-separated sequence lengths")
  flags.DEFINE_string("inputs", "planted", "comma-separated inputs: planted, captured")
  flags.DEFINE_string("workdir", "", "output directory (results.json, figure)")
  flags.DEFINE_string("options", "", 'JSON per-method options, e.g. {"moba": {"topk": 4}}')
  # Integers are read as strings so that a bad value gets the one-line error and exit 2.
  flags.DEFINE_string("seed", "0", "input seed")
  flags.DEFINE_string("repeats", "2", "timed repeats per measurement (median)")
  flags.DEFINE_string("lm_workdir", "", "run directory of the byte LM (trained there if empty)")
  flags.DEFINE_string("lm_config", "smoke", "captured LM: configs/lm_efficiency.py arg (smoke, "
                      "tiny) or long_smoke (configs/lm_long.py:smoke)")
  flags.DEFINE_string("lm_steps", "200", "training steps when the byte LM must be trained")
  flags.DEFINE_string("query_len", "0", "measure only the last N queries of each length (0: all)")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
