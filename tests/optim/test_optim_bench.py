"""The optimizer benchmark end to end at its tiny scale (slow: trains four small LMs)."""

import math

import pytest

from configs import optim_bench as bench_config
from experiments import optim_bench


def test_plan_follows_step_law():
  config = bench_config.get_config("smoke")
  plan = optim_bench.plan(config)
  assert plan["batch_size"] == 16
  assert plan["steps"] == int(config.token_budget // (16 * config.text.seq_len))
  expected = 1.79 * plan["non_embedding_params"] ** -0.713 * config.token_budget ** 0.307
  assert math.isclose(plan["step_law_lr"], expected, rel_tol=1e-12)
  assert math.isclose(optim_bench.learning_rate({"lr_factor": 0.5}, 2e-3), 1e-3)
  assert optim_bench.learning_rate({"lr": 0.02}, 2e-3) == 0.02


@pytest.mark.slow
def test_tiny_run_reports_losses_memory_and_step_times(tmp_path):
  config = bench_config.get_config("tiny")
  config.progress = False
  results = optim_bench.run(config, str(tmp_path))
  assert set(results["runs"]) == {"adamw", "sophia_g", "fira", "zo_sgd"}
  for name, r in results["runs"].items():
    assert r["state_bytes"] == r["state_bytes_measured"], name
    assert r["step_seconds"] > 0 and math.isfinite(r["final_train_loss"]), name
  base = results["runs"][config.reference]["step_seconds"]
  for name, r in results["runs"].items():  # each ratio is its own step time over the reference's
    assert math.isclose(r["step_time_vs_reference"], r["step_seconds"] / base, rel_tol=1e-12), name
  assert results["runs"]["zo_sgd"]["state_bytes"] < results["runs"]["adamw"]["state_bytes"]
