"""The LM input pipeline: a grain chain from a TFDS data source to packed, per-host batches.

documents (random-access ``MapDataset`` over the TFDS source) -> per-host slice (document
``process_index::process_count``) -> shuffle (seeded, a new permutation each epoch) -> repeat ->
tokenize -> truncate -> pack -> batch -> LM batch dict. This is the shape of maxtext's
``grain_data_processing`` and flax's gemma ``input_pipeline_grain``.

Packing (``packing``):
* ``concat``: concatenate-then-split (grain ``ConcatThenSplitIterDataset``); no padding, long
  documents continue in the next row;
* ``first_fit``: first-fit packing into ``num_packing_bins`` bins (grain
  ``FirstFitPackIterDataset``), documents split into row-sized pieces first so nothing is dropped;
* ``none``: one document per row, truncated and padded.

A batch is ``tokens`` int32 [B, L + 1] (inputs ``tokens[:, :-1]``, targets ``tokens[:, 1:]``),
``segment_ids`` and ``positions`` int32 [B, L + 1] (see ``jaxllm.data.packing``) and ``mask`` bool
[B, L], the targets to score.

Resume: ``Batches`` walks the grain iterator in order and records its state, so ``batches(step)``
is a pure function of the step (replaying from the nearest known state when asked out of order)
and ``state(step)`` / ``restore(state)`` carry grain's iterator state through a checkpoint.
"""

import dataclasses
import json

import grain
import jax
import numpy as np

from jaxllm.data import packing
from jaxllm.data.text import document_text

PACKINGS = ("concat", "first_fit", "none")


@dataclasses.dataclass(frozen=True)
class Spec:
  """How documents become batches. ``batch_size`` is global (all hosts together)."""

  seq_len: int
  batch_size: int
  packing: str = "concat"
  num_packing_bins: int = 16
  max_document_tokens: int = 0  # truncate each document to this many tokens first; 0: no limit
  shuffle: bool = True
  seed: int = 0
  field: str = "text"
  # Document reading and tokenizing threads, and documents read ahead. grain's defaults (16, 500)
  # suit remote disks; on local array_record files a short read-ahead keeps a restore cheap.
  read_threads: int = 2
  read_ahead: int = 32

  def __post_init__(self):
    if self.packing not in PACKINGS:
      raise ValueError(f"text.packing={self.packing!r}; allowed: {list(PACKINGS)}")
    if self.seq_len < 1 or self.batch_size < 1:
      raise ValueError(f"text.seq_len and train.batch_size must be >= 1, got {self.seq_len}, "
                       f"{self.batch_size}")
    if self.packing == "first_fit" and self.num_packing_bins < 1:
      raise ValueError(f"text.num_packing_bins must be >= 1, got {self.num_packing_bins}")
    if self.max_document_tokens < 0:
      raise ValueError(f"text.max_document_tokens must be >= 0, got {self.max_document_tokens}")


def host_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"train.batch_size={global_batch} must be a multiple of the host count "
                     f"{process_count}")
  return global_batch // process_count


def documents(source, tokenizer, spec: Spec, *, process_index: int = 0, process_count: int = 1,
              num_epochs: int | None = None) -> grain.MapDataset:
  """Tokenized, truncated documents of this host: {"tokens": int32 [n]} (empty ones dropped)."""
  ds = grain.MapDataset.source(source)
  if len(ds) < process_count:
    raise ValueError(f"{len(ds)} documents cannot be split over {process_count} hosts")
  ds = ds[process_index::process_count]
  if spec.shuffle:
    ds = ds.shuffle(seed=spec.seed)
  ds = ds.repeat(num_epochs)
  limit = spec.max_document_tokens or None

  def tokenize(example):
    return {"tokens": tokenizer.encode(document_text(example, spec.field))[:limit]}

  return ds.map(tokenize).filter(lambda d: d["tokens"].size > 0)


class _SplitLong(grain.experimental.FlatMapTransform):
  """Pieces of at most ``row`` tokens (first-fit packs pieces; it cannot split a document)."""

  def __init__(self, row: int):
    self.row = row
    self.max_fan_out = 1 << 30  # part of the interface; only grain's MapDataset flat map uses it

  def flat_map(self, element):
    tokens = element["tokens"]
    return [{"tokens": tokens[i:i + self.row]} for i in range(0, len(tokens), self.row)]


def _pad_one(element, row: int):
  tokens = element["tokens"][:row]
  out = np.zeros(row, np.int32)
  seg = np.zeros(row, np.int32)
  out[:len(tokens)], seg[:len(tokens)] = tokens, 1
  return {"tokens": out, "tokens_segment_ids": seg}


def _lm_batch(packed):
  seg = np.asarray(packed["tokens_segment_ids"], np.int32)
  return {"tokens": np.asarray(packed["tokens"], np.int32), "segment_ids": seg,
          "positions": packing.positions(seg), "mask": packing.loss_mask(seg)}


def lm_dataset(docs: grain.MapDataset, spec: Spec, *, process_count: int = 1,
               drop_remainder: bool = True) -> grain.IterDataset:
  """Packed rows of ``seq_len + 1`` tokens, batched per host, as LM batch dicts."""
  row = spec.seq_len + 1
  it = docs.to_iter_dataset(grain.ReadOptions(num_threads=spec.read_threads,
                                               prefetch_buffer_size=spec.read_ahead))
  if spec.packing == "concat":
    it = grain.experimental.ConcatThenSplitIterDataset(it, length_struct={"tokens": row})
  elif spec.packing == "first_fit":
    it = grain.experimental.FlatMapIterDataset(it, _SplitLong(row))
    it = grain.experimental.FirstFitPackIterDataset(
        it, length_struct={"tokens": row}, num_packing_bins=spec.num_packing_bins,
        seed=spec.seed, shuffle_bins=True)
  else:
    it = it.map(lambda e: _pad_one(e, row))
  it = it.batch(host_batch_size(spec.batch_size, process_count), drop_remainder=drop_remainder)
  return it.map(_lm_batch)


