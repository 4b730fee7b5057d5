"""Long-context deployment cost model (Fu 2024, "Challenges in Deploying Long-Context Transformers").

Serving cost splits into four parts, each bound by one resource of the accelerator:

* concurrency, by HBM capacity: ``floor((HBM - weight bytes) / KV bytes per user)``;
* prefill, by compute: ``FLOPs / (peak FLOP/s x utilisation)`` with FLOPs = 2 x params x tokens
  plus the attention term (2 x 2 x layers x query heads x head dim per attended query-key pair);
* decode, by HBM bandwidth: one step reads every weight once and every user's KV cache once,
  ``(weight bytes + batch x KV bytes) / bandwidth``;
* context switching, by PCIe bandwidth: ``(KV out + KV in) / PCIe bandwidth``.

KV bytes = 2 (keys and values) x layers x kv_heads x head_dim x bytes per element x cached tokens
x batch. Cache policies change the cached tokens (and, for sparse prefill, the attended pairs):
``full`` keeps the context; ``window``/``streaming``, ``h2o`` and ``sirllm`` keep a fixed budget;
``duo`` keeps the full context on retrieval heads and sink + recent tokens on the rest.

Every hardware constant is an explicit input (:class:`Hardware`); the presets below are the
vendors' datasheet numbers (dense bf16 peak, HBM capacity and bandwidth, host link bandwidth per
direction) and ``custom`` takes all of them from the command line. The paper's worked example
(34B model, 60 layers, 8 KV heads, head dim 128, bf16, one A100 80 GB) is the regression test.

    python -m jaxllm.inference.cost_model --model=configs/lm_efficiency.py:smoke \
        --context=4096,50000 --batch=1 --hardware=a100-80gb \
        --policy=full --policy=h2o:budget=2048 --policy=duo:fraction=0.5,recent=256
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Hardware:
  """One accelerator: every number the model uses, with its unit in the name."""
  name: str
  peak_flops: float  # dense bf16 FLOP/s
  hbm_bytes: float  # memory capacity
  hbm_bandwidth: float  # bytes/s
  pcie_bandwidth: float  # host link, bytes/s per direction
  utilisation: float = 1.0  # achieved share of peak in prefill

  def __post_init__(self):
    for f in ("peak_flops", "hbm_bytes", "hbm_bandwidth", "pcie_bandwidth"):
      v = getattr(self, f)
      if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
        raise ValueError(f"hardware.{f} must be a positive number, got {v!r}")
    if not 0 < self.utilisation <= 1:
      raise ValueError(f"hardware.utilisation must be in (0, 1], got {self.utilisation!r}")


# Datasheet numbers. A100 80 GB SXM: 312 TFLOP/s bf16, 2.039 TB/s, PCIe 4.0 x16 (32 GB/s).
# H100 SXM: 989 TFLOP/s bf16 dense, 3.35 TB/s, 80 GB, PCIe 5.0 x16 (64 GB/s).
# H200 SXM: 989 TFLOP/s, 4.8 TB/s, 141 GB. TPU v5e: 197 TFLOP/s bf16, 819 GB/s, 16 GiB,
# host link taken as PCIe 4.0 x16.
HARDWARE = {
    "a100-80gb": Hardware("a100-80gb", 312e12, 80 * GiB, 2.039e12, 32e9),
    "h100": Hardware("h100", 989e12, 80 * GiB, 3.35e12, 64e9),
    "h200": Hardware("h200", 989e12, 141e9, 4.8e12, 64e9),
    "tpu-v5e": Hardware("tpu-v5e", 197e12, 16 * GiB, 819e9, 32e9),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the cost model needs of a decoder: sizes only, no weights."""
  params: float  # total parameter count (weights read per decode step)
  layers: int
  kv_heads: int
  head_dim: int
  q_heads: int
  bytes_per_element: int = 2  # KV cache and weights (bf16)
  weight_bytes_per_param: int | None = None  # None -> bytes_per_element

  def __post_init__(self):
    for f in ("layers", "kv_heads", "head_dim", "q_heads", "bytes_per_element"):
      v = getattr(self, f)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"model.{f} must be a positive int, got {v!r}")
    if not self.params > 0:
      raise ValueError(f"model.params must be positive, got {self.params!r}")
    if self.q_heads % self.kv_heads:
      raise ValueError(f"model.q_heads={self.q_heads} must be a multiple of "
                       f"model.kv_heads={self.kv_heads}")

  @property
  def weight_bytes(self) -> float:
    return self.params * (self.weight_bytes_per_param or self.bytes_per_element)

  @property
  def kv_bytes_per_token(self) -> int:
    """Bytes one cached token costs across all layers and KV heads (keys and values)."""
    return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_element


POLICIES = ("full", "window", "streaming", "h2o", "sirllm", "duo")


