"""The command line every figure script shares: read <workdir>/results.json, write a PNG."""

import argparse
import json
import os
from typing import Callable


def cli(plot: Callable[[dict, str], str], default_name: str, description: str | None = None):
  """Parses ``--workdir`` (and optional ``--out``), calls ``plot(results, out_path)``, prints it."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--workdir", required=True, help="run directory holding results.json")
  parser.add_argument("--out", default=None, help=f"image path (default: <workdir>/{default_name})")
  args = parser.parse_args()
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # files only; notebooks keep their inline backend
  path = os.path.join(args.workdir, "results.json")
  if not os.path.exists(path):
    raise SystemExit(f"error: no results.json in {args.workdir}; run the experiment first")
  with open(path) as f:
    results = json.load(f)
  out = args.out or os.path.join(args.workdir, default_name)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  print(plot(results, out))
