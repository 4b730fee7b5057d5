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
# # A tour of the attention methods
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxllm/jaxllm/blob/main/scripts/notebooks/attention_tour.ipynb)
#
# Every attention method in jaxllm is one name in `jaxllm.attention.METHODS`, called as
# `attention(q, k, v, method=..., impl=...)`. The fidelity harness
# (`jaxllm.eval.attention_fidelity`) measures what each sparse method keeps of dense causal
# attention: density (computed pairs / all causal pairs), recall (dense softmax mass on the keys
# it attends), output error and log-sum-exp error, and its time against dense. Here it runs on
# synthetic q/k/v with planted structure (vertical columns, slash diagonals, a local band,
# clustered keys, needles). `SIZE = "smoke"` uses 4k tokens; `SIZE = "ci"` only checks the
# notebook.

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

import jax
from IPython.display import Image, display

from jaxllm.attention import METHODS, attention
from jaxllm.eval import attention_fidelity, planted

print("registered methods:", ", ".join(sorted(METHODS)))
q, k, v, _ = planted.planted_qkv(0, length=256, head_dim=64)
print("q", q.shape, "k", k.shape)
for name, opts in (("dense", {}), ("sink_window", {"sinks": 4, "window": 64}), ("linear", {})):
  print(f"{name:12s} output", attention(q, k, v, method=name, impl="xla", **opts).shape)

# %% [markdown]
# The harness, one row per method: a method at full budget has recall 1 and zero error; the
# dynamic methods trade density for recall.

# %%
length = 512 if SIZE == "ci" else 4096
window = length // 8
methods = ["dense", "sink_window", "block_sparse", "moba", "cca", "hyper", "minference",
           "flexprefill", "xattention", "hip"]
methods = [m for m in methods if m in METHODS]
options = {"sink_window": {"sinks": 4, "window": window}}
workdir = tempfile.mkdtemp(prefix="attention_fidelity_")
results = attention_fidelity.run(methods, [length], workdir, options=options, repeats=1)
print(f"{'method':14s}{'density':>9s}{'recall':>8s}{'out err':>10s}{'time/dense':>12s}")
for r in results["rows"]:
  print(f"{r['method']:14s}{r['density']:9.3f}{r['recall']:8.3f}{r['out_rel_err']:10.3g}"
        f"{r['time_ratio']:12.2f}")
display(Image(os.path.join(workdir, "attention_fidelity.png")))
