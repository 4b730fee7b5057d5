"""Iterative Newton and un-normalised GD against closed forms (pseudo-inverse, explicit loops)."""

import numpy as np
import pytest

from jaxllm.icl import baselines, newton
from jaxllm.icl.regression_task import conditioned_inputs


def _prompts(seed, batch, n, d, kappa=1.0):
  rng = np.random.default_rng(seed)
  xs = conditioned_inputs(rng, rng.standard_normal((batch, n, d)).astype(np.float32), kappa)
  ys = np.einsum("bnd,bd->bn", xs, rng.standard_normal((batch, d)))
  return xs.astype(np.float64), ys


def test_first_iterations_follow_the_recursion():
  xs, ys = _prompts(0, 3, 7, 4)
  ws = newton.newton_weights(xs, ys, 2)
  for b in range(3):
    x, y = xs[b], ys[b]
    s = x.T @ x
    m0 = s / np.linalg.norm(s @ s.T, "fro")
    m1 = 2 * m0 - m0 @ s @ m0
    m2 = 2 * m1 - m1 @ s @ m1
    for j, m in enumerate((m0, m1, m2)):
      np.testing.assert_allclose(ws[j, b], m @ x.T @ y, rtol=1e-10)


@pytest.mark.parametrize("n", [3, 12])  # fewer and more examples than d = 6
def test_converges_to_the_pseudo_inverse_solution(n):
  xs, ys = _prompts(1, 5, n, 6)
  w_pinv = np.stack([np.linalg.pinv(x) @ y for x, y in zip(xs, ys)])
  np.testing.assert_allclose(baselines.least_squares_weights(xs, ys), w_pinv, atol=1e-10)
  np.testing.assert_allclose(newton.newton_weights(xs, ys, 40)[-1], w_pinv, atol=1e-8)


def test_newton_needs_about_14_iterations_and_gd_hundreds_at_d20_n40():
  xs, ys = _prompts(2, 100, 40, 20)
  w_star = baselines.least_squares_weights(xs, ys)
  iters = newton.iterations_to_reach(newton.newton_weights(xs, ys, 40), w_star, 1e-2)
  assert 10 <= iters <= 16  # Fu et al.: 13-15 at condition number 1
  gd = lambda t: newton.gd_unnormalised_weights(xs, ys, 0.01, t)[None]  # noqa: E731
  assert newton.iterations_to_reach(gd(64), w_star, 1e-2) == -1
  assert newton.iterations_to_reach(gd(256), w_star, 1e-2) == 0


def test_ill_conditioning_costs_newton_a_few_iterations_and_stalls_gd():
  xs1, ys1 = _prompts(3, 100, 40, 20, 1.0)
  xs100, ys100 = _prompts(3, 100, 40, 20, 100.0)
  it1 = newton.iterations_to_reach(newton.newton_weights(xs1, ys1, 60),
                                   baselines.least_squares_weights(xs1, ys1), 1e-2)
  w100 = baselines.least_squares_weights(xs100, ys100)
  it100 = newton.iterations_to_reach(newton.newton_weights(xs100, ys100, 60), w100, 1e-2)
  # Newton's start grows with log(condition number): a handful more iterations, not 100 times more.
  assert it1 + 3 <= it100 <= it1 + 12
  assert newton.iterations_to_reach(newton.gd_unnormalised_weights(xs100, ys100, 0.01, 1024)[None],
                                    w100, 1e-2) == -1


def test_gd_matches_the_explicit_loop_and_bad_input():
  xs, ys = _prompts(4, 2, 9, 3)
  w = np.zeros((2, 3))
  for _ in range(5):
    w -= 0.01 * np.einsum("bnd,bn->bd", xs, np.einsum("bnd,bd->bn", xs, w) - ys)
  np.testing.assert_allclose(newton.gd_unnormalised_weights(xs, ys, 0.01, 5), w, rtol=1e-5)
  with pytest.raises(ValueError, match="num_iters"):
    newton.newton_weights(xs, ys, -1)
