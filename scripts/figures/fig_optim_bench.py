"""Optimizer benchmark: loss curves, held-out loss, step time vs AdamW and optimizer-state memory.

  python scripts/figures/fig_optim_bench.py --workdir=runs/optim_bench_smoke
"""

from jaxllm import figures
from jaxllm.plots import optim_bench

if __name__ == "__main__":
  figures.cli(optim_bench.plot, "optim_bench.png", __doc__)
