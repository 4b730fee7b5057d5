"""Figure for the bursty-classification study: ICL / IWL accuracy over training, and the sweep.

  python scripts/figures/fig_bursty.py --workdir=runs/bursty
"""

from jaxllm import figures
from jaxllm.plots import bursty

if __name__ == "__main__":
  figures.cli(bursty.plot, "bursty.png", __doc__)
