"""Error vs number of in-context examples for each function class (Garg et al. 2022, Fig. 3).

  python scripts/figures/fig_function_classes.py --workdir=runs/function_classes
"""

from jaxllm import figures
from jaxllm.plots import function_classes

if __name__ == "__main__":
  figures.cli(function_classes.plot, "function_classes.png", __doc__)
