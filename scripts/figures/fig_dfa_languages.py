"""Next-symbol validity on unseen random DFAs: each attention method beside in-context n-grams.

  python scripts/figures/fig_dfa_languages.py --workdir=runs/dfa_languages
"""

from jaxllm import figures
from jaxllm.plots import dfa_languages

if __name__ == "__main__":
  figures.cli(dfa_languages.plot, "dfa_languages.png", __doc__)
