"""Error vs number of in-context examples for the in-context linear regression study.

  python scripts/figures/fig_linear_regression.py --workdir=runs/linear_regression_smoke
"""

from jaxllm import figures
from jaxllm.plots import linear_regression

if __name__ == "__main__":
  figures.cli(linear_regression.plot, "linear_regression.png", __doc__)
