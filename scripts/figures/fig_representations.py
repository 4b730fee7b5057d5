"""In-context learning with a representation (Guo et al. 2023, error curves and layer probes).

  python scripts/figures/fig_representations.py --workdir=runs/representations
"""

from jaxllm import figures
from jaxllm.plots import representations

if __name__ == "__main__":
  figures.cli(representations.plot, "representations.png", __doc__)
