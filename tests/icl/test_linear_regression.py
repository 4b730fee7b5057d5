"""The default job's claim at smoke scale (d = 5, k up to 2d): the trained transformer's error
falls with k like least squares', reaching about 0.1 at k = d and under 0.01 at k = 2d, far below
the averaging and 3-NN baselines (Garg et al. 2022)."""

import pytest

from configs.icl import linear_regression as lr_config
from experiments.icl import linear_regression


@pytest.mark.slow
def test_smoke_run_reproduces_the_paper_result(tmp_path):
  config = lr_config.get_config("smoke")
  results = linear_regression.run(config, str(tmp_path / "smoke"))
  at_d, at_2d = results["at"]["k=5"], results["at"]["k=10"]
  assert at_2d["least_squares"] < 1e-6
  assert at_d["transformer"] < 0.105
  assert at_2d["transformer"] < 0.008
  assert at_2d["transformer"] < 0.05 * at_2d["averaging"]
  assert at_2d["transformer"] < 0.05 * at_2d["knn3"]
