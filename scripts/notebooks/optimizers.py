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
# # Optimizer comparison on a small language model
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxllm/jaxllm/blob/main/scripts/notebooks/optimizers.ipynb)
#
# The optimizer benchmark (`configs/optim_bench.py`): the same Llama-style model trained with
# AdamW and the optimizer variants of `jaxllm.optim` at one token budget; loss curves, step time
# relative to AdamW and optimizer-state memory. `SIZE = "smoke"` is the benchmark's smoke run;
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
import json
import tempfile

from IPython.display import Image, display

from configs import optim_bench as bench_config
from jaxllm import optim
from jaxllm.main import launch
from jaxllm.plots import optim_bench as bench_plot

print("optimizers by name:", ", ".join(optim.NAMES))
config = bench_config.get_config("tiny" if SIZE == "ci" else "smoke")
workdir = tempfile.mkdtemp(prefix="optim_bench_")
launch(config, workdir)

# %%
with open(os.path.join(workdir, "results.json")) as f:
  results = json.load(f)
display(Image(bench_plot.plot(results, os.path.join(workdir, "optim_bench.png"))))
