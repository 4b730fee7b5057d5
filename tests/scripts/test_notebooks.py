"""Each notebook is a jupytext pair: the .ipynb holds exactly the .py source's cells, no outputs.

The notebooks themselves run in their own step of scripts/test.sh (nbmake, JAXLLM_NOTEBOOK_SIZE=ci).
"""

import glob
import json
import os

import jupytext
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "scripts", "notebooks", "*.py")))


def test_there_are_notebooks():
  names = {os.path.basename(p)[:-3] for p in SOURCES}
  assert {"quickstart", "attention_tour", "optimizers", "lsa_gd"} <= names


@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_pair_in_sync_and_outputs_stripped(source):
  with open(source[:-3] + ".ipynb") as f:
    stored = json.load(f)
  assert all(not c.get("outputs") and not c.get("execution_count") for c in stored["cells"])
  expected = jupytext.read(source)
  got = [(c["cell_type"], "".join(c["source"])) for c in stored["cells"]]
  assert got == [(c.cell_type, c.source) for c in expected.cells]


@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_colab_badge_and_install_cell(source):
  text = open(source).read()
  assert f"blob/main/scripts/notebooks/{os.path.basename(source)[:-3]}.ipynb" in text
  assert 'find_spec("jaxllm") is None' in text
  assert 'JAXLLM_NOTEBOOK_SIZE' in text