@dataclasses.dataclass(frozen=True)
class Policy:
  """A cache policy as the cost model sees it: how many tokens each KV head keeps.

  ``budget`` is the tokens kept by ``window``/``streaming``/``h2o``/``sirllm`` (sinks included);
  ``duo`` keeps the whole context on a ``1 - fraction`` share of KV heads and ``sink + recent``
  tokens on the ``fraction`` of streaming heads (deployment defaults sink 64, recent 256).
  """
  name: str = "full"
  budget: int | None = None
  fraction: float = 0.5
  sink: int = 64
  recent: int = 256

  def __post_init__(self):
    if self.name not in POLICIES:
      raise ValueError(f"policy must be one of {list(POLICIES)}, got {self.name!r}")
    if self.name in ("window", "streaming", "h2o", "sirllm"):
      if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
        raise ValueError(f"policy {self.name!r} needs budget: a positive int, got {self.budget!r}")
    if self.name == "duo":
      if not 0 <= self.fraction <= 1:
        raise ValueError(f"policy 'duo' fraction must be in [0, 1], got {self.fraction!r}")
      for f in ("sink", "recent"):
        if getattr(self, f) < 0:
          raise ValueError(f"policy 'duo' {f} must be >= 0, got {getattr(self, f)!r}")

  @property
  def label(self) -> str:
    if self.name == "full":
      return "full"
    if self.name == "duo":
      return f"duo(fraction={self.fraction:g})"
    return f"{self.name}({self.budget})"

  def streaming_heads(self, spec: ModelSpec) -> int:
    """KV heads (over all layers) that keep only sink + recent tokens."""
    return round(self.fraction * spec.layers * spec.kv_heads) if self.name == "duo" else 0

  def cached_token_heads(self, spec: ModelSpec, context: int) -> int:
    """Sum over layers and KV heads of the tokens each keeps after reading ``context`` tokens."""
    heads = spec.layers * spec.kv_heads
    if self.name == "full":
      return heads * context
    if self.name == "duo":
      n_stream = self.streaming_heads(spec)
      return (heads - n_stream) * context + n_stream * min(context, self.sink + self.recent)
    return heads * min(context, self.budget)

  def attended_pairs(self, spec: ModelSpec, context: int) -> int:
    """Causal query-key pairs computed in prefill, summed over layers and KV heads.

    Eviction policies (H2O, SirLLM) prefill densely and cut the cache afterwards; ``window`` and
    ``streaming`` prefill with their band; ``duo`` runs its streaming heads on sink + recent.
    """
    heads = spec.layers * spec.kv_heads
    dense = context * (context + 1) // 2
    if self.name in ("full", "h2o", "sirllm"):
      return heads * dense
    band = self.budget if self.name in ("window", "streaming") else self.sink + self.recent
    banded = _band_pairs(context, band)
    n_stream = self.streaming_heads(spec) if self.name == "duo" else heads
    return (heads - n_stream) * dense + n_stream * banded


def _band_pairs(context: int, band: int) -> int:
  """sum_{t=1..context} min(t, band): causal pairs when each query sees at most ``band`` keys."""
  b = min(band, context)
  return b * (b + 1) // 2 + (context - b) * b


def kv_bytes(spec: ModelSpec, context: int, batch: int = 1, policy: Policy = Policy()) -> int:
  """Bytes of the KV cache for ``batch`` users of ``context`` tokens each."""
  _check_positive("context", context)
  _check_positive("batch", batch)
  return (2 * spec.head_dim * spec.bytes_per_element
          * policy.cached_token_heads(spec, context) * batch)


def prefill_flops(spec: ModelSpec, context: int, batch: int = 1, policy: Policy = Policy(),
                  attention: bool = True) -> float:
  """2 x params x tokens, plus 4 x head_dim x query heads per attended (query, key) pair."""
  linear = 2.0 * spec.params * context * batch
  if not attention:
    return linear
  group = spec.q_heads // spec.kv_heads
  return linear + 4.0 * spec.head_dim * group * policy.attended_pairs(spec, context) * batch


