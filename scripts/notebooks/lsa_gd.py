# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # One layer of linear self-attention is one step of gradient descent
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxllm/jaxllm/blob/main/scripts/notebooks/lsa_gd.ipynb)
#
# von Oswald et al. (2023): a single linear self-attention layer trained on in-context linear
# regression reaches the loss of one gradient-descent step from w = 0 with the best step size,
# and its predictions match that step's. `SIZE = "smoke"` is the study's smoke run;
# `SIZE = "ci"` only checks that the notebook runs.

# %%
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("jaxllm") is None:  # Colab: install jaxllm first
  subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                         "jaxllm @ git+https://github.com/jaxllm/jaxllm"])

SIZE = os.environ.get("JAXLLM_NOTEBOOK_SIZE", "smoke")  # "smoke" or "ci"
assert SIZE in ("smoke", "ci"), SIZE

# %%
import tempfile

from IPython.display import Image, display

from configs.icl import lsa_gd as lsa_config
from jaxllm.main import launch
from jaxllm.plots import lsa_gd as lsa_plot

config = lsa_config.get_config("smoke")
if SIZE == "ci":
  config.model.num_layers = (1,)
  config.train.update(batch_size=128, steps=100, log_every=50)
  config.eval.update(gd_steps=(1,), num_prompts=500, rate_search_prompts=2000)
workdir = tempfile.mkdtemp(prefix="lsa_gd_")
results = launch(config, workdir)

# %% [markdown]
# The trained layer's loss next to the best single GD step, and how close its predictions are to
# GD's and to least squares'.

# %%
one = results["models"]["1"]
print(f"best one-step GD loss {results['gd']['loss'][0]:.4f}")
print(f"1-layer LSA: prediction difference to GD {one['pred_diff_gd']:.4f}, "
      f"to least squares {one['pred_diff_ols']:.4f}, "
      f"sensitivity cosine to GD {one['sensitivity_cos_gd']:.4f}")
display(Image(lsa_plot.plot(results, os.path.join(workdir, "lsa_gd.png"))))
