"""Text pipeline throughput (build and read) next to the train step's, in one run.

  python scripts/benchmarks/bench_text_pipeline.py                 # lm_long smoke model, T=512
  python scripts/benchmarks/bench_text_pipeline.py --batches=20 --out=/tmp/text_pipeline.json

Rows:
* ``build``: local files -> TFDS array_record dataset (``jaxllm.data.text.build``), the default
  corpus (Python's stdlib sources) into a fresh data_dir; tokens = UTF-8 bytes written;
* ``read <tokenizer> <packing>``: the grain chain (read, shuffle, tokenize, pack, batch) yielding
  train batches of ``configs/lm_long.py:smoke`` shape, timed over ``--batches`` batches after the
  first; SentencePiece is trained on the corpus first (not timed);
* ``train step``: the compiled train step of the smoke model (``experiments.optim_bench.
  step_seconds``: grad + AdamW update), tokens = batch x seq_len.
The pipeline keeps up when its tokens/s is well above the train step's. Prints a table, writes JSON.
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from configs import lm_long  # noqa: E402
from jaxllm.train.lm_task import TextTask  # noqa: E402
from experiments.optim_bench import step_seconds  # noqa: E402
from jaxllm.data import pipeline, text, tokenizer  # noqa: E402
from jaxllm.results import write_json  # noqa: E402


def bench_build(data_dir: str) -> dict:
  files = text.input_files(text.stdlib_glob())
  size = sum(os.path.getsize(f) for f in files)
  t0 = time.perf_counter()
  text.build(text.stdlib_glob(), data_dir, text.DEFAULT_NAME)
  seconds = time.perf_counter() - t0
  return {"name": "build", "documents": len(files), "tokens": size, "seconds": seconds,
          "tokens_per_s": size / seconds}


def bench_read(config, tok_spec: str, packing: str, batches: int) -> dict:
  cfg = config.copy_and_resolve_references()
  cfg.text.update(tokenizer=tok_spec, packing=packing)
  data = pipeline.TextData(cfg.text, batch_size=int(cfg.train.batch_size), seed=0)
  first = data.train(0)
  t0 = time.perf_counter()
  real = 0
  for step in range(1, batches + 1):
    real += int((data.train(step)["segment_ids"] > 0).sum())
  seconds = time.perf_counter() - t0
  tokens = batches * first["tokens"].size
  label = "bytes" if tok_spec == "bytes" else "sentencepiece"
  return {"name": f"read {label} {packing}", "tokens": tokens, "seconds": seconds,
          "tokens_per_s": tokens / seconds, "non_padding_fraction": real / tokens}


def bench_train_step(config, repeats: int) -> dict:
  task = TextTask(config, config.model.to_dict())
  seconds = step_seconds(task, config.optimizer, int(config.train.steps), 0, repeats, rounds=2)
  tokens = task.batch_size * task.seq_len
  return {"name": "train step", "tokens": tokens, "seconds": seconds,
          "tokens_per_s": tokens / seconds}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=5, help="timed train steps per round")
  parser.add_argument("--vocab_size", type=int, default=1024, help="SentencePiece vocabulary")
  parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "text_pipeline.json"))
  args = parser.parse_args()
  if args.batches < 1 or args.repeats < 1:
    print("error: --batches and --repeats must be >= 1", file=sys.stderr)
    sys.exit(2)
  config = lm_long.get_config("smoke")
  with tempfile.TemporaryDirectory() as tmp:
    config.text.data_dir = os.path.join(tmp, "tfds")
    rows = [bench_build(config.text.data_dir)]
    sp = tokenizer.train_sentencepiece("", config.text.data_dir, os.path.join(tmp, "sp"),
                                       vocab_size=args.vocab_size, max_lines=200_000)
    for tok_spec in ("bytes", sp):
      for packing in ("concat", "first_fit"):
        rows.append(bench_read(config, tok_spec, packing, args.batches))
    rows.append(bench_train_step(config, args.repeats))
  train_rate = rows[-1]["tokens_per_s"]
  for r in rows:
    r["vs_train_step"] = r["tokens_per_s"] / train_rate
  shape = {"batch_size": int(config.train.batch_size), "seq_len": int(config.text.seq_len),
           "model": config.model.to_dict()}
  write_json(args.out, {"benchmark": "text_pipeline", "shape": shape, "rows": rows})
  print(f"{'stage':<28}{'tokens/s':>12}{'x train step':>14}")
  for r in rows:
    print(f"{r['name']:<28}{r['tokens_per_s']:>12.0f}{r['vs_train_step']:>14.1f}")
  print(f"JSON: {args.out}")


if __name__ == "__main__":
  main()
