"""Converts checkpoints between Hugging Face safetensors and jaxllm's orbax layout.

  python -m jaxllm.interop.convert --hf=HF_DIR --out=JAXLLM_DIR [--dtype=float32]
  python -m jaxllm.interop.convert --to_hf --checkpoint=JAXLLM_DIR --out=HF_DIR [--shard_mb=N]

The first reads ``config.json`` + ``model.safetensors`` (or a sharded index) of a Llama, Mistral,
Qwen2 or GPT-2 model and writes a jaxllm checkpoint directory (see ``jaxllm.interop.checkpoint``)
that ``python -m jaxllm.generate --checkpoint=JAXLLM_DIR`` reads; the second writes such a
directory back as a Hugging Face checkpoint. Bad input prints one ``error:`` line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from jaxllm.interop import checkpoint, hf
from jaxllm.train.checkpoint import CheckpointError

# Source config fields kept in model.json for generation (stop token, special ids).
TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


class ArgumentParser(argparse.ArgumentParser):
  """argparse that reports a usage error in one line (exit status 2)."""

  def error(self, message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _parser():
  p = ArgumentParser(prog="python -m jaxllm.interop.convert", description=__doc__.splitlines()[0])
  p.add_argument("--hf", help="Hugging Face checkpoint directory to import")
  p.add_argument("--checkpoint", help="jaxllm checkpoint directory to export (with --to_hf)")
  p.add_argument("--out", required=True, help="directory to write")
  p.add_argument("--to_hf", action="store_true", help="export --checkpoint as Hugging Face files")
  p.add_argument("--dtype", default=None, help="float32 or bfloat16 (import default: float32; "
                 "export default: the stored dtype)")
  p.add_argument("--shard_mb", type=float, default=None,
                 help="export: shard the safetensors at this many MiB (default: one file)")
  return p


def convert(args) -> str:
  """Runs the conversion ``args`` asks for; returns a one-line summary."""
  if args.to_hf:
    if not args.checkpoint or args.hf:
      raise ValueError("--to_hf exports --checkpoint=DIR to --out=DIR (and takes no --hf)")
    model = checkpoint.load(args.checkpoint, dtype=args.dtype)
    family = checkpoint.info(args.checkpoint).get("family")
    shard = int(args.shard_mb * 2**20) if args.shard_mb else None
    hf.save_hf(model, args.out, family=family, max_shard_bytes=shard)
    return f"wrote {hf.family_of(model.cfg) if family is None else family} checkpoint {args.out}"
  if not args.hf or args.checkpoint:
    raise ValueError("import needs --hf=DIR (and no --checkpoint); export needs --to_hf")
  model = hf.load_hf(args.hf, dtype=args.dtype or "float32")
  with open(os.path.join(args.hf, hf.CONFIG)) as f:
    source = json.load(f)
  extra = {"family": source["model_type"], **{k: source[k] for k in TOKEN_FIELDS if k in source}}
  tokenizer = os.path.join(args.hf, checkpoint.TOKENIZER)
  checkpoint.save(model, args.out, extra=extra,
                  tokenizer=tokenizer if os.path.exists(tokenizer) else None)
  return f"wrote jaxllm checkpoint {args.out} ({source['model_type']}, {model.cfg.num_layers} layers)"


def main(argv=None) -> None:
  args = _parser().parse_args(argv)
  try:
    print(convert(args))
  except (ValueError, OSError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
