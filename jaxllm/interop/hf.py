"""Hugging Face checkpoints (``config.json`` + safetensors) to and from jaxllm Transformers.

One table per family names every Hugging Face tensor, the jaxllm parameters it holds and how the
layouts relate; the importer, the exporter and the input checks all read that table, so a
tensor the table does not name is an error in both directions. Layouts follow transformers'
modeling files: ``nn.Linear`` weights are [out, in] (jaxllm kernels are [in, out]), GPT-2's
``Conv1D`` weights are already [in, out] and its ``c_attn`` holds q, k and v side by side.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.flax import save_file

from jaxllm.models.config import DTYPES, TransformerConfig
from jaxllm.models.transformer import Transformer

FAMILIES = ("llama", "mistral", "qwen2", "gpt2")
CONFIG, SINGLE, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
# Non-parameter buffers that older transformers versions saved; they carry no weights.
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
# transformers' defaults where config.json omits a field (its configuration_<family>.py).
_TIE_DEFAULT = {"llama": False, "mistral": False, "qwen2": False, "gpt2": True}


def _field(hf: dict, name: str, default=None):
  value = hf.get(name, default)
  if value is None:
    raise ValueError(f"config.json lacks the field {name!r}")
  return value


def _unsupported(field, value, allowed):
  raise ValueError(f"config.json {field}={value!r} is not supported; allowed: {allowed}")


def _rope(hf: dict) -> tuple[float, dict]:
  """(theta, scaling) from transformers 5's ``rope_parameters`` or the older ``rope_scaling`` and
  ``rope_theta`` fields."""
  params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
  kind = params.get("rope_type", params.get("type", "default"))
  if kind == "default":
    return theta, {}
  if kind != "llama3":
    _unsupported("rope_parameters.rope_type", kind, ["default", "llama3"])
  keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
  missing = [k for k in keys if k not in params]
  if missing:
    raise ValueError(f"config.json rope_parameters of type 'llama3' lacks {missing}")
  return theta, dict(type="llama3", factor=float(params["factor"]),
                     low_freq_factor=float(params["low_freq_factor"]),
                     high_freq_factor=float(params["high_freq_factor"]),
                     original_max_len=int(params["original_max_position_embeddings"]))


def _window(hf: dict, family: str, num_layers: int) -> int | None:
  """The sliding window of every layer (Mistral: ``sliding_window``; Qwen2: ``layer_types`` or
  ``use_sliding_window`` from ``max_window_layers`` on); jaxllm has one rule for all layers."""
  if family == "mistral":
    return hf.get("sliding_window")
  if family != "qwen2":
    return None
  types = hf.get("layer_types")
  if types is None:
    first = hf.get("max_window_layers", num_layers) if hf.get("use_sliding_window") else num_layers
    types = ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
  kinds = set(types)
  if kinds - {"full_attention", "sliding_attention"}:
    _unsupported("layer_types", sorted(kinds), ["full_attention", "sliding_attention"])
  if len(kinds) > 1:
    raise ValueError("config.json layer_types mixes full and sliding attention across layers; "
                     "jaxllm applies one attention rule to every layer")
  return _field(hf, "sliding_window") if kinds == {"sliding_attention"} else None


def config_from_hf(hf: dict, dtype="float32") -> tuple[str, TransformerConfig]:
  """Maps a transformers ``config.json`` dict to (family, TransformerConfig)."""
  family = hf.get("model_type")
  if family not in FAMILIES:
    _unsupported("model_type", family, list(FAMILIES))
  dtype = dtype_name(dtype)
  common = dict(io="tokens", vocab_size=int(_field(hf, "vocab_size")), dtype=dtype,
                param_dtype=dtype,
                tie_embeddings=bool(hf.get("tie_word_embeddings", _TIE_DEFAULT[family])))
  if family == "gpt2":
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
      _unsupported("activation_function", act, ["gelu_new", "gelu_pytorch_tanh"])
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
      if hf.get(flag):
        _unsupported(flag, True, [False])
    e = int(_field(hf, "n_embd"))
    options = {} if hf.get("scale_attn_weights", True) else {"scale": 1.0}
    return family, TransformerConfig(
        d_model=e, num_layers=int(_field(hf, "n_layer")), num_heads=int(_field(hf, "n_head")),
        mlp_dim=int(hf.get("n_inner") or 4 * e), max_len=int(_field(hf, "n_positions")),
        positions="learned", norm="layernorm", mlp="gelu", use_bias=True,
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), attention_options=tuple(
            options.items()), **common)
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    _unsupported("hidden_act", act, ["silu"])
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag):
      _unsupported(flag, True, [False])
  layers, heads = int(_field(hf, "num_hidden_layers")), int(_field(hf, "num_attention_heads"))
  theta, scaling = _rope(hf)
  window = _window(hf, family, layers)
  d_model = int(_field(hf, "hidden_size"))
  head_dim = hf.get("head_dim")
  if head_dim is not None and head_dim * heads == d_model:
    head_dim = None  # the default split, so the config equals a natively built one
  return family, TransformerConfig(
      d_model=d_model, num_layers=layers, num_heads=heads,
      num_kv_heads=int(hf.get("num_key_value_heads") or heads), head_dim=head_dim,
      mlp_dim=int(_field(hf, "intermediate_size")),
      max_len=int(hf.get("max_position_embeddings", 2048)), positions="rope", norm="rmsnorm",
      mlp="swiglu", use_bias=False, qkv_bias=family == "qwen2", rope_theta=theta,
      rope_scaling=tuple(sorted(scaling.items())),
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      attention_options=(("window", int(window)),) if window else (), **common)


def family_of(cfg: TransformerConfig) -> str:
  """The Hugging Face family whose layout ``cfg`` has (raises when it has none)."""
  llama_like = (cfg.positions, cfg.norm, cfg.mlp, cfg.use_bias) == ("rope", "rmsnorm", "swiglu",
                                                                    False)
  gpt2_like = (cfg.positions, cfg.norm, cfg.mlp, cfg.use_bias) == ("learned", "layernorm", "gelu",
                                                                   True)
  if cfg.io != "tokens" or cfg.block != "standard" or cfg.attention != "dense" or not (
      llama_like or gpt2_like):
    raise ValueError("model has no Hugging Face layout: export needs io='tokens', "
                     "block='standard', attention='dense' and the gpt2 or llama style")
  if gpt2_like:
    return "gpt2"
  if cfg.qkv_bias:
    return "qwen2"
  return "mistral" if dict(cfg.attention_options).get("window") else "llama"


def config_to_hf(cfg: TransformerConfig, family: str) -> dict:
  """The transformers ``config.json`` for ``cfg`` (the inverse of :func:`config_from_hf`)."""
  if family not in FAMILIES:
    _unsupported("model_type", family, list(FAMILIES))
  options = dict(cfg.attention_options)
  allowed = {"gpt2": {"scale"}, "mistral": {"window"}, "qwen2": {"window"}}.get(family, set())
  if set(options) - allowed:
    raise ValueError(f"model.attention_options {sorted(set(options) - allowed)} have no "
                     f"{family} config field")
  if family == "gpt2" and (cfg.rope_scaling or cfg.kv_heads != cfg.num_heads
                           or cfg.dim_per_head * cfg.num_heads != cfg.d_model
                           or cfg.qkv_bias is False):
    raise ValueError("gpt2 has no rope_scaling, num_kv_heads, head_dim or qkv_bias=False; the "
                     "model sets one of them")
  if family != "gpt2" and bool(cfg.qkv_bias) != (family == "qwen2"):
    raise ValueError(f"model.qkv_bias={cfg.qkv_bias} does not fit {family}: q/k/v biases are "
                     "Qwen2's layout")
  arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
          "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel"}[family]
  hf = dict(architectures=[arch], model_type=family, vocab_size=cfg.vocab_size,
            tie_word_embeddings=cfg.tie_embeddings, dtype=cfg.param_dtype)
  if family == "gpt2":
    if options.get("scale") not in (None, 1.0):
      raise ValueError(f"model.attention_options scale={options['scale']} has no gpt2 field")
    return {**hf, "n_embd": cfg.d_model, "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
            "n_inner": cfg.hidden_dim, "n_positions": cfg.max_len,
            "layer_norm_epsilon": cfg.norm_eps, "activation_function": "gelu_new",
            "scale_attn_weights": "scale" not in options}
  rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  if cfg.rope_scaling:
    s = dict(cfg.rope_scaling)
    rope = {**rope, "rope_type": s["type"], "factor": s["factor"],
            "low_freq_factor": s["low_freq_factor"], "high_freq_factor": s["high_freq_factor"],
            "original_max_position_embeddings": s["original_max_len"]}
  hf.update(hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.kv_heads,
            head_dim=cfg.dim_per_head, intermediate_size=cfg.hidden_dim,
            max_position_embeddings=cfg.max_len, rms_norm_eps=cfg.norm_eps, hidden_act="silu",
            rope_parameters=rope, rope_theta=cfg.rope_theta)
  window = options.get("window")
  if family == "mistral":
    hf["sliding_window"] = window
  elif family == "qwen2":
    kind = "sliding_attention" if window else "full_attention"
    hf.update(use_sliding_window=bool(window), sliding_window=window, max_window_layers=0,
              layer_types=[kind] * cfg.num_layers)
  else:
    hf.update(attention_bias=False, mlp_bias=False)
  return hf


def _table(cfg: TransformerConfig, family: str) -> list[tuple[str, tuple, str]]:
  """(Hugging Face name, jaxllm parameter paths, layout) for every tensor of the family.

  Layouts: ``T`` the transpose of one jaxllm array, ``=`` the same array, ``cat`` the jaxllm arrays
  joined along the last axis (GPT-2's fused q, k, v).
  """
  rows = []
  if family == "gpt2":
    p = "transformer."
    rows += [(p + "wte.weight", (("tok_embed", "embedding"),), "="),
             (p + "wpe.weight", (("pos_embed", "embedding"),), "=")]
    for i in range(cfg.num_layers):
      h, blk = f"{p}h.{i}.", ("blocks", i)
      for hf_norm, norm in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
        rows += [(f"{h}{hf_norm}.weight", (blk + (norm, "scale"),), "="),
                 (f"{h}{hf_norm}.bias", (blk + (norm, "bias"),), "=")]
      for leaf in ("kernel", "bias"):
        hf_leaf = "weight" if leaf == "kernel" else "bias"
        rows.append((f"{h}attn.c_attn.{hf_leaf}",
                     tuple(blk + ("attn", w, leaf) for w in ("wq", "wk", "wv")), "cat"))
        for hf_mod, mod in (("attn.c_proj", ("attn", "wo")), ("mlp.c_fc", ("mlp", "fc_in")),
                            ("mlp.c_proj", ("mlp", "fc_out"))):
          rows.append((f"{h}{hf_mod}.{hf_leaf}", (blk + mod + (leaf,),), "="))
    rows += [(p + "ln_f.weight", (("final_norm", "scale"),), "="),
             (p + "ln_f.bias", (("final_norm", "bias"),), "=")]
  else:
    p = "model."
    rows.append((p + "embed_tokens.weight", (("tok_embed", "embedding"),), "="))
    for i in range(cfg.num_layers):
      h, blk = f"{p}layers.{i}.", ("blocks", i)
      rows += [(f"{h}input_layernorm.weight", (blk + ("attn_norm", "scale"),), "="),
               (f"{h}post_attention_layernorm.weight", (blk + ("mlp_norm", "scale"),), "=")]
      for hf_mod, mod in (("self_attn.q_proj", ("attn", "wq")), ("self_attn.k_proj", ("attn", "wk")),
                          ("self_attn.v_proj", ("attn", "wv")), ("self_attn.o_proj", ("attn", "wo")),
                          ("mlp.gate_proj", ("mlp", "w_gate")), ("mlp.up_proj", ("mlp", "w_up")),
                          ("mlp.down_proj", ("mlp", "w_down"))):
        rows.append((f"{h}{hf_mod}.weight", (blk + mod + ("kernel",),), "T"))
        if cfg.qkv_bias and mod[1] in ("wq", "wk", "wv"):
          rows.append((f"{h}{hf_mod}.bias", (blk + mod + ("bias",),), "="))
    rows.append((p + "norm.weight", (("final_norm", "scale"),), "="))
  if not cfg.tie_embeddings:
    rows.append(("lm_head.weight", (("lm_head", "kernel"),), "T"))
  return rows


def dtype_name(dtype) -> str:
  if isinstance(dtype, str) and dtype in DTYPES:
    return dtype
  for name, d in DTYPES.items():
    try:
      if not isinstance(dtype, str) and jnp.dtype(dtype) == jnp.dtype(d):
        return name
    except TypeError:
      break
  raise ValueError(f"dtype={dtype!r} is not supported; allowed: {list(DTYPES)}")


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree[key]
  tree[path[-1]] = value


def _hf_shape(shapes, layout):
  if layout == "T":
    return tuple(shapes[0][::-1])
  if layout == "cat":
    return tuple(shapes[0][:-1]) + (sum(s[-1] for s in shapes),)
  return tuple(shapes[0])


class _Tensors:
  """Lazy access to the tensors of a single-file or sharded safetensors checkpoint."""

  def __init__(self, path: str):
    index = os.path.join(path, INDEX)
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise ValueError(f"{index} has no 'weight_map' object")
    elif os.path.exists(os.path.join(path, SINGLE)):
      weight_map = None
    else:
      raise ValueError(f"{path} has neither {SINGLE} nor {INDEX}")
    self._files, self.where = {}, {}
    files = sorted(set(weight_map.values())) if weight_map else [SINGLE]
    for name in files:
      file = os.path.join(path, name)
      if not os.path.exists(file):
        raise ValueError(f"{INDEX} names the shard {name}, which is not in {path}")
      self._files[name] = safe_open(file, framework="flax")
      for key in self._files[name].keys():
        if weight_map and weight_map.get(key) != name:
          raise ValueError(f"tensor {key!r} is in {name} but {INDEX} maps it to "
                           f"{weight_map.get(key)!r}")
        self.where[key] = name
    if weight_map:
      lost = sorted(set(weight_map) - set(self.where))
      if lost:
        raise ValueError(f"{INDEX} lists tensors that no shard holds: {lost[:5]}")

  def shape(self, key):
    return tuple(self._files[self.where[key]].get_slice(key).get_shape())

  def __getitem__(self, key):
    return self._files[self.where[key]].get_tensor(key)


def _canonical(names, table) -> dict:
  """Maps the file's names onto the table's: checkpoints saved from the bare decoder (``LlamaModel``,
  ``GPT2Model``, e.g. the original gpt2 upload) lack the ``model.`` / ``transformer.`` prefix."""
  prefix = table[0][0].split(".")[0] + "."
  if any(n.startswith(prefix) for n in names):
    return {n: n for n in names}
  return {n: n if n == "lm_head.weight" else prefix + n for n in names}


def load_hf(path: str, dtype="float32") -> Transformer:
  """Builds a jaxllm Transformer from a Hugging Face checkpoint directory.

  Args:
    path: a directory with ``config.json`` and ``model.safetensors`` or a sharded
      ``model.safetensors.index.json`` (tensors are read one at a time).
    dtype: "float32" or "bfloat16", for both the parameters and the computation.

  Returns:
    a Transformer mapping token ids [B, T] to logits [B, T, V].

  Raises:
    ValueError naming the field or tensor for an unsupported family or option, a missing,
    unexpected or misshapen tensor.
  """
  cfg_file = os.path.join(path, CONFIG)
  if not os.path.exists(cfg_file):
    raise ValueError(f"{path} has no {CONFIG}")
  with open(cfg_file) as f:
    hf = json.load(f)
  family, cfg = config_from_hf(hf, dtype)
  tensors = _Tensors(path)
  table = _table(cfg, family)
  names = _canonical(list(tensors.where), table)
  by_table_name = {v: k for k, v in names.items()}
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  params = state.to_pure_dict()
  used = set()
  for hf_name, paths, layout in table:
    file_name = by_table_name.get(hf_name)
    if file_name is None:
      raise ValueError(f"checkpoint lacks the tensor {hf_name!r} ({family}, "
                       f"{cfg.num_layers} layers)")
    want = _hf_shape([_get(params, p).shape for p in paths], layout)
    if tensors.shape(file_name) != want:
      raise ValueError(f"tensor {hf_name!r} has shape {list(tensors.shape(file_name))}, config.json "
                       f"implies {list(want)}")
    x = tensors[file_name].astype(cfg.weight_dtype)
    used.add(file_name)
    if layout == "T":
      x = x.T
    parts = [x]
    if layout == "cat":
      parts = jnp.split(x, np.cumsum([_get(params, p).shape[-1] for p in paths])[:-1], axis=-1)
    for p, part in zip(paths, parts):
      _set(params, p, part)
  extra = sorted(n for n in set(names) - used if not n.endswith(BUFFER_SUFFIXES))
  if cfg.tie_embeddings and "lm_head.weight" in extra:
    # Some tied checkpoints store the head anyway; it must be the embedding itself.
    embed = params["tok_embed"]["embedding"]
    if tensors.shape("lm_head.weight") != embed.shape or not bool(jnp.array_equal(
        tensors["lm_head.weight"].astype(embed.dtype), embed)):
      raise ValueError("tensor 'lm_head.weight' differs from the embedding, but config.json "
                       "sets tie_word_embeddings")
    extra.remove("lm_head.weight")
  if extra:
    raise ValueError(f"checkpoint has tensors the {family} layout does not use: {extra[:5]}"
                     + (f" and {len(extra) - 5} more" if len(extra) > 5 else ""))
  state.replace_by_pure_dict(params)
  return nnx.merge(graphdef, state)


def hf_tensors(model: Transformer, family: str | None = None) -> tuple[str, dict]:
  """(family, {Hugging Face name: array}) for ``model``; the family defaults to
  :func:`family_of`."""
  cfg = model.cfg
  family = family or family_of(cfg)
  if family not in FAMILIES:
    _unsupported("model_type", family, list(FAMILIES))
  params = nnx.state(model, nnx.Param).to_pure_dict()
  out = {}
  for hf_name, paths, layout in _table(cfg, family):
    arrays = [_get(params, p) for p in paths]
    out[hf_name] = (arrays[0].T if layout == "T" else
                    jnp.concatenate(arrays, axis=-1) if layout == "cat" else arrays[0])
  return family, out


def save_hf(model: Transformer, path: str, *, family: str | None = None,
            max_shard_bytes: int | None = None) -> None:
  """Writes ``model`` as a Hugging Face checkpoint directory (``config.json`` + safetensors).

  Args:
    model: a Transformer with a Hugging Face layout (see :func:`family_of`).
    path: the directory (created if absent; files of the same names are replaced).
    family: the ``model_type`` to write; default :func:`family_of` the model's config.
    max_shard_bytes: split the tensors into shards of at most this size (plus
      ``model.safetensors.index.json``); None writes one ``model.safetensors``.
  """
  family = family or family_of(model.cfg)
  hf = config_to_hf(model.cfg, family)  # validates before any array is read or written
  _, tensors = hf_tensors(model, family)
  shards, size = [[]], 0
  for name, x in tensors.items():
    if max_shard_bytes and shards[-1] and size + x.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += x.nbytes
  os.makedirs(path, exist_ok=True)
  # Each file is written next to its destination and renamed into place, so a failure leaves
  # either the old file or the complete new one.
  with tempfile.TemporaryDirectory(dir=path, prefix=".save_hf-") as tmp:
    files = {}
    for i, names in enumerate(shards):
      file = SINGLE if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file({n: jnp.asarray(tensors[n]) for n in names}, os.path.join(tmp, file),
                metadata={"format": "pt"})
      files.update({n: file for n in names})
    if len(shards) > 1:
      total = sum(int(x.nbytes) for x in tensors.values())
      with open(os.path.join(tmp, INDEX), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": files}, f, indent=2)
    with open(os.path.join(tmp, CONFIG), "w") as f:
      json.dump(hf, f, indent=2, sort_keys=True)
    for name in os.listdir(path):  # weights of an earlier save that this one does not replace
      if (name == INDEX or name.endswith(".safetensors")) and not os.path.exists(
          os.path.join(tmp, name)):
        os.remove(os.path.join(path, name))
    for name in sorted(os.listdir(tmp), key=lambda n: n == CONFIG):  # config.json last
      os.replace(os.path.join(tmp, name), os.path.join(path, name))


def config_dict(cfg: TransformerConfig) -> dict:
  """``cfg`` as a JSON-ready dict that :meth:`TransformerConfig.from_config` reads back."""
  d = dataclasses.asdict(cfg)
  for f in ("attention_options", "rope_scaling"):
    d[f] = dict(d[f])
  return d
