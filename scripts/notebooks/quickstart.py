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
# # jaxllm quickstart: in-context linear regression
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxllm/jaxllm/blob/main/scripts/notebooks/quickstart.ipynb)
#
# The default job of `python -m jaxllm.main`: a small GPT-2-style transformer learns linear
# regression in context (Garg et al. 2022) and is compared with least squares, ridge, averaging
# and 3-nearest-neighbours on the same prompts. `SIZE = "smoke"` is the real smoke run (a few
# minutes on 2 CPU cores); `SIZE = "ci"` runs seconds, only to check that the notebook works.

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
import json
import tempfile

from IPython.display import Image, display

from configs.icl import linear_regression as lr_config
from jaxllm.main import launch
from jaxllm.plots import linear_regression as lr_plot

config = lr_config.get_config("tiny" if SIZE == "ci" else "smoke")
workdir = tempfile.mkdtemp(prefix="linear_regression_")
print(config.model)
launch(config, workdir)

# %% [markdown]
# Normalised squared error against the number of in-context examples k. Least squares is exact
# from k = d on; the transformer should follow it.

# %%
with open(os.path.join(workdir, "results.json")) as f:
  results = json.load(f)
d = config.task.n_dims
errors = results["errors"]
for k in (d, 2 * d):
  print(f"k = {k:2d}: " + ", ".join(f"{name} {errors[name][k]:.3f}" for name in errors))
display(Image(lr_plot.plot(results, os.path.join(workdir, "linear_regression.png"))))
