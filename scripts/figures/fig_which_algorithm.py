"""Which algorithm does the trained transformer match? (Akyurek et al. 2022, Figs. 2-3).

  python scripts/figures/fig_which_algorithm.py --workdir=runs/which_algorithm
"""

from jaxllm import figures
from jaxllm.plots import which_algorithm

if __name__ == "__main__":
  figures.cli(which_algorithm.plot, "which_algorithm.png", __doc__)
