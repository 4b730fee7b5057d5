"""Figure for the attention-SVM study: cos(W_t, W_mm) and ||W_t|| / ||W_mm|| over GD iterations.

  python scripts/figures/fig_attention_svm.py --workdir=runs/attention_svm
"""

from jaxllm import figures
from jaxllm.plots import attention_svm

if __name__ == "__main__":
  figures.cli(attention_svm.plot, "attention_svm.png", __doc__)
