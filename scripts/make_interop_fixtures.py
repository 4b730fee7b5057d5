"""Writes the tiny Hugging Face checkpoints that tests/interop replays (run by hand, needs torch).

  python scripts/make_interop_fixtures.py [--out tests/data/interop]

Run with any Python that has torch, transformers, safetensors and tokenizers (the fixtures in the
repository were made with torch 2.13.0 CPU and transformers 5.24.0). For each family it builds a
random-weight transformers model, saves it with ``save_pretrained`` (safetensors), trains a tiny
byte-level BPE ``tokenizer.json`` and records, in ``expected.npz``:

* ``prompt`` int32 [B, T] random token ids,
* ``logits`` float32 [B, T, V]: transformers' forward on the prompt,
* ``greedy`` int32 [B, N]: ``model.generate`` greedy tokens after the prompt (its own KV cache),
* ``text_prompt`` / ``text_greedy``: a text prompt through the tokenizer and its greedy ids.

Families (each directory under 1 MB): ``llama`` (Llama 2 layout, GQA), ``llama3`` (``llama3`` rope
scaling with a short original context so the rescaling moves every low frequency; saved as
sharded files with ``model.safetensors.index.json``), ``mistral`` (sliding window 5, shorter than
the 12-token prompt; an explicit head_dim), ``qwen2`` (q/k/v biases, tied embeddings) and
``gpt2`` (fused c_attn, learned positions, tied embeddings).
"""

import argparse
import json
import os
import shutil

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

B, T, N = 2, 12, 8
TEXT = ("the quick brown fox jumps over the lazy dog. a tiny model reads a tiny text, "
        "and every token it writes comes from random weights. ") * 4
TEXT_PROMPT = "the quick brown fox"


def _families():
  common = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
  return {
      "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(
          vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
          rms_norm_eps=1e-5, **common), {}),
      "llama3": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(
          vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128,
          rms_norm_eps=1e-5, rope_parameters=dict(
              rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
              high_freq_factor=4.0, original_max_position_embeddings=16), **common),
          dict(max_shard_size="40KB")),
      "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, dict(
          vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=5,
          max_position_embeddings=64, **common), {}),
      "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(
          vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
          tie_word_embeddings=True, rope_parameters=dict(rope_type="default", rope_theta=1e6),
          **common), {}),
      "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel, dict(
          vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=32, **common), {}),
  }


def _tokenizer(vocab_size):
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator([TEXT], trainers.BpeTrainer(
      vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:0],
      show_progress=False))
  assert tok.get_vocab_size() <= vocab_size, tok.get_vocab_size()
  return tok


def _greedy(model, ids):
  ids_t = torch.as_tensor(ids)
  out = model.generate(ids_t, attention_mask=torch.ones_like(ids_t), max_new_tokens=N, do_sample=False, num_beams=1,
                       eos_token_id=None, pad_token_id=0)
  greedy = out[:, ids.shape[1]:].numpy().astype(np.int32)
  # The cached generation must agree with argmax over repeated full forwards.
  seq = torch.as_tensor(ids)
  for i in range(N):
    nxt = model(seq).logits[:, -1].argmax(-1)
    assert (nxt.numpy() == greedy[:, i]).all(), "generate disagrees with the full forward"
    seq = torch.cat([seq, nxt[:, None]], 1)
  return greedy


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="tests/data/interop")
  args = p.parse_args()
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  for name, (cfg_cls, model_cls, kw, save_kw) in _families().items():
    cfg = cfg_cls(**kw)
    model = model_cls(cfg).eval()
    with torch.no_grad():  # larger than the default init so the logits are far from flat
      for pname, param in model.named_parameters():
        param.normal_(0.0, 0.2 if param.ndim > 1 else 0.1)
        if ("norm" in pname or ".ln_" in pname) and pname.endswith("weight"):  # scales near 1
          param.add_(1.0)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    path = os.path.join(args.out, name)
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path, **save_kw)
    tok = _tokenizer(cfg.vocab_size)
    tok.save(os.path.join(path, "tokenizer.json"))
    prompt = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    text_ids = np.asarray([tok.encode(TEXT_PROMPT).ids], np.int32)
    with torch.no_grad():
      logits = model(torch.as_tensor(prompt)).logits.numpy().astype(np.float32)
      if name == "mistral":  # the window must change the result, or the test shows nothing
        full = model_cls(cfg_cls(**{**kw, "sliding_window": None})).eval()
        full.load_state_dict(model.state_dict())
        assert np.abs(full(torch.as_tensor(prompt)).logits.numpy() - logits).max() > 1e-3
      greedy = _greedy(model, prompt)
      text_greedy = _greedy(model, text_ids)
    np.savez(os.path.join(path, "expected.npz"), prompt=prompt, logits=logits, greedy=greedy,
             text_prompt=text_ids, text_greedy=text_greedy)
    for f in ("generation_config.json",):
      if os.path.exists(os.path.join(path, f)):
        os.remove(os.path.join(path, f))
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    print(f"{name}: {sorted(os.listdir(path))}, {size / 1024:.0f} KiB")
  with open(os.path.join(args.out, "VERSIONS.json"), "w") as f:
    json.dump({"torch": torch.__version__, "transformers": transformers.__version__}, f)


if __name__ == "__main__":
  main()
