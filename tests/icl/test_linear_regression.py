"""The default job's claim at smoke scale (d = 5, k up to 20): the trained transformer's error is
near least squares once k >= 2d and far below the averaging baseline (Garg et al. 2022)."""

import pytest

from configs.icl import linear_regression as lr_config
from experiments.icl import linear_regression


@pytest.mark.slow
def test_smoke_run_reproduces_the_paper_result(tmp_path):
  config = lr_config.get_config("smoke")
  results = linear_regression.run(config, str(tmp_path / "smoke"))
  at = results["at"]["k=10"]
  assert at["least_squares"] < 1e-6
  assert at["transformer"] < 0.15
  assert at["transformer"] < 0.25 * at["averaging"]
  assert at["transformer"] < 0.25 * at["knn3"]
  assert results["at"]["k=20"]["transformer"] < 0.1