def global_batch(local_batch: dict, sharding: jax.sharding.Sharding) -> dict:
  """Global jax arrays from each host's rows (the batch axis split over hosts)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


class Batches:
  """``batches(step)``: the step-th batch of a grain ``IterDataset``, resumable.

  The iterator is walked in order; a request for an earlier step replays from the latest known
  state at or before it (the start, or a restored checkpoint state), so the batch for a step never
  depends on the order of requests.
  """

  def __init__(self, dataset: grain.IterDataset):
    self._dataset = dataset
    self._anchor = (0, None)  # (step, grain state) that replays start from
    self._it, self._pos = None, 0

  def _reset_to_anchor(self):
    step, state = self._anchor
    self._it = iter(self._dataset)
    if state is not None:
      self._it.set_state(json.loads(state))
    self._pos = step

  def _seek(self, step: int):
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    if self._it is None or step < self._pos:
      if step < self._anchor[0]:
        self._anchor = (0, None)
      self._reset_to_anchor()
    while self._pos < step:
      next(self._it)
      self._pos += 1

  def __call__(self, step: int) -> dict:
    self._seek(step)
    batch = next(self._it)
    self._pos += 1
    return batch

  def state(self, step: int) -> dict:
    """The iterator positioned before ``step``'s batch: {"step", "iterator" (grain state, JSON)}."""
    self._seek(step)
    return {"step": int(step), "iterator": json.dumps(self._it.get_state())}

  def restore(self, state: dict):
    self._anchor = (int(state["step"]), str(state["iterator"]))
    self._reset_to_anchor()


def first_rows(dataset: grain.IterDataset, num_batches: int) -> list[dict]:
  """The first ``num_batches`` batches (fewer if the data runs out): a fixed evaluation set."""
  out = []
  for batch in dataset:
    out.append(batch)
    if len(out) >= num_batches:
      break
  return out


class TextData:
  """Train batches and a fixed evaluation set for an LM, from a ``config.text`` block.

  Fields: ``name`` / ``data_dir`` / ``input`` (see ``jaxllm.data.text.ensure``; all empty: the
  stdlib corpus), ``tokenizer`` (``jaxllm.data.tokenizer.get``), ``seq_len``, ``packing``,
  ``num_packing_bins``, ``max_document_tokens``, ``eval_split``. The corpus is opened on first use,
  so building a task to count its parameters reads no data.
  """

  def __init__(self, text_cfg, *, batch_size: int, seed: int):
    from jaxllm.data import tokenizer
    self.cfg = text_cfg
    self.tokenizer = tokenizer.get(text_cfg.get("tokenizer", "bytes"))
    self.spec = Spec(seq_len=int(text_cfg.seq_len), batch_size=int(batch_size),
                     packing=text_cfg.get("packing", "concat"),
                     num_packing_bins=int(text_cfg.get("num_packing_bins", 16)),
                     max_document_tokens=int(text_cfg.get("max_document_tokens", 0)),
                     seed=int(seed), field=text_cfg.get("field", "text"))
    self._train = None
    self._dataset = None

  def source(self, split: str):
    from jaxllm.data import text
    if self._dataset is None:
      self._dataset = text.ensure(self.cfg.get("name", ""), self.cfg.get("data_dir", ""),
                                  self.cfg.get("input", ""))
    return text.data_source(*self._dataset, split)

  @property
  def train(self) -> Batches:
    if self._train is None:
      count = jax.process_count()
      docs = documents(self.source("train"), self.tokenizer, self.spec,
                       process_index=jax.process_index(), process_count=count)
      self._train = Batches(lm_dataset(docs, self.spec, process_count=count))
    return self._train

  def eval_batches(self, num_sequences: int) -> list[dict]:
    """The held-out split in order, concatenated and split: the same rows on every call."""
    spec = dataclasses.replace(self.spec, packing="concat", shuffle=False)
    docs = documents(self.source(self.cfg.get("eval_split", "validation")), self.tokenizer, spec)
    return first_rows(lm_dataset(docs, spec), max(num_sequences // spec.batch_size, 1))


def held_out_tokens(data: "TextData", max_tokens: int) -> np.ndarray:
  """The held-out split's documents tokenized and concatenated in order, up to ``max_tokens``:
  real-text haystacks and perplexity windows for long-context evaluation."""
  source = data.source(data.cfg.get("eval_split", "validation"))
  out, total = [], 0
  for i in range(len(source)):
    ids = data.tokenizer.encode(document_text(source[i], data.spec.field))
    out.append(ids)
    total += len(ids)
    if total >= max_tokens:
      break
  return np.concatenate(out)[:max_tokens] if out else np.zeros(0, np.int32)


def text_config(**overrides):
  """A ``config.text`` block with the pipeline's defaults (the stdlib corpus as bytes, packed)."""
  import ml_collections
  c = ml_collections.ConfigDict(dict(
      name="", data_dir="", input="", tokenizer="bytes", seq_len=256, packing="concat",
      num_packing_bins=16, max_document_tokens=0, eval_split="validation", field="text"))
  c.update(overrides)
  return c
