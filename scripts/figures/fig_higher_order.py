"""Layer probes matched to Iterative Newton and GD (Fu et al. 2023, Figs. 2-3).

  python scripts/figures/fig_higher_order.py --workdir=runs/higher_order
"""

from jaxllm import figures
from jaxllm.plots import higher_order

if __name__ == "__main__":
  figures.cli(higher_order.plot, "higher_order.png", __doc__)
