"""Figure for the active-forgetting study: ICL on seen / unseen tokens and IWL over training, one

  python scripts/figures/fig_active_forgetting.py --workdir=runs/active_forgetting
"""

from jaxllm import figures
from jaxllm.plots import active_forgetting

if __name__ == "__main__":
  figures.cli(active_forgetting.plot, "active_forgetting.png", __doc__)
