"""Figure for the ZFB closed-form study: learned matrix vs Gamma^-1, error vs prompt length.

  python scripts/figures/fig_lsa_closed_form.py --workdir=runs/lsa_closed_form
"""

from jaxllm import figures
from jaxllm.plots import lsa_closed_form

if __name__ == "__main__":
  figures.cli(lsa_closed_form.plot, "lsa_closed_form.png", __doc__)
