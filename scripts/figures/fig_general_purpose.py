"""Figure for the general-purpose ICL study: memorisation vs learning-to-learn against the number

  python scripts/figures/fig_general_purpose.py --workdir=runs/general_purpose
"""

from jaxllm import figures
from jaxllm.plots import general_purpose

if __name__ == "__main__":
  figures.cli(general_purpose.plot, "general_purpose.png", __doc__)
