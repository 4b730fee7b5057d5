"""Error vs context length for the Bayesian prism: one panel per (training prior, test family).

  python scripts/figures/fig_bayesian_prism.py --workdir=runs/bayesian_prism
"""

from jaxllm import figures
from jaxllm.plots import bayesian_prism

if __name__ == "__main__":
  figures.cli(bayesian_prism.plot, "bayesian_prism.png", __doc__)
