"""The plotting module behind a figure script (``fig_<name>`` -> ``jaxllm.plots.<name>``)."""

import importlib


def load(name: str):
  """The module that draws ``scripts/figures/<name>.py``'s figure."""
  return importlib.import_module("jaxllm.plots." + name.removeprefix("fig_"))
