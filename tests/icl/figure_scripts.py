"""Loads a figure script from scripts/figures/ as a module, for the studies' end-to-end tests."""

import importlib.util
import os

FIGURES = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "figures")


def load(name: str):
  """The module ``scripts/figures/<name>.py``."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(FIGURES, name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
