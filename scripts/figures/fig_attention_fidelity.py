"""Recall vs density of sparse attention methods against dense attention.

  python scripts/figures/fig_attention_fidelity.py --workdir=runs/fidelity
writes <workdir>/attention_fidelity.png from <workdir>/results.json of
``python -m jaxllm.eval.attention_fidelity --workdir=runs/fidelity``.
"""

from jaxllm import figures
from jaxllm.plots import attention_fidelity

if __name__ == "__main__":
  figures.cli(attention_fidelity.plot, "attention_fidelity.png", __doc__.splitlines()[0])