def estimate(spec: ModelSpec, hw: Hardware, context: int, batch: int = 1,
             policy: Policy = Policy()) -> dict:
  """All four costs for one (model, hardware, context, batch, policy)."""
  kv_user = kv_bytes(spec, context, 1, policy)
  kv_all = kv_user * batch
  free = hw.hbm_bytes - spec.weight_bytes
  step = (spec.weight_bytes + kv_all) / hw.hbm_bandwidth
  return dict(
      policy=policy.label, context=context, batch=batch, hardware=hw.name,
      kv_bytes_per_user=kv_user, kv_bytes=kv_all,
      weight_bytes=spec.weight_bytes,
      prefill_seconds=prefill_flops(spec, context, batch, policy) / (hw.peak_flops
                                                                     * hw.utilisation),
      decode_seconds_per_step=step,
      decode_tokens_per_second=batch / step,
      concurrency=max(int(free // kv_user), 0),
      fits=spec.weight_bytes + kv_all <= hw.hbm_bytes,
      context_switch_seconds=2 * kv_all / hw.pcie_bandwidth,
  )


def _check_positive(field, value):
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{field} must be a positive int, got {value!r}")


# --- model specs from jaxllm configs and Hugging Face directories ---------------------------

def spec_from_hf_config(cfg: dict, bytes_per_element: int = 2) -> ModelSpec:
  """Sizes from a Hugging Face ``config.json`` (Llama / Mistral / Qwen2 / GPT-2 field names)."""
  get = lambda *names, default=None: next((cfg[n] for n in names if cfg.get(n) is not None),
                                          default)
  layers = get("num_hidden_layers", "n_layer")
  width = get("hidden_size", "n_embd")
  heads = get("num_attention_heads", "n_head")
  vocab = get("vocab_size")
  if None in (layers, width, heads, vocab):
    raise ValueError("config.json lacks one of num_hidden_layers, hidden_size, "
                     "num_attention_heads, vocab_size")
  kv = get("num_key_value_heads", default=heads)
  head_dim = get("head_dim", default=width // heads)
  mlp = get("intermediate_size", "n_inner", default=4 * width)
  gated = cfg.get("model_type", "llama") != "gpt2"
  per_layer = width * head_dim * (heads + 2 * kv) + heads * head_dim * width
  per_layer += (3 if gated else 2) * width * mlp
  embeddings = vocab * width * (1 if cfg.get("tie_word_embeddings", not gated) else 2)
  return ModelSpec(params=float(layers * per_layer + embeddings), layers=layers, kv_heads=kv,
                   head_dim=head_dim, q_heads=heads, bytes_per_element=bytes_per_element)


def spec_from_model_config(mcfg, bytes_per_element: int = 2,
                           vocab_size: int | None = None) -> ModelSpec:
  """Sizes from a jaxllm ``model`` config block (see :class:`jaxllm.models.config.TransformerConfig`).

  Experiments often fill ``vocab_size`` in from their data; pass it when the block leaves it 0.
  """
  from jaxllm.models.config import TransformerConfig
  from jaxllm.models.transformer import Transformer
  import jax
  from flax import nnx
  if not isinstance(mcfg, TransformerConfig):
    mcfg = dict(mcfg.to_dict() if hasattr(mcfg, "to_dict") else mcfg)
    if vocab_size is not None:
      mcfg["vocab_size"] = vocab_size
    if mcfg.get("io", "tokens") == "tokens" and not mcfg.get("vocab_size"):
      raise ValueError("the config's model.vocab_size is not set (the experiment fills it in); "
                       "pass --vocab_size")
  cfg = mcfg if isinstance(mcfg, TransformerConfig) else TransformerConfig.from_config(mcfg)
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  params = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  return ModelSpec(params=float(params), layers=cfg.num_layers, kv_heads=cfg.kv_heads,
                   head_dim=cfg.dim_per_head, q_heads=cfg.num_heads,
                   bytes_per_element=bytes_per_element)


def load_spec(model: str, bytes_per_element: int = 2, vocab_size: int | None = None) -> ModelSpec:
  """``model`` is a Hugging Face directory (with config.json) or a config file ``path[:arg]``."""
  if os.path.isdir(model):
    path = os.path.join(model, "config.json")
    if not os.path.isfile(path):
      raise ValueError(f"--model directory {model!r} has no config.json")
    with open(path) as f:
      return spec_from_hf_config(json.load(f), bytes_per_element)
  path, _, arg = model.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"--model must be a Hugging Face directory or a config file; "
                     f"{path!r} is neither")
  import importlib.util
  module_spec = importlib.util.spec_from_file_location("_cost_model_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path!r} has no get_config()")
  config = module.get_config(arg or None)
  if "model" not in config:
    raise ValueError(f"config {model!r} has no model block")
  return spec_from_model_config(config.model, bytes_per_element, vocab_size)


def parse_policy(text: str) -> Policy:
  """``name[:key=value,...]``, e.g. ``h2o:budget=2048`` or ``duo:fraction=0.5,recent=256``."""
  name, _, rest = text.partition(":")
  kw = {}
  fields = {f.name for f in dataclasses.fields(Policy)}
  for item in filter(None, rest.split(",")):
    key, eq, value = item.partition("=")
    if not eq or key not in fields or key == "name":
      raise ValueError(f"policy option {item!r} is not key=value with key in "
                       f"{sorted(set(fields) - {'name'})}")
    try:
      kw[key] = float(value) if key == "fraction" else int(value)
    except ValueError:
      raise ValueError(f"policy option {key} must be a number, got {value!r}") from None
  return Policy(name, **kw)


def figure(rows: list[dict], path: str) -> None:
  """Cost against context length, one line per policy, one panel per cost (the paper's style)."""
  import matplotlib.pyplot as plt
  panels = [("kv_bytes", "KV cache (GB)", 1e-9), ("prefill_seconds", "prefill (s)", 1),
            ("decode_seconds_per_step", "decode step (ms)", 1e3),
            ("concurrency", "concurrent users", 1),
            ("context_switch_seconds", "context switch (s)", 1)]
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
  for ax, (key, title, scale) in zip(axes, panels):
    for label in dict.fromkeys(r["policy"] for r in rows):
      pts = sorted((r["context"], r[key] * scale) for r in rows if r["policy"] == label)
      ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("context length")
    ax.set_title(title)
  axes[0].legend(fontsize=8)
  fig.suptitle(f"{rows[0]['hardware']}, batch {rows[0]['batch']}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main():
  from absl import flags
  from jaxllm import cli

  flags.DEFINE_string("model", None, "Hugging Face directory or jaxllm config file[:arg].")
  flags.DEFINE_list("context", ["4096", "16384", "50000"], "Context lengths (tokens).")
  flags.DEFINE_integer("batch", 1, "Users served together.", lower_bound=1)
  flags.DEFINE_enum("hardware", "a100-80gb", sorted(HARDWARE) + ["custom"], "Accelerator.")
  flags.DEFINE_float("peak_flops", None, "custom: dense bf16 FLOP/s.")
  flags.DEFINE_float("hbm_bytes", None, "custom: HBM capacity in bytes.")
  flags.DEFINE_float("hbm_bandwidth", None, "custom: HBM bytes/s.")
  flags.DEFINE_float("pcie_bandwidth", None, "custom: host link bytes/s per direction.")
  flags.DEFINE_float("utilisation", 1.0, "Achieved share of peak FLOP/s in prefill.")
  flags.DEFINE_integer("bytes_per_element", 2, "Bytes per cached element and weight.",
                       lower_bound=1)
  flags.DEFINE_integer("vocab_size", None, "Vocabulary, where a config file leaves it to the "
                       "experiment.", lower_bound=1)
  flags.DEFINE_multi_string("policy", ["full"], "name[:key=value,...], repeatable; names: "
                            + ", ".join(POLICIES))
  flags.DEFINE_string("out", None, "Write the rows as JSON here, and a figure next to it.")
  FLAGS = flags.FLAGS

  def run(argv):
    cli.expect_no_arguments(argv)
    try:
      if not FLAGS.model:
        raise ValueError("--model is required (a Hugging Face directory or a config file)")
      spec = load_spec(FLAGS.model, FLAGS.bytes_per_element, FLAGS.vocab_size)
      if FLAGS.hardware == "custom":
        missing = [f for f in ("peak_flops", "hbm_bytes", "hbm_bandwidth", "pcie_bandwidth")
                   if FLAGS[f].value is None]
        if missing:
          raise ValueError(f"--hardware=custom needs --{', --'.join(missing)}")
        hw = Hardware("custom", FLAGS.peak_flops, FLAGS.hbm_bytes, FLAGS.hbm_bandwidth,
                      FLAGS.pcie_bandwidth, FLAGS.utilisation)
      else:
        hw = dataclasses.replace(HARDWARE[FLAGS.hardware], utilisation=FLAGS.utilisation)
      try:
        contexts = [int(c) for c in FLAGS.context]
      except ValueError:
        raise ValueError(f"--context must be a list of ints, got {FLAGS.context}") from None
      policies = [parse_policy(p) for p in FLAGS.policy]
      rows = [estimate(spec, hw, c, FLAGS.batch, p) for p in policies for c in contexts]
    except ValueError as e:
      cli.fail(e)
    print(f"{'policy':<22}{'context':>9}{'KV GB':>11}{'prefill s':>11}{'decode ms':>11}"
          f"{'users':>10}{'switch s':>11}")
    for r in rows:
      print(f"{r['policy']:<22}{r['context']:>9}{r['kv_bytes'] / 1e9:>11.4g}"
            f"{r['prefill_seconds']:>11.4g}{r['decode_seconds_per_step'] * 1e3:>11.4g}"
            f"{r['concurrency']:>10}{r['context_switch_seconds']:>11.4g}")
    if FLAGS.out:
      tmp = FLAGS.out + ".tmp"
      with open(tmp, "w") as f:
        json.dump(dict(model=dataclasses.asdict(spec), hardware=dataclasses.asdict(hw),
                       rows=rows), f, indent=1)
      os.replace(tmp, FLAGS.out)
      import matplotlib
      matplotlib.use("Agg")
      figure(rows, os.path.splitext(FLAGS.out)[0] + ".png")
    return 0

  cli.run(run)


if __name__ == "__main__":
  main()
