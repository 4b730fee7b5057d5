"""Figure for the LSA = GD study: training loss vs GD losses, prediction/sensitivity agreement.

  python scripts/figures/fig_lsa_gd.py --workdir=runs/lsa_gd
"""

from jaxllm import figures
from jaxllm.plots import lsa_gd

if __name__ == "__main__":
  figures.cli(lsa_gd.plot, "lsa_gd.png", __doc__)
