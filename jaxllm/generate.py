"""Text generation from an imported checkpoint with a KV cache.

  python -m jaxllm.generate --checkpoint=DIR --prompt="Once upon a time" [--max_new_tokens=32]
      [--policy=full|streaming|h2o|tokenselect --budget=N --sinks=4 --recent=N]
      [--attention=dense --attention_impl=auto] [--temperature=0 --top_p=1 --seed=0]
      [--dtype=float32]

``DIR`` is a directory written by ``python -m jaxllm.interop.convert`` or a Hugging Face checkpoint
directory (``config.json`` + safetensors); its ``tokenizer.json`` (Hugging Face ``tokenizers``)
encodes the prompt and decodes the continuation. The prompt is prefilled with the chosen attention
method, then ``jaxllm.inference.decode.generate`` decodes under the chosen cache policy; generation
stops at the checkpoint's end-of-sequence token when it has one. Prints the continuation (and, with
``--ids``, its token ids on a second line). Bad input prints one ``error:`` line and exits 2.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np

from jaxllm.inference import decode
from jaxllm.inference.policies import POLICIES, Policy
from jaxllm.interop import checkpoint, hf
from jaxllm.interop.convert import ArgumentParser
from jaxllm.train.checkpoint import CheckpointError


def _parser():
  p = ArgumentParser(prog="python -m jaxllm.generate", description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", required=True, help="converted jaxllm or Hugging Face directory")
  p.add_argument("--prompt", required=True)
  p.add_argument("--max_new_tokens", type=int, default=32)
  p.add_argument("--policy", default="full", choices=POLICIES, help="KV-cache policy")
  p.add_argument("--budget", type=int, default=None, help="tokens kept (or attended) per kv head")
  p.add_argument("--sinks", type=int, default=4, help="streaming / tokenselect: first tokens kept")
  p.add_argument("--recent", type=int, default=None, help="h2o / tokenselect: latest tokens kept")
  p.add_argument("--attention", default=None, help="attention method (default: the checkpoint's)")
  p.add_argument("--attention_impl", default=None, help="attention implementation, e.g. xla")
  p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
  p.add_argument("--top_p", type=float, default=1.0,
                 help="nucleus sampling: keep the most likely tokens up to this mass (with "
                 "--temperature > 0)")
  p.add_argument("--seed", type=int, default=0, help="sampling seed")
  p.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: the stored one)")
  p.add_argument("--ids", action="store_true", help="also print the generated token ids")
  return p


def load(path: str, *, dtype: str | None = None, **overrides):
  """(model, tokenizer file, end-of-sequence ids) of a converted or Hugging Face directory."""
  if os.path.exists(os.path.join(path, checkpoint.MODEL_FILE)):
    meta = checkpoint.info(path)
    model = checkpoint.load(path, dtype=dtype, **overrides)
  elif os.path.exists(os.path.join(path, hf.CONFIG)):
    with open(os.path.join(path, hf.CONFIG)) as f:
      meta = json.load(f)
    model = checkpoint.with_config(hf.load_hf(path, dtype=dtype or "float32"), **overrides)
  else:
    raise ValueError(f"--checkpoint={path} has neither {checkpoint.MODEL_FILE} (a converted "
                     f"checkpoint) nor {hf.CONFIG} (a Hugging Face directory)")
  eos = meta.get("eos_token_id")
  eos = set() if eos is None else set(eos if isinstance(eos, list) else [eos])
  return model, os.path.join(path, checkpoint.TOKENIZER), eos


def run(args) -> tuple[str, list[int]]:
  """Generates for ``args``; returns (continuation text, its token ids)."""
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top

  overrides = {k: getattr(args, k) for k in ("attention", "attention_impl")
               if getattr(args, k) is not None}
  model, tok_file, eos = load(args.checkpoint, dtype=args.dtype, **overrides)
  if not os.path.exists(tok_file):
    raise ValueError(f"--checkpoint={args.checkpoint} has no {checkpoint.TOKENIZER}")
  tokenizer = Tokenizer.from_file(tok_file)
  ids = tokenizer.encode(args.prompt).ids
  if not ids:
    raise ValueError("--prompt encodes to no tokens")
  policy = Policy(args.policy, budget=args.budget, sinks=args.sinks, recent=args.recent)
  out = decode.generate(model, np.asarray([ids], np.int32), args.max_new_tokens, policy,
                        temperature=args.temperature, top_p=args.top_p,
                        rng=jax.random.key(args.seed))
  new = [int(t) for t in np.asarray(out["tokens"])[0]]
  stop = next((i for i, t in enumerate(new) if t in eos), None)
  new = new if stop is None else new[:stop + 1]
  return tokenizer.decode(new), new


def main(argv=None) -> None:
  args = _parser().parse_args(argv)
  try:
    text, ids = run(args)
  except (ValueError, OSError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(text)
  if args.ids:
    print(" ".join(map(str, ids)))


if __name__ == "__main__":
  main()
